"""Reconstruction QC: loss distribution, extreme outliers, and the figures the paper's supplement shows.

Notes
-----
Extreme outliers follow the paper (Supplementary Note 3): a scan is an extreme outlier when its
reconstruction loss lies below Q1 - 3 IQR or above Q3 + 3 IQR (Tukey's "far out" fences), with the
quartiles from numpy's default linear interpolation.

The UDIP spectrum (:func:`effective_rank`) says how many directions of the 128-d code carry the
cohort's variation: a code whose variance sits in one or two principal components has lost most of
what the image could tell a GWAS, however many dimensions it nominally has.

**How much the decoder uses the code** (:class:`DecoderSpread`). A reconstruction loss well below
the intensity variance can be earned by decoding the cohort's mean brain for everyone. What tells a
model that carries each subject's anatomy through its bottleneck from one that does not is how much
of each subject's departure from the cohort mean its reconstruction reproduces: with ``dx_i = x_i -
mean_j x_j`` and ``dr_i = r_i - mean_j r_j`` over the template brain's voxels,
``deviation_r2 = 1 - sum_i |dx_i - dr_i|^2 / sum_i |dx_i|^2`` (1: every departure reproduced; 0: the
same image for every subject, or departures as wrong as they are large; negative: worse than that).
``recon_variance / input_variance`` is the share of the between-subject variance the reconstructions
carry. PerDI reads the decoder's answer to a shift of the code, so a small deviation R2 also means
weak, diffuse PerDI maps. The reconstructions must be the decoder's own predictions
(``ViTAE.reconstruct(x, mask_background=False)``): masked with each input's brain, they differ between
subjects at the brain's edge whatever the code says (on the demo that alone gave 0.14 to a decoder
whose own predictions reproduce nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from udip_assets.errors import UdipConfigError  # noqa: E402


@dataclass(frozen=True)
class LossSummary:
    """Distribution of per-scan reconstruction losses and the extreme-outlier fences."""

    n_scans: int
    mean: float
    sd: float
    q1: float
    median: float
    q3: float
    lower_fence: float
    upper_fence: float
    n_outliers: int


@dataclass(frozen=True)
class UdipSpectrum:
    """How the UDIPs' variance spreads over their principal components (see :func:`effective_rank`)."""

    n_subjects: int
    n_dims: int
    participation_ratio: float
    n_pcs_90: int
    n_pcs_99: int
    pc1_fraction: float
    explained: tuple[float, ...]


