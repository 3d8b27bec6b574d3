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
   low-rank downdate of those sums (see ``ols_kernel._downdate_missing``), never by a refit;
4. p-value thresholds become |t| thresholds, so only hits (and each SNP's minimum) get p-values
   in the hot loop; hits are recomputed in float64 when the loop runs in float32;
5. the joint F test of all dims per SNP comes from the same sums (:mod:`.multivariate`).

The full summary statistics (every SNP x dim) stream to Parquet when a path is given. Plain
Python (numpy, scipy, torch for batched Cholesky, pyarrow): no Dagster.

This module is the scan's entry and mapping loop; its parts live in
:mod:`.residualize` (sample alignment, covariates, null model), :mod:`.ols_kernel` (centring,
missing-call downdate, statistics), :mod:`.accumulate` (minP, hits, |t| histogram),
:mod:`.pvalues` (t -> p), :mod:`.gwas_tables` (columns, lambda GC, FUMA table) and
:mod:`.sumstats_io` (Parquet output). The public names callers use are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.errors import SummaryStatsError, UdipConfigError, require_field
from udip_assets.genetics import multivariate as mv
from udip_assets.genetics.accumulate import Accumulator, Binner
from udip_assets.genetics.clump import MINP_COLUMNS
from udip_assets.genetics.genotype_stream import GenotypeSource
from udip_assets.genetics.gwas_tables import (
    CHI2_MEDIAN_1DF,
    FUMA_COLUMNS,
    HITS_COLUMNS,
    SUMSTATS_COLUMNS,
    empty_hits_table,
    empty_minp_table,
    fuma_minp_table,
    lambda_from_histogram,
)
from udip_assets.genetics.ols_kernel import (
    Block,
    DeviceProduct,
    Stats,
    chunk_sums,
    drop_rows,
    prepare_block,
    statistics,
)
from udip_assets.genetics.pvalues import PValueTables, p_to_abs_t, t_to_neg_log10_p, t_to_p
from udip_assets.genetics.residualize import NullModel, Residualizer, align_samples, null_model
from udip_assets.genetics.sumstats_io import SumstatsWriter

__all__ = [
    "CHI2_MEDIAN_1DF", "DTYPES", "FUMA_COLUMNS", "HITS_COLUMNS", "MISSING_MODES", "SUMSTATS_COLUMNS",
    "GwasConfig", "GwasResult", "Residualizer", "fuma_minp_table", "lambda_from_histogram", "merge_results",
    "p_to_abs_t", "scan_associations", "scan_phenotype_sets", "t_to_neg_log10_p", "t_to_p",
]

MISSING_MODES = ("drop", "mean_impute")
DTYPES = ("float32", "float64")

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
    device : str
        Where the genotype x ``[Y_res | Q]`` product runs: 'cpu' (numpy BLAS) or a torch CUDA
        device ('cuda', 'cuda:1'), in ``dtype``; decoding, statistics, p-values and the float64
        refits of hits stay on the CPU either way, so results equal the CPU path's to float32
        rounding of the product.

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
    device: str = "cpu"

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
        _require(isinstance(self.device, str) and (self.device == "cpu" or self.device.split(":")[0] == "cuda"),
                 "device", "'cpu' or a CUDA device ('cuda', 'cuda:0', ...)", self.device)
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


def _chunk_statistics(source: GenotypeSource, bounds: tuple[int, int], model: NullModel, cfg: GwasConfig,
                      n_columns: int, binner: Binner, full: bool, tables: PValueTables | None = None,
                      product: DeviceProduct | None = None) -> tuple[Block, Stats, int]:
    """Worker: decode, filter and centre one chunk, one matrix product, statistics (+ full columns)."""
    block = prepare_block(source.read_chunk(*bounds), cfg, n_columns)
    sums = chunk_sums(block, model, cfg, model.rhs, product)
    n_singular = int((~sums.ok).sum())
    if n_singular:  # covariates rank-deficient on a SNP's called samples: not testable
        block, sums = drop_rows(block, sums, np.flatnonzero(sums.ok))
    st = statistics(sums)
    st.bins = binner.bins(st.t, st.df)
    if full:
        st.full = st.full_columns(tables)
    return block, st, n_singular


def device_product(rhs: np.ndarray, device: str) -> DeviceProduct | None:
    """The product on ``device`` (None for 'cpu', numpy's BLAS); a missing CUDA device is named."""
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        raise UdipConfigError(f"GwasConfig.device is {device!r} but torch sees no CUDA device "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                              "run on a GPU node or use device='cpu'")
    return DeviceProduct(rhs, device)


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
    acc, source, residualizer, dims = _scan(genotypes, phenotypes, covariates, cfg, sumstats_path, progress)
    return _result(acc, source, residualizer, dims, cfg, time.perf_counter() - started)


def scan_phenotype_sets(genotypes: GenotypeSource, phenotype_sets: Mapping[str, pd.DataFrame],
                        covariates: pd.DataFrame, config: GwasConfig | None = None,
                        progress: Callable[[int], None] | None = None) -> dict[str, GwasResult]:
    """Several phenotype matrices of the same samples in one pass over the genotypes.

    What the checkpoint sweep needs: the UDIPs of every swept checkpoint, tested against every
    SNP with each genotype chunk decoded and centred once and one wider matrix product
    ``G [Y_1 | ... | Y_K | Q]``. Each set's result is the one :func:`scan_associations` gives
    for it alone (its own minP, hits, lambda GC and dims); the joint test is not run
    (``config.multivariate`` is ignored: it would need one whitening per set).

    Parameters
    ----------
    phenotype_sets : mapping of name -> DataFrame
        Each (n_samples, P_k), indexed by the same IIDs in the same order.

    Returns
    -------
    dict of name -> GwasResult
        ``seconds`` is the shared pass's wall time.
    """
    cfg = replace(config or GwasConfig(), multivariate=False)
    frames = list(phenotype_sets.values())
    if not frames:
        raise SummaryStatsError("scan_phenotype_sets got no phenotype sets")
    for name, frame in phenotype_sets.items():
        if not frame.index.equals(frames[0].index):
            raise SummaryStatsError(f"phenotype set {name!r} has other samples (or another order) than "
                                    f"{next(iter(phenotype_sets))!r}; the sets must share one IID index")
    bounds = np.cumsum([0, *(f.shape[1] for f in frames)])
    groups = tuple((int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
    wide = pd.concat([f.set_axis([f"{k}\t{c}" for c in f.columns], axis=1) for k, f in phenotype_sets.items()],
                     axis=1)
    started = time.perf_counter()
    acc, source, residualizer, _ = _scan(genotypes, wide, covariates, cfg, None, progress, groups)
    seconds = time.perf_counter() - started
    hits = pd.concat(acc.hits, ignore_index=True) if acc.hits else empty_hits_table()
    acc.flush()
    out = {}
    for g, (name, frame) in enumerate(phenotype_sets.items()):
        lo, hi = groups[g]
        acc_minp = acc.minp_by_group[g]
        minp = pd.concat(acc_minp, ignore_index=True) if acc_minp else empty_minp_table()
        own = hits[(hits["dim"] >= lo) & (hits["dim"] < hi)].assign(dim=lambda h, lo=lo: h["dim"] - lo)
        hist = acc.hist[lo:hi]
        out[name] = GwasResult(
            minp=minp.loc[:, list(MINP_COLUMNS)], hits=own.loc[:, list(HITS_COLUMNS)].reset_index(drop=True),
            lambda_gc=lambda_from_histogram(hist, acc.model.df_ref), n_samples=source.n_samples,
            n_variants=acc.n_tested, n_dims=hi - lo, n_skipped=dict(acc.skipped),
            dims=tuple(map(str, frame.columns)), covariates_used=residualizer.kept,
            covariates_dropped=dict(residualizer.dropped), seconds=seconds, t_histogram=hist,
            df_ref=acc.model.df_ref, config=cfg)
    return out


def _scan(genotypes: GenotypeSource, phenotypes: pd.DataFrame, covariates: pd.DataFrame, cfg: GwasConfig,
          sumstats_path: Path | str | None, progress: Callable[[int], None] | None,
          groups: tuple[tuple[int, int], ...] | None = None):
    """The streamed pass: (accumulator, aligned source, residualizer, dims)."""
    source, y, cov = align_samples(genotypes, phenotypes, covariates)
    y = mv.inverse_normal_transform(y) if cfg.inverse_normal else y
    residualizer = Residualizer(cov)
    dims = tuple(map(str, phenotypes.columns))
    model = null_model(residualizer, y, dims, cfg.dtype, joint=cfg.multivariate)
    binner = Binner(model.df_ref)
    acc = Accumulator(model, cfg, binner, groups)
    n_workers = _n_workers(cfg.threads)
    bounds = [(s, min(s + cfg.chunk_variants, source.n_variants))
              for s in range(0, source.n_variants, cfg.chunk_variants)]
    with SumstatsWriter(sumstats_path) as writer, _single_threaded_blas(), \
            ThreadPoolExecutor(n_workers, thread_name_prefix="gwas") as pool:
        work = partial(_chunk_statistics, source, model=model, cfg=cfg, n_columns=residualizer.n_columns,
                       binner=binner, full=writer.active, tables=PValueTables(),
                       product=device_product(model.rhs, cfg.device))
        results = _in_order(pool, work, bounds, n_workers + 1)
        for (start, stop), (block, st, n_singular) in zip(bounds, results, strict=True):
            acc.add(block, st, n_singular)
            writer.put(block.variants, st)
            if progress is not None:
                progress(stop - start)
    return acc, source, residualizer, dims


def _result(acc: Accumulator, source: GenotypeSource, residualizer: Residualizer, dims: tuple[str, ...],
            cfg: GwasConfig, seconds: float) -> GwasResult:
    """The scan's outcome from what ``acc`` gathered (tables concatenated, lambda GC read off)."""
    minp = pd.concat(acc.minp, ignore_index=True) if acc.minp else empty_minp_table()
    hits = pd.concat(acc.hits, ignore_index=True) if acc.hits else empty_hits_table()
    acc.flush()
    joint = pd.concat(acc.multivariate, ignore_index=True) if acc.multivariate else mv.empty_table()
    return GwasResult(
        minp=minp.loc[:, list(MINP_COLUMNS)], hits=hits.loc[:, list(HITS_COLUMNS)],
        lambda_gc=lambda_from_histogram(acc.hist, acc.model.df_ref), n_samples=source.n_samples,
        n_variants=acc.n_tested, n_dims=len(dims), n_skipped=dict(acc.skipped), dims=dims,
        covariates_used=residualizer.kept, covariates_dropped=dict(residualizer.dropped), seconds=seconds,
        t_histogram=acc.hist, df_ref=acc.model.df_ref, config=cfg, multivariate=joint)


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
