"""Covariates from a UK Biobank showcase-style table.

Columns are named ``{field}-{instance}.{array}`` as in a UKBB basket export: ``21003-2.0`` is age
at the instance-2 (first imaging) visit. Visit-dependent fields (age, inverted CNR, centre) are
read at the visit whose scan is kept; sex, genetic PCs and ethnicity come from instance 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from udip_assets.errors import CovariateError


@dataclass(frozen=True)
class UkbbField:
    """One covariate: its UKBB field id, whether it varies by visit, and our column name."""

    column: str
    field: int
    per_visit: bool
    array: int = 0
    optional: bool = False  # absent or empty does not drop the subject

    def source_column(self, visit: int) -> str:
        instance = visit if self.per_visit else 0
        return f"{self.field}-{instance}.{self.array}"


COVARIATE_FIELDS: tuple[UkbbField, ...] = (
    UkbbField("age_years", 21003, per_visit=True),
    UkbbField("sex", 31, per_visit=False),
    *(UkbbField(f"pc{i}", 22009, per_visit=False, array=i) for i in range(1, 11)),
    UkbbField("ethnicity", 21000, per_visit=False),
    UkbbField("inv_cnr", 25735, per_visit=True),
    UkbbField("centre", 54, per_visit=True),
    # Volumetric scaling from the T1 head image to standard space: head size, which the linear
    # registration to MNI removes from the image. Not a default GWAS covariate (the paper's list
    # lacks it); there for users who want it (CovariateSpec).
    UkbbField("head_size_scaling", 25000, per_visit=True, optional=True),
)
COVARIATE_COLUMNS = tuple(f.column for f in COVARIATE_FIELDS)
INTEGER_COVARIATES = ("sex", "ethnicity", "centre")


def read_ukbb_table(path) -> pd.DataFrame:
    """Read the covariate CSV (or tab-separated file), ``eid`` as string; fail naming the file."""
    sep = "\t" if str(path).endswith((".tsv", ".tab", ".txt")) else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype={"eid": str})
    except (OSError, pd.errors.ParserError) as exc:
        raise CovariateError(f"cannot read the covariate table {path}: {exc}") from exc
    if "eid" not in df.columns:
        raise CovariateError(
            f"the covariate table {path} has no 'eid' column; its columns start {list(df.columns)[:5]}. "
            "Name the subject id column 'eid' as in a UK Biobank export"
        )
    return df


def deduplicate_eids(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Collapse repeated ``eid`` rows.

    Identical repeats are merged silently; repeats that disagree make the subject unusable (we
    cannot know which row is right) and are returned as ``{eid: reason}``.
    """
    dup_mask = table["eid"].duplicated(keep=False)
    if not dup_mask.any():
        return table, {}
    conflicts: dict[str, str] = {}
    for eid, rows in table[dup_mask].groupby("eid"):
        if len(rows.drop_duplicates()) > 1:
            differing = [c for c in rows.columns if rows[c].nunique(dropna=False) > 1]
            conflicts[str(eid)] = (
                f"eid {eid} appears {len(rows)} times in the covariate table with different values "
                f"(columns {differing[:4]}); fix the export so each eid has one row"
            )
    clean = table.drop_duplicates(subset="eid", keep="first")
    clean = clean[~clean["eid"].isin(list(conflicts))]
    return clean, conflicts


def covariates_at_visit(table: pd.DataFrame, eids: pd.Series, visits: pd.Series) -> pd.DataFrame:
    """Covariates of each (eid, visit) pair, in our column names.

    Parameters
    ----------
    table : DataFrame
        Deduplicated UKBB-style table with an ``eid`` column.
    eids, visits : Series
        The subjects and the visit (instance) whose covariates to read, aligned.

    Returns
    -------
    DataFrame
        Index aligned with ``eids``; columns ``COVARIATE_COLUMNS`` plus ``missing`` (the first UKBB
        column that is absent or empty for that row, or None), and ``in_table``.
    """
    indexed = table.set_index("eid")
    out = pd.DataFrame(index=eids.index, columns=list(COVARIATE_COLUMNS), dtype="float64")
    missing = pd.Series([None] * len(eids), index=eids.index, dtype=object)
    in_table = eids.isin(indexed.index)
    for f in COVARIATE_FIELDS:
        for visit in sorted(set(visits)):
            rows = (visits == visit) & in_table
            src = f.source_column(int(visit))
            if src not in indexed.columns:
                values = pd.Series(np.nan, index=eids.index[rows])
            else:
                values = pd.to_numeric(indexed.loc[eids[rows], src], errors="coerce").to_numpy()
                values = pd.Series(values, index=eids.index[rows])
            out.loc[rows, f.column] = values
            if not f.optional:
                gap = rows & out[f.column].isna() & missing.isna()
                missing[gap] = src
    out["missing"] = missing
    out["in_table"] = in_table
    return out
