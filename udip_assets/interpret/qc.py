"""Reconstruction QC: loss distribution, extreme outliers, and the figures the paper's supplement shows.

Notes
-----
Extreme outliers follow the paper (Supplementary Note 3): a scan is an extreme outlier when its
reconstruction loss lies below Q1 - 3 IQR or above Q3 + 3 IQR (Tukey's "far out" fences), with the
quartiles from numpy's default linear interpolation.

The UDIP spectrum (:func:`effective_rank`) says how many directions of the 128-d code carry the
cohort's variation: a code whose variance sits in one or two principal components has lost most of
what the image could tell a GWAS, however many dimensions it nominally has.
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
