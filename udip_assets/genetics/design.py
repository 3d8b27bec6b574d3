"""Covariate design matrices for the GWAS, and PLINK 2 phenotype / covariate text files.

The paper's covariates: age (21003), sex (31), 10 genetic PCs (22009), ethnicity (21000), inverted
T1 contrast-to-noise ratio (25735) and assessment centre (54). Categorical ones (ethnicity, centre)
enter as one-hot columns with the most frequent level as reference; the intercept is added by the
engine, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.errors import CovariateError, UdipConfigError

PAPER_NUMERIC = ("age_years", "sex", *(f"pc{i}" for i in range(1, 11)), "inv_cnr")
PAPER_CATEGORICAL = ("ethnicity", "centre")


@dataclass(frozen=True)
class CovariateSpec:
    """Which ``subjects`` columns enter the model, as numbers or as one-hot categories."""

    numeric: tuple[str, ...] = PAPER_NUMERIC
    categorical: tuple[str, ...] = PAPER_CATEGORICAL
    min_level_count: int = field(default=5)

    def __post_init__(self) -> None:
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise UdipConfigError(f"covariates {sorted(overlap)} are listed as both numeric and categorical")
        if self.min_level_count < 1:
            raise UdipConfigError(f"min_level_count must be >= 1, got {self.min_level_count}")


def design_matrix(subjects: pd.DataFrame, spec: CovariateSpec) -> pd.DataFrame:
    """Covariate matrix (n_subjects, k), float64, one column per numeric covariate or dummy level.

    Parameters
    ----------
    subjects : DataFrame
        Rows of the ``subjects`` table (one per GWAS subject), with the columns ``spec`` names.
    spec : CovariateSpec

    Returns
    -------
    DataFrame
        Same index as ``subjects``; dummy columns are named ``{covariate}={level}``.

    Notes
    -----
    A categorical level seen fewer than ``min_level_count`` times is pooled with the reference
    (most frequent) level: a dummy for two subjects estimates nothing and costs a degree of freedom.
    Constant and collinear columns are left for the engine's rank check, which drops and names them.
    """
    missing = [c for c in (*spec.numeric, *spec.categorical) if c not in subjects.columns]
    if missing:
        raise CovariateError(f"covariate column(s) {missing} are not in the subjects table; "
                             f"it has {list(subjects.columns)}")
    out = pd.DataFrame(index=subjects.index)
    for col in spec.numeric:
        out[col] = pd.to_numeric(subjects[col], errors="coerce").astype(np.float64)
    for col in spec.categorical:
        levels = subjects[col].astype("string")
        counts = levels.value_counts()
        reference = counts.index[0] if len(counts) else None
        for level, n in counts.items():
            if level != reference and n >= spec.min_level_count:
                out[f"{col}={level}"] = (levels == level).astype(np.float64)
    bad = out.columns[out.isna().any()].tolist()
    if bad:
        raise CovariateError(
            f"covariate(s) {bad} have missing values for {int(out[bad].isna().any(axis=1).sum())} subjects; "
            "drop those subjects first (the subjects asset marks them dropped)"
        )
    return out


def read_plink2_table(path: Path | str) -> pd.DataFrame:
    """A PLINK 2 ``--pheno`` / ``--covar`` text file, indexed by IID.

    Accepts a header line starting ``#FID IID`` or ``#IID`` (or ``FID IID``), whitespace-separated;
    ``NA`` and PLINK's ``-9`` are missing.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep=r"\s+", na_values=["NA", "-9", "nan"], dtype={"IID": str, "#IID": str})
    except (OSError, pd.errors.ParserError) as exc:
        raise CovariateError(f"cannot read {path}: {exc}") from exc
    df.columns = [c.lstrip("#") for c in df.columns]
    if "IID" not in df.columns:
        raise CovariateError(f"{path} has no IID column (header {list(df.columns)[:4]}); "
                             "use PLINK 2's format: '#FID IID name1 name2 ...'")
    df["IID"] = df["IID"].astype(str)
    if df["IID"].duplicated().any():
        dup = df.loc[df["IID"].duplicated(), "IID"].head(5).tolist()
        raise CovariateError(f"{path} repeats IID(s) {dup}; each sample must appear once")
    return df.drop(columns=[c for c in ("FID",) if c in df.columns]).set_index("IID")


def write_plink2_table(path: Path | str, frame: pd.DataFrame) -> None:
    """Write ``frame`` (indexed by IID) as a PLINK 2 text file with a ``#FID IID ...`` header; NaN as NA."""
    out = frame.copy()
    out.insert(0, "IID", out.index.astype(str))
    out.insert(0, "#FID", out["IID"])
    out.to_csv(path, sep="\t", index=False, na_rep="NA", float_format="%.10g")
