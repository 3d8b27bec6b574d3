"""FUMA's output tables of a clumping run, built from the independent significant SNPs.

``GenomicRiskLoci`` (:func:`loci_table`), ``leadSNPs`` (:func:`lead_table`), ``IndSigSNPs``
(:func:`ind_sig_table`) and ``snps`` (:func:`candidate_table`), with FUMA's column names and
order, plus the UDIP dimension columns ``dim`` and ``dims``. :class:`IndSig` is the record
:mod:`.clump` fills while clumping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from udip_assets.genetics.ld import LDCalculator

if TYPE_CHECKING:
    from udip_assets.genetics.clump import ClumpConfig


FUMA_LOCI_COLUMNS = ("GenomicLocus", "uniqID", "rsID", "chr", "pos", "p", "start", "end", "nSNPs",
                     "nGWASSNPs", "nIndSigSNPs", "IndSigSNPs", "nLeadSNPs", "LeadSNPs")
LOCI_COLUMNS = (*FUMA_LOCI_COLUMNS, "dim", "dims")
LEAD_COLUMNS = ("No", "GenomicLocus", "uniqID", "rsID", "chr", "pos", "p", "nIndSigSNPs", "IndSigSNPs", "dim")
IND_SIG_COLUMNS = ("No", "GenomicLocus", "uniqID", "rsID", "chr", "pos", "p", "nSNPs", "nGWASSNPs", "dim",
                   "start", "end")
CANDIDATE_COLUMNS = ("uniqID", "rsID", "chr", "pos", "non_effect_allele", "effect_allele", "MAF", "gwasP",
                     "beta", "se", "dim", "r2", "IndSigSNP", "GenomicLocus")


@dataclass
class IndSig:
    """One independent significant SNP while clumping (panel rows and r² of its candidates)."""

    row: int
    cand: np.ndarray
    cand_r2: np.ndarray
    lead_partners: np.ndarray
    start: int = 0
    end: int = 0


def chrom_key(chrom: str) -> tuple[int, str]:
    return (int(chrom), "") if chrom.isdigit() else (1000, chrom)


def uniq_ids(chrom: pd.Series, pos: pd.Series, a1: pd.Series, a2: pd.Series) -> pd.Series:
    """FUMA's uniqID 'chr:pos:A:B' with the two alleles in alphabetical order."""
    a1, a2 = a1.astype(str), a2.astype(str)
    lo, hi = np.where(a1 <= a2, a1, a2), np.where(a1 <= a2, a2, a1)
    return chrom.astype(str) + ":" + pos.astype(str) + ":" + pd.Series(lo, index=a1.index) + ":" + \
        pd.Series(hi, index=a1.index)


def chrom_out(chrom: pd.Series) -> pd.Series:
    chrom = chrom.astype(str)
    return chrom.astype(np.int64) if len(chrom) and chrom.str.fullmatch(r"\d+").all() else chrom


def gwas_rows(df: pd.DataFrame, ld: LDCalculator) -> np.ndarray:
    """(n_variants,) row of each LD-fileset variant in the prepared minP table, -1 if absent."""
    rows = np.full(ld.n_variants, -1, dtype=np.int64)
    panel = df["panel"].to_numpy()
    rows[panel[panel >= 0]] = np.flatnonzero(panel >= 0)
    return rows


def candidate_table(ind: list[IndSig], locus: np.ndarray, df: pd.DataFrame,
                    ld: LDCalculator) -> pd.DataFrame:
    """FUMA's snps.txt: one row per candidate SNP with its best independent SNP and locus."""
    if not ind:
        return pd.DataFrame(columns=list(CANDIDATE_COLUMNS))
    panel = np.concatenate([s.cand for s in ind])
    r2 = np.concatenate([s.cand_r2 for s in ind])
    which = np.concatenate([np.full(s.cand.size, k) for k, s in enumerate(ind)])
    order = np.lexsort((which, -r2, panel))  # per SNP: highest r², then the most significant index
    best = order[np.r_[True, panel[order][1:] != panel[order][:-1]]]
    panel, r2, which = panel[best], r2[best], which[best]
    bim = ld.variants.iloc[panel].reset_index(drop=True)
    rows = gwas_rows(df, ld)[panel]
    has = rows >= 0
    g = df.iloc[np.where(has, rows, 0)].reset_index(drop=True)
    out = pd.DataFrame({
        "uniqID": np.where(has, uniq_ids(g["chrom"], g["pos_bp"], g["a1"], g["a2"]),
                           uniq_ids(bim["chrom"], bim["pos_bp"], bim["a1"], bim["a2"])),
        "rsID": bim["snp"], "chr": chrom_out(bim["chrom"]), "pos": bim["pos_bp"].astype(np.int64),
        "non_effect_allele": np.where(has, g["a2"].astype(str), bim["a2"]),
        "effect_allele": np.where(has, g["a1"].astype(str), bim["a1"]),
        "MAF": np.where(has, g["maf"].astype(np.float64), ld.maf(panel)),
        "gwasP": np.where(has, g["p"], np.nan), "beta": np.where(has, g["beta"].astype(np.float64), np.nan),
        "se": np.where(has, g["se"].astype(np.float64), np.nan),
        "dim": pd.array(np.where(has, g["dim"], pd.NA), dtype="Int64"), "r2": r2,
        "IndSigSNP": df["snp"].to_numpy()[[ind[k].row for k in which]], "GenomicLocus": locus[which]})
    return out.sort_values(["GenomicLocus", "pos"], kind="stable", ignore_index=True)


