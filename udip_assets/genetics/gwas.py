"""GWAS engine: every SNP x every phenotype column, ordinary least squares with covariates.

For SNP j and phenotype column k the model is ``y_k = a + C b + beta_jk g_j + e``: one linear
regression per (SNP, dim), as PLINK 2 ``--glm`` runs it, computed for a whole chunk of SNPs and all
dims at once (tensorqtl's scheme):

1. a :class:`Residualizer` (orthonormal basis Q of ``[1, C]``, computed once) projects the
   covariates out of the phenotypes; by the Frisch-Waugh-Lovell theorem the SNP's coefficient and
   t statistic in the full model equal those of the residualized SNP on the residualized phenotype;
2. per chunk, one matrix product ``G [Y_res | Q]`` gives ``<g, y_res>`` and ``Q'g`` for every SNP,
   hence ``<g_res, y_res>`` and ``<g_res, g_res>``; t, beta and se follow in closed form;
3. a SNP with missing calls is fitted on its called samples only (PLINK 2's rule) by an exact
   low-rank downdate of those sums (see :func:`_downdate_missing`), never by a refit;
4. p-value thresholds become |t| thresholds, so only hits (and each SNP's minimum) get p-values
   in the hot loop; hits are recomputed in float64 when the loop runs in float32;
5. the joint F test of all dims per SNP comes from the same sums (:mod:`.multivariate`).

The full summary statistics (every SNP x dim) stream to Parquet when a path is given. Plain
Python (numpy, scipy, torch for batched Cholesky, pyarrow): no Dagster.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.special as sps

from udip_assets.errors import CovariateError, SummaryStatsError, require_field
from udip_assets.genetics import multivariate as mv
from udip_assets.genetics.clump import MINP_COLUMNS
from udip_assets.genetics.genotype_stream import GenotypeChunk, GenotypeSource

MISSING_MODES = ("drop", "mean_impute")
DTYPES = ("float32", "float64")
HITS_COLUMNS = ("snp", "chrom", "pos_bp", "a1", "a2", "dim", "beta", "se", "t", "p")
SUMSTATS_COLUMNS = (*HITS_COLUMNS, "neg_log10_p")
_FLOAT_COLUMNS = ("beta", "se", "t", "p", "neg_log10_p")
CHI2_MEDIAN_1DF = float(sps.chdtri(1, 0.5))  # 0.4549364..., the median of chi2(1)
# |t| histogram for lambda GC: bins of width _T_HIST_MAX / _T_HIST_BINS, one overflow bin.
_T_HIST_BINS = 32_768
_T_HIST_MAX = 4.0
_LOG_SPACE_BELOW_P = 1e-280  # below this, -log10 p comes from a log-space continued fraction
_FLOAT32_SCREEN_MARGIN = 1e-4  # relative slack on |t| thresholds when screening in float32
_DOWNDATE_BATCH = 256  # SNPs with missing calls corrected together
_SHOW_IDS = 5


_require = partial(require_field, owner="GwasConfig")


@dataclass(frozen=True)
class GwasConfig:
    """Options of one association scan.

    Parameters
    ----------
    missing : {'drop', 'mean_impute'}
        Missing genotype calls: 'drop' fits each SNP on its called samples (PLINK 2 ``--glm``);
        'mean_impute' replaces them by the SNP's mean dosage over called samples.
    maf_min : float
        SNPs with minor allele frequency (over called samples) below this are not tested.
    call_rate_min : float
        SNPs called in fewer than this fraction of the samples are not tested.
    chunk_variants : int
        SNPs per chunk (memory ~ chunk_variants x n_samples x 12 bytes plus chunk x dims x 40).
    dtype : {'float32', 'float64'}
        Precision of the genotype matrix product; statistics are always float64 (see Notes).
    keep_p : float
        SNP x dim results with p below this are returned as ``hits``.
    threads : int or None
        Worker threads, each decoding and computing whole chunks with single-threaded BLAS;
        None = every CPU available to the process.
    multivariate : bool
        Also run the joint F test of all dims per SNP (``GwasResult.multivariate``).
    inverse_normal : bool
        Rank-based inverse-normal transform of each phenotype column before the scan.

    Notes
    -----
    With 'float32', the matrix product of the centred genotypes with ``[Y_res | Q]`` runs in
    float32 (relative error ~1e-6 on t, < 1e-4 in -log10 p up to |t| ~ 20), and every SNP with
    a hit (per dim, or joint p < keep_p) is recomputed in float64 from its dosages, so returned
    hits and small joint p are float64-exact. ``inverse_normal`` maps each column to
    ``ndtri((rank - 3/8) / (n + 1/4))`` (Blom, ties averaged) over the analysed samples, once,
    for both tests; with missing='drop' a SNP's called samples keep those values.
    """

    missing: str = "drop"
    maf_min: float = 0.01
    call_rate_min: float = 0.95
    chunk_variants: int = 2048
    dtype: str = "float32"
    keep_p: float = 1e-5
    threads: int | None = None
    multivariate: bool = True
    inverse_normal: bool = False

    def __post_init__(self) -> None:
        _require(self.missing in MISSING_MODES, "missing", f"one of {MISSING_MODES}", self.missing)
        _require(0 <= self.maf_min < 0.5, "maf_min", "in [0, 0.5)", self.maf_min)
        _require(0 <= self.call_rate_min <= 1, "call_rate_min", "in [0, 1]", self.call_rate_min)
        _require(isinstance(self.chunk_variants, int | np.integer) and self.chunk_variants >= 1,
                 "chunk_variants", "an integer >= 1", self.chunk_variants)
        _require(self.dtype in DTYPES, "dtype", f"one of {DTYPES}", self.dtype)
        _require(0 < self.keep_p <= 1, "keep_p", "in (0, 1]", self.keep_p)
        _require(self.threads is None or (isinstance(self.threads, int | np.integer) and self.threads >= 1),
                 "threads", "None or an integer >= 1", self.threads)
        for name in ("multivariate", "inverse_normal"):
            _require(isinstance(getattr(self, name), bool | np.bool_), name, "True or False", getattr(self, name))


@dataclass(frozen=True)
class GwasResult:
    """Outcome of :func:`scan_associations`.

    Attributes
    ----------
    minp : pd.DataFrame
        One row per tested SNP, columns ``clump.MINP_COLUMNS``: the smallest p over dims, its
        ``dim`` (0-based phenotype column), ``beta``, ``se``, and the SNP's ``maf``.
    hits : pd.DataFrame
        One row per SNP x dim with p < keep_p, columns ``HITS_COLUMNS``.
    lambda_gc : np.ndarray
        (n_dims,) genomic inflation per dim: median chi2(1) quantile of p over 0.4549.
    n_samples, n_variants, n_dims : int
        Samples used, SNPs tested, phenotype columns.
    n_skipped : dict
        SNPs not tested, by reason: 'maf', 'call_rate', 'monomorphic', 'singular' (covariates
        rank-deficient on the called samples), 'no_df'.
    dims : tuple of str
        Phenotype column names; ``dim`` indexes this tuple.
    covariates_used : tuple of str
        Covariate columns in the model (besides the intercept).
    covariates_dropped : dict
        Dropped covariate -> reason.
    seconds : float
        Wall time of the scan.
    t_histogram : np.ndarray
        (n_dims, n_bins + 1) counts of |t| (rescaled to ``df_ref``) used for ``lambda_gc``;
        summed by :func:`merge_results`.
    df_ref : int
        Residual degrees of freedom of a SNP called in every sample.
    config : GwasConfig
    multivariate : pd.DataFrame
        One row per tested SNP, ``multivariate.MULTIVARIATE_COLUMNS``: the joint F test of all dims
        (no rows when ``config.multivariate`` is False).
    """

    minp: pd.DataFrame
    hits: pd.DataFrame
    lambda_gc: np.ndarray
    n_samples: int
    n_variants: int
    n_dims: int
    n_skipped: dict
    dims: tuple[str, ...]
    covariates_used: tuple[str, ...]
    covariates_dropped: dict
    seconds: float
    t_histogram: np.ndarray = field(repr=False)
    df_ref: int = 0
    config: GwasConfig = field(default_factory=GwasConfig)
    multivariate: pd.DataFrame = field(default_factory=mv.empty_table, repr=False)

    def summary(self) -> dict:
        """JSON-ready counts, lambda GC range, covariates and options (no per-SNP rows)."""
        lam = self.lambda_gc[np.isfinite(self.lambda_gc)]
        return {"n_samples": self.n_samples, "n_variants": self.n_variants, "n_dims": self.n_dims,
                "n_skipped": dict(self.n_skipped), "n_hits": int(len(self.hits)),
                "lambda_gc_min": float(lam.min()) if lam.size else None,
                "lambda_gc_median": float(np.median(lam)) if lam.size else None,
                "lambda_gc_max": float(lam.max()) if lam.size else None,
                "covariates_used": list(self.covariates_used),
                "covariates_dropped": dict(self.covariates_dropped),
                "seconds": round(self.seconds, 3), "options": asdict(self.config),
                **mv.joint_counts(self.multivariate, self.config.keep_p)}


# --------------------------------------------------------------------------- p-values


def t_to_p(t: np.ndarray, df: np.ndarray | float) -> np.ndarray:
    """Two-sided p-value of Student t statistics, float64.

    Parameters
    ----------
    t : np.ndarray
        Any shape.
    df : np.ndarray or float
        Degrees of freedom, broadcastable to ``t``.

    Notes
    -----
    ``2 * stdtr(df, -|t|)`` (scipy's incomplete beta, accurate in the tail); values below
    ~1e-308 are subnormal or 0: use :func:`t_to_neg_log10_p` there.
    """
    t = np.asarray(t, dtype=np.float64)
    return 2.0 * sps.stdtr(df, -np.abs(t))


def p_to_abs_t(p: float | np.ndarray, df: float | np.ndarray) -> np.ndarray:
    """|t| whose two-sided p-value is ``p`` with ``df`` degrees of freedom."""
    return -sps.stdtrit(df, np.asarray(p, dtype=np.float64) / 2.0)


def _log_beta_cf(a: np.ndarray, b: float, x: np.ndarray, max_iter: int = 20_000) -> np.ndarray:
    """log of the continued fraction of I_x(a, b) (modified Lentz), vectorised; needs x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    c = np.ones_like(x)
    h = d.copy()
    active = np.ones(x.shape, dtype=bool)
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            step = d * c
            h = np.where(active, h * step, h)
        active &= np.abs(step - 1.0) > 1e-15
        if not active.any():
            break
    return np.log(h)


def t_to_neg_log10_p(t: np.ndarray, df: np.ndarray | float, p: np.ndarray | None = None) -> np.ndarray:
    """-log10 of the two-sided p-value, finite and accurate even where p underflows float64.

    ``p`` may pass ``t_to_p(t, df)`` when already computed.

    Notes
    -----
    The two-sided p is the regularized incomplete beta ``I_x(df/2, 1/2)`` with
    ``x = df / (df + t^2)``. Where ``2 stdtr`` falls below 1e-280 (or to 0), its logarithm is
    computed directly: ``a ln x + b ln(1-x) - ln a - ln B(a, b) + ln CF`` with the continued
    fraction CF of Numerical Recipes' ``betacf`` (converges because x is far below the mean of
    Beta(a, b) there). Checked against mpmath to 1e-10 relative.
    """
    t = np.abs(np.asarray(t, dtype=np.float64))
    df_b = np.broadcast_to(np.asarray(df, dtype=np.float64), t.shape)
    p = 2.0 * sps.stdtr(df_b, -t) if p is None else p
    with np.errstate(divide="ignore"):
        out = -np.log10(p)
    tail = (p < _LOG_SPACE_BELOW_P) & np.isfinite(t)
    if tail.any():
        nu, tt = df_b[tail], t[tail]
        a, b = nu / 2.0, 0.5
        log_x = -np.log1p(tt * tt / nu)
        log_1mx = 2.0 * np.log(tt) - np.log(nu + tt * tt)
        log_p = a * log_x + b * log_1mx - np.log(a) - sps.betaln(a, b) + _log_beta_cf(a, b, np.exp(log_x))
        out[tail] = -log_p / np.log(10.0)
    return out


_P_TABLE_STEP = 1.0 / 256  # grid step in |t| of the interpolation tables
_P_TABLE_MIN_P = 1e-250  # tables reach the |t| of this p (or _P_TABLE_MAX_T); beyond, the exact functions
_P_TABLE_MAX_T = 64.0


class _PValueTable:
    """ln p(|t|) of the two-sided t test for one df, on a uniform |t| grid, for cubic Hermite interpolation.

    Writing every SNP x dim to the sumstats needs p and -log10 p for millions of tests, and the
    incomplete beta behind them was the scan's largest cost. For a given df, ln p is a smooth
    function of |t| with a bounded fourth derivative, so cubic Hermite interpolation between exact
    values and exact derivatives (d ln p / dt = -2 pdf(t) / p) on a 1/256 grid is within ~1e-13 of
    the exact value (checked in the tests over df 5..1e6); |t| beyond the table (p < 1e-250 or
    |t| > 64) and
    non-finite values go to :func:`t_to_p` / :func:`t_to_neg_log10_p`.
    """

    def __init__(self, df: float) -> None:
        self.df = float(df)
        t_max = float(p_to_abs_t(_P_TABLE_MIN_P, self.df))
        self.t_max = min(t_max, _P_TABLE_MAX_T) if np.isfinite(t_max) and t_max > 0 else _P_TABLE_MAX_T
        n = int(np.ceil(self.t_max / _P_TABLE_STEP)) + 2
        t = np.arange(n) * _P_TABLE_STEP
        self.ln_p = -t_to_neg_log10_p(t, self.df) * np.log(10.0)
        nu = self.df
        log_pdf = (sps.gammaln((nu + 1) / 2) - sps.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
                   - (nu + 1) / 2 * np.log1p(t * t / nu))
        self.slope = -2.0 * np.exp(log_pdf - self.ln_p) * _P_TABLE_STEP  # derivative per grid step

    def __call__(self, t_abs: np.ndarray) -> np.ndarray:
        """ln p of finite ``t_abs`` (>= 0, < ``t_max``)."""
        x = t_abs * (1.0 / _P_TABLE_STEP)
        i = x.astype(np.int64)
        s = x - i
        s2 = s * s
        s3 = s2 * s
        h01 = 3.0 * s2 - 2.0 * s3
        return ((1.0 - h01) * self.ln_p[i] + h01 * self.ln_p[i + 1]
                + (s3 - 2.0 * s2 + s) * self.slope[i] + (s3 - s2) * self.slope[i + 1])


class _PValueTables:
    """:class:`_PValueTable` per df, built on first use (shared by the scan's worker threads)."""

    def __init__(self) -> None:
        self._tables: dict[float, _PValueTable] = {}
        self._lock = threading.Lock()

    def table(self, df: float) -> _PValueTable:
        found = self._tables.get(float(df))
        if found is None:
            with self._lock:
                found = self._tables.setdefault(float(df), _PValueTable(df))
        return found

    def p_and_neg_log10_p(self, t: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided p and -log10 p of ``t`` (v, P) with per-row ``df`` (v,), float64.

        Equal to ``t_to_p`` / ``t_to_neg_log10_p`` to ~1e-12 relative (exact outside the tables).
        """
        t_abs = np.abs(np.asarray(t, dtype=np.float64))
        ln_p = np.empty_like(t_abs)
        values, inverse = np.unique(df, return_inverse=True)
        for k, d in enumerate(values):
            rows = inverse == k
            block = t_abs if values.size == 1 else t_abs[rows]
            table = self.table(d)
            inside = block < table.t_max  # False for NaN and inf
            out = np.full(block.shape, np.nan)
            out[inside] = table(block[inside])
            if values.size == 1:
                ln_p = out
            else:
                ln_p[rows] = out
        exact = ~(ln_p == ln_p)  # NaN: beyond the tables or not finite
        p = np.exp(ln_p)
        neg_log10_p = ln_p * (-1.0 / np.log(10.0))
        if exact.any():
            rows, cols = np.nonzero(exact)
            df_e = np.asarray(df, dtype=np.float64)[rows]
            p[rows, cols] = t_to_p(t_abs[rows, cols], df_e)
            neg_log10_p[rows, cols] = t_to_neg_log10_p(t_abs[rows, cols], df_e, p[rows, cols])
        return p, neg_log10_p


# --------------------------------------------------------------------------- covariates


class Residualizer:
    """Orthonormal basis of the covariate space ``[1, C]``, computed once per scan.

    Parameters
    ----------
    covariates : pd.DataFrame
        (n_samples, k) numeric covariates without the intercept (added here).
    tol : float
        A column whose residual, after projecting out the intercept and the columns kept before
        it, is smaller than ``tol`` times its centred norm is dropped as collinear.

    Attributes
    ----------
    q : np.ndarray
        (n_samples, n_columns) float64 orthonormal basis; column 0 is the intercept direction.
    kept : tuple of str
        Covariates in the model, in input order.
    dropped : dict
        Dropped covariate -> reason ('constant', or 'collinear with ...').

    Raises
    ------
    CovariateError
        Non-finite values (naming columns and subjects), every covariate dropped, or no residual
        degrees of freedom left.

    Notes
    -----
    Columns enter one at a time by classical Gram-Schmidt with re-orthogonalisation (CGS2,
    accurate to machine precision like Householder QR); a constant column or one in the span of
    those before it is dropped with a warning that names it, so the fit stays full rank and the
    degrees of freedom count only the columns kept (df = n - n_columns - 1 for each SNP).
    """

    def __init__(self, covariates: pd.DataFrame, tol: float = 1e-6) -> None:
        x = _covariate_values(covariates)
        n = x.shape[0]
        basis = [np.full(n, 1.0 / np.sqrt(n))]
        kept, dropped = [], {}
        for j, name in enumerate(map(str, covariates.columns)):
            col = x[:, j]
            spread = np.linalg.norm(col - col.mean())
            if spread <= 1e-12 * max(np.abs(col).max(), 1.0) * np.sqrt(n):
                dropped[name] = "constant"
                continue
            q = np.column_stack(basis)
            resid = col - q @ (q.T @ col)
            resid -= q @ (q.T @ resid)
            norm = np.linalg.norm(resid)
            if norm <= tol * spread:
                dropped[name] = "collinear with " + _collinear_partners(col, x, covariates, kept)
                continue
            basis.append(resid / norm)
            kept.append(name)
        if covariates.shape[1] and not kept:
            raise CovariateError(f"every covariate column is constant or collinear ({dropped}); nothing "
                                 "sane remains to adjust for: fix the covariate table or pass none")
        self.q = np.column_stack(basis)
        self.kept, self.dropped = tuple(kept), dropped
        if n - self.n_columns - 1 < 1:
            raise CovariateError(f"{n} samples leave no residual degrees of freedom for {self.n_columns} "
                                 "model columns (intercept + covariates) and the SNP; add samples")
        if dropped:
            warnings.warn(f"covariates dropped before the GWAS: {dropped}", UserWarning, stacklevel=2)

    @property
    def n_columns(self) -> int:
        """Columns of the basis: intercept + kept covariates."""
        return int(self.q.shape[1])

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(n_samples, m) -> residuals after projecting out ``[1, C]``: ``x - Q (Q' x)``."""
        values = np.asarray(values, dtype=np.float64)
        return values - self.q @ (self.q.T @ values)

    def dof(self, n_obs: int | np.ndarray) -> int | np.ndarray:
        """Residual degrees of freedom of a SNP called in ``n_obs`` samples: n_obs - n_columns - 1."""
        return n_obs - self.n_columns - 1


def _covariate_values(covariates: pd.DataFrame) -> np.ndarray:
    try:
        x = covariates.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovariateError(f"covariates must be numeric (one-hot encode categories with "
                             f"genetics.design.design_matrix): {exc}") from exc
    bad = ~np.isfinite(x)
    if bad.any():
        cols = [str(c) for c in covariates.columns[bad.any(axis=0)]]
        subjects = [str(s) for s in covariates.index[bad.any(axis=1)]]
        raise CovariateError(f"covariate column(s) {cols} hold NaN or infinite values for {len(subjects)} "
                             f"subject(s) {_quote(subjects)}; impute them or drop those subjects")
    return x


def _collinear_partners(col: np.ndarray, x: np.ndarray, covariates: pd.DataFrame, kept: list[str]) -> str:
    """'intercept + a + b': the kept columns that reproduce ``col`` (least squares, |coef| above noise)."""
    if not kept:
        return "the intercept"
    idx = [list(map(str, covariates.columns)).index(k) for k in kept]
    design = np.column_stack([np.ones(len(col)), x[:, idx]])
    coef = np.linalg.lstsq(design, col, rcond=None)[0]
    scale = np.linalg.norm(design, axis=0) * np.abs(coef)
    noise = 1e-8 * np.linalg.norm(col)
    names = ["intercept"] if scale[0] > noise else []
    names += [k for k, s in zip(kept, scale[1:], strict=True) if s > noise]
    return " + ".join(names) or "the intercept"


def _quote(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(str(x)) for x in ids[:_SHOW_IDS])
    return f"[{shown}{', ...' if len(ids) > _SHOW_IDS else ''}]"


def _align_samples(genotypes: GenotypeSource, phenotypes: pd.DataFrame,
                   covariates: pd.DataFrame) -> tuple[GenotypeSource, np.ndarray, pd.DataFrame]:
    """Genotype source restricted to the phenotyped samples, phenotypes (n, P) and covariates, aligned by IID.

    Raises
    ------
    CovariateError
        Repeated IIDs, phenotyped IIDs without covariates, non-numeric or NaN phenotypes.
    GenotypeError
        Phenotyped IIDs absent from the genotype file (from ``select_samples``).
    """
    pheno = phenotypes.copy()
    pheno.index = pheno.index.astype(str)
    cov = covariates.copy()
    cov.index = cov.index.astype(str)
    for name, frame in (("phenotypes", pheno), ("covariates", cov)):
        if frame.index.has_duplicates:
            repeated = frame.index[frame.index.duplicated()].tolist()
            raise CovariateError(f"{name} repeat IID(s) {_quote(repeated)}; one row per sample")
    if pheno.shape[1] == 0 or pheno.shape[0] == 0:
        raise CovariateError(f"phenotypes has shape {pheno.shape}; expected samples x dims with both > 0")
    absent = pheno.index.difference(cov.index, sort=False).tolist()
    if absent:
        raise CovariateError(f"{len(absent)} of {len(pheno)} phenotyped IIDs have no covariate row: "
                             f"{_quote(absent)}; add them to the covariates or drop them from the phenotypes")
    try:
        y = pheno.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovariateError(f"phenotype columns must be numeric: {exc}") from exc
    bad = ~np.isfinite(y)
    if bad.any():
        cols = [str(c) for c in pheno.columns[bad.any(axis=0)]]
        subjects = pheno.index[bad.any(axis=1)].tolist()
        raise CovariateError(f"phenotype column(s) {_quote(cols)} hold NaN or infinite values for "
                             f"{len(subjects)} subject(s) {_quote(subjects)}; drop those subjects or impute")
    return genotypes.select_samples(pheno.index.tolist()), y, cov.loc[pheno.index]


# --------------------------------------------------------------------------- per-chunk algebra


@dataclass(frozen=True)
class _NullModel:
    """Everything about the samples that does not depend on the SNP.

    ``rhs`` is ``[Y_res | Q]`` (n, P + c) in the compute dtype; ``q_pad`` / ``y_pad`` are float64
    copies of Q and Y_res with an extra zero row, so padded missing-sample indices gather zeros.
    ``whitening`` is set when the joint test runs.
    """

    q: np.ndarray
    y_res: np.ndarray
    yy: np.ndarray
    rhs: np.ndarray
    rhs64: np.ndarray
    q_pad: np.ndarray
    y_pad: np.ndarray
    df_ref: int
    whitening: mv.Whitening | None = None

    @property
    def n_samples(self) -> int:
        return int(self.q.shape[0])

    @property
    def n_dims(self) -> int:
        return int(self.y_res.shape[1])


def _null_model(residualizer: Residualizer, y: np.ndarray, dims: Sequence[str], dtype: str,
                joint: bool = False) -> _NullModel:
    """Residualize the phenotypes once; refuse a phenotype with no variance left."""
    y_res = residualizer.transform(y)
    yy = np.einsum("ij,ij->j", y_res, y_res)
    scale = np.einsum("ij,ij->j", y - y.mean(axis=0), y - y.mean(axis=0))
    flat = np.flatnonzero(yy <= 1e-12 * np.maximum(scale, 1e-300))
    if flat.size:
        raise CovariateError(f"phenotype column(s) {_quote([dims[k] for k in flat])} are constant or fully "
                             "explained by the covariates; drop them before the GWAS")
    q = residualizer.q
    rhs64 = np.ascontiguousarray(np.hstack([y_res, q]))
    return _NullModel(q=q, y_res=y_res, yy=yy, rhs=rhs64.astype(dtype, copy=False), rhs64=rhs64,
                      q_pad=np.vstack([q, np.zeros((1, q.shape[1]))]),
                      y_pad=np.vstack([y_res, np.zeros((1, y.shape[1]))]),
                      df_ref=int(residualizer.dof(y.shape[0])),
                      whitening=mv.whiten(y_res, q.shape[1]) if joint else None)


@dataclass(frozen=True)
class _Block:
    """Centred genotypes of the SNPs of a chunk that pass the filters.

    g : (v, n) compute dtype, dosage minus the SNP's mean over called samples, 0 where missing;
    or, when ``offset`` is set (a chunk without missing calls), the raw dosage, whose centring
    ``g - offset`` is applied to the matrix product instead (one pass over the chunk fewer).
    gg0 : (v,) float64 sum of squares of the centred g. n_obs : (v,) called samples. maf : (v,).
    miss_rows : (v_m,) rows of g with missing calls (drop mode only); miss_idx : (v_m, m_max)
    their missing sample indices, padded with n_samples (the zero row of the padded matrices).
    rows : (v,) rows of the chunk; raw : the chunk's (n_chunk, n) float32 dosage (NaN missing).
    """

    variants: pd.DataFrame
    g: np.ndarray
    gg0: np.ndarray
    n_obs: np.ndarray
    maf: np.ndarray
    miss_rows: np.ndarray
    miss_idx: np.ndarray
    rows: np.ndarray
    raw: np.ndarray
    skipped: dict
    offset: np.ndarray | None = None


def _center_implicitly(raw: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A chunk without missing calls, left uncentred: (g = raw in ``dtype``, gg0, mean), else None.

    Dosages are small integers, so the row sums and sums of squares are exact (float32 sums of
    integers below 2^24, then float64), and so is ``gg0 = sum g^2 - n mean^2``. The product with
    the right-hand side is corrected by ``mean x colsum`` in :func:`_sums`.
    """
    total = raw.sum(axis=1)
    if np.isnan(total).any():  # any NaN in a row makes its sum NaN
        return None
    n = raw.shape[1]
    total = total.astype(np.float64)
    sq = np.einsum("ij,ij->i", raw, raw).astype(np.float64)
    mean = total / n
    gg0 = sq - total * mean
    g = raw if raw.dtype == np.dtype(dtype) else raw.astype(dtype)
    return g, gg0, mean


def _center(raw: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Centre dosages on each SNP's called samples.

    Parameters
    ----------
    raw : (v, n) float32 dosage, NaN = missing (left unchanged).
    dtype : compute dtype of the returned values.

    Returns
    -------
    g : (v, n) dosage minus the SNP's mean over called samples, 0 where missing.
    gg0 : (v,) float64 sum of squares of g. mean : (v,) float64 mean dosage over called samples.
    miss : (v, n) bool missing mask, or None when no call is missing.
    """
    miss = np.isnan(raw)
    n_miss = miss.sum(axis=1)
    has_miss = bool(n_miss.any())
    filled = np.where(miss, np.zeros((), raw.dtype), raw) if has_miss else raw
    mean = filled.sum(axis=1).astype(np.float64) / np.maximum(raw.shape[1] - n_miss, 1)
    g = np.subtract(filled, mean.astype(dtype)[:, None], dtype=dtype)
    if has_miss:
        np.copyto(g, 0, where=miss)
    gg0 = np.square(g).sum(axis=1).astype(np.float64)  # pairwise summation: relative error ~1e-7 in float32
    return g, gg0, mean, (miss if has_miss else None)


def _missing_index(miss: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with any missing call and their missing sample indices, padded with ``n_samples``."""
    rows = np.flatnonzero(miss.any(axis=1))
    if rows.size == 0:
        return rows, np.empty((0, 0), dtype=np.int64)
    r, c = np.nonzero(miss[rows])
    counts = np.bincount(r, minlength=rows.size)
    idx = np.full((rows.size, int(counts.max())), n_samples, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx[r, np.arange(r.size) - starts[r]] = c
    return rows, idx


def _prepare(chunk: GenotypeChunk, cfg: GwasConfig, n_columns: int) -> _Block:
    """Centre a chunk's SNPs and drop those failing the filters; runs on the prefetch thread.

    Notes
    -----
    MAF and call rate are computed over the analysed samples (called ones for MAF). A SNP with
    no variance over its called samples is 'monomorphic'; one whose called samples leave no
    residual degree of freedom is 'no_df'. Neither is tested.
    """
    raw = np.ascontiguousarray(chunk.dosage.T)  # (v, n)
    n = raw.shape[1]
    implicit = _center_implicitly(raw, cfg.dtype)
    if implicit is not None:
        g, gg0, mean = implicit
        miss = None
    else:
        g, gg0, mean, miss = _center(raw, cfg.dtype)
    n_obs = n - miss.sum(axis=1) if miss is not None else np.full(len(raw), n)
    maf = np.minimum(mean / 2.0, 1.0 - mean / 2.0)
    low_call = n_obs < cfg.call_rate_min * n
    low_maf = ~low_call & (maf < cfg.maf_min)
    n_fit = n_obs if cfg.missing == "drop" else np.full(len(raw), n)
    no_df = ~low_call & ~low_maf & (n_fit - n_columns - 1 < 1)
    flat = ~low_call & ~low_maf & ~no_df & ~(gg0 > 0)
    rows = np.flatnonzero(~(low_call | low_maf | no_df | flat))
    if rows.size < len(raw):
        g, gg0 = g[rows], gg0[rows]
        miss = miss[rows] if miss is not None else None
    if cfg.missing == "drop" and miss is not None:
        miss_rows, miss_idx = _missing_index(miss, n)
    else:
        miss_rows, miss_idx = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.int64)
    skipped = {"call_rate": int(low_call.sum()), "maf": int(low_maf.sum()), "no_df": int(no_df.sum()),
               "monomorphic": int(flat.sum())}
    return _Block(variants=chunk.variants.iloc[rows].reset_index(drop=True), g=g, gg0=gg0,
                  n_obs=n_obs[rows], maf=maf[rows], miss_rows=miss_rows, miss_idx=miss_idx, rows=rows,
                  raw=raw, skipped=skipped, offset=mean[rows] if implicit is not None else None)


@dataclass
class _Sums:
    """Per-SNP sufficient statistics on the called samples, float64.

    gy : (v, P) <g_res, y_res>; gg : (v,) <g_res, g_res>; yy : (v, P) or (P,) residual sum of
    squares of y; df : (v,) residual degrees of freedom; ok : (v,) testable (covariates full rank);
    r2 : (v,) the joint test's R2 (None when it is off).
    """

    gy: np.ndarray
    gg: np.ndarray
    yy: np.ndarray
    df: np.ndarray
    ok: np.ndarray
    r2: np.ndarray | None = None


def _sums(block: _Block, model: _NullModel, cfg: GwasConfig, rhs: np.ndarray) -> _Sums:
    """One matrix product for the chunk, then the exact per-SNP downdate for missing calls."""
    n_dims = model.n_dims
    prod = (block.g @ rhs).astype(np.float64)  # (v, P + c)
    if block.offset is not None:  # uncentred g: (g - mean)' rhs = g' rhs - mean 1' rhs
        prod -= block.offset[:, None] * rhs.sum(axis=0, dtype=np.float64)[None, :]
    gy = prod[:, :n_dims]
    u = prod[:, n_dims:]  # (v, c) = Q'g
    gg = block.gg0 - np.einsum("ij,ij->i", u, u)
    ok = np.ones(len(gg), dtype=bool)
    if cfg.missing == "drop":
        df = (block.n_obs - model.q.shape[1] - 1).astype(np.float64)
    else:
        df = np.full(len(gg), float(model.df_ref))
    r2 = mv.joint_r2(gy, gg, model.whitening) if model.whitening is not None else None
    if block.miss_rows.size == 0:
        return _Sums(gy=gy, gg=gg, yy=model.yy, df=df, ok=ok, r2=r2)
    yy = np.repeat(model.yy[None, :], len(gg), axis=0)
    for s in range(0, block.miss_rows.size, _DOWNDATE_BATCH):
        rows = block.miss_rows[s:s + _DOWNDATE_BATCH]
        gg_r, gy_r, yy_r, ok_r, r2_r = _downdate_missing(block.miss_idx[s:s + _DOWNDATE_BATCH], u[rows],
                                                         gy[rows], block.gg0[rows], model)
        gg[rows], gy[rows], yy[rows], ok[rows] = gg_r, gy_r, yy_r, ok_r
        if r2 is not None:
            r2[rows] = r2_r
    return _Sums(gy=gy, gg=gg, yy=yy, df=df, ok=ok, r2=r2)


def _downdate_missing(idx: np.ndarray, u: np.ndarray, gy: np.ndarray, gg0: np.ndarray,
                      model: _NullModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Sufficient statistics of SNPs refitted on their called samples, from the full-sample sums.

    Parameters
    ----------
    idx : (b, m) missing sample indices per SNP, padded with n (a zero row).
    u : (b, c) Q'g; gy : (b, P) <g, y_res>; gg0 : (b,) <g, g>, with g = 0 at missing samples.

    Returns
    -------
    gg, gy, yy, ok : (b,), (b, P), (b, P), (b,) sums over the called samples K.
    r2 : (b,) the joint test's R2 on K (``multivariate.joint_r2_missing``), None when it is off.

    Notes
    -----
    With W = Q_M (the basis rows of the missing samples), the basis restricted to K has Gram matrix
    S = Q_K'Q_K = I - W'W (a rank-m downdate), Q_K'g_K = u (g is 0 on M) and Q_K'y_K = -W'y_M
    (Q'Y_res = 0). Projecting span(Q_K) out on K gives, with L = chol(S) and B = W'y_M:
    ``gg_K = g'g - |L^-1 u|^2``, ``gy_K = g'y + (L^-1 u)'(L^-1 B)``,
    ``yy_K = y'y - |y_M|^2 - |L^-1 B|^2`` (column-wise). Since the intercept is in Q, centring g
    on K does not change these, so they equal OLS on the called samples exactly. A SNP whose
    missing samples leave the covariates rank-deficient (Cholesky fails) is flagged not ``ok``.
    """
    torch = _torch()
    w = torch.from_numpy(model.q_pad[idx])  # (b, m, c)
    y_m = torch.from_numpy(model.y_pad[idx])  # (b, m, P)
    eye = torch.eye(w.shape[2], dtype=w.dtype)
    chol, info = torch.linalg.cholesky_ex(eye - w.transpose(1, 2) @ w)
    ok = (info == 0).numpy()
    chol[~torch.from_numpy(ok)] = eye
    rhs = torch.cat([torch.from_numpy(u)[:, :, None], w.transpose(1, 2) @ y_m], dim=2)  # (b, c, 1 + P)
    z = torch.linalg.solve_triangular(chol, rhs, upper=False)
    zu, zb = z[:, :, 0], z[:, :, 1:]
    gg = gg0 - (zu * zu).sum(dim=1).numpy()
    gy_k = gy + torch.einsum("bc,bcp->bp", zu, zb).numpy()
    yy = model.yy[None, :] - (y_m * y_m).sum(dim=1).numpy() - (zb * zb).sum(dim=1).numpy()
    r2 = None if model.whitening is None else mv.joint_r2_missing(idx, zb, gy_k, gg, model.whitening)
    return gg, gy_k, yy, ok, r2


@dataclass
class _Stats:
    """Statistics of the testable SNPs of a chunk, float64.

    t : (v, P). beta = gy / gg and se = sqrt(resid / df) / gg, with gy (v, P), gg (v,),
    resid = gg * yy - gy^2 (v, P) and df (v,). ``bins`` (v, P) is each test's |t| histogram
    bin; ``full`` holds (v, P) beta, se, p and neg_log10_p when full statistics are written;
    ``r2`` (v,) is the joint test's R2 (None when it is off).
    """

    t: np.ndarray
    gy: np.ndarray
    gg: np.ndarray
    resid: np.ndarray
    df: np.ndarray
    bins: np.ndarray | None = None
    full: dict | None = None
    r2: np.ndarray | None = None

    def beta_se(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """beta and se of the (rows[i], cols[i]) pairs."""
        gg = self.gg[rows]
        return self.gy[rows, cols] / gg, np.sqrt(self.resid[rows, cols] / self.df[rows]) / gg

    def full_columns(self, tables: _PValueTables | None = None) -> dict:
        """(v, P) beta, se, p and -log10 p of every test (p through ``tables`` when given)."""
        gg, df = self.gg[:, None], self.df[:, None]
        if tables is None:
            p = t_to_p(self.t, df)
            neg_log10_p = t_to_neg_log10_p(self.t, df, p)
        else:
            p, neg_log10_p = tables.p_and_neg_log10_p(self.t, self.df)
        return {"beta": self.gy / gg, "se": np.sqrt(self.resid / df) / gg, "p": p, "neg_log10_p": neg_log10_p}

    def replace_rows(self, rows: np.ndarray, exact: _Stats) -> None:
        """Overwrite ``rows`` with ``exact`` (same SNPs recomputed), derived arrays included."""
        for name in ("t", "gy", "gg", "resid"):
            getattr(self, name)[rows] = getattr(exact, name)
        if self.r2 is not None and exact.r2 is not None:
            self.r2[rows] = exact.r2
        if self.bins is not None and exact.bins is not None:
            self.bins[rows] = exact.bins
        if self.full is not None:
            for name, values in exact.full_columns().items():
                self.full[name][rows] = values


def _statistics(s: _Sums) -> _Stats:
    """t = <g,y> sqrt(df) / sqrt(<g,g><y,y> - <g,y>^2), the OLS t of the SNP (Frisch-Waugh-Lovell)."""
    yy = s.yy if s.yy.ndim == 2 else s.yy[None, :]
    resid = np.maximum(s.gg[:, None] * yy - s.gy * s.gy, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = s.gy * np.sqrt(s.df)[:, None] / np.sqrt(resid)
    return _Stats(t=t, gy=s.gy, gg=s.gg, resid=resid, df=s.df, r2=s.r2)


def _refine(block: _Block, rows: np.ndarray, model: _NullModel, cfg: GwasConfig) -> _Stats:
    """Recompute SNPs ``rows`` of a block in float64 from their dosages (exact hits in float32 runs)."""
    g, gg0, _, miss = _center(block.raw[block.rows[rows]], "float64")
    if cfg.missing == "drop" and miss is not None:
        miss_rows, miss_idx = _missing_index(miss, model.n_samples)
    else:
        miss_rows, miss_idx = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.int64)
    sub = _Block(variants=block.variants.iloc[rows], g=g, gg0=gg0, n_obs=block.n_obs[rows],
                 maf=block.maf[rows], miss_rows=miss_rows, miss_idx=miss_idx, rows=block.rows[rows],
                 raw=block.raw, skipped={})
    return _statistics(_sums(sub, model, cfg, model.rhs64))


def _drop_rows(block: _Block, sums: _Sums, keep: np.ndarray) -> tuple[_Block, _Sums]:
    """Block and sums restricted to rows ``keep`` (SNPs that could be tested)."""
    yy = sums.yy[keep] if sums.yy.ndim == 2 else sums.yy
    sums = _Sums(gy=sums.gy[keep], gg=sums.gg[keep], yy=yy, df=sums.df[keep], ok=sums.ok[keep],
                 r2=sums.r2[keep] if sums.r2 is not None else None)
    offset = block.offset[keep] if block.offset is not None else None
    block = _Block(variants=block.variants.iloc[keep].reset_index(drop=True), g=block.g[keep], offset=offset,
                   gg0=block.gg0[keep], n_obs=block.n_obs[keep], maf=block.maf[keep],
                   miss_rows=np.empty(0, np.int64), miss_idx=np.empty((0, 0), np.int64),
                   rows=block.rows[keep], raw=block.raw, skipped=block.skipped)
    return block, sums


def _per_df(df: np.ndarray, cache: dict, fn: Callable[[float], float]) -> np.ndarray:
    """fn(df) per SNP, evaluated once per distinct df (``cache`` maps df -> value)."""
    values, inverse = np.unique(df, return_inverse=True)
    for d in values:
        if float(d) not in cache:
            cache[float(d)] = float(fn(float(d)))
    return np.array([cache[float(d)] for d in values])[inverse]


class _Binner:
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
        binned = np.abs(t) * (scale * (_T_HIST_BINS / _T_HIST_MAX))[:, None]
        np.nan_to_num(binned, copy=False, nan=_T_HIST_BINS, posinf=_T_HIST_BINS)
        return np.minimum(binned, _T_HIST_BINS).astype(np.int64)


# --------------------------------------------------------------------------- accumulation


def _variant_columns(v: pd.DataFrame) -> dict:
    return {"snp": v["snp"].to_numpy(), "chrom": v["chrom"].to_numpy(),
            "pos_bp": v["pos_bp"].to_numpy(np.int64), "a1": v["a1"].to_numpy(), "a2": v["a2"].to_numpy()}


class _Accumulator:
    """minP rows, hits and the |t| histogram, gathered chunk by chunk (memory ~ n_SNPs rows)."""

    def __init__(self, model: _NullModel, cfg: GwasConfig, binner: _Binner) -> None:
        self.model, self.cfg, self.binner = model, cfg, binner
        self.minp: list[pd.DataFrame] = []
        self.hits: list[pd.DataFrame] = []
        self.multivariate: list[pd.DataFrame] = []
        self.hist = np.zeros((model.n_dims, _T_HIST_BINS + 1), dtype=np.int64)
        self.skipped = {"call_rate": 0, "maf": 0, "monomorphic": 0, "no_df": 0, "singular": 0}
        self.n_tested = 0
        self._t_keep: dict[float, float] = {}
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def add(self, block: _Block, st: _Stats, n_singular: int) -> None:
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
            exact = _refine(block, hit_rows, self.model, self.cfg)
            exact.bins = self.binner.bins(exact.t, exact.df)
            st.replace_rows(hit_rows, exact)
        self._add_minp(block, st)
        self._add_hits(block, st, hit_rows)
        if whitening is not None:
            self.multivariate.append(mv.joint_table(_variant_columns(block.variants), st.r2, st.df, whitening))
        self._add_bins(st.bins)
        self.n_tested += st.t.shape[0]

    def _add_minp(self, block: _Block, st: _Stats) -> None:
        """For one SNP every dim has the same df, so the smallest p is at the largest |t|."""
        abs_t = np.abs(st.t)
        best = np.argmax(np.nan_to_num(abs_t, nan=-1.0), axis=1)
        rows = np.arange(len(best))
        beta, se = st.beta_se(rows, best)
        self.minp.append(pd.DataFrame({
            **_variant_columns(block.variants), "p": t_to_p(abs_t[rows, best], st.df),
            "dim": best.astype(np.int64), "beta": beta, "se": se, "maf": block.maf}))

    def _add_hits(self, block: _Block, st: _Stats, hit_rows: np.ndarray) -> None:
        if hit_rows.size == 0:
            return
        p = t_to_p(st.t[hit_rows], st.df[hit_rows, None])
        r, d = np.nonzero(p < self.cfg.keep_p)
        if r.size == 0:
            return
        rows = hit_rows[r]
        beta, se = st.beta_se(rows, d)
        self.hits.append(pd.DataFrame({
            **_variant_columns(block.variants.iloc[rows]), "dim": d.astype(np.int64),
            "beta": beta, "se": se, "t": st.t[rows, d], "p": p[r, d]}))

    def _add_bins(self, bins: np.ndarray) -> None:
        offsets = np.arange(bins.shape[1], dtype=np.int64) * (_T_HIST_BINS + 1)
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
    width = _T_HIST_MAX / _T_HIST_BINS
    for k, counts in enumerate(hist):
        total = int(counts.sum())
        if total == 0:
            continue
        cum = np.cumsum(counts)
        values = []
        for rank in {(total + 1) // 2, (total + 2) // 2}:  # 1-based middle order statistic(s)
            b = int(np.searchsorted(cum, rank))
            if b >= _T_HIST_BINS:
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


# --------------------------------------------------------------------------- Parquet output


class _SumstatsWriter:
    """Streams every SNP x dim row to ``path`` (Parquet, zstd) on a thread; atomic on success.

    Rows go to ``path``.tmp and are renamed to ``path`` only when the scan completes, so a failed
    run leaves nothing half-written (an older complete file at ``path`` stays until replaced).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.path is not None

    def __enter__(self) -> _SumstatsWriter:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(self.path.name + ".tmp")
            self._thread = threading.Thread(target=self._run, name="sumstats-writer", daemon=True)
            self._thread.start()
        return self

    def put(self, variants: pd.DataFrame, st: _Stats) -> None:
        """Queue one chunk (its ``st.full`` must be filled)."""
        if self._thread is None:
            return
        if self._error is not None:
            raise SummaryStatsError(f"writing {self._tmp} failed: {self._error}") from self._error
        self._queue.put((variants, st))

    def _run(self) -> None:
        import pyarrow.parquet as pq

        writer = None
        try:
            writer = pq.ParquetWriter(
                self._tmp, _sumstats_schema(), compression="zstd", compression_level=1,
                use_dictionary=["snp", "chrom", "a1", "a2"],
                write_statistics=["snp", "chrom", "pos_bp", "dim"],
                column_encoding={c: "BYTE_STREAM_SPLIT" for c in _FLOAT_COLUMNS})
            while (item := self._queue.get()) is not None:
                writer.write_table(_sumstats_table(*item))
        except BaseException as exc:  # noqa: BLE001 - reported by put() / __exit__
            self._error = exc
            while self._queue.get() is not None:
                pass
        finally:
            if writer is not None:
                writer.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is None:
            os.replace(self._tmp, self.path)
            return
        self._tmp.unlink(missing_ok=True)
        if exc_type is None:
            raise SummaryStatsError(f"writing {self._tmp} failed: {self._error}") from self._error


def _sumstats_schema():
    import pyarrow as pa

    text = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([("snp", text), ("chrom", text), ("pos_bp", pa.int64()), ("a1", text), ("a2", text),
                      ("dim", pa.int32()), *((c, pa.float64()) for c in _FLOAT_COLUMNS)])


def _sumstats_table(variants: pd.DataFrame, st: _Stats):
    """SNP-major rows (SNP 0 dims 0..P-1, SNP 1 ...) of one chunk as an Arrow table."""
    import pyarrow as pa

    v, n_dims = st.t.shape
    snp_index = pa.array(np.repeat(np.arange(v, dtype=np.int32), n_dims))

    def text(col: str):
        return pa.DictionaryArray.from_arrays(snp_index, pa.array(variants[col].astype(str).to_numpy()))

    columns = {"snp": text("snp"), "chrom": text("chrom"),
               "pos_bp": pa.array(np.repeat(variants["pos_bp"].to_numpy(np.int64), n_dims)),
               "a1": text("a1"), "a2": text("a2"),
               "dim": pa.array(np.tile(np.arange(n_dims, dtype=np.int32), v)),
               "t": pa.array(st.t.ravel())}
    columns.update({name: pa.array(values.ravel()) for name, values in st.full.items()})
    return pa.table({name: columns[name] for name in SUMSTATS_COLUMNS}, schema=_sumstats_schema())


# --------------------------------------------------------------------------- the scan


def _torch():
    """torch (batched Cholesky for SNPs with missing calls), imported on first use: importing it costs
    ~1.5 s, which a scan of complete genotypes never pays. Its intra-op threads are set to 1, as
    the scan's own workers are the parallelism; :func:`_single_threaded_blas` restores them."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return torch


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS (threadpoolctl) and torch intra-op threads set to 1 for the scan, then restored.

    The scan parallelises over chunks instead: each worker thread runs its own matrix products,
    which on few cores beats multi-threaded BLAS competing with the decoding threads.
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    # torch's default when it is first imported during the scan (one thread per usable core)
    before = torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        if (torch := sys.modules.get("torch")) is not None:
            torch.set_num_threads(before)


def _chunk_statistics(source: GenotypeSource, bounds: tuple[int, int], model: _NullModel, cfg: GwasConfig,
                      n_columns: int, binner: _Binner, full: bool,
                      tables: _PValueTables | None = None) -> tuple[_Block, _Stats, int]:
    """Worker: decode, filter and centre one chunk, one matrix product, statistics (+ full columns)."""
    block = _prepare(source.read_chunk(*bounds), cfg, n_columns)
    sums = _sums(block, model, cfg, model.rhs)
    n_singular = int((~sums.ok).sum())
    if n_singular:  # covariates rank-deficient on a SNP's called samples: not testable
        block, sums = _drop_rows(block, sums, np.flatnonzero(sums.ok))
    st = _statistics(sums)
    st.bins = binner.bins(st.t, st.df)
    if full:
        st.full = st.full_columns(tables)
    return block, st, n_singular


def _in_order(pool: ThreadPoolExecutor, work: Callable, items: Sequence, ahead: int) -> Iterator:
    """Results of ``work(item)`` in item order, keeping at most ``ahead`` items in flight."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _n_workers(threads: int | None) -> int:
    if threads is not None:
        return int(threads)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def scan_associations(genotypes: GenotypeSource, phenotypes: pd.DataFrame, covariates: pd.DataFrame,
                      config: GwasConfig | None = None, sumstats_path: Path | str | None = None,
                      progress: Callable[[int], None] | None = None) -> GwasResult:
    """Linear regression of every phenotype column on every SNP of ``genotypes``, with covariates.

    Parameters
    ----------
    genotypes : GenotypeSource
        SNPs to test (e.g. one chromosome of a PLINK fileset); its samples are matched by IID.
    phenotypes : pd.DataFrame
        (n_samples, n_dims) numeric, index = IID; no NaN.
    covariates : pd.DataFrame
        (>= n_samples rows, k) numeric, index = IID, without intercept; rows of IIDs not in
        ``phenotypes`` are ignored.
    config : GwasConfig, optional
        Missing-call handling, filters, chunking, precision, keep threshold, threads.
    sumstats_path : Path, optional
        Write every SNP x dim (``SUMSTATS_COLUMNS``) to this Parquet file (zstd), atomically.
    progress : callable, optional
        Called with the number of SNPs read after each chunk (e.g. ``tqdm.update``).

    Returns
    -------
    GwasResult
        minP per SNP, hits (p < keep_p), lambda GC per dim, counts and timing.

    Raises
    ------
    CovariateError, GenotypeError
        Mismatched or unusable samples (the message lists them), NaN phenotypes, degenerate
        covariates.

    Notes
    -----
    Exact OLS per SNP x dim (Frisch-Waugh-Lovell), df = n_called - (1 + n_covariates) - 1,
    two-sided p from Student's t in float64. For one SNP all dims share df, so the minimum p
    over dims is the p of the largest |t|. Chunks are decoded and computed by ``threads``
    workers (single-threaded BLAS each) and folded in SNP order; memory is bounded by
    (threads + 2) chunks plus one minP row per SNP, whatever the number of SNPs. The joint F
    test of all dims per SNP (``config.multivariate``) is described in :mod:`.multivariate`.
    """
    cfg = config or GwasConfig()
    started = time.perf_counter()
    source, y, cov = _align_samples(genotypes, phenotypes, covariates)
    y = mv.inverse_normal_transform(y) if cfg.inverse_normal else y
    residualizer = Residualizer(cov)
    dims = tuple(map(str, phenotypes.columns))
    model = _null_model(residualizer, y, dims, cfg.dtype, joint=cfg.multivariate)
    binner = _Binner(model.df_ref)
    acc = _Accumulator(model, cfg, binner)
    n_workers = _n_workers(cfg.threads)
    bounds = [(s, min(s + cfg.chunk_variants, source.n_variants))
              for s in range(0, source.n_variants, cfg.chunk_variants)]
    with _SumstatsWriter(sumstats_path) as writer, _single_threaded_blas(), \
            ThreadPoolExecutor(n_workers, thread_name_prefix="gwas") as pool:
        work = partial(_chunk_statistics, source, model=model, cfg=cfg, n_columns=residualizer.n_columns,
                       binner=binner, full=writer.active, tables=_PValueTables())
        results = _in_order(pool, work, bounds, n_workers + 1)
        for (start, stop), (block, st, n_singular) in zip(bounds, results, strict=True):
            acc.add(block, st, n_singular)
            writer.put(block.variants, st)
            if progress is not None:
                progress(stop - start)
    return _result(acc, source, residualizer, dims, cfg, time.perf_counter() - started)


def _result(acc: _Accumulator, source: GenotypeSource, residualizer: Residualizer, dims: tuple[str, ...],
            cfg: GwasConfig, seconds: float) -> GwasResult:
    minp = pd.concat(acc.minp, ignore_index=True) if acc.minp else pd.DataFrame(
        {c: pd.Series(dtype=float if c in ("p", "beta", "se", "maf") else object) for c in MINP_COLUMNS})
    hits = pd.concat(acc.hits, ignore_index=True) if acc.hits else pd.DataFrame(
        {c: pd.Series(dtype=float if c in ("beta", "se", "t", "p") else object) for c in HITS_COLUMNS})
    acc.flush()
    joint = pd.concat(acc.multivariate, ignore_index=True) if acc.multivariate else mv.empty_table()
    return GwasResult(
        minp=minp.loc[:, list(MINP_COLUMNS)], hits=hits.loc[:, list(HITS_COLUMNS)],
        lambda_gc=lambda_from_histogram(acc.hist, acc.model.df_ref), n_samples=source.n_samples,
        n_variants=acc.n_tested, n_dims=len(dims), n_skipped=dict(acc.skipped), dims=dims,
        covariates_used=residualizer.kept, covariates_dropped=dict(residualizer.dropped), seconds=seconds,
        t_histogram=acc.hist, df_ref=acc.model.df_ref, config=cfg, multivariate=joint)


FUMA_COLUMNS = {"snp": "SNP", "chrom": "CHR", "pos_bp": "BP", "a1": "A1", "a2": "A2", "p": "P", "dim": "dim",
                "beta": "BETA", "se": "SE"}


def fuma_minp_table(minp: pd.DataFrame) -> pd.DataFrame:
    """A minP table in FUMA's upload columns (SNP, CHR, BP, A1, A2, P), plus the dim, beta and SE of the minimum."""
    return minp.loc[:, list(FUMA_COLUMNS)].rename(columns=FUMA_COLUMNS)


def merge_results(results: Sequence[GwasResult]) -> GwasResult:
    """One result from scans of disjoint SNP sets (e.g. chromosomes) on the same samples and model.

    minP, hits and the joint tests are concatenated, counts and |t| histograms summed, lambda GC
    recomputed genome-wide, seconds summed.
    """
    if not results:
        raise SummaryStatsError("merge_results got no results; scan at least one chromosome")
    first = results[0]
    if any(r.df_ref != first.df_ref or r.dims != first.dims for r in results):
        raise SummaryStatsError("merge_results needs scans of the same samples, covariates and dims "
                                "(df_ref and dims differ); merge per model only")
    hist = np.sum([r.t_histogram for r in results], axis=0)
    skipped = {k: sum(r.n_skipped.get(k, 0) for r in results) for k in first.n_skipped}
    return GwasResult(
        minp=pd.concat([r.minp for r in results], ignore_index=True),
        hits=pd.concat([r.hits for r in results], ignore_index=True),
        lambda_gc=lambda_from_histogram(hist, first.df_ref), n_samples=first.n_samples,
        n_variants=sum(r.n_variants for r in results), n_dims=first.n_dims, n_skipped=skipped,
        dims=first.dims,
        covariates_used=first.covariates_used, covariates_dropped=first.covariates_dropped,
        seconds=sum(r.seconds for r in results), t_histogram=hist, df_ref=first.df_ref, config=first.config,
        multivariate=pd.concat([r.multivariate for r in results if len(r.multivariate)] or [first.multivariate],
                               ignore_index=True))
