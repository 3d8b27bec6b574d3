"""Score discovered loci against a synthetic cohort's planted truth.

Notes
-----
A planted SNP is *found* when a genomic risk locus on its chromosome spans its position
(``start <= pos_bp <= end``), the rule the loci issue states. A locus is *true* when a planted SNP lies
within its span widened by ``near_bp`` on each side (LD blocks of a causal SNP can end just short of
it when the causal SNP itself is not the lead). Recall is over planted SNPs marked ``detectable``;
precision is over all loci.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class TruthScore:
    """Recall of detectable planted SNPs and precision of loci."""

    n_detectable: int
    n_found_detectable: int
    n_found_any: int
    n_loci: int
    n_true_loci: int
    found: tuple[str, ...]
    missed: tuple[str, ...]

    @property
    def recall(self) -> float:
        return self.n_found_detectable / self.n_detectable if self.n_detectable else float("nan")

    @property
    def precision(self) -> float:
        return self.n_true_loci / self.n_loci if self.n_loci else float("nan")


def load_truth(path: Path) -> pd.DataFrame:
    """The ``causal`` list of a ``truth.json`` as a DataFrame."""
    return pd.DataFrame(json.loads(Path(path).read_text())["causal"])


def score_loci(loci: pd.DataFrame, truth: pd.DataFrame, near_bp: int = 250_000) -> TruthScore:
    """Compare FUMA-style loci (``chr, start, end``) with planted SNPs (``snp, chrom, pos_bp, detectable``)."""
    def spans(pos_col_lo, pos_col_hi, chrom, pos):
        same = loci["chr"].astype(int) == int(chrom)
        return bool(((loci.loc[same, pos_col_lo] <= pos) & (pos <= loci.loc[same, pos_col_hi])).any())

    widened = loci.assign(lo=loci["start"] - near_bp, hi=loci["end"] + near_bp)
    found = [r.snp for r in truth.itertuples() if len(loci) and spans("start", "end", r.chrom, r.pos_bp)]
    detectable = truth[truth["detectable"]]
    n_true = sum(
        any(int(t.chrom) == int(row.chr) and row.lo <= t.pos_bp <= row.hi for t in truth.itertuples())
        for row in widened.itertuples()
    )
    return TruthScore(
        n_detectable=len(detectable),
        n_found_detectable=int(detectable["snp"].isin(found).sum()),
        n_found_any=len(found),
        n_loci=len(loci),
        n_true_loci=int(n_true),
        found=tuple(found),
        missed=tuple(detectable.loc[~detectable["snp"].isin(found), "snp"]),
    )


def true_region_phenotypes(path: Path) -> pd.DataFrame:
    """The generator's per-subject morphology (``truth_subjects.csv``) as phenotypes, one row per subject.

    Columns: each region's log-volume (``vol_<region>``) and stretch (``stretch_<region>``), from
    the subject's last visit (the visit the pipeline keeps), indexed by subject id (str). These are
    what the planted SNPs act on, so a GWAS of them is the ceiling a GWAS of UDIPs can reach.
    """
    table = pd.read_csv(path, dtype={"eid": str})
    if not {"eid", "visit", "morphology"} <= set(table.columns):
        raise ValueError(f"{path} lacks columns eid, visit, morphology; is it a udip synth truth_subjects.csv?")
    last = table.sort_values(["eid", "visit"]).drop_duplicates("eid", keep="last")
    rows = []
    for morph in last["morphology"]:
        parsed = json.loads(morph)
        row = {f"vol_{r}": v for r, v in parsed.get("region_log_volume", {}).items()}
        row.update({f"stretch_{r}": v for r, v in parsed.get("region_stretch", {}).items()})
        rows.append(row)
    out = pd.DataFrame(rows, index=pd.Index(last["eid"].astype(str), name="subject_id")).astype("float64")
    return out.loc[:, out.notna().all() & (out.std() > 0)]