def _snp_fields(df: pd.DataFrame, rows: list[int]) -> dict:
    sub = df.iloc[rows].reset_index(drop=True)
    return {"uniqID": uniq_ids(sub["chrom"], sub["pos_bp"], sub["a1"], sub["a2"]).to_numpy(),
            "rsID": sub["snp"].to_numpy(),
            "chr": chrom_out(sub["chrom"].reset_index(drop=True)).to_numpy(),
            "pos": sub["pos_bp"].to_numpy(np.int64), "p": sub["p"].to_numpy(np.float64)}


def ind_sig_table(ind: list[IndSig], locus: np.ndarray, df: pd.DataFrame) -> pd.DataFrame:
    """IndSigSNPs.txt: one row per independent significant SNP, by chromosome and position."""
    if not ind:
        return pd.DataFrame(columns=list(IND_SIG_COLUMNS))
    rows = [s.row for s in ind]
    out = pd.DataFrame({"GenomicLocus": locus, **_snp_fields(df, rows),
                        "nSNPs": [s.cand.size for s in ind],
                        "nGWASSNPs": [int(np.isin(s.cand, df["panel"].to_numpy()).sum()) for s in ind],
                        "dim": df["dim"].to_numpy()[rows].astype(np.int64),
                        "start": [s.start for s in ind], "end": [s.end for s in ind]})
    out = _order_by_position(out)
    out.insert(0, "No", np.arange(1, len(out) + 1))
    return out.loc[:, list(IND_SIG_COLUMNS)]


def _order_by_position(out: pd.DataFrame) -> pd.DataFrame:
    key = [chrom_key(str(c)) for c in out["chr"]]
    out = out.assign(_k0=[k[0] for k in key], _k1=[k[1] for k in key])
    out = out.sort_values(["_k0", "_k1", "pos"], kind="stable", ignore_index=True)
    return out.drop(columns=["_k0", "_k1"])


def lead_table(ind: list[IndSig], leads: list[tuple[int, list[int]]], locus: np.ndarray,
               df: pd.DataFrame) -> pd.DataFrame:
    """leadSNPs.txt: one row per lead SNP with the independent SNPs it carries."""
    if not leads:
        return pd.DataFrame(columns=list(LEAD_COLUMNS))
    snp = df["snp"].to_numpy()
    rows = [ind[k].row for k, _ in leads]
    out = pd.DataFrame({"GenomicLocus": locus[[k for k, _ in leads]], **_snp_fields(df, rows),
                        "nIndSigSNPs": [len(m) for _, m in leads],
                        "IndSigSNPs": [";".join(snp[ind[j].row] for j in m) for _, m in leads],
                        "dim": df["dim"].to_numpy()[rows].astype(np.int64)})
    out = _order_by_position(out)
    out.insert(0, "No", np.arange(1, len(out) + 1))
    return out.loc[:, list(LEAD_COLUMNS)]


def loci_table(ind: list[IndSig], leads: list[tuple[int, list[int]]], locus: np.ndarray, df: pd.DataFrame,
               cand: pd.DataFrame, cfg: ClumpConfig) -> pd.DataFrame:
    """GenomicRiskLoci.txt plus ``dim`` (of the top SNP) and ``dims`` (of its significant SNPs)."""
    if not ind:
        return pd.DataFrame(columns=list(LOCI_COLUMNS))
    snp, pos = df["snp"].to_numpy(), df["pos_bp"].to_numpy()
    is_lead = np.zeros(len(ind), dtype=bool)
    is_lead[[k for k, _ in leads]] = True
    records = []
    for g in range(1, int(locus.max()) + 1):
        members = sorted(np.flatnonzero(locus == g), key=lambda k: pos[ind[k].row])
        top = min(members)  # one chromosome, where ``ind`` is in order of p
        c = cand[cand["GenomicLocus"] == g]
        sig_dims = c.loc[c["gwasP"] <= cfg.sig_p, "dim"].dropna().astype(int).unique()
        records.append({
            "GenomicLocus": g, **{k: v[0] for k, v in _snp_fields(df, [ind[top].row]).items()},
            "start": min(ind[k].start for k in members), "end": max(ind[k].end for k in members),
            "nSNPs": len(c), "nGWASSNPs": int(c["gwasP"].notna().sum()),
            "nIndSigSNPs": len(members), "IndSigSNPs": ";".join(snp[ind[k].row] for k in members),
            "nLeadSNPs": int(is_lead[members].sum()),
            "LeadSNPs": ";".join(snp[ind[k].row] for k in members if is_lead[k]),
            "dim": int(df["dim"].iat[ind[top].row]), "dims": ";".join(str(d) for d in sorted(sig_dims))})
    return pd.DataFrame.from_records(records, columns=list(LOCI_COLUMNS))
