"""What the scan keeps of each chunk: minP per SNP, hits, joint tests and the |t| histogram.

:class:`Accumulator` folds the chunks in SNP order (memory ~ one minP row per SNP); in float32
runs the SNPs with a candidate hit are first recomputed in float64. :class:`Binner` maps each test's
|t| onto the histogram of :func:`~udip_assets.genetics.gwas_tables.lambda_from_histogram`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from udip_assets.genetics import multivariate as mv
from udip_assets.genetics.gwas_tables import T_HIST_BINS, T_HIST_MAX, variant_columns
from udip_assets.genetics.ols_kernel import Block, Stats, refine
from udip_assets.genetics.pvalues import p_to_abs_t, t_to_p
from udip_assets.genetics.residualize import NullModel

if TYPE_CHECKING:
    from udip_assets.genetics.gwas import GwasConfig

_FLOAT32_SCREEN_MARGIN = 1e-4  # relative slack on |t| thresholds when screening in float32


def _per_df(df: np.ndarray, cache: dict, fn: Callable[[float], float]) -> np.ndarray:
    """fn(df) per SNP, evaluated once per distinct df (``cache`` maps df -> value)."""
    values, inverse = np.unique(df, return_inverse=True)
    for d in values:
        if float(d) not in cache:
            cache[float(d)] = float(fn(float(d)))
    return np.array([cache[float(d)] for d in values])[inverse]


class Binner:
    """|t| histogram bins for lambda GC, with each SNP's df mapped onto ``df_ref``.

    Notes
    -----
    A SNP with df != df_ref (missing calls dropped) has its |t| multiplied by
    t_ref(0.5) / t_df(0.5), the ratio of the null medians of |t|, so that the bin of a test is
    the bin of the |t| with the same p under df_ref near the median, where lambda is read
    (error O(1/df^2)).
    """

    def __init__(self, df_ref: int) -> None:
        self.df_ref = df_ref
        self._scale: dict[float, float] = {}
        self._t_med_ref = float(p_to_abs_t(0.5, df_ref))

    def bins(self, t: np.ndarray, df: np.ndarray) -> np.ndarray:
        """(v, P) int64 bin of every |t|; NaN and |t| >= the histogram range go to the overflow bin."""
        scale = _per_df(df, self._scale, lambda d: self._t_med_ref / float(p_to_abs_t(0.5, d)))
        binned = np.abs(t) * (scale * (T_HIST_BINS / T_HIST_MAX))[:, None]
        np.nan_to_num(binned, copy=False, nan=T_HIST_BINS, posinf=T_HIST_BINS)
        return np.minimum(binned, T_HIST_BINS).astype(np.int64)


class Accumulator:
    """minP rows, hits and the |t| histogram, gathered chunk by chunk (memory ~ n_SNPs rows).

    ``groups`` ((lo, hi) column ranges, default one range of every column) are phenotype sets
    scanned in one pass (e.g. the UDIPs of several checkpoints): each gets its own minP rows,
    ``minp_by_group[g]``, the minimum over its own columns.
    """

    def __init__(self, model: NullModel, cfg: GwasConfig, binner: Binner,
                 groups: tuple[tuple[int, int], ...] | None = None) -> None:
        self.model, self.cfg, self.binner = model, cfg, binner
        self.groups = groups or ((0, model.n_dims),)
        self.minp_by_group: list[list[pd.DataFrame]] = [[] for _ in self.groups]
        self.minp = self.minp_by_group[0]
        self.hits: list[pd.DataFrame] = []
        self.multivariate: list[pd.DataFrame] = []
        self.hist = np.zeros((model.n_dims, T_HIST_BINS + 1), dtype=np.int64)
        self.skipped = {"call_rate": 0, "maf": 0, "monomorphic": 0, "no_df": 0, "singular": 0}
        self.n_tested = 0
        self._t_keep: dict[float, float] = {}
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def add(self, block: Block, st: Stats, n_singular: int) -> None:
        """Fold one chunk in; in float32 runs, SNPs with a candidate hit are first recomputed in float64."""
        for key, value in block.skipped.items():
            self.skipped[key] += value
        self.skipped["singular"] += n_singular
        if st.t.shape[0] == 0:
            return
        t_keep = _per_df(st.df, self._t_keep, partial(p_to_abs_t, self.cfg.keep_p))
        margin = 1.0 - (_FLOAT32_SCREEN_MARGIN if self.cfg.dtype == "float32" else 0.0)
        hit_rows = np.flatnonzero((np.abs(st.t) >= (t_keep * margin)[:, None]).any(axis=1))
        whitening = self.model.whitening
        if whitening is not None and self.cfg.dtype == "float32":  # small joint p: refitted in float64 too
            hit_rows = np.union1d(hit_rows, mv.rows_to_refit(st.r2, st.df, whitening, self.cfg.keep_p))
        if hit_rows.size and self.cfg.dtype == "float32":
            exact = refine(block, hit_rows, self.model, self.cfg)
            exact.bins = self.binner.bins(exact.t, exact.df)
            st.replace_rows(hit_rows, exact)
        self._add_minp(block, st)
        self._add_hits(block, st, hit_rows)
        if whitening is not None:
            self.multivariate.append(mv.joint_table(variant_columns(block.variants), st.r2, st.df, whitening))
        self._add_bins(st.bins)
        self.n_tested += st.t.shape[0]

    def _add_minp(self, block: Block, st: Stats) -> None:
        """For one SNP every dim has the same df, so the smallest p is at the largest |t| (per group)."""
        abs_t = np.nan_to_num(np.abs(st.t), nan=-1.0)
        rows = np.arange(abs_t.shape[0])
        variants = variant_columns(block.variants)
        for (lo, hi), out in zip(self.groups, self.minp_by_group, strict=True):
            best = np.argmax(abs_t[:, lo:hi], axis=1)
            beta, se = st.beta_se(rows, best + lo)
            out.append(pd.DataFrame({
                **variants, "p": t_to_p(np.abs(st.t[rows, best + lo]), st.df),
                "dim": best.astype(np.int64), "beta": beta, "se": se, "maf": block.maf}))

    def _add_hits(self, block: Block, st: Stats, hit_rows: np.ndarray) -> None:
        if hit_rows.size == 0:
            return
        p = t_to_p(st.t[hit_rows], st.df[hit_rows, None])
        r, d = np.nonzero(p < self.cfg.keep_p)
        if r.size == 0:
            return
        rows = hit_rows[r]
        beta, se = st.beta_se(rows, d)
        self.hits.append(pd.DataFrame({
            **variant_columns(block.variants.iloc[rows]), "dim": d.astype(np.int64),
            "beta": beta, "se": se, "t": st.t[rows, d], "p": p[r, d]}))

    def _add_bins(self, bins: np.ndarray) -> None:
        offsets = np.arange(bins.shape[1], dtype=np.int64) * (T_HIST_BINS + 1)
        self._pending.append((bins + offsets[None, :]).ravel())
        self._n_pending += bins.size
        if self._n_pending >= self.hist.size:
            self.flush()

    def flush(self) -> None:
        """Add buffered bins to the histogram (one bincount per ~hist.size tests, not per chunk)."""
        if self._pending:
            idx = np.concatenate(self._pending)
            self.hist += np.bincount(idx, minlength=self.hist.size).reshape(self.hist.shape)
            self._pending, self._n_pending = [], 0
