"""Encode scans into UDIPs with a trained ViT autoencoder, and picture its reconstructions.

Notes
-----
**Reconstruction loss of a scan.** ``recon_loss`` is ``ModelOutput.per_scan_loss``: the per-voxel
mean squared error over the scan's kept (non-empty) patches, background voxels inside those
patches included, as the training loss (z-scored intensity units squared). With the default
per-scan batch mask (``ModelConfig.union_mask=False``) a scan's UDIP and loss do not depend on the
other scans of its batch, so the table does not depend on ``batch_size`` (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from udip_assets.atomic import save_figure_atomic  # noqa: E402
from udip_assets.errors import UdipConfigError  # noqa: E402
from udip_assets.imaging.dataset import PreprocessedScanDataset  # noqa: E402
from udip_assets.imaging.preprocess import load_preprocessed  # noqa: E402
from udip_assets.model.checkpoint import load_checkpoint  # noqa: E402
from udip_assets.model.vit_ae import ViTAE  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def udip_columns(n_dims: int) -> list[str]:
    """Column names ``udip_000 .. udip_{n_dims-1:03d}``."""
    return [f"udip_{d:03d}" for d in range(n_dims)]


def as_model(model: ViTAE | nn.Module | str | Path, device: str | torch.device) -> ViTAE:
    """A ViTAE on ``device``: loaded from a checkpoint path, unwrapped from DDP, or moved."""
    if isinstance(model, str | Path):
        return load_checkpoint(model, device=device).model
    model = getattr(model, "module", model)  # DistributedDataParallel -> ViTAE
    if not isinstance(model, ViTAE):
        raise UdipConfigError(f"model must be a ViTAE or a checkpoint path, got {type(model).__name__}")
    return model.to(device)


@torch.no_grad()
def _encode_batches(model: ViTAE, loader: DataLoader, device: torch.device,
                    show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(UDIPs (n, enc_dim) float32, per-scan losses (n,) float64) of every scan in ``loader``."""
    udips, losses = [], []
    for batch in tqdm(loader, desc="encoding scans", unit="batch", disable=not show_progress):
        try:
            out = model(batch["volume"].to(device, non_blocking=True))  # (B, 1, X, Y, Z)
        except ValueError as exc:
            ids = list(batch["subject_id"])
            raise ValueError(f"cannot encode the batch of subjects {ids}: {exc}") from exc
        udips.append(out.udip.float().cpu().numpy())  # (B, C)
        losses.append(out.per_scan_loss.double().cpu().numpy())  # (B,)
    return np.concatenate(udips), np.concatenate(losses)


def extract_udips(model: ViTAE | nn.Module | str | Path, paths: Sequence[str | Path],
                  subject_ids: Sequence | None = None, *, batch_size: int = 4,
                  device: str | torch.device = "cpu", num_workers: int = 0,
                  show_progress: bool = True) -> pd.DataFrame:
    """Encode preprocessed scans: one row of UDIPs and reconstruction loss per scan.

    Parameters
    ----------
    model : ViTAE, DDP-wrapped ViTAE, or str / Path
        A model (moved to ``device``; its train/eval mode is restored afterwards) or a checkpoint
        file (:func:`~udip_assets.model.checkpoint.load_checkpoint`).
    paths : sequence of str or Path
        Preprocessed scan caches on the model's grid.
    subject_ids : sequence, optional
        One id per path (default: the file stems).
    batch_size : int
        Scans per forward pass; does not change the result (see the module Notes).
    device : str or torch.device
        Where the model runs.
    num_workers : int
        DataLoader worker processes reading the caches.
    show_progress : bool
        tqdm bar over batches.

    Returns
    -------
    DataFrame
        One row per scan in input order: ``subject_id``, ``udip_000 .. udip_{enc_dim-1}`` (float32),
        ``recon_loss`` (float64, per-voxel MSE over the scan's kept patches).

    Raises
    ------
    UdipConfigError
        Bad ``batch_size`` or ``model``.
    FileNotFoundError, ScanError, ValueError
        A cache is missing or unreadable, or has the wrong shape or no brain voxel (naming it).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UdipConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = torch.device(device)
    net = as_model(model, device)
    dataset = PreprocessedScanDataset(paths, subject_ids)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = net.training
    net.eval()
    try:
        udips, losses = _encode_batches(net, loader, device, show_progress)
    finally:
        net.train(was_training)
    df = pd.DataFrame(udips.astype(np.float32), columns=udip_columns(udips.shape[1]))
    df.insert(0, "subject_id", dataset.subject_ids)
    df["recon_loss"] = losses
    return df


# ---------------------------------------------------------------------------------- figure
def _volume(v: str | Path | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A cache path, array or tensor -> (1, X, Y, Z) float32 tensor."""
    if isinstance(v, str | Path):
        v = load_preprocessed(v)
    t = torch.as_tensor(np.asarray(v, dtype=np.float32) if not isinstance(v, torch.Tensor) else v).float()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"a volume must be (X, Y, Z) or (1, X, Y, Z), got shape {tuple(t.shape)}")
    return t.unsqueeze(0).cpu()  # (1, X, Y, Z)


