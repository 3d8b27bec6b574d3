"""Linkage disequilibrium (r²) between SNPs of a PLINK 1 fileset, computed in windows on demand.

The fileset is the cohort's own genotypes or a reference panel. Genotypes are read in blocks of
consecutive variants (.bim order) through a small LRU cache, so memory is bounded by
``cache_mb`` whatever the genome size: r² is only ever computed between requested index SNPs and
the variants in their ±window, never as a genome-wide matrix.

Both r² flavours come from one 3 x 3 genotype count table per SNP pair, built with three float32
matrix products (exact: every entry is an integer below 2**24):

* ``method="genotype"`` (default): squared Pearson correlation of allele counts, PLINK 1.9 ``--r2``.
* ``method="haplotype"``: r² of maximum-likelihood two-locus haplotype frequencies, PLINK 1.9
  ``--clump`` and ``--r2 dprime``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.errors import GenotypeError, UdipConfigError
from udip_assets.genetics.plink import check_plink_files, plink_paths, read_bim, read_fam

LD_METHODS = ("genotype", "haplotype")
# PLINK 1.9's tolerances (plink_common.h), kept so that boundary cases resolve as PLINK resolves them.
_PLINK_EPSILON = 2.0**-30
_PLINK_SMALLISH_EPSILON = 2.0**-35
_PLINK_SMALL_EPSILON = 2.0**-44


class LDCalculator:
    """r² between SNPs of one PLINK 1 fileset, in windows around index SNPs.

    Parameters
    ----------
    prefix : Path
        PLINK 1 fileset (.bed/.bim/.fam): the cohort's genotypes or a reference panel. Variants
        must be sorted by position within each chromosome, as ``plink --make-bed`` writes them.
    sample_iids : sequence of str, optional
        Individual IDs (.fam column 2) whose genotypes define LD, e.g. the unrelated GWAS
        subjects; default every sample in the .fam.
    method : {'genotype', 'haplotype'}
        Which r² (see Notes).
    window_bp : int
        Default half-width of the window around an index SNP (bp): variants with
        ``|pos - pos_index| < window_bp`` on the same chromosome.
    block_variants : int
        Variants per genotype block read from the .bed.
    cache_mb : float
        Memory for cached genotype blocks (MiB); at least two blocks are kept.

    Notes
    -----
    Missing calls: each pair uses the samples called at both SNPs (pairwise complete), as PLINK 1.9
    does for ``--r2`` and ``--clump``; there is no mean imputation. A SNP monomorphic over those
    samples has r² = 0 with everything (PLINK reports nan for ``--r2`` and never clumps it).

    ``genotype``: r = cov(x, y) / (sd(x) sd(y)) of the A1 counts, PLINK 1.9 ``--r2``'s default
    (PLINK 1.9 is the LD engine behind FUMA's reference panels). ``haplotype``: the two-locus haplotype
    frequencies maximise the likelihood of the genotype table (the double heterozygotes' phase is
    unknown; PLINK 1.9 solves the cubic of Gaunt et al. 2007), then r² = D² / (pA pa pB pb). It is
    what PLINK 1.9 ``--clump`` and ``--r2 dprime`` use. The two agree closely under Hardy-Weinberg
    equilibrium; use the one of the tool you compare with.

    PLINK restricts LD to founders; the fileset's .fam parents are ignored here, pass
    ``sample_iids`` to choose the samples.
    """

    def __init__(self, prefix: Path | str, sample_iids: Sequence[str] | None = None, method: str = "genotype",
                 window_bp: int = 1_000_000, block_variants: int = 1024, cache_mb: float = 1024.0) -> None:
        _check_options(method, window_bp, block_variants, cache_mb)
        self.prefix = Path(prefix)
        self.method = method
        self.window_bp = int(window_bp)
        self.block_variants = int(block_variants)
        self._n_fam = check_plink_files(self.prefix)[0]
        self.variants = _load_variants(self.prefix)
        self.sample_idx = _resolve_samples(self.prefix, sample_iids)
        self.n_samples = int(self.sample_idx.size)
        self.n_variants = int(len(self.variants))
        block_mb = self.n_samples * self.block_variants * 8 / 2**20  # values + called-mask, float32
        self._max_blocks = max(2, int(cache_mb // max(block_mb, 1e-9)))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._maf = np.full(self.n_variants, np.nan)
        self._index = pd.Index(self.variants["snp"])
        self._chrom_codes = self.variants["chrom"].to_numpy()
        self._pos = self.variants["pos_bp"].to_numpy(np.int64)
        self._spans: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ lookup
    def index_of(self, snps: Sequence[str]) -> np.ndarray:
        """(n,) int64 .bim row of each SNP ID, -1 where the fileset lacks it."""
        return self._index.get_indexer(pd.Index([str(s) for s in snps])).astype(np.int64)

    def _require_indices(self, snps, name: str) -> np.ndarray:
        idx = np.asarray(snps)
        if idx.dtype.kind in "iu":
            bad = (idx < 0) | (idx >= self.n_variants)
            if bad.any():
                raise GenotypeError(f"{name} holds variant index {idx[bad][0]}, outside "
                                    f"0..{self.n_variants - 1} of {plink_paths(self.prefix)['bim']}")
            return idx.astype(np.int64)
        idx = self.index_of(list(np.atleast_1d(idx)))
        if (idx < 0).any():
            missing = [str(s) for s, i in zip(np.atleast_1d(snps), idx, strict=True) if i < 0][:5]
            raise GenotypeError(f"{name}: SNP(s) {missing} are not in {plink_paths(self.prefix)['bim']}; "
                                "use a reference panel that holds them or drop them")
        return idx

    # ------------------------------------------------------------------ genotypes
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Block ``b``: (n_samples, n_block) float32 A1 counts with 0 at missing calls, and the
        float32 called-mask (None when every call is present)."""
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        start = b * self.block_variants
        stop = min(start + self.block_variants, self.n_variants)
        from bed_reader import open_bed  # imported here: the GWAS scan, which imports this module, never reads LD

        # counts passed in: bed-reader then never re-reads the .fam / .bim (fileset checked once)
        with open_bed(plink_paths(self.prefix)["bed"], iid_count=self._n_fam, sid_count=self.n_variants,
                      count_A1=True) as bed:
            g = bed.read(index=np.s_[self.sample_idx, start:stop], dtype="float32", order="C")  # (n, v)
        called = ~np.isnan(g)
        freq = np.nansum(g, axis=0, dtype=np.float64) / np.maximum(2.0 * called.sum(axis=0), 1)
        self._maf[start:stop] = np.where(called.any(axis=0), np.minimum(freq, 1 - freq), np.nan)
        mask = None if called.all() else called.astype(np.float32)
        entry = (np.nan_to_num(g, nan=0.0), mask)
        self._cache[b] = entry
        while len(self._cache) > self._max_blocks:
            self._cache.popitem(last=False)
        return entry

    def genotypes(self, variant_idx: np.ndarray) -> np.ndarray:
        """(n_samples, len(variant_idx)) float32 A1 counts, NaN where missing, read through the cache."""
        variant_idx = np.asarray(variant_idx, dtype=np.int64)
        out = np.empty((self.n_samples, variant_idx.size), dtype=np.float32)
        blocks = variant_idx // self.block_variants
        for b in np.unique(blocks):
            cols = np.flatnonzero(blocks == b)
            values, mask = self._block(int(b))
            local = variant_idx[cols] - b * self.block_variants
            out[:, cols] = values[:, local]
            if mask is not None:
                out[:, cols] = np.where(mask[:, local] > 0, out[:, cols], np.nan)
        return out

    def maf(self, variant_idx: np.ndarray) -> np.ndarray:
        """(n,) float64 minor allele frequency over called genotypes of the chosen samples."""
        variant_idx = np.asarray(variant_idx, dtype=np.int64)
        todo = np.unique(variant_idx[np.isnan(self._maf[variant_idx])] // self.block_variants)
        for b in todo:
            self._block(int(b))
        return self._maf[variant_idx]

    # ------------------------------------------------------------------ r²
    def r2_with(self, index_snp: str | int, candidate_snps: Sequence[str] | np.ndarray) -> np.ndarray:
        """r² between one index SNP and each candidate SNP (no window is applied).

        Parameters
        ----------
        index_snp : str or int
            SNP ID or .bim row.
        candidate_snps : sequence of str or int array
            SNP IDs or .bim rows, any chromosome.

        Returns
        -------
        np.ndarray
            (n_candidates,) float64 r² in [0, 1]; NaN for a candidate ID the fileset lacks.
        """
        index = self._require_indices(np.atleast_1d(index_snp), "index_snp")
        cand = np.asarray(candidate_snps)
        idx = cand.astype(np.int64) if cand.dtype.kind in "iu" else self.index_of(list(cand))
        out = np.full(idx.size, np.nan)
        ok = idx >= 0
        if ok.any():
            out[ok] = self._r2_dense(self.genotypes(index), self.genotypes(idx[ok]))[0]
        return out

    def r2_matrix(self, snps: Sequence[str] | np.ndarray) -> np.ndarray:
        """(k, k) float64 r² among ``snps`` (IDs or .bim rows; every one must be in the fileset)."""
        idx = self._require_indices(snps, "snps")
        g = self.genotypes(idx)
        return self._r2_dense(g, g)

    def window_r2(self, index_snps: Sequence[str] | np.ndarray,
                  window_bp: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """r² of each index SNP with every variant of the fileset in its window.

        Parameters
        ----------
        index_snps : sequence of str or int array
            SNP IDs or .bim rows.
        window_bp : int, optional
            Half-width (bp); variants on the same chromosome with ``|pos - pos_index| < window_bp``.
            Default ``self.window_bp``.

        Returns
        -------
        list of (variant_idx, r2)
            One pair per index SNP: (m,) int64 .bim rows in the window (the index SNP included)
            and their (m,) float64 r².

        Notes
        -----
        Genotypes are read block by block; each block is multiplied once with every index SNP
        whose window touches it, so memory holds the cache and the k index genotypes only.
        """
        idx = self._require_indices(index_snps, "index_snps")
        lo, hi = self._window_bounds(idx, self.window_bp if window_bp is None else int(window_bp))
        x = self.genotypes(idx)  # (n, k)
        rows = [np.empty(h - lo_i) for lo_i, h in zip(lo, hi, strict=True)]
        first, last = lo // self.block_variants, (hi - 1) // self.block_variants
        for b in np.unique(np.concatenate([np.arange(f, t + 1) for f, t in zip(first, last, strict=True)])):
            b0 = int(b) * self.block_variants
            b1 = min(b0 + self.block_variants, self.n_variants)
            sel = np.flatnonzero((lo < b1) & (hi > b0))
            values, mask = self._block(int(b))
            r2 = self._r2_from_counts(_pair_counts(x[:, sel], values, mask))  # (len(sel), b1 - b0)
            for j, i in enumerate(sel):
                s, e = max(lo[i], b0), min(hi[i], b1)
                rows[i][s - lo[i]:e - lo[i]] = r2[j, s - b0:e - b0]
        return [(np.arange(lo_i, h), r) for lo_i, h, r in zip(lo, hi, rows, strict=True)]

    def _window_bounds(self, idx: np.ndarray, window_bp: int) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) .bim rows of each index SNP's window (same chromosome, |distance| < window_bp)."""
        if window_bp <= 0:
            raise UdipConfigError(f"window_bp must be a positive number of bp, got {window_bp!r}")
        lo = np.empty(idx.size, dtype=np.int64)
        hi = np.empty(idx.size, dtype=np.int64)
        for k, i in enumerate(idx):
            c0, c1 = self._chrom_span(self._chrom_codes[i])
            pos = self._pos[c0:c1]
            lo[k] = c0 + np.searchsorted(pos, self._pos[i] - window_bp, side="right")
            hi[k] = c0 + np.searchsorted(pos, self._pos[i] + window_bp, side="left")
        return lo, hi

    def _chrom_span(self, chrom) -> tuple[int, int]:
        if chrom not in self._spans:
            rows = np.flatnonzero(self._chrom_codes == chrom)
            self._spans[chrom] = (int(rows[0]), int(rows[-1]) + 1)
        return self._spans[chrom]

    def _r2_dense(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(k, m) r² between the columns of x (n, k) and y (n, m), both float32 with NaN missing."""
        called = ~np.isnan(y)
        mask = None if called.all() else called.astype(np.float32)
        return self._r2_from_counts(_pair_counts(x, np.nan_to_num(y, nan=0.0), mask))

    def _r2_from_counts(self, counts: np.ndarray) -> np.ndarray:
        if self.method == "genotype":
            return genotype_r2(counts)
        return haplotype_r2(counts)


def _check_options(method: str, window_bp: int, block_variants: int, cache_mb: float) -> None:
    if method not in LD_METHODS:
        raise UdipConfigError(f"LDCalculator method must be one of {LD_METHODS}, got {method!r}")
    if not isinstance(window_bp, int | np.integer) or window_bp <= 0:
        raise UdipConfigError(f"LDCalculator window_bp must be a positive integer (bp), got {window_bp!r}")
    if not isinstance(block_variants, int | np.integer) or block_variants < 1:
        raise UdipConfigError(f"LDCalculator block_variants must be an integer >= 1, got {block_variants!r}")
    if not cache_mb > 0:
        raise UdipConfigError(f"LDCalculator cache_mb must be > 0 MiB, got {cache_mb!r}")


def _load_variants(prefix: Path) -> pd.DataFrame:
    """The .bim as a table, checked to be position-sorted within contiguous chromosomes."""
    bim = read_bim(plink_paths(prefix)["bim"])
    bim["chrom"] = bim["chrom"].astype(str).str.removeprefix("chr")
    chrom = bim["chrom"].to_numpy()
    starts = np.flatnonzero(np.r_[True, chrom[1:] != chrom[:-1]])
    if len(set(chrom[starts])) != len(starts):
        raise GenotypeError(f"{plink_paths(prefix)['bim']} lists a chromosome in several separate runs; "
                            "sort the fileset with plink --make-bed")
    pos = bim["pos_bp"].to_numpy(np.int64)
    same = chrom[1:] == chrom[:-1]
    if (np.diff(pos)[same] < 0).any():
        raise GenotypeError(f"{plink_paths(prefix)['bim']} is not sorted by position within chromosomes; "
                            "sort the fileset with plink --make-bed")
    return bim


def _resolve_samples(prefix: Path, sample_iids: Sequence[str] | None) -> np.ndarray:
    """.fam rows of the requested individual IDs (all rows when None)."""
    fam = read_fam(plink_paths(prefix)["fam"])
    if sample_iids is None:
        return np.arange(len(fam), dtype=np.int64)
    rows = pd.Index(fam["iid"]).get_indexer([str(s) for s in sample_iids])
    if (rows < 0).any():
        missing = [str(s) for s, r in zip(sample_iids, rows, strict=True) if r < 0][:5]
        raise GenotypeError(f"sample_iids {missing} are not in {plink_paths(prefix)['fam']}; "
                            "pass IDs from the .fam's second column")
    if len(rows) < 2:
        raise GenotypeError(f"sample_iids selects {len(rows)} sample(s); LD needs at least 2")
    return np.sort(rows.astype(np.int64))


def _pair_counts(x: np.ndarray, y0: np.ndarray, y_mask: np.ndarray | None) -> np.ndarray:
    """3 x 3 genotype counts of every (index, candidate) pair over samples called at both.

    Parameters
    ----------
    x : np.ndarray
        (n, k) float32 index A1 counts, NaN missing.
    y0 : np.ndarray
        (n, m) float32 candidate A1 counts with 0 at missing calls.
    y_mask : np.ndarray or None
        (n, m) float32 1 = called, or None when every call is present.

    Returns
    -------
    np.ndarray
        (k, 3, 3, m) float64; ``[i, a, b, j]`` = samples with index genotype a and candidate b.

    Notes
    -----
    With A the (n, 3k) indicators of the index genotypes, A^T 1, A^T y and A^T y² give per index
    class the called count, sum and sum of squares of y; the three candidate classes follow from
    c1 + 2 c2 = S1 and c1 + 4 c2 = S2. Entries are integers < 2**24, so float32 GEMM is exact.
    """
    n, k = x.shape
    a = np.concatenate([(x == g) for g in (0, 1, 2)], axis=1).astype(np.float32)  # (n, 3k)
    t0 = a.T @ y_mask if y_mask is not None else np.repeat(a.sum(axis=0)[:, None], y0.shape[1], axis=1)
    t1 = (a.T @ y0).astype(np.float64)  # (3k, m)
    t2 = (a.T @ (y0 * y0)).astype(np.float64)
    c2 = (t2 - t1) / 2
    c1 = t1 - 2 * c2
    c0 = np.asarray(t0, dtype=np.float64) - c1 - c2
    counts = np.stack([c0, c1, c2], axis=1)  # (3k, 3, m): [class a * k + i, b, j]
    return counts.reshape(3, k, 3, -1).transpose(1, 0, 2, 3)


def genotype_r2(counts: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation of allele counts from (..., 3, 3, m) genotype tables.

    Returns (..., m) float64; 0 where either SNP is monomorphic over the pair's called samples.
    """
    g = np.arange(3.0)
    n = counts.sum(axis=(-3, -2))
    row = counts.sum(axis=-2)  # (..., 3, m) index genotype margins
    col = counts.sum(axis=-3)  # (..., 3, m) candidate margins
    sx = np.einsum("a,...am->...m", g, row)
    sy = np.einsum("b,...bm->...m", g, col)
    sxx = np.einsum("a,...am->...m", g * g, row)
    syy = np.einsum("b,...bm->...m", g * g, col)
    sxy = np.einsum("a,b,...abm->...m", g, g, counts)
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(var > 0, cov * cov / np.where(var > 0, var, 1.0), 0.0)
    return np.clip(r2, 0.0, 1.0)


def haplotype_r2(counts: np.ndarray) -> np.ndarray:
    """r² of maximum-likelihood haplotype frequencies from (..., 3, 3, m) genotype tables.

    Returns (..., m) float64; 0 where either SNP is monomorphic over the pair's called samples.

    Notes
    -----
    Allele 1 is A1 (genotype 2 = two copies). Haplotype counts are known except for double
    heterozygotes, whose share ``h`` splits into x (11/22 phase) and h - x (12/21). The likelihood's
    stationary points are the roots of PLINK 1.9's cubic (``em_phase_hethet``); roots in [0, h]
    (or the ends of that interval when none is) are compared by log-likelihood and the best one
    kept. Then D = p11 - p1. p.1 and r² = D² / (p1. p2. p.1 p.2), 0 when |D| < 2**-44.
    """
    c = counts
    k11 = 2 * c[..., 2, 2, :] + c[..., 2, 1, :] + c[..., 1, 2, :]
    k12 = 2 * c[..., 2, 0, :] + c[..., 2, 1, :] + c[..., 1, 0, :]
    k21 = 2 * c[..., 0, 2, :] + c[..., 1, 2, :] + c[..., 0, 1, :]
    k22 = 2 * c[..., 0, 0, :] + c[..., 1, 0, :] + c[..., 0, 1, :]
    center = c[..., 1, 1, :]
    total = k11 + k12 + k21 + k22 + 2 * center
    safe = np.where(total > 0, total, 1.0)
    f = [k / safe for k in (k11, k12, k21, k22)]
    h = center / safe
    x = _ml_hethet_share(f, h, [k11, k12, k21, k22], center)
    p1x = f[0] + f[1] + h
    px1 = f[0] + f[2] + h
    d = f[0] + x - p1x * px1
    denom = p1x * (1 - p1x) * px1 * (1 - px1)
    ok = (total > 0) & (denom > 0) & (np.abs(d) >= _PLINK_SMALL_EPSILON)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ok, d * d / np.where(ok, denom, 1.0), 0.0)
    return np.clip(r2, 0.0, 1.0)


def _ml_hethet_share(f: list[np.ndarray], h: np.ndarray, known: list[np.ndarray],
                     center: np.ndarray) -> np.ndarray:
    """Share x in [0, h] of double heterozygotes phased 11/22 that maximises the likelihood."""
    f11, f12, f21, f22 = f
    p1122, p1221 = f11 * f22, f12 * f21
    coef_a = 0.5 * (f11 + f22 - f12 - f21 - 3 * h)
    coef_b = 0.5 * (p1122 + p1221 + h * (f12 + f21 - f11 - f22 + h))
    coef_c = -0.5 * h * p1122
    roots = _cubic_real_roots(coef_a, coef_b, coef_c)  # (..., 3) NaN where absent
    eps = _PLINK_SMALLISH_EPSILON
    roots = np.where((roots >= -eps) & (roots <= h[..., None] + eps), roots, np.nan)
    roots = np.clip(roots, 0.0, h[..., None])
    # PLINK's special case: with no 11/22 and no 12/21 evidence the cubic degenerates (x = 0 root).
    degenerate = (p1122 == 0) & (p1221 == 0)
    xx, xy = f11 + f22, f12 + f21
    mid = np.where((xx + eps < h + xy) & (xy + eps < h + xx), (h + xy - xx) * 0.5, np.nan)
    roots = np.where(degenerate[..., None], np.stack([np.zeros_like(h), mid, h], axis=-1), roots)
    none = np.isnan(roots).all(axis=-1)
    bounds = np.stack([np.zeros_like(h), h, np.full_like(h, np.nan)], axis=-1)
    cand = np.where(none[..., None], bounds, roots)
    loglik = _hethet_loglik(cand, f, h, known, center)
    best = np.take_along_axis(cand, np.argmax(loglik, axis=-1)[..., None], axis=-1)[..., 0]
    return np.where(center > 0, np.nan_to_num(best), 0.0)


def _hethet_loglik(x: np.ndarray, f: list[np.ndarray], h: np.ndarray, known: list[np.ndarray],
                   center: np.ndarray) -> np.ndarray:
    """(..., s) log-likelihood of each candidate share x (NaN candidates -> -inf)."""
    f11, f12, f21, f22 = (v[..., None] for v in f)
    hh = h[..., None]
    q11, q22 = f11 + x, f22 + x
    q12, q21 = f12 + hh - x, f21 + hh - x
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = center[..., None] * np.log(q11 * q22 + q12 * q21)
        for k, q in zip(known, (q11, q12, q21, q22), strict=True):
            kk = k[..., None]
            ll = ll + np.where(kk != 0, kk * np.log(np.where(kk != 0, q, 1.0)), 0.0)
    return np.where(np.isnan(x) | np.isnan(ll), -np.inf, ll)


def _cubic_real_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Real roots of x³ + a x² + b x + c, (..., 3) sorted, NaN-padded (PLINK's cubic_real_roots)."""
    qq = (a * a - 3 * b) / 9.0
    rr = (2 * a * a * a - 9 * a * b + 27 * c) / 54.0
    r2, q3 = rr * rr, qq * qq * qq
    adiv3 = a / 3.0
    three = r2 < q3
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(np.where(three, qq, 1.0))
        theta = np.arccos(np.clip(np.where(three, rr / (qq * sq), 0.0), -1.0, 1.0)) / 3.0
        trig = np.stack([-2 * sq * np.cos(theta + s) - adiv3 for s in (0.0, 2 * np.pi / 3, -2 * np.pi / 3)],
                        axis=-1)
        big = -np.cbrt(np.abs(rr) + np.sqrt(np.where(three, 0.0, r2 - q3)))
        big = np.where(rr < 0, -big, big)
        small = np.where(big != 0, qq / np.where(big != 0, big, 1.0), 0.0)
        one = big + small - adiv3
        double = np.abs(big - small) < 8 * _PLINK_EPSILON
        other = np.where(double & (big != 0), -big - adiv3, np.nan)
    single = np.stack([one, other, np.full_like(one, np.nan)], axis=-1)
    return np.sort(np.where(three[..., None], trig, single), axis=-1)