def effective_rank(udips: np.ndarray) -> UdipSpectrum:
    """The spectrum of the UDIPs' covariance: participation ratio, PCs holding 90 % / 99 %, PC1's share.

    Parameters
    ----------
    udips : (n_subjects, n_dims) array
        One row per subject, one column per UDIP dimension; finite, at least 2 rows, not constant.

    Returns
    -------
    UdipSpectrum
        ``n_pcs_90`` / ``n_pcs_99`` are the smallest numbers of leading PCs whose variance is at least
        90 % / 99 % of the total; ``explained`` holds the variance fractions of the first
        ``min(16, n_dims)`` PCs, largest first.

    Notes
    -----
    Columns are centred and the eigenvalues ``l`` of the sample covariance (ddof = 1) are computed in
    float64 (``numpy.linalg.eigvalsh``; round-off negatives are clipped to 0). The participation
    ratio ``(sum l)**2 / sum l**2`` is a continuous count of the directions that hold the variance:
    1 when one direction holds everything, ``n_dims`` when the variance is isotropic (all
    eigenvalues equal), and ``k`` when ``k`` directions share it equally. It depends only on the
    covariance's spectrum, so it is unchanged by rotations of the code but not by rescaling single
    dimensions. With ``n_subjects <= n_dims`` the covariance has rank at most ``n_subjects - 1``,
    which bounds every count here.
    """
    x = np.asarray(udips, dtype=np.float64)
    if x.ndim != 2:
        raise UdipConfigError(f"udips must be a 2-D (n_subjects, n_dims) array, got shape {x.shape}; "
                              "pass one row per subject")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise UdipConfigError(f"udips must have at least 2 rows (subjects) and 1 column, got shape {x.shape}; "
                              "a spectrum needs a cohort")
    if not np.isfinite(x).all():
        raise UdipConfigError(f"udips must be finite, got {int((~np.isfinite(x)).sum())} NaN/inf values; "
                              "drop the dimensions the model does not fill (all-NULL columns) or the bad rows")
    centred = x - x.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / (x.shape[0] - 1)), 0.0, None)[::-1]  # (n_dims,)
    total = eig.sum()
    if total <= 0:
        raise UdipConfigError("udips must vary, got every dimension constant over subjects; "
                              "the encoder output is collapsed, check the model before reading its UDIPs")
    frac = eig / total
    cum = np.cumsum(frac)

    def n_pcs(q: float) -> int:  # tolerance: isotropic spectra sum to q only up to round-off
        return int(min(np.searchsorted(cum, q - 1e-12) + 1, x.shape[1]))

    return UdipSpectrum(n_subjects=int(x.shape[0]), n_dims=int(x.shape[1]),
                        participation_ratio=float(total**2 / np.sum(eig**2)), n_pcs_90=n_pcs(0.90),
                        n_pcs_99=n_pcs(0.99), pc1_fraction=float(frac[0]),
                        explained=tuple(float(f) for f in frac[:16]))


@dataclass(frozen=True)
class DecoderSpread:
    """Between-subject variation of the inputs and of their reconstructions (see the module Notes).

    Attributes
    ----------
    n_subjects, n_voxels : int
        Scans and template-brain voxels summed over.
    input_variance, recon_variance : float
        Mean over voxels of the between-subject variance (ddof 0) of the inputs / reconstructions.
    deviation_r2 : float
        ``1 - sum |dx - dr|^2 / sum |dx|^2``.
    """

    n_subjects: int
    n_voxels: int
    input_variance: float
    recon_variance: float
    deviation_r2: float


class DecoderSpreadAccumulator:
    """:class:`DecoderSpread` of (input, reconstruction) pairs fed one at a time, in bounded memory.

    Keeps two float64 voxel sums (of the inputs and of the reconstructions, over ``mask``) and three
    scalars, whatever the number of scans: ``sum |x - xbar|^2 = sum |x|^2 - n |xbar|^2`` and the same
    for ``r`` and ``x - r``, since ``dx - dr = (x - r) - mean(x - r)``.
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask)
        if mask.dtype != bool or not mask.any():
            raise UdipConfigError(f"mask must be a boolean brain mask with a True voxel, got {mask.dtype} "
                                  f"with {int(np.count_nonzero(mask))} voxels set")
        self.mask = mask
        self.n = 0
        self._sum_x = np.zeros(int(mask.sum()))
        self._sum_r = np.zeros_like(self._sum_x)
        self._sq = {"x": 0.0, "r": 0.0, "e": 0.0}

    def update(self, original: np.ndarray, recon: np.ndarray) -> None:
        """Add one scan: ``original`` and ``recon`` of the mask's shape (a leading 1 is dropped)."""
        x, r = (np.asarray(v, dtype=np.float64) for v in (original, recon))
        x, r = (v[0] if v.ndim == self.mask.ndim + 1 and v.shape[0] == 1 else v for v in (x, r))
        if x.shape != self.mask.shape or r.shape != self.mask.shape:
            raise UdipConfigError(f"input {x.shape} and reconstruction {r.shape} must both have the mask's "
                                  f"shape {self.mask.shape} (the model's padded volume)")
        x, r = x[self.mask], r[self.mask]
        self._sum_x += x
        self._sum_r += r
        self._sq["x"] += float(x @ x)
        self._sq["r"] += float(r @ r)
        e = x - r
        self._sq["e"] += float(e @ e)
        self.n += 1

    def result(self) -> DecoderSpread:
        if self.n < 2:
            raise UdipConfigError(f"the between-subject spread needs at least 2 scans, got {self.n}")
        n, v = self.n, self._sum_x.size
        ss_x = self._sq["x"] - float(self._sum_x @ self._sum_x) / n
        ss_r = self._sq["r"] - float(self._sum_r @ self._sum_r) / n
        sum_e = self._sum_x - self._sum_r
        ss_e = self._sq["e"] - float(sum_e @ sum_e) / n
        if ss_x <= 0:
            raise UdipConfigError("the inputs do not vary between subjects inside the mask; nothing to reproduce")
        return DecoderSpread(n_subjects=n, n_voxels=v, input_variance=ss_x / (n * v),
                             recon_variance=max(ss_r, 0.0) / (n * v), deviation_r2=1.0 - max(ss_e, 0.0) / ss_x)