def _mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial (X, Y at mid Z), coronal (X, Z at mid Y) and sagittal (Y, Z at mid X) slices of (X, Y, Z)."""
    x, y, z = (n // 2 for n in vol.shape)
    return [vol[:, :, z], vol[:, y, :], vol[x, :, :]]


def iter_reconstructions(model: ViTAE | nn.Module, volumes: Iterable,
                         mask_background: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(original, reconstruction) of each volume, (X, Y, Z) float32 each, one scan in memory at a time.

    ``volumes``: preprocessed caches or arrays on the model's grid. The model runs on its own device
    in eval mode; its mode is restored when the iterator is exhausted or closed. ``mask_background``:
    as :meth:`ViTAE.reconstruct` (True: zero outside each input's brain, for figures).
    """
    net = getattr(model, "module", model)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        for v in volumes:
            x = _volume(v)  # (1, X, Y, Z)
            with torch.no_grad():
                r = net.reconstruct(x.unsqueeze(0).to(device), mask_background).cpu()  # (1, 1, X, Y, Z)
            yield x[0].numpy(), r[0, 0].numpy()
    finally:
        net.train(was_training)


def _reconstruct(model: ViTAE, volumes: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions), each (n, X, Y, Z) float32, one scan at a time."""
    pairs = list(iter_reconstructions(model, volumes))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _figure(originals: np.ndarray, recon: np.ndarray, labels: Sequence[str], difference: bool = False
            ) -> plt.Figure:
    """Rows per scan (original, reconstruction[, |difference|]) x three views, one grey scale per scan.

    The |original - reconstruction| rows share one colour scale (0 to the 99th percentile of the
    brain's differences over all scans), so that the scans' errors compare.
    """
    n, per_scan = len(labels), 3 if difference else 2
    diffs = np.abs(originals - recon)
    brain_diffs = diffs[originals != 0]
    diff_max = float(np.percentile(brain_diffs, 99)) if brain_diffs.size else 1.0
    fig, axes = plt.subplots(per_scan * n, 3, figsize=(9, 3.2 * per_scan * n), squeeze=False)
    for i, label in enumerate(labels):
        brain = originals[i][originals[i] != 0]
        lo, hi = np.percentile(brain, [1, 99]) if brain.size else (0.0, 1.0)
        rows = [("original", originals[i], "gray", lo, hi), ("reconstruction", recon[i], "gray", lo, hi)]
        if difference:
            rows.append(("|difference|", diffs[i], "hot", 0.0, diff_max or 1.0))
        for row, (kind, vol, cmap, vmin, vmax) in enumerate(rows):
            for col, (view, sl) in enumerate(zip(VIEWS, _mid_slices(vol), strict=True)):
                ax = axes[per_scan * i + row, col]
                ax.imshow(sl.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_title(f"{label}: {kind}, {view}", fontsize=9)
                ax.set_axis_off()
    fig.tight_layout()
    return fig


def reconstruction_figure(model: ViTAE | nn.Module, volumes: Sequence, subject_labels: Sequence[str],
                          path: str | Path, *, difference: bool = False) -> Path:
    """PNG of original vs reconstructed mid-slices (axial, coronal, sagittal) of a few scans.

    Parameters
    ----------
    model : ViTAE (or DDP-wrapped)
        Used on its own device, in eval mode (its mode is restored).
    volumes : sequence of str, Path, ndarray or Tensor
        Preprocessed caches or volumes (X, Y, Z) / (1, X, Y, Z) on the model's grid; typically two
        validation scans.
    subject_labels : sequence of str
        One anonymous label per volume (e.g. 'validation scan A'); subject ids do not belong in
        a figure that is shared.
    path : str or Path
        Destination PNG (folders are created).
    difference : bool
        Also draw |original - reconstruction| under each scan (the paper's Supplementary Figure 11),
        on one colour scale for all scans.

    Returns
    -------
    Path
    """
    if len(volumes) == 0 or len(volumes) != len(subject_labels):
        raise UdipConfigError(f"need one label per volume and at least one volume, got {len(volumes)} "
                              f"volumes and {len(subject_labels)} labels")
    net = getattr(model, "module", model)
    originals, recon = _reconstruct(net, volumes)
    fig = _figure(originals, recon, [str(s) for s in subject_labels], difference)
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


__all__ = ["extract_udips", "iter_reconstructions", "reconstruction_figure", "udip_columns"]
