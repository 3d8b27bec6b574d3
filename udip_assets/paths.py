"""Where runtime state lives.

Everything the platform writes goes under one home folder: ``$UDIP_HOME`` if set, else ``.udip/``
in the current project root. Functions, not module constants, so the environment is read when a
path is needed rather than at import.
"""

from __future__ import annotations

import os
from pathlib import Path


def udip_home() -> Path:
    """The root of all runtime state (``$UDIP_HOME`` or ``./.udip``), as an absolute path."""
    env = os.environ.get("UDIP_HOME")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / ".udip").resolve()


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
