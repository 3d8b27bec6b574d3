"""Search the run records a researcher might share (Dagster's event log, MLflow) for subject identifiers."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def cohort_ids(cohort_dir: Path) -> set[str]:
    """Every identifier the cohort ships: the covariate table's eids and the genotype .fam IIDs."""
    ids = set(pd.read_csv(cohort_dir / "covariates.csv", dtype=str)["eid"].dropna())
    for fam in cohort_dir.rglob("*.fam"):
        ids |= set(pd.read_csv(fam, sep=r"\s+", header=None, dtype=str)[1])
    return ids


def _texts(path: Path) -> Iterable[tuple[str, str]]:
    """(where, text) of every row of every table of a sqlite file, or of a plain file's bytes."""
    if path.suffix == ".db":
        with sqlite3.connect(path) as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                for row in con.execute(f'SELECT * FROM "{table}"'):
                    yield f"{path}:{table}", " ".join(
                        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
    else:
        yield str(path), path.read_bytes().decode("utf-8", "replace")


# A whole alphanumeric token, but not the fraction of a decimal number: an event's timestamp such as
# 1796197712.6454554 has seven digits after its point, and an eid is seven digits too.
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?<![0-9]\.)[A-Za-z0-9]+")


def id_tokens(text: str) -> Iterable[re.Match]:
    """The tokens of ``text`` an identifier could be: whole alphanumeric runs, fractional digits excluded."""
    return _TOKEN.finditer(text)


def find_ids(roots: Iterable[Path], ids: set[str]) -> list[str]:
    """'where: ...context...' for each occurrence of an identifier (as a whole token) under ``roots``."""
    found = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            for where, text in _texts(f):
                for m in id_tokens(text):
                    if m.group(0) in ids:
                        found.append(f"{where}: ...{text[max(0, m.start() - 80):m.end() + 40]}...")
                        break
    return found
