"""FUMA's ``GenomicRiskLoci.txt``: written atomically in FUMA's columns, read back with FUMA's types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.atomic import atomic_path
from udip_assets.errors import SummaryStatsError
from udip_assets.genetics.clump_tables import FUMA_LOCI_COLUMNS, chrom_out

_INT_FUMA_COLUMNS = ("GenomicLocus", "pos", "start", "end", "nSNPs", "nGWASSNPs", "nIndSigSNPs", "nLeadSNPs")


def write_fuma_loci(loci: pd.DataFrame, path: Path | str) -> Path:
    """Write FUMA's ``GenomicRiskLoci.txt``: tab-separated, FUMA's 14 columns in FUMA's order.

    Extra columns (``dim``, ``dims``) are left out so FUMA-reading tools accept the file. The file
    is written to a temporary name and renamed, so a failed write leaves no partial file.
    """
    missing = [c for c in FUMA_LOCI_COLUMNS if c not in loci.columns]
    if missing:
        raise SummaryStatsError(f"loci lacks FUMA columns {missing}; pass ClumpResult.loci")
    path = Path(path)
    with atomic_path(path) as tmp:
        loci.loc[:, list(FUMA_LOCI_COLUMNS)].to_csv(tmp, sep="\t", index=False)
    return path


def read_fuma_loci(path: Path | str) -> pd.DataFrame:
    """Read a FUMA ``GenomicRiskLoci.txt`` (ours or FUMA's own) into FUMA's columns and types."""
    path = Path(path)
    if not path.is_file():
        raise SummaryStatsError(f"FUMA loci file {path} does not exist; write it with write_fuma_loci")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if tuple(df.columns) != FUMA_LOCI_COLUMNS:
        raise SummaryStatsError(f"{path} has columns {list(df.columns)}, expected FUMA's "
                                f"{list(FUMA_LOCI_COLUMNS)}; is it a GenomicRiskLoci.txt?")
    try:
        df = df.astype({c: np.int64 for c in _INT_FUMA_COLUMNS} | {"p": np.float64})
    except ValueError as exc:
        raise SummaryStatsError(f"{path} holds a non-numeric value in a numeric column: {exc}") from exc
    df["chr"] = chrom_out(df["chr"])
    return df
