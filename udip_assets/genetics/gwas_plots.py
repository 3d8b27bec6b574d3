"""GWAS figures: a Manhattan plot of the minP coloured by UDIP dimension, and a QQ plot.

Both draw on a bare ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state, safe in
worker threads and on headless machines) and write a PNG atomically (temp file, then rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.special as sps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from udip_assets.atomic import atomic_path
from udip_assets.errors import SummaryStatsError

_MIN_P = 1e-300  # p = 0 (float64 underflow) is drawn at this value
_THIN_BELOW = 2.0  # points with -log10 p below this are thinned in QQ plots of many SNPs
_THIN_KEEP = 20_000


def _chrom_order(chrom: pd.Series) -> list[str]:
    def key(c: str) -> tuple[int, str]:
        c = c.removeprefix("chr")
        return (int(c), "") if c.isdigit() else (100, c)

    return sorted(chrom.unique().tolist(), key=key)


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=120)
    return path


def manhattan_figure(minp: pd.DataFrame, path: Path | str, sig_p: float | None = None,
                     title: str | None = None, n_dims: int | None = None) -> Path:
    """Manhattan plot of one minP row per SNP, each point coloured by the dim of its minimum.

    Parameters
    ----------
    minp : pd.DataFrame
        Columns ``chrom``, ``pos_bp``, ``p``, ``dim`` (``clump.MINP_COLUMNS`` has them).
    path : Path
        PNG to write.
    sig_p : float, optional
        Draw the significance line at -log10(sig_p) (the paper: 5e-8 / 128).
    title : str, optional
    n_dims : int, optional
        Number of dims for the colour scale; default max(dim) + 1.

    Returns
    -------
    Path
        The written PNG.

    Notes
    -----
    Chromosomes are laid end to end in numeric order, each spanning its own position range; p = 0
    (float64 underflow) is drawn at 1e-300.
    """
    missing = [c for c in ("chrom", "pos_bp", "p", "dim") if c not in minp.columns]
    if missing:
        raise SummaryStatsError(f"manhattan_figure needs columns chrom, pos_bp, p, dim; minp lacks {missing}")
    df = minp.assign(chrom=minp["chrom"].astype(str))
    fig = Figure(figsize=(12, 4.5))
    ax = fig.add_subplot()
    offset, ticks, labels = 0.0, [], []
    n_colours = n_dims or (int(df["dim"].max()) + 1 if len(df) else 1)
    norm = Normalize(vmin=0, vmax=max(n_colours - 1, 1))
    scatter = None
    for k, chrom in enumerate(_chrom_order(df["chrom"])):
        sub = df[df["chrom"] == chrom]
        lo, hi = float(sub["pos_bp"].min()), float(sub["pos_bp"].max())
        x = offset + sub["pos_bp"].to_numpy(np.float64) - lo
        y = -np.log10(np.maximum(sub["p"].to_numpy(np.float64), _MIN_P))
        if k % 2:
            ax.axvspan(offset, offset + hi - lo, color="0.93", zorder=0)
        scatter = ax.scatter(x, y, c=sub["dim"].to_numpy(), cmap="turbo", norm=norm, s=4, linewidths=0,
                             rasterized=True, zorder=2)
        ticks.append(offset + (hi - lo) / 2)
        labels.append(chrom)
        offset += hi - lo + max(1.0, 0.02 * (hi - lo))
    if sig_p is not None:
        ax.axhline(-np.log10(sig_p), color="crimson", lw=0.8, ls="--", label=f"p = {sig_p:.2g}", zorder=3)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_xlabel("chromosome")
    ax.set_ylabel(r"$-\log_{10}$ minP")
    ax.set_title(title or f"minP over {n_colours} dims, {len(df):,} SNPs")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, label="dim", pad=0.01)
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    fig.tight_layout()
    return _save(fig, path)


def qq_points(p: np.ndarray, min_of: int | None = None) -> tuple:
    """The points of :func:`qq_figure`: (expected, observed, lower, upper) -log10 p, lambda GC, n.

    Below -log10 p = 2 only a thinned, evenly spaced subset of the sorted p-values is kept.
    """
    p = np.asarray(p, dtype=np.float64)
    p = np.sort(p[np.isfinite(p)])
    if min_of is not None:
        p = -np.expm1(min_of * np.log1p(-p))  # 1 - (1 - p)^k, accurate for tiny p
    if p.size == 0:
        raise SummaryStatsError("qq_figure got no finite p-values; check the summary statistics")
    n = p.size
    k = np.arange(1, n + 1)
    keep = (-np.log10(np.maximum(p, _MIN_P)) >= _THIN_BELOW) | (k % max(1, n // _THIN_KEEP) == 0) | (k == n)
    k, observed = k[keep], -np.log10(np.maximum(p[keep], _MIN_P))
    # quantiles of Beta(k, n - k + 1) and of chi2(1) through scipy.special (scipy.stats: ~0.9 s to import)
    expected = -np.log10(sps.betaincinv(k, n - k + 1, 0.5))
    lower, upper = (-np.log10(sps.betaincinv(k, n - k + 1, q)) for q in (0.975, 0.025))
    lam = float(np.median(sps.chdtri(1, p)) / sps.chdtri(1, 0.5))
    return expected, observed, lower, upper, lam, n


def qq_figure(p: np.ndarray, path: Path | str, title: str | None = None, min_of: int | None = None) -> Path:
    """QQ plot of p-values against the uniform distribution, with a 95% band and lambda GC.

    Parameters
    ----------
    p : np.ndarray
        (n,) p-values; NaN are ignored, 0 is drawn at 1e-300.
    path : Path
        PNG to write.
    title : str, optional
    min_of : int, optional
        The p-values are minima over this many tests (a minP): plot the Sidak-adjusted
        ``1 - (1 - p)^min_of`` instead, uniform under the null when the tests are independent.

    Notes
    -----
    The k-th smallest of n uniform p-values is Beta(k, n - k + 1): its median is the expected
    value drawn and its 2.5% / 97.5% quantiles the band. Below -log10 p = 2 only a thinned,
    evenly spaced subset of points is drawn when there are many. Lambda GC is the median chi2(1)
    quantile of p over 0.4549. A minP over correlated dims is adjusted too little by Sidak's
    formula (it assumes independent dims), so read such a plot for shape, not calibration.
    """
    expected, observed, lower, upper, lam, n = qq_points(p, min_of)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.fill_between(expected, lower, upper, color="0.85", lw=0, label="95% band")
    ax.plot([0, expected.max()], [0, expected.max()], color="0.4", lw=0.8)
    ax.scatter(expected, observed, s=4, color="navy", linewidths=0, rasterized=True)
    ax.set_xlabel(r"expected $-\log_{10} p$")
    ax.set_ylabel(r"observed $-\log_{10} p$")
    ax.set_title(title or f"QQ, {n:,} p-values, $\\lambda_{{GC}}$ = {lam:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
