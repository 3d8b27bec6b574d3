"""Reconstruction QC: loss distribution, extreme outliers, and the figures the paper's supplement shows.

Notes
-----
Extreme outliers follow the paper (Supplementary Note 3): a scan is an extreme outlier when its
reconstruction loss lies below Q1 - 3 IQR or above Q3 + 3 IQR (Tukey's "far out" fences), with the
quartiles from numpy's default linear interpolation.
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
