"""Genomic risk loci from minP summary statistics, by FUMA SNP2GENE's rules.

Input is the minP table (one row per SNP: its smallest p over the 128 UDIP dimensions and that
dimension) and an :class:`~udip_assets.genetics.ld.LDCalculator` over the cohort's genotypes or a
reference panel. Output are FUMA's tables (``GenomicRiskLoci``, ``leadSNPs``, ``IndSigSNPs``,
``snps``) with FUMA's column names, plus the UDIP dimension columns ``dim`` and ``dims``.

Steps (Watanabe et al. 2017, FUMA SNP2GENE; see ``ClumpConfig`` for each rule's meaning):

1. independent significant SNPs: greedy in order of p, a significant SNP is independent if its
   r² with every independent SNP already chosen is below ``r2_ind``;
2. candidate SNPs: SNPs in LD (r² >= ``r2_ind``) with an independent SNP and p < ``candidate_p``;
   an independent SNP's LD block spans its candidates;
3. lead SNPs: the independent SNPs clumped again, greedily, at r² < ``r2_lead``;
4. genomic risk loci: lead SNPs with their independent SNPs, merged while their LD blocks are
   closer than ``merge_distance_bp``.

Plain Python (numpy, pandas): no Dagster, no warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from tqdm import tqdm

from udip_assets.errors import GenotypeError, SummaryStatsError, UdipConfigError, require_field
from udip_assets.genetics.clump_io import read_fuma_loci, write_fuma_loci
from udip_assets.genetics.clump_tables import (
    CANDIDATE_COLUMNS,
    FUMA_LOCI_COLUMNS,
    IND_SIG_COLUMNS,
    LEAD_COLUMNS,
    LOCI_COLUMNS,
    IndSig,
    candidate_table,
    chrom_key,
    gwas_rows,
    ind_sig_table,
    lead_table,
    loci_table,
)
from udip_assets.genetics.ld import LDCalculator

__all__ = [
    "CANDIDATE_COLUMNS", "FUMA_LOCI_COLUMNS", "GENOME_WIDE_P", "IND_SIG_COLUMNS", "LEAD_COLUMNS", "LOCI_COLUMNS",
    "MINP_COLUMNS", "ClumpConfig", "ClumpResult", "SummaryStatsError", "clump_loci", "genome_wide_threshold",
    "read_fuma_loci", "write_fuma_loci",
]

GENOME_WIDE_P = 5e-8


def genome_wide_threshold(n_dims: int, alpha: float = GENOME_WIDE_P) -> float:
    """Genome-wide significance of a minP over ``n_dims`` phenotypes: ``alpha / n_dims`` (Bonferroni).

    The one rule the pipeline, the checkpoint sweep and ``udip gwas`` share; the number of dims comes
    from the model (the phenotype columns tested), never from a constant.
    """
    if not (isinstance(n_dims, int | np.integer) and n_dims >= 1):
        raise UdipConfigError(f"n_dims must be a whole number >= 1, got {n_dims!r}")
    return alpha / int(n_dims)


MINP_COLUMNS = ("snp", "chrom", "pos_bp", "a1", "a2", "p", "dim", "beta", "se", "maf")
_MHC_CHROM = "6"
_SPECULATIVE_BATCH = 16  # significant SNPs whose LD windows are computed together
_PROGRESS_MIN_SNPS = 200  # show a progress bar from this many significant SNPs on
_require = partial(require_field, owner="ClumpConfig")


@dataclass(frozen=True)
class ClumpConfig:
    """FUMA SNP2GENE clumping parameters.

    Parameters
    ----------
    sig_p : float
        Significance threshold of independent significant SNPs (p <= sig_p).
    min_maf : float
        Minor allele frequency floor for every SNP considered (significant and candidate).
    exclude_mhc : bool
        Drop SNPs in the MHC (``mhc_region_bp`` on chromosome 6) before anything else.
    mhc_region_bp : tuple of int
        (start, end) of the MHC on chromosome 6 (bp, inclusive, GRCh37).
    r2_ind : float
        LD threshold of independent significant SNPs and of candidate SNPs.
    candidate_p : float
        Candidate SNPs need p < candidate_p.
    r2_lead : float
        LD threshold of lead SNPs (second clumping of the independent SNPs).
    merge_distance_bp : int
        LD blocks closer than this (edge to edge) join one genomic risk locus.
    window_bp : int
        LD is only computed between SNPs less than this far apart on one chromosome.
    include_panel_snps : bool
        Also take candidate SNPs from the LD fileset that the minP table lacks (FUMA's
        "include 1000G variants"); they count in nSNPs but not in nGWASSNPs.

    Notes
    -----
    ``sig_p``: FUMA's "maximum P-value of lead SNPs" (default 5e-8). Ours is 5e-8 / 128: the minP
    of each SNP is the smallest of 128 UDIP dimensions' p-values, so genome-wide significance is
    Bonferroni-corrected for the dimensions, as in the ViT-UDIP paper.

    ``min_maf``: FUMA's "minimum MAF" filter (default 0.01 here, 0 in FUMA) applies to the lead
    and to the candidate SNPs; the MAF is the minP table's (our cohort's), the LD fileset's for
    SNPs only it holds.

    ``exclude_mhc``: FUMA's option to exclude the MHC region (its default region is
    29,614,758-33,170,276 on GRCh37; ours is the extended MHC, 25-34 Mb), whose long-range LD
    would otherwise make one giant locus.

    ``r2_ind``: FUMA's "r² threshold to define LD structure of lead SNPs" (0.6): significant SNPs
    with r² >= r2_ind to a more significant independent SNP are not independent; SNPs in LD at
    that threshold are that SNP's candidate SNPs.

    ``candidate_p``: FUMA's "maximum P-value cutoff" for SNPs in LD of lead SNPs (0.05).

    ``r2_lead``: FUMA's second r² (0.1) defining lead SNPs as near-independent (r² < 0.1)
    independent significant SNPs; each lead SNP carries the independent SNPs with r² >= 0.1 to it.

    ``merge_distance_bp``: FUMA's "maximum distance of LD blocks to merge into a locus" (250 kb):
    blocks overlapping or with a gap < merge_distance_bp join one genomic risk locus.

    ``window_bp``: FUMA's reference LD is pre-computed within 1 Mb; pairs farther apart are
    treated as unlinked (r² = 0).
    """

    sig_p: float = 5e-8 / 128
    min_maf: float = 0.01
    exclude_mhc: bool = False
    mhc_region_bp: tuple[int, int] = (25_000_000, 34_000_000)
    r2_ind: float = 0.6
    candidate_p: float = 0.05
    r2_lead: float = 0.1
    merge_distance_bp: int = 250_000
    window_bp: int = 1_000_000
    include_panel_snps: bool = False

    def __post_init__(self) -> None:
        _require(0 < self.sig_p < 1, "sig_p", "in (0, 1)", self.sig_p)
        _require(0 <= self.min_maf < 0.5, "min_maf", "in [0, 0.5)", self.min_maf)
        _require(isinstance(self.exclude_mhc, bool), "exclude_mhc", "True or False", self.exclude_mhc)
        mhc = tuple(int(v) for v in self.mhc_region_bp)
        _require(len(mhc) == 2 and 0 <= mhc[0] < mhc[1], "mhc_region_bp",
                 "(start, end) with 0 <= start < end", self.mhc_region_bp)
        object.__setattr__(self, "mhc_region_bp", mhc)
        _require(0 < self.r2_ind <= 1, "r2_ind", "in (0, 1]", self.r2_ind)
        _require(self.sig_p < self.candidate_p <= 1, "candidate_p", f"in (sig_p = {self.sig_p:g}, 1]",
                 self.candidate_p, "every significant SNP must also pass the candidate threshold")
        _require(0 < self.r2_lead <= self.r2_ind, "r2_lead", f"in (0, r2_ind = {self.r2_ind:g}]",
                 self.r2_lead)
        for name, low in (("merge_distance_bp", 0), ("window_bp", 1)):
            value = getattr(self, name)
            _require(isinstance(value, int | np.integer) and value >= low, name,
                     f"an integer >= {low} (bp)", value)
        _require(isinstance(self.include_panel_snps, bool), "include_panel_snps", "True or False",
                 self.include_panel_snps)


@dataclass
class ClumpResult:
    """FUMA tables of one clumping run.

    Attributes
    ----------
    loci : pd.DataFrame
        One row per genomic risk locus, ``LOCI_COLUMNS``.
    lead_snps : pd.DataFrame
        One row per lead SNP, ``LEAD_COLUMNS``.
    ind_sig_snps : pd.DataFrame
        One row per independent significant SNP, ``IND_SIG_COLUMNS``.
    candidates : pd.DataFrame
        One row per candidate SNP (FUMA's snps.txt), ``CANDIDATE_COLUMNS``; ``r2`` and
        ``IndSigSNP`` name its highest-LD independent SNP.
    not_in_panel : list of str
        Significant SNPs skipped because the LD fileset lacks them (FUMA skips them too).
    """

    loci: pd.DataFrame
    lead_snps: pd.DataFrame
    ind_sig_snps: pd.DataFrame
    candidates: pd.DataFrame
    not_in_panel: list[str] = field(default_factory=list)


def _check_minp(minp_df: pd.DataFrame) -> None:
    missing = [c for c in MINP_COLUMNS if c not in minp_df.columns]
    if missing:
        raise SummaryStatsError(f"minp_df lacks columns {missing}; expected {list(MINP_COLUMNS)} "
                                "(one row per SNP, as the minp table holds)")
    dup = minp_df["snp"].astype(str).duplicated()
    if dup.any():
        raise SummaryStatsError(f"minp_df has {int(dup.sum())} duplicated snp IDs (first "
                                f"{minp_df['snp'][dup].iloc[0]!r}); expected one row per SNP")
    p = pd.to_numeric(minp_df["p"], errors="coerce").to_numpy(np.float64)
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise SummaryStatsError(f"minp_df column p must lie in [0, 1], got {float(p[bad][0])!r} for SNP "
                                f"{minp_df['snp'].iloc[np.flatnonzero(bad)[0]]!r}")


def _prepare(minp_df: pd.DataFrame, ld: LDCalculator, cfg: ClumpConfig) -> pd.DataFrame:
    """The minP table with normalised chrom, its .bim row (``panel``), and the FUMA filters.

    Adds boolean columns ``sig`` (p <= sig_p) and ``eligible`` (p < candidate_p); both also need
    MAF >= min_maf and, with exclude_mhc, a position outside the MHC.
    """
    _check_minp(minp_df)
    df = minp_df.loc[:, list(MINP_COLUMNS)].reset_index(drop=True).copy()
    df["snp"] = df["snp"].astype(str)
    df["chrom"] = df["chrom"].astype(str).str.removeprefix("chr")
    df["pos_bp"] = df["pos_bp"].astype(np.int64)
    df["p"] = pd.to_numeric(df["p"], errors="coerce").astype(np.float64)
    df["panel"] = ld.index_of(df["snp"].tolist())
    _check_panel_positions(df, ld)
    keep = (df["maf"].astype(np.float64) >= cfg.min_maf) & ~_in_mhc(df["chrom"], df["pos_bp"], cfg)
    df["sig"] = keep & (df["p"] <= cfg.sig_p)
    df["eligible"] = keep & (df["p"] < cfg.candidate_p)
    return df


def _in_mhc(chrom: pd.Series, pos: pd.Series, cfg: ClumpConfig) -> pd.Series:
    if not cfg.exclude_mhc:
        return pd.Series(False, index=chrom.index)
    start, end = cfg.mhc_region_bp
    return (chrom == _MHC_CHROM) & (pos >= start) & (pos <= end)


def _check_panel_positions(df: pd.DataFrame, ld: LDCalculator) -> None:
    found = df["panel"].to_numpy() >= 0
    rows = df["panel"].to_numpy()[found]
    bim = ld.variants
    same = (bim["chrom"].to_numpy()[rows] == df["chrom"].to_numpy()[found]) & \
        (bim["pos_bp"].to_numpy()[rows] == df["pos_bp"].to_numpy()[found])
    if not same.all():
        k = np.flatnonzero(found)[np.flatnonzero(~same)[0]]
        r = df["panel"].iat[k]
        raise GenotypeError(
            f"SNP {df['snp'].iat[k]} is at {df['chrom'].iat[k]}:{df['pos_bp'].iat[k]} in minp_df but at "
            f"{bim['chrom'].iat[r]}:{bim['pos_bp'].iat[r]} in {ld.prefix}.bim "
            f"({int((~same).sum())} such SNPs); use an LD fileset on the same genome build as the GWAS")


def _candidate_mask(vidx: np.ndarray, r2: np.ndarray, gwas_row: np.ndarray, eligible: np.ndarray,
                    ld: LDCalculator, cfg: ClumpConfig) -> np.ndarray:
    """Which window variants are candidate SNPs of the index SNP (r² >= r2_ind and eligible)."""
    rows = gwas_row[vidx]
    ok = (r2 >= cfg.r2_ind) & (rows >= 0)
    ok[ok] = eligible[rows[ok]]
    if cfg.include_panel_snps:
        extra = (r2 >= cfg.r2_ind) & (rows < 0)
        if extra.any():
            sub = vidx[extra]
            chrom = ld.variants["chrom"].iloc[sub].reset_index(drop=True)
            pos = ld.variants["pos_bp"].iloc[sub].reset_index(drop=True)
            extra[extra] = (ld.maf(sub) >= cfg.min_maf) & ~_in_mhc(chrom, pos, cfg).to_numpy()
            ok |= extra
    return ok


def _select_independent(df: pd.DataFrame, ld: LDCalculator, cfg: ClumpConfig,
                        progress: bool) -> list[IndSig]:
    """Greedy FUMA / PLINK clumping of the significant SNPs, most significant first.

    Notes
    -----
    A significant SNP is independent unless an earlier (more significant) independent SNP has
    r² >= r2_ind with it, i.e. unless it is already that SNP's candidate. Chromosomes do not
    interact, so they are taken one after the other (cached genotype blocks stay useful), each
    in order of p, ties broken by position. LD windows of the next ``_SPECULATIVE_BATCH``
    unclaimed SNPs are computed together; one claimed by an earlier SNP of its batch is skipped.
    """
    gwas_row = gwas_rows(df, ld)
    in_panel = df["panel"].to_numpy() >= 0
    eligible, sig = df["eligible"].to_numpy(), df["sig"].to_numpy()
    sig_rows = np.flatnonzero(sig & in_panel)
    keys = pd.factorize(pd.Series(df["chrom"].to_numpy()[sig_rows]), sort=True)[0]
    sig_rows = sig_rows[np.lexsort((df["pos_bp"].to_numpy()[sig_rows], df["p"].to_numpy()[sig_rows], keys))]
    claimed = np.zeros(ld.n_variants, dtype=bool)
    panel = df["panel"].to_numpy()
    chosen: list[IndSig] = []
    bar = tqdm(total=sig_rows.size, desc="independent significant SNPs", unit="SNP",
               disable=not progress or sig_rows.size < _PROGRESS_MIN_SNPS)
    k = 0
    while k < sig_rows.size:
        batch = []
        while k < sig_rows.size and len(batch) < _SPECULATIVE_BATCH:
            if not claimed[panel[sig_rows[k]]]:
                batch.append(sig_rows[k])
            else:
                bar.update(1)
            k += 1
        windows = ld.window_r2(panel[batch], cfg.window_bp) if batch else []
        for row, (vidx, r2) in zip(batch, windows, strict=True):
            bar.update(1)
            if claimed[panel[row]]:
                continue
            r2 = np.where(vidx == panel[row], 1.0, r2)
            cand = _candidate_mask(vidx, r2, gwas_row, eligible, ld, cfg)
            rows = gwas_row[vidx]
            partners = vidx[(r2 >= cfg.r2_lead) & (rows >= 0) & (vidx != panel[row])]
            partners = partners[sig[gwas_row[partners]]]
            chosen.append(IndSig(row=int(row), cand=vidx[cand], cand_r2=r2[cand], lead_partners=partners))
            claimed[vidx[cand]] = True
    bar.close()
    return chosen


def _select_leads(ind: list[IndSig], df: pd.DataFrame) -> list[tuple[int, list[int]]]:
    """Lead SNPs: (index into ``ind``, members = the lead then its r² >= r2_lead partners by position).

    Notes
    -----
    Within a chromosome ``ind`` is in order of p, so the greedy pass is FUMA's: an independent
    SNP is a lead unless it has r² >= r2_lead with an earlier lead. As in FUMA, a non-lead
    independent SNP may sit in the lists of several leads.
    """
    where = {df["panel"].iat[s.row]: k for k, s in enumerate(ind)}
    pos = df["pos_bp"].to_numpy()
    checked: set[int] = set()
    leads = []
    for k, s in enumerate(ind):
        if k in checked:
            continue
        partners = sorted((where[v] for v in s.lead_partners if v in where), key=lambda j: pos[ind[j].row])
        checked.update(partners)
        leads.append((k, [k, *partners]))
    return leads


def _assign_loci(ind: list[IndSig], leads: list[tuple[int, list[int]]], df: pd.DataFrame,
                 cfg: ClumpConfig) -> np.ndarray:
    """(n_ind,) 1-based GenomicLocus of each independent SNP.

    Notes
    -----
    A lead SNP and the independent SNPs in its list form one group spanning their LD blocks;
    groups on one chromosome are swept in order of start and merged while the next start is
    less than ``merge_distance_bp`` past the current end (overlaps merge too), FUMA's rule.
    """
    parent = list(range(len(ind)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, members in leads:
        for m in members[1:]:
            parent[find(m)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for k in range(len(ind)):
        groups.setdefault(find(k), []).append(k)
    chrom = df["chrom"].to_numpy()
    spans = sorted(((chrom_key(chrom[ind[g[0]].row]), min(ind[k].start for k in g),
                     max(ind[k].end for k in g), g) for g in groups.values()), key=lambda t: (t[0], t[1]))
    locus = np.zeros(len(ind), dtype=np.int64)
    n_loci, cur_chrom, cur_end = 0, None, 0
    for key, start, end, members in spans:
        if key != cur_chrom or start - cur_end >= cfg.merge_distance_bp:
            n_loci, cur_chrom, cur_end = n_loci + 1, key, end
        cur_end = max(cur_end, end)
        locus[members] = n_loci
    return locus


def clump_loci(minp_df: pd.DataFrame, ld: LDCalculator, cfg: ClumpConfig | None = None,
               progress: bool = True) -> ClumpResult:
    """Genomic risk loci, lead and independent significant SNPs by FUMA SNP2GENE's rules.

    Parameters
    ----------
    minp_df : pd.DataFrame
        One row per SNP: ``snp``, ``chrom``, ``pos_bp``, ``a1``, ``a2``, ``p`` (minimum over
        dimensions), ``dim`` (its dimension), ``beta``, ``se``, ``maf``.
    ld : LDCalculator
        LD of the cohort's genotypes or of a reference panel; SNPs are matched by ID and must sit
        at the same position.
    cfg : ClumpConfig, optional
        Thresholds; default FUMA's with sig_p = 5e-8 / 128.
    progress : bool
        Show a progress bar over the significant SNPs when there are many.

    Returns
    -------
    ClumpResult
        ``loci``, ``lead_snps``, ``ind_sig_snps``, ``candidates`` (FUMA's columns, see the
        module constants) and the significant SNPs the LD fileset lacks.

    Notes
    -----
    Only the LD windows of independent SNPs are ever computed (``ld.window_r2``). FUMA counts an
    independent SNP's nSNPs only over candidates no earlier independent SNP took; here nSNPs
    counts all its candidates (FUMA's documented meaning), and its LD block spans them all, as
    FUMA's locus bounds do.
    """
    cfg = cfg or ClumpConfig()
    df = _prepare(minp_df, ld, cfg)
    not_in_panel = df.loc[df["sig"] & (df["panel"] < 0), "snp"].tolist()
    ind = _select_independent(df, ld, cfg, progress)
    pos = ld.variants["pos_bp"].to_numpy(np.int64)
    for s in ind:
        s.start, s.end = int(pos[s.cand].min()), int(pos[s.cand].max())
    leads = _select_leads(ind, df)
    locus = _assign_loci(ind, leads, df, cfg)
    cand = candidate_table(ind, locus, df, ld)
    ind_df = ind_sig_table(ind, locus, df)
    lead_df = lead_table(ind, leads, locus, df)
    loci_df = loci_table(ind, leads, locus, df, cand, cfg)
    return ClumpResult(loci=loci_df, lead_snps=lead_df, ind_sig_snps=ind_df, candidates=cand,
                       not_in_panel=not_in_panel)
