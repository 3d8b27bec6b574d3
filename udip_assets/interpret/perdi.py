"""Perturbation-based decoder interpretation (PerDI): the voxels a UDIP dimension moves.

The paper's procedure (Methods, "PerDI"): for 500 test subjects, add one standard deviation to one
UDIP dimension, decode the original and the perturbed UDIP, and run a voxelwise paired t-test of
the reconstructions; mask the t-map with the template brain, smooth it with a Gaussian (sigma 1),
save it as NIfTI and intersect it with an atlas (:mod:`udip_assets.interpret.atlas`). It does this
for the five dimensions with the most significant SNPs and those of novel loci.

Notes
-----
**Which dimensions** (:func:`choose_dims`): the ``n_top`` (5) dimensions with the most significant
SNPs in the minP table, then the dimensions of novel loci not already among them; an explicit list
replaces the rule. Without any significant SNP, the ``n_top`` dimensions with the smallest minP,
and the returned reason says so.

**Which patches are decoded.** Every patch of the padded volume that holds at least one voxel of
the template brain mask (:func:`template_kept`), the same token set for every subject, so that the
paired differences of all subjects sit on the same voxels. The decoder output of a patch depends
on the set of tokens it attends to, so these reconstructions differ slightly from a subject's own
(decoded over its own non-empty patches); the template set covers every voxel the t-map is read at.

**The perturbation.** The paper "added 1 standard deviation of noise" to a dimension; here that
is the deterministic shift ``z[d] + sd[d]`` (``sd[d]``: the dim's SD over the cohort), the same for
every subject, so the paired t measures how consistently the decoder answers one step along dim d.

**Streaming.** One pass over the subjects: each batch decodes the original UDIPs once and each
perturbed dimension once, and only the float64 running sums of the differences and of their
squares (:class:`PairedDiffStats`, per dimension, over the decoded patches) outlive the batch.
Memory is ``3 x n_dims`` float64 arrays of the decoded voxels (the shift and the two sums; at 1 mm
904 patches, 2.8 M voxels, 23 MB each) plus one batch of decodes, whatever the number of subjects
(``benchmarks/bench_perdi.py``: ~0.7 GB above the model for 5 dims at 1 mm).

**Smoothing order** (:func:`finish_map`): mask, then Gaussian filter, as the paper; then the mask
again by default, because the filter spreads values up to ~3 voxels outside the brain.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from udip_assets.atomic import atomic_path  # noqa: E402
from udip_assets.errors import SummaryStatsError, UdipConfigError  # noqa: E402
from udip_assets.imaging.grids import Grid  # noqa: E402
from udip_assets.imaging.preprocess import pad_offsets, pad_to_patch_multiple, padded_shape  # noqa: E402
from udip_assets.model.config import ModelConfig  # noqa: E402
from udip_assets.model.extract import as_model  # noqa: E402
from udip_assets.model.vit_ae import ViTAE  # noqa: E402

log = logging.getLogger(__name__)

MINP_HIT_COLUMNS = ("dim", "p", "significant")


# ------------------------------------------------------------------------------- which dims
def _as_dims(values: Iterable, name: str, allow_empty: bool) -> tuple[int, ...]:
    """Validated, de-duplicated (first occurrence kept) non-negative integer dims."""
    dims: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise UdipConfigError(f"{name} must hold non-negative integer UDIP dims, got {v!r}")
        if int(v) not in dims:
            dims.append(int(v))
    if not dims and not allow_empty:
        raise UdipConfigError(f"{name} must name at least one UDIP dim, got an empty list")
    return tuple(dims)


def _check_minp_hits(minp_hits: pd.DataFrame) -> pd.DataFrame:
    """The minP rows as (dim int, p float, significant bool) with a finite p."""
    if not isinstance(minp_hits, pd.DataFrame):
        raise UdipConfigError(f"minp_hits must be a DataFrame with columns {list(MINP_HIT_COLUMNS)}, "
                              f"got {type(minp_hits).__name__}")
    missing = [c for c in MINP_HIT_COLUMNS if c not in minp_hits.columns]
    if missing:
        raise SummaryStatsError(f"minp_hits lacks columns {missing}; pass the minP table (one row per SNP "
                                f"with its best dim, p and significant flag: {list(MINP_HIT_COLUMNS)})")
    df = pd.DataFrame({"dim": minp_hits["dim"], "p": pd.to_numeric(minp_hits["p"], errors="coerce"),
                       "significant": minp_hits["significant"].astype("boolean").fillna(False).astype(bool)})
    df = df[np.isfinite(df["p"].to_numpy(dtype=float)) & df["dim"].notna()]
    if df.empty:
        raise SummaryStatsError("minp_hits has no row with a finite p; run the GWAS first, or pass "
                                "explicit dims")
    return df.astype({"dim": int})


def choose_dims(minp_hits: pd.DataFrame | None, novel_dims: Iterable[int] = (),
                explicit: Sequence[int] | None = None, n_top: int = 5) -> tuple[tuple[int, ...], str]:
    """The UDIP dims to interpret, and why (the paper's rule unless ``explicit`` is given).

    Parameters
    ----------
    minp_hits : DataFrame or None
        The minP table: one row per SNP with ``dim`` (its best UDIP dim), ``p`` (its minP) and
        ``significant`` (p below the genome-wide threshold; nulls count as False). Unused (may be
        None) when ``explicit`` is given.
    novel_dims : iterable of int
        Dims of novel loci (every dim significant in a novel locus), added after the top dims.
    explicit : sequence of int, optional
        Dims chosen by the caller; wins over the rule (order kept, duplicates dropped).
    n_top : int
        How many dims the count rule takes (5 in the paper).

    Returns
    -------
    dims : tuple of int
        The top dims in rank order, then the novel dims not among them.
    reason : str
        One sentence: the rule that applied and the counts (or minP) behind it.

    Notes
    -----
    The rule: the ``n_top`` dims with the most significant SNPs (ties: the smaller best p, then
    the smaller dim), plus the dims of novel loci. Without any significant SNP the ``n_top`` dims
    with the smallest minP stand in (and ``reason`` says so), so a demo cohort still gets maps.
    """
    if isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 1:
        raise UdipConfigError(f"n_top must be an integer >= 1, got {n_top!r}")
    if explicit is not None:
        dims = _as_dims(explicit, "explicit", allow_empty=False)
        return dims, f"explicit: dims {list(dims)} given by the caller"
    df = _check_minp_hits(minp_hits)
    novel = _as_dims(novel_dims, "novel_dims", allow_empty=True)
    sig = df[df["significant"]]
    if len(sig):
        per_dim = sig.groupby("dim").agg(n=("p", "size"), best_p=("p", "min")).reset_index()
        top = per_dim.sort_values(["n", "best_p", "dim"], ascending=[False, True, True]).head(n_top)
        detail = ", ".join(f"{d}: {n}" for d, n in zip(top["dim"], top["n"], strict=True))
        reason = f"the {len(top)} dims with the most significant SNPs (dim: n_snps {detail})"
    else:
        per_dim = df.groupby("dim").agg(best_p=("p", "min")).reset_index()
        top = per_dim.sort_values(["best_p", "dim"]).head(n_top)
        detail = ", ".join(f"{d}: {p:.2g}" for d, p in zip(top["dim"], top["best_p"], strict=True))
        reason = (f"no significant SNP: the {len(top)} dims with the smallest minP instead "
                  f"(dim: minP {detail})")
    dims = [int(d) for d in top["dim"]]
    extra = [d for d in novel if d not in dims]
    if novel:
        reason += f"; plus the dims of novel loci {list(novel)} ({len(extra)} not already chosen)"
    return tuple(dims + extra), reason


# --------------------------------------------------------------------------- streamed t-test
class PairedDiffStats:
    """Running float64 moments of paired differences, for a voxelwise paired t-test in one pass.

    Call :meth:`update` with batches of differences ``perturbed - original`` (B, ...); read
    :meth:`mean`, :meth:`sd` (ddof 1) and :meth:`t` at any time.

    Notes
    -----
    Shifted sums: ``s1 = sum(d - K)``, ``s2 = sum((d - K)^2)`` with ``K`` the first difference seen
    at each voxel, so ``var = (s2 - s1^2 / n) / (n - 1)`` loses no precision when the mean is large
    against the sd, and is exactly 0 when every difference at a voxel is the same (the decoded
    patches that a dim does not move). ``t = mean / (sd / sqrt(n))`` as ``scipy.stats.ttest_rel``,
    and 0 where the sd is 0 (scipy gives nan for 0/0 and +-inf for a constant non-zero difference).
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: Tensor | None = None
        self._s1: Tensor | None = None
        self._s2: Tensor | None = None

    def update(self, diff: Tensor | np.ndarray, *, overwrite: bool = False) -> None:
        """Add a batch of differences (B, ...) (any float dtype; accumulated in float64).

        With ``overwrite`` a float64 ``diff`` tensor is used as scratch space (saves one copy).
        """
        diff = torch.as_tensor(diff)
        if diff.dtype != torch.float64:
            diff = diff.double()  # (B, ...), a new tensor
        elif not overwrite:
            diff = diff.clone()  # keep the caller's tensor intact
        if diff.ndim < 1 or diff.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = diff[0].clone()
            self._s1, self._s2 = torch.zeros_like(self._shift), torch.zeros_like(self._shift)
        elif diff.shape[1:] != self._shift.shape:
            raise ValueError(f"differences of shape {tuple(diff.shape[1:])} do not match the earlier ones "
                             f"{tuple(self._shift.shape)}")
        n_batch = diff.shape[0]
        centred = diff.sub_(self._shift)  # (B, ...), in place
        self._s1 += centred.sum(0)
        self._s2 += centred.square_().sum(0)
        self.n += n_batch

    def _require(self, n_min: int) -> None:
        if self.n < n_min:
            raise ValueError(f"a paired t-test needs at least {n_min} pairs, got {self.n}")

    def mean(self) -> Tensor:
        """Mean difference per voxel, float64."""
        self._require(1)
        return self._shift + self._s1 / self.n

    def sd(self) -> Tensor:
        """Standard deviation (ddof 1) of the differences per voxel, float64."""
        self._require(2)
        var = (self._s2 - self._s1.square() / self.n) / (self.n - 1)
        return var.clamp_(min=0.0).sqrt_()

    def t(self) -> Tensor:
        """Paired t per voxel, float64: ``mean / (sd / sqrt(n))``, 0 where the sd is 0."""
        sd = self.sd()
        t = self.mean() * math.sqrt(self.n) / sd
        return torch.where(sd > 0, t, torch.zeros_like(t))


@dataclass(frozen=True)
class PerdiResult:
    """What :func:`perdi_t_maps` returns; maps are on the cohort grid (the mask's shape).

    Attributes
    ----------
    dims : tuple of int
        The perturbed dims, in the order of the maps.
    t_maps : ndarray (n_dims, X, Y, Z) float32
        Raw voxelwise paired t (perturbed - original), unmasked and unsmoothed (see
        :func:`finish_map`); 0 outside the decoded patches and where the difference is constant.
    mean_diff : ndarray (n_dims, X, Y, Z) float32
        Mean difference, in the model's z-scored intensity units.
    delta : ndarray (n_dims,) float64
        The perturbation added to each dim (its ``sd``).
    n_subjects : int
        Pairs per voxel (the t-test has ``n_subjects - 1`` degrees of freedom).
    kept : ndarray (N,) bool
        The decoded patches of the padded volume.
    device : str
        Where the decoder ran.
    seconds : float
        Wall time of the decoding pass and of building the maps.
    """

    dims: tuple[int, ...]
    t_maps: np.ndarray
    mean_diff: np.ndarray
    delta: np.ndarray
    n_subjects: int
    kept: np.ndarray
    device: str
    seconds: float

    def t_map(self, dim: int) -> np.ndarray:
        """The raw t-map (X, Y, Z) of ``dim``."""
        if dim not in self.dims:
            raise KeyError(f"dim {dim} was not perturbed; the result holds dims {list(self.dims)}")
        return self.t_maps[self.dims.index(dim)]


def udip_sd(udips: np.ndarray) -> np.ndarray:
    """Standard deviation (ddof 1) of each UDIP dim over the cohort: (n, enc_dim) -> (enc_dim,) float64."""
    udips = np.asarray(udips, dtype=np.float64)
    if udips.ndim != 2 or udips.shape[0] < 2:
        raise UdipConfigError(f"udips must be (n_subjects >= 2, n_dims), got shape {udips.shape}")
    return udips.std(axis=0, ddof=1)


def _check_mask(mask: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype != bool:
        raise UdipConfigError(f"mask must be a boolean (X, Y, Z) template brain mask on the cohort grid, got "
                              f"{mask.dtype} of shape {mask.shape}")
    if tuple(padded_shape(mask.shape, cfg.patch)) != tuple(cfg.volume_shape):
        raise UdipConfigError(f"mask shape {mask.shape} pads to {padded_shape(mask.shape, cfg.patch)} with "
                              f"patch {cfg.patch}, but the model expects volumes {cfg.volume_shape}; pass "
                              "the template brain mask on the grid the model's scans were preprocessed on")
    if not mask.any():
        raise UdipConfigError("mask holds no voxel; pass the template brain mask (load_anatomy(grid).brain_mask)")
    return mask


def template_kept(mask: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The patches of the padded volume that hold a voxel of ``mask``: (N,) bool, C order of the grid.

    ``mask`` (X, Y, Z) bool lies on the cohort grid; it is centre-padded as the scans are
    (:func:`~udip_assets.imaging.preprocess.pad_to_patch_multiple`), then cut into ``cfg.patch``.
    """
    padded = pad_to_patch_multiple(_check_mask(mask, cfg), cfg.patch)
    (gx, gy, gz), (px, py, pz) = cfg.grid, cfg.patch
    blocks = padded.reshape(gx, px, gy, py, gz, pz)
    return blocks.any(axis=(1, 3, 5)).reshape(-1)  # (N,)


def _check_inputs(cfg: ModelConfig, udips: np.ndarray, dims: Sequence[int], sd: np.ndarray,
                  batch_size: int) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """Validated (udips float32, dims, delta per dim float64)."""
    udips = np.asarray(udips, dtype=np.float32)
    if udips.ndim != 2 or udips.shape[1] != cfg.enc_dim or udips.shape[0] < 2:
        raise UdipConfigError(f"udips must be (n_subjects >= 2, {cfg.enc_dim}) for this model, got shape "
                              f"{udips.shape}")
    if not np.isfinite(udips).all():
        raise UdipConfigError("udips hold non-finite values; drop those subjects")
    dims = _as_dims(dims, "dims", allow_empty=False)
    bad = [d for d in dims if d >= cfg.enc_dim]
    if bad:
        raise UdipConfigError(f"dims {bad} are out of range for a {cfg.enc_dim}-d UDIP (0..{cfg.enc_dim - 1})")
    sd = np.asarray(sd, dtype=np.float64)
    if sd.shape != (cfg.enc_dim,):
        raise UdipConfigError(f"sd must be ({cfg.enc_dim},), one SD per UDIP dim over the cohort "
                              f"(udip_sd(udips)), got shape {sd.shape}")
    delta = sd[list(dims)]
    if not (np.isfinite(delta).all() and (delta > 0).all()):
        bad_sd = {d: float(v) for d, v in zip(dims, delta, strict=True) if not (np.isfinite(v) and v > 0)}
        raise UdipConfigError(f"sd must be finite and > 0 at the perturbed dims, got {bad_sd}; a constant dim "
                              "carries no information to perturb")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UdipConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return udips, dims, delta


@torch.no_grad()
def _stream(net: ViTAE, udips: Tensor, dims: tuple[int, ...], delta: np.ndarray, kept: Tensor,
            batch_size: int, progress: bool) -> list[PairedDiffStats]:
    """One pass over the subjects: per dim, the running moments over the decoded patches (K, P)."""
    index = kept.nonzero().ravel()  # (K,)
    stats = [PairedDiffStats() for _ in dims]
    starts = range(0, len(udips), batch_size)
    for start in tqdm(starts, desc="PerDI", unit="batch", disable=not progress):
        z = udips[start:start + batch_size]  # (B, C)
        kept_b = kept.expand(len(z), -1)  # (B, N)
        base = net.decode(z, kept_b)[:, index].double()  # (B, K, P)
        for acc, d, step in zip(stats, dims, delta, strict=True):
            z_pert = z.clone()
            z_pert[:, d] += float(step)
            diff = net.decode(z_pert, kept_b)[:, index].double().sub_(base)  # (B, K, P)
            acc.update(diff, overwrite=True)
    return stats


def _to_grid(net: ViTAE, values: Tensor, kept: Tensor, crop: tuple[slice, ...]) -> np.ndarray:
    """Values of the decoded patches (K, P) -> the cohort grid (X, Y, Z) float32, 0 elsewhere."""
    cfg = net.cfg
    patches = torch.zeros((1, cfg.n_patches, cfg.patch_voxels), dtype=torch.float32)  # (1, N, P)
    patches[0, kept] = values.float().cpu()
    volume = net.unpatchify(patches)[0, 0]  # (X, Y, Z) padded
    return volume[crop].numpy()


def _maps(net: ViTAE, stats: list, kept: np.ndarray, grid_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(t maps, mean differences), each (n_dims, X, Y, Z) float32 on the cohort grid.

    Empties ``stats`` as it goes, so that each dim's running sums are freed once its maps are out.
    """
    offsets = pad_offsets(grid_shape, net.cfg.patch)
    crop = tuple(slice(o, o + s) for o, s in zip(offsets, grid_shape, strict=True))
    kept_t = torch.as_tensor(kept)
    t_maps = np.zeros((len(stats), *grid_shape), dtype=np.float32)
    mean_diff = np.zeros_like(t_maps)
    for i in range(len(stats)):
        acc, stats[i] = stats[i], None
        t_maps[i] = _to_grid(net, acc.t(), kept_t, crop)
        mean_diff[i] = _to_grid(net, acc.mean(), kept_t, crop)
        del acc
    return t_maps, mean_diff


def _check_kept(kept: np.ndarray | None, mask: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The (N,) bool patches to decode: ``kept`` validated, or the template brain's patches."""
    kept = template_kept(mask, cfg) if kept is None else np.asarray(kept)
    if kept.shape != (cfg.n_patches,) or kept.dtype != bool or not kept.any():
        raise UdipConfigError(f"kept must be a ({cfg.n_patches},) bool array with a True, got {kept.dtype} "
                              f"{kept.shape}; default: template_kept(mask, model.cfg)")
    return kept


def perdi_t_maps(model: ViTAE | nn.Module | str | Path, udips: np.ndarray, dims: Sequence[int],
                 sd: np.ndarray, mask: np.ndarray, *, batch_size: int, device: str | torch.device,
                 kept: np.ndarray | None = None, progress: bool = True) -> PerdiResult:
    """Voxelwise paired t-maps of the decoder's response to +1 SD on each of ``dims``.

    Parameters
    ----------
    model : ViTAE, DDP-wrapped ViTAE, or str / Path
        The trained autoencoder (moved to ``device``; its train/eval mode is restored), or a
        checkpoint file.
    udips : (n_subjects, enc_dim) array
        One row per subject (the paper: 500 test subjects); n >= 2.
    dims : sequence of int
        UDIP dims to perturb (see :func:`choose_dims`).
    sd : (enc_dim,) array
        Each dim's SD over the cohort (:func:`udip_sd`); dim d is perturbed by ``+sd[d]``.
    mask : (X, Y, Z) bool array
        Template brain mask on the cohort grid (``load_anatomy(grid).brain_mask``); the padded
        volume must be the model's input shape.
    batch_size : int
        Subjects per decoder call; holds ``2 x batch_size`` decodes in memory. Does not change the
        result beyond float rounding.
    device : str or torch.device
        Where the decoder and the float64 accumulators run.
    kept : (N,) bool array, optional
        Patches to decode; default :func:`template_kept` of ``mask`` (see the module Notes).
    progress : bool
        tqdm bar over batches.

    Returns
    -------
    PerdiResult
        Raw t-maps and mean differences on the cohort grid; pass each map to :func:`finish_map`.

    Notes
    -----
    Paired t of ``decode(z + sd[d] e_d) - decode(z)`` over subjects, ``n - 1`` degrees of freedom,
    streamed in one pass (:class:`PairedDiffStats`). The padded volume is cropped back to the
    cohort grid with :func:`~udip_assets.imaging.preprocess.pad_offsets`.
    """
    device = torch.device(device)
    net = as_model(model, device)
    mask = _check_mask(mask, net.cfg)
    udips, dims, delta = _check_inputs(net.cfg, udips, dims, sd, batch_size)
    kept = _check_kept(kept, mask, net.cfg)
    log.info("PerDI: %d subjects x dims %s on %s, %d of %d patches decoded, batch %d", len(udips),
             list(dims), device, int(kept.sum()), net.cfg.n_patches, batch_size)
    was_training, t0 = net.training, time.perf_counter()
    net.eval()
    try:
        stats = _stream(net, torch.as_tensor(udips, device=device), dims, delta,
                        torch.as_tensor(kept, device=device), batch_size, progress)
    finally:
        net.train(was_training)
    t_maps, mean_diff = _maps(net, stats, kept, mask.shape)
    return PerdiResult(dims=dims, t_maps=t_maps, mean_diff=mean_diff, delta=delta, n_subjects=len(udips),
                       kept=kept, device=str(device), seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------ finishing, writing
def finish_map(t: np.ndarray, mask: np.ndarray, sigma: float = 1.0, *, remask: bool = True) -> np.ndarray:
    """Mask a raw t-map with the template brain, smooth it, and (by default) mask it again.

    Parameters
    ----------
    t : (X, Y, Z) array
        A raw t-map (:attr:`PerdiResult.t_maps`).
    mask : (X, Y, Z) bool array
        Template brain mask on the same grid.
    sigma : float
        Gaussian sigma in voxels (1, as the paper); 0 skips the smoothing.
    remask : bool
        Zero the voxels outside ``mask`` after smoothing (default True).

    Returns
    -------
    ndarray (X, Y, Z) float32

    Notes
    -----
    The order is the paper's: ``gaussian_filter(t * mask, sigma)`` (scipy defaults: edge mode
    'reflect', truncated at 4 sigma), so voxels outside the brain never leak into it. Smoothing
    after masking spreads the brain's values up to ``4 sigma`` voxels outside the mask (and pulls
    the values at its edge towards 0); with ``remask`` those outside voxels are set back to 0, so
    that the NIfTI, the figure and the atlas overlap see brain voxels only. Inside the mask the
    values are the paper's either way.
    """
    t = np.asarray(t, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != t.shape or t.ndim != 3:
        raise UdipConfigError(f"t and mask must be (X, Y, Z) arrays of one shape with a boolean mask, got t "
                              f"{t.shape} and mask {mask.dtype} {mask.shape}")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma >= 0):
        raise UdipConfigError(f"sigma must be a finite number of voxels >= 0, got {sigma!r}")
    out = t * mask
    if sigma > 0:
        out = ndi.gaussian_filter(out, sigma=sigma)
    if remask:
        out = out * mask
    return out.astype(np.float32)


def _check_on_grid(array: np.ndarray, grid: Grid, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != tuple(grid.shape):
        raise UdipConfigError(f"{name} has shape {array.shape} but grid {grid.name} is {grid.shape}; pass the "
                              "map cropped to the cohort grid (PerdiResult.t_maps)")
    if not np.isfinite(array).all():
        raise UdipConfigError(f"{name} holds non-finite values; a t-map from perdi_t_maps is finite")
    return array


def write_t_nifti(t_map: np.ndarray, grid: Grid, path: str | Path, *, dof: int | None = None) -> Path:
    """Write a t-map as a float32 NIfTI with the grid's affine (MNI152 sform/qform), atomically.

    Parameters
    ----------
    t_map : (X, Y, Z) array
        On ``grid``; finite.
    grid : Grid
        The cohort grid (its affine becomes the image's).
    path : str or Path
        Destination, e.g. ``perdi_dim_040.nii.gz``; its folder must exist.
    dof : int, optional
        Degrees of freedom (``n_subjects - 1``), stored as the NIfTI 't test' intent.

    Returns
    -------
    Path
    """
    data = _check_on_grid(t_map, grid, "t_map").astype(np.float32)
    img = nib.Nifti1Image(data, grid.affine)
    img.set_sform(grid.affine, code="mni")
    img.set_qform(grid.affine, code="mni")
    img.header.set_xyzt_units("mm")
    if dof is not None:
        img.header.set_intent("t test", (float(dof),), name="PerDI paired t")
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    return Path(path)


def t_map_figure(t_map: np.ndarray, template_t1: np.ndarray, path: str | Path, title: str, *,
                 grid: Grid, threshold: float | None = None) -> Path:
    """PNG of orthogonal slices (nilearn ``plot_stat_map``) of a t-map over the template T1, atomically.

    Parameters
    ----------
    t_map, template_t1 : (X, Y, Z) arrays
        On ``grid`` (the template from ``load_anatomy(grid).t1``).
    path : str or Path
        Destination PNG; its folder must exist.
    title : str
        Figure title, e.g. ``"PerDI dim 40 (n=500)"``.
    grid : Grid
        The grid of both arrays.
    threshold : float, optional
        |t| below which the map is transparent (default: nilearn's, every non-zero voxel shown).

    Returns
    -------
    Path
    """
    from nilearn import plotting

    stat = nib.Nifti1Image(_check_on_grid(t_map, grid, "t_map").astype(np.float32), grid.affine)
    bg = nib.Nifti1Image(_check_on_grid(template_t1, grid, "template_t1").astype(np.float32), grid.affine)
    fig = plt.figure(figsize=(10, 3.6))
    try:
        kwargs = {} if threshold is None else {"threshold": float(threshold)}
        display = plotting.plot_stat_map(stat, bg_img=bg, display_mode="ortho", title=title, figure=fig,
                                         colorbar=True, draw_cross=False, black_bg=False, **kwargs)
        with atomic_path(path, suffix=".png") as tmp:
            display.savefig(tmp, dpi=110)
        display.close()
    finally:
        plt.close(fig)
    return Path(path)


__all__ = ["PairedDiffStats", "PerdiResult", "choose_dims", "finish_map", "perdi_t_maps", "t_map_figure",
           "template_kept", "udip_sd", "write_t_nifti"]
