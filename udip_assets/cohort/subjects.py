"""From scans, covariates, genotypes and kinship to one row per subject: kept, or dropped and why.

The order of the filters is the order of the reasons: a subject is dropped for the first rule it
fails, so ``drop_reason`` names the most basic problem.

1. no usable scan (every scan of the subject failed validation);
2. duplicated eid with conflicting covariate rows;
3. no covariate row, or a covariate missing at the kept visit;
4. no genotypes (eid absent from the ``.fam``);
5. related to a kept subject (greedy pruning at kinship > threshold among subjects passing 1-4).

Kept subjects are then split into train / val / inference (see :mod:`udip_assets.cohort.splits`).
Dropping relatives before the split also keeps families from straddling train and inference.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from udip_assets.cohort.covariates import (
    COVARIATE_COLUMNS,
    INTEGER_COVARIATES,
    covariates_at_visit,
    deduplicate_eids,
)
from udip_assets.cohort.splits import SplitConfig, assign_splits
from udip_assets.errors import UdipConfigError
from udip_assets.genetics.relatedness import select_unrelated


def choose_visits(scans: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: the last visit with a usable scan, or the reason there is none.

    Parameters
    ----------
    scans : DataFrame
        The ``scans`` table for one cohort: ``subject_id, visit, path, status, error``.

    Returns
    -------
    DataFrame
        ``subject_id, visit, scan_path, n_visits, scan_problem`` (None when a scan is usable).
    """
    rows = []
    for subject_id, group in scans.groupby("subject_id", sort=True):
        ok = group[group["status"] == "ok"].sort_values("visit")
        if len(ok):
            last = ok.iloc[-1]
            rows.append((subject_id, int(last["visit"]), last["path"], len(group), None))
        else:
            worst = group.sort_values("visit").iloc[-1]
            problem = f"no usable scan: visit {int(worst['visit'])} is {worst['status']} ({worst['error']})"
            rows.append((subject_id, None, None, len(group), problem))
    return pd.DataFrame(rows, columns=["subject_id", "visit", "scan_path", "n_visits", "scan_problem"])


def build_subjects(
    scans: pd.DataFrame,
    covariate_table: pd.DataFrame,
    genotyped_ids: Iterable[str],
    kinship: pd.DataFrame | None,
    split: SplitConfig,
    kinship_threshold: float = 0.0884,
) -> pd.DataFrame:
    """The ``subjects`` table for one cohort (without the ``cohort`` column).

    Parameters
    ----------
    scans : DataFrame
        Validated scans (``subject_id, visit, path, status, error``).
    covariate_table : DataFrame
        The UKBB-style covariate table as read (``eid`` plus field columns).
    genotyped_ids : iterable of str
        IIDs present in the genotype ``.fam``.
    kinship : DataFrame or None
        ``ukb_rel.dat``-style pairs (``ID1, ID2, Kinship``); None when the cohort has none.
    split : SplitConfig
        Train / val / inference fractions and seed.
    kinship_threshold : float
        Pairs above this kinship are related (0.0884: second degree or closer, as UKBB).
    """
    if not 0.0 < kinship_threshold < 0.5:
        raise UdipConfigError(f"kinship_threshold must be in (0, 0.5), got {kinship_threshold}")
    subjects = choose_visits(scans)
    table, conflicts = deduplicate_eids(covariate_table)
    visit_for_lookup = subjects["visit"].fillna(2).astype(int)
    cov = covariates_at_visit(table, subjects["subject_id"], visit_for_lookup)
    subjects = pd.concat([subjects, cov[list(COVARIATE_COLUMNS)]], axis=1)
    genotyped = set(map(str, genotyped_ids))
    subjects["has_genotypes"] = subjects["subject_id"].isin(genotyped)

    reasons = subjects["scan_problem"].copy()
    for i, sid in subjects["subject_id"].items():
        if reasons[i] is not None:
            continue
        if sid in conflicts:
            reasons[i] = conflicts[sid]
        elif not cov.at[i, "in_table"]:
            reasons[i] = f"eid {sid} has no row in the covariate table"
        elif cov.at[i, "missing"] is not None:
            reasons[i] = f"covariate {cov.at[i, 'missing']} is missing for visit {subjects.at[i, 'visit']}"
        elif not subjects.at[i, "has_genotypes"]:
            reasons[i] = f"eid {sid} has no genotypes (absent from the .fam file)"
    candidates = subjects.loc[reasons.isna(), "subject_id"].tolist()
    if kinship is not None and len(kinship):
        _, related = select_unrelated(candidates, kinship, threshold=kinship_threshold)
        for i, sid in subjects["subject_id"].items():
            if sid in related:
                reasons[i] = related[sid]
    subjects["drop_reason"] = reasons
    subjects["kept"] = reasons.isna()
    subjects["split"] = None
    kept_ids = subjects.loc[subjects["kept"], "subject_id"]
    subjects.loc[subjects["kept"], "split"] = assign_splits(kept_ids, split).to_numpy()
    for col in INTEGER_COVARIATES:
        subjects[col] = subjects[col].round().astype("Int64")
    subjects["visit"] = subjects["visit"].astype("Int64")
    return subjects.drop(columns=["scan_problem"])
