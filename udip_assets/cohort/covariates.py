"""Covariates from a UK Biobank showcase-style table.

Columns are named ``{field}-{instance}.{array}`` as in a UKBB basket export: ``21003-2.0`` is age
at the instance-2 (first imaging) visit. Visit-dependent fields (age, inverted CNR, centre) are
read at the visit whose scan is kept; sex, genetic PCs and ethnicity come from instance 0.
"""

from __future__ import annotations

import re
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
    """Read the covariate CSV (or tab-separated file), ``eid`` as string; fail naming the file.

    Raises
    ------
    CovariateError
        The file cannot be parsed, has no ``eid`` column, lacks a covariate field altogether, or
        holds text in a covariate column; the message lists every such problem (columns, values
        and line numbers, never a subject's eid) and the fix.
    """
    sep = "\t" if str(path).endswith((".tsv", ".tab", ".txt")) else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype={"eid": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CovariateError(f"cannot read the covariate table {path}: {exc}") from exc
    if "eid" not in df.columns:
        raise CovariateError(
            f"the covariate table {path} has no 'eid' column; its columns start {list(df.columns)[:5]}. "
            "Name the subject id column 'eid' as in a UK Biobank export"
        )
    problems = [*_missing_fields(df.columns), *_text_in_numbers(df)]
    if problems:
        raise CovariateError(
            f"the covariate table {path} cannot be used: " + "; ".join(problems) + ". Fix the export (UK Biobank "
            "names columns field-instance.array, e.g. 21003-2.0 for age at the first imaging visit, and codes "
            "every covariate as a number; leave a value empty when it is unknown) and materialize ingest again"
        )
    return df


def missing_fields(columns) -> list[str]:
    """The required covariate fields without any column in ``columns``, as 'UKBB name (our name)'."""
    cols = set(map(str, columns))
    out = []
    for f in COVARIATE_FIELDS:
        if f.optional:
            continue
        if f.per_visit:
            present = any(c.startswith(f"{f.field}-") and c.endswith(f".{f.array}") for c in cols)
        else:
            present = f.source_column(0) in cols
        if not present:
            out.append(f"{f.source_column(2) if f.per_visit else f.source_column(0)} ({f.column})")
    return out


def _missing_fields(columns) -> list[str]:
    missing = missing_fields(columns)
    if not missing:
        return []
    return [f"no column for {len(missing)} required field(s): {', '.join(missing)}; its columns start "
            f"{[c for c in columns if c != 'eid'][:5]}"]


def _text_in_numbers(table: pd.DataFrame) -> list[str]:
    """One problem per covariate column holding values that are neither empty nor numbers."""
    fields = {f.field: f for f in COVARIATE_FIELDS}
    out = []
    for col in table.columns:
        name = re.fullmatch(r"(\d+)-(\d+)\.(\d+)", str(col))  # field-instance.array
        field = fields.get(int(name[1])) if name else None
        if field is None or int(name[3]) != field.array:
            continue
        values = table[col]
        if pd.api.types.is_numeric_dtype(values):
            continue
        text = values.astype("string").str.strip()
        bad = text.notna() & (text != "") & pd.to_numeric(text, errors="coerce").isna()
        if bad.any():
            lines = [str(i + 2) for i in np.flatnonzero(bad.to_numpy())[:3]]  # line 1 is the header
            shown = [str(v) for v in pd.unique(text[bad])[:3]]
            out.append(f"column {col} ({field.column}) holds text where a number belongs: {', '.join(map(repr, shown))}"
                       f" on {int(bad.sum())} row(s), first on line(s) {', '.join(lines)}")
    return out


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