def extreme_outliers(losses: pd.Series, k: float = 3.0) -> tuple[LossSummary, pd.Series]:
    """Summary of ``losses`` and the boolean mask of scans outside [Q1 - k IQR, Q3 + k IQR].

    Parameters
    ----------
    losses : Series
        One reconstruction loss per scan (index = subject id).
    k : float
        Fence multiplier; the paper uses 3 (extreme outliers).
    """
    if k <= 0:
        raise UdipConfigError(f"k must be positive, got {k}")
    values = losses.to_numpy(dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise UdipConfigError(f"losses must be a non-empty series of finite values, got {values.size} values")
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    mask = (losses < lo) | (losses > hi)
    summary = LossSummary(int(values.size), float(values.mean()), float(values.std(ddof=1)) if values.size > 1
                          else 0.0, float(q1), float(median), float(q3), float(lo), float(hi), int(mask.sum()))
    return summary, mask


def loss_figure(losses: pd.Series, summary: LossSummary, path: Path) -> Path:
    """Histogram and boxplot of reconstruction losses with the extreme-outlier fences (PNG)."""
    fig, (ax_hist, ax_box) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    ax_hist.hist(losses, bins=min(60, max(10, len(losses) // 10)), color="#4c72b0")
    for fence in (summary.lower_fence, summary.upper_fence):
        ax_hist.axvline(fence, color="#c44e52", linestyle="--", linewidth=1)
    ax_hist.set_xlabel("reconstruction loss (MSE, z-scored intensities)")
    ax_hist.set_ylabel("scans")
    ax_hist.set_title(f"{summary.n_scans} scans, {summary.n_outliers} extreme outliers (beyond 3 IQR)")
    ax_box.boxplot(losses, whis=3.0)
    ax_box.set_xticks([])
    ax_box.set_title("boxplot, whiskers at 3 IQR")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def udip_violin_figure(udips: np.ndarray, path: Path, dims_per_row: int = 32) -> Path:
    """Violin plot of every UDIP dimension (median and quartiles marked), rows of ``dims_per_row``.

    Parameters
    ----------
    udips : (n_subjects, n_dims) array
    """
    n_dims = udips.shape[1]
    rows = int(np.ceil(n_dims / dims_per_row))
    fig, axes = plt.subplots(rows, 1, figsize=(16, 2.6 * rows), squeeze=False)
    for r in range(rows):
        dims = list(range(r * dims_per_row, min(n_dims, (r + 1) * dims_per_row)))
        ax = axes[r, 0]
        parts = ax.violinplot([udips[:, d] for d in dims], positions=dims, showextrema=False,
                              quantiles=[[0.25, 0.5, 0.75]] * len(dims), widths=0.8)
        for body in parts["bodies"]:
            body.set_alpha(0.6)
        ax.set_xticks(dims[::4])
        ax.set_ylabel("value")
    axes[-1, 0].set_xlabel("UDIP dimension")
    fig.suptitle(f"ViT-UDIP distributions ({udips.shape[0]} subjects)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
