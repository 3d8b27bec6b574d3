"""SmoothGrad saliency of one UDIP dimension with respect to the input volume (the paper's Figure 8).

Notes
-----
**Estimator.** ``smoothgrad(x) = mean_s grad_x u_d(x + eps_s)`` over ``n_samples`` noisy copies,
``eps_s ~ N(0, noise_sd^2)`` i.i.d. per voxel (Smilkov et al. 2017), u_d the UDIP dimension.
The *signed* mean gradient is returned: it estimates the gradient of the Gaussian-smoothed UDIP
``E[u_d(x + eps)]``, keeps the direction of the effect (brighter voxel -> larger or smaller
UDIP), and is exactly the plain gradient when ``noise_sd = 0``; figures show its magnitude.
(The mean of |grad| would never cancel, but it has no such meaning and a noise floor.)

**Noise inside the brain only.** Inputs are z-scored inside the brain and exactly 0 outside, and
the model keeps a patch as a token iff it holds a non-zero voxel. Noise on the background would
turn every patch into a token and change what the UDIP is computed from, so noise is added to the
brain voxels (``x != 0``) only. A brain voxel that the noise happens to make exactly 0 takes its
clean value back, so every noisy copy keeps exactly the clean scan's patches (checked).
``noise_sd`` is in the input's units: z-scored intensities, 1 = one within-brain SD; the default
1.0 is ~15 % of a z-scored T1 brain's range (-4.1..2.6, range 6.5-7, on the demo's synthetic
scans), inside the 10-20 % of the range that Smilkov et al. recommend.

**Support.** The gradient is also non-zero at background voxels of kept patches (the patch
embedding is linear in all the patch's voxels), but those voxels are 0 in every preprocessed scan
and never vary, so the map is set to 0 outside the brain; patches not kept get no gradient at all.
The map is cropped from the padded volume to the cohort grid.

**Reproducibility.** Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, one
copy at a time, so a seed gives the same noise whatever the device and ``batch_size``; the model
runs in eval mode (no dropout).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.grids import Grid
from udip_assets.interpret.brainmaps import crop_to_grid, overlay_figure, write_nifti
from udip_assets.interpret.inputs import as_vitae, as_volume
from udip_assets.model.vit_ae import ViTAE


def _check_args(net: ViTAE, dim: int, n_samples: int, noise_sd: float, seed: int, batch_size: int) -> None:
    """Raise UdipConfigError for a bad SmoothGrad argument, naming it."""
    for name, value, lo in (("dim", dim, 0), ("n_samples", n_samples, 1), ("seed", seed, 0),
                            ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise UdipConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    if dim >= net.cfg.enc_dim:
        raise UdipConfigError(f"dim {dim} is not a UDIP dimension; the model has enc_dim {net.cfg.enc_dim} "
                              f"(0..{net.cfg.enc_dim - 1})")
    if not (isinstance(noise_sd, int | float) and math.isfinite(noise_sd) and noise_sd >= 0):
        raise UdipConfigError(f"noise_sd must be a finite number >= 0 (z-scored units), got {noise_sd!r}")


def _noisy_copies(x: Tensor, brain: Tensor, n: int, noise_sd: float, gen: torch.Generator) -> Tensor:
    """``n`` copies (n, 1, X, Y, Z) of ``x`` (1, 1, X, Y, Z) with noise on the brain voxels only."""
    noise = torch.cat([torch.randn(x.shape, generator=gen) for _ in range(n)])  # (n, 1, X, Y, Z)
    noisy = x + noise * noise_sd * brain
    return torch.where(brain & (noisy == 0), x, noisy)  # a brain voxel never becomes background


def _gradient_sum(net: ViTAE, noisy: Tensor, dim: int, kept: Tensor) -> Tensor:
    """Sum over the copies (b, 1, X, Y, Z) of d u_dim / d input -> (1, X, Y, Z) float64."""
    noisy = noisy.requires_grad_(True)
    if not torch.equal(net.kept_mask(noisy.detach()), kept.expand(len(noisy), -1)):
        raise RuntimeError("SmoothGrad noise changed the scan's kept patches; this is a bug")
    udip = net.encode(noisy)  # (b, C)
    (grad,) = torch.autograd.grad(udip[:, dim].sum(), noisy)  # copies are independent scans
    return grad.double().sum(0)  # (1, X, Y, Z)


def smoothgrad(model: ViTAE | nn.Module, x: Tensor | np.ndarray | str | Path, dim: int, grid: Grid, *,
               n_samples: int = 50, noise_sd: float = 1.0, seed: int = 0, batch_size: int = 8) -> np.ndarray:
    """SmoothGrad of UDIP dimension ``dim`` with respect to one input volume, on the cohort grid.

    Parameters
    ----------
    model : ViTAE (or DDP-wrapped)
        Runs on its own device in eval mode (its mode is restored).
    x : Tensor, ndarray, str or Path
        One padded, z-scored volume (X', Y', Z') or (1, X', Y', Z') = ``cfg.volume_shape``, or its
        preprocessed cache.
    dim : int
        UDIP dimension, 0 .. enc_dim - 1.
    grid : Grid
        The cohort grid the scan was preprocessed on (the map is cropped to it).
    n_samples : int
        Noisy copies averaged (50, as Smilkov et al.).
    noise_sd : float
        Noise SD in z-scored units (0 gives the plain gradient).
    seed : int
        Seeds the noise (see the module Notes).
    batch_size : int
        Noisy copies per forward/backward pass (memory only; the result does not depend on it).

    Returns
    -------
    ndarray (X, Y, Z) = ``grid.shape`` float32
        Mean gradient (signed, per unit of z-scored intensity), 0 outside the brain.

    Raises
    ------
    UdipConfigError
        A bad argument (naming it).
    ValueError
        ``x`` is not a volume of the model's shape, or has no brain voxel.
    """
    net = as_vitae(model)
    _check_args(net, dim, n_samples, noise_sd, seed, batch_size)
    device = next(net.parameters()).device
    x = as_volume(x)[None]  # (1, 1, X, Y, Z) CPU
    kept = net.kept_mask(x.to(device))  # (1, N), validates the shape
    brain = x != 0  # (1, 1, X, Y, Z)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(x.shape[1:], dtype=torch.float64, device=device)  # (1, X, Y, Z)
    was_training = net.training
    net.eval()
    try:
        for start in range(0, n_samples, batch_size):
            noisy = _noisy_copies(x, brain, min(batch_size, n_samples - start), noise_sd, gen)
            total += _gradient_sum(net, noisy.to(device), dim, kept)
    finally:
        net.train(was_training)
    mean = (total / n_samples).cpu() * brain[0]  # (1, X, Y, Z)
    return crop_to_grid(mean[0].float().numpy(), net.cfg, grid)


def write_saliency_maps(saliency: np.ndarray, grid: Grid, nifti_path: str | Path, png_path: str | Path, *,
                        title: str, background: np.ndarray | None = None) -> tuple[Path, Path]:
    """The signed SmoothGrad map as a NIfTI, and its magnitude over the template as a PNG.

    The PNG's colour scale ends at the 99th percentile of the non-zero magnitudes (brighter voxels
    take the top colour), so a few extreme voxels do not dim the rest of the map.

    Parameters
    ----------
    saliency : ndarray (X, Y, Z) = ``grid.shape``
        From :func:`smoothgrad`.
    grid : Grid
    nifti_path, png_path : str or Path
        Destinations (``.nii`` / ``.nii.gz`` and ``.png``); folders are created, writes are atomic.
    title : str
        Figure title (e.g. 'UDIP 7, validation scan A'; no subject ids in shared figures).
    background : ndarray (X, Y, Z), optional
        As :func:`udip_assets.interpret.brainmaps.overlay_figure` (default the template T1).

    Returns
    -------
    (Path, Path)
    """
    nifti = write_nifti(saliency, grid, nifti_path)
    magnitude = np.abs(saliency)
    inside = magnitude[magnitude > 0]
    vmax = float(np.percentile(inside, 99)) if inside.size else None  # a few voxels would set the scale
    png = overlay_figure(magnitude, grid, png_path, title=f"|SmoothGrad| {title}", background=background,
                         vmax=vmax)
    return nifti, png


__all__ = ["smoothgrad", "write_saliency_maps"]
