"""Where runtime state lives.

Everything the platform writes goes under one home folder: ``$UDIP_HOME`` if set, else ``.udip/``
in the current project root. Functions, not module constants, so the environment is read when a
path is needed rather than at import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path


def udip_home() -> Path:
    """The root of all runtime state (``$UDIP_HOME`` or ``./.udip``), as an absolute path."""
    env = os.environ.get("UDIP_HOME")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / ".udip").resolve()


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by the owner only (0700); an existing folder is left as is.

    The home holds subject-level data (scans, UDIPs, the warehouse), so a folder udip creates is
    private; a folder the user made (e.g. a group-shared ``UDIP_HOME``) keeps its mode.
    """
    path = Path(path)
    if not path.is_dir():
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path


def warehouse_path() -> Path:
    """The DuckDB warehouse file."""
    return udip_home() / "warehouse.duckdb"


def cohorts_dir() -> Path:
    """Folder holding one sub-folder per cohort (each with its ``cohort.yaml``)."""
    return udip_home() / "cohorts"


def artifacts_dir() -> Path:
    """Folder for derived files: preprocessed caches, figures, checkpoints, summary statistics."""
    return udip_home() / "artifacts"


def dagster_home() -> Path:
    """DAGSTER_HOME used by ``make ui`` and ``udip materialize``."""
    return udip_home() / "dagster"


def mlflow_db_path() -> Path:
    """The sqlite file behind MLflow tracking."""
    return udip_home() / "mlflow.db"


_TOKEN = re.compile(r"[A-Za-z0-9]+")


def without_subject_ids(text: str, subject_ids: Iterable[str] | set[str]) -> str:
    """``text`` with every token that is one of ``subject_ids`` replaced by ``<subject>``.

    What goes to Dagster's event log and MLflow says how many and why, never who: a reason such
    as "related to 1234567 (kinship 0.12 > 0.0884)" becomes "related to <subject> (...)". The
    warehouse (owner-only) keeps the identifiers.
    """
    ids = subject_ids if isinstance(subject_ids, set) else set(map(str, subject_ids))
    return _TOKEN.sub(lambda m: "<subject>" if m.group(0) in ids else m.group(0), str(text))
