"""Result tables of the GWAS: column lists, empty tables, FUMA's upload columns and lambda GC.

``HITS_COLUMNS`` (one row per SNP x dim with p < keep_p), ``SUMSTATS_COLUMNS`` (one row per
SNP x dim), the minP table (``clump.MINP_COLUMNS``, one row per SNP) and the |t| histogram from
which :func:`lambda_from_histogram` reads the genomic inflation per dim.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.special as sps

from udip_assets.genetics.clump import MINP_COLUMNS
from udip_assets.genetics.pvalues import t_to_p

HITS_COLUMNS = ("snp", "chrom", "pos_bp", "a1", "a2", "dim", "beta", "se", "t", "p")
SUMSTATS_COLUMNS = (*HITS_COLUMNS, "neg_log10_p")
FLOAT_COLUMNS = ("beta", "se", "t", "p", "neg_log10_p")
CHI2_MEDIAN_1DF = float(sps.chdtri(1, 0.5))  # 0.4549364..., the median of chi2(1)
# |t| histogram for lambda GC: bins of width T_HIST_MAX / T_HIST_BINS, one overflow bin.
T_HIST_BINS = 32_768
T_HIST_MAX = 4.0

FUMA_COLUMNS = {"snp": "SNP", "chrom": "CHR", "pos_bp": "BP", "a1": "A1", "a2": "A2", "p": "P", "dim": "dim",
                "beta": "BETA", "se": "SE"}


def fuma_minp_table(minp: pd.DataFrame) -> pd.DataFrame:
    """A minP table in FUMA's upload columns (SNP, CHR, BP, A1, A2, P), plus the dim, beta and SE of the minimum."""
    return minp.loc[:, list(FUMA_COLUMNS)].rename(columns=FUMA_COLUMNS)


def variant_columns(v: pd.DataFrame) -> dict:
    """The SNP columns (snp, chrom, pos_bp, a1, a2) of a variant table, as arrays."""
    return {"snp": v["snp"].to_numpy(), "chrom": v["chrom"].to_numpy(),
            "pos_bp": v["pos_bp"].to_numpy(np.int64), "a1": v["a1"].to_numpy(), "a2": v["a2"].to_numpy()}


def empty_minp_table() -> pd.DataFrame:
    """A minP table with no rows, ``MINP_COLUMNS`` typed (p, beta, se, maf float; others object)."""
    return pd.DataFrame({c: pd.Series(dtype=float if c in ("p", "beta", "se", "maf") else object)
                         for c in MINP_COLUMNS})


def empty_hits_table() -> pd.DataFrame:
    """A hits table with no rows, ``HITS_COLUMNS`` typed (beta, se, t, p float; others object)."""
    return pd.DataFrame({c: pd.Series(dtype=float if c in ("beta", "se", "t", "p") else object)
                         for c in HITS_COLUMNS})


def lambda_from_histogram(hist: np.ndarray, df_ref: float) -> np.ndarray:
    """Lambda GC per dim from |t| histograms (rows = dims), exact to the bin width.

    Notes
    -----
    With the same df for every SNP, p is monotone in |t|, so the median p is the p of the median
    |t|: lambda = chi2_1.isf(p(median |t|)) / chi2_1.ppf(0.5). The two middle order statistics
    are each located in their bin by linear interpolation and averaged (error < 1.2e-4 in |t|,
    ~4e-4 in lambda at worst, far less with many SNPs per bin). SNPs with fewer called samples
    enter with |t| rescaled to ``df_ref`` at the null median, exact at the median to O(1/df^2).
    A median in the overflow bin (|t| >= 4, lambda > ~35) gives inf.
    """
    out = np.full(hist.shape[0], np.nan)
    width = T_HIST_MAX / T_HIST_BINS
    for k, counts in enumerate(hist):
        total = int(counts.sum())
        if total == 0:
            continue
        cum = np.cumsum(counts)
        values = []
        for rank in {(total + 1) // 2, (total + 2) // 2}:  # 1-based middle order statistic(s)
            b = int(np.searchsorted(cum, rank))
            if b >= T_HIST_BINS:
                values.append(np.inf)
                continue
            before = cum[b] - counts[b]
            values.append((b + (rank - before - 0.5) / counts[b]) * width)
        t_med = float(np.mean(values))
        if np.isfinite(t_med):
            out[k] = sps.chdtri(1, t_to_p(t_med, df_ref)) / CHI2_MEDIAN_1DF
        else:
            out[k] = np.inf
    return out
