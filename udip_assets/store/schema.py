"""The warehouse schema: every table, its grain, its columns.

Key columns carry the same name in every table (``cohort``, ``subject_id``, ``visit``, ``split``,
``model_id``, ``dim``, ``snp``, ...). Each table's grain is stored as its DuckDB comment, so
``SELECT table_name, comment FROM duckdb_tables()`` documents the warehouse from inside it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """A warehouse table.

    Parameters
    ----------
    name : str
        Table name.
    grain : str
        What one row is ("one row per ..."); stored as the table comment.
    columns : tuple of (name, duckdb type)
        Columns in order.
    partition_by : tuple of str
        Columns that identify one partition's rows; a re-run deletes exactly these rows and inserts
        the new ones in one transaction.
    key : tuple of str
        Columns that are unique together (checked after each write).
    """

    name: str
    grain: str
    columns: tuple[tuple[str, str], ...]
    partition_by: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


_PC_COLUMNS = tuple((f"pc{i}", "DOUBLE") for i in range(1, 11))

SCANS = Table(
    name="scans",
    grain="one row per scan file found for a cohort (cohort, subject_id, visit, path)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER NOT NULL"),
        ("path", "VARCHAR NOT NULL"),
        ("status", "VARCHAR NOT NULL"),
        ("error", "VARCHAR"),
        ("shape", "VARCHAR"),
        ("voxel_mm", "VARCHAR"),
        ("n_nonzero", "BIGINT"),
        ("mean_intensity", "DOUBLE"),
        ("checked_at", "TIMESTAMP NOT NULL"),
    ),
    partition_by=("cohort",),
    key=("cohort", "path"),
)

SUBJECTS = Table(
    name="subjects",
    grain="one row per subject (eid) in a cohort, with the covariates of its kept visit, its split, "
    "and whether it was kept or why it was dropped",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER"),
        ("scan_path", "VARCHAR"),
        ("age_years", "DOUBLE"),
        ("sex", "INTEGER"),
        *_PC_COLUMNS,
        ("ethnicity", "INTEGER"),
        ("inv_cnr", "DOUBLE"),
        ("centre", "INTEGER"),
        ("has_genotypes", "BOOLEAN NOT NULL"),
        ("n_visits", "INTEGER NOT NULL"),
        ("kept", "BOOLEAN NOT NULL"),
        ("drop_reason", "VARCHAR"),
        ("split", "VARCHAR"),
    ),
    partition_by=("cohort",),
    key=("cohort", "subject_id"),
)

PREPROCESSED_SCANS = Table(
    name="preprocessed_scans",
    grain="one row per kept subject's scan in a cohort, preprocessed (padded, masked, z-scored) into "
    "the training cache",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER NOT NULL"),
        ("split", "VARCHAR NOT NULL"),
        ("source_path", "VARCHAR NOT NULL"),
        ("cache_path", "VARCHAR NOT NULL"),
        ("shape", "VARCHAR NOT NULL"),
        ("n_mask_voxels", "BIGINT NOT NULL"),
        ("raw_mean", "DOUBLE"),
        ("raw_sd", "DOUBLE"),
        ("seconds", "DOUBLE"),
    ),
    partition_by=("cohort",),
    key=("cohort", "subject_id"),
)

N_UDIP_DIMS = 128
UDIP_COLUMNS = tuple(f"udip_{d:03d}" for d in range(N_UDIP_DIMS))

TRAINING_EPOCHS = Table(
    name="training_epochs",
    grain="one row per training run x epoch (losses, learning rate, seconds, scans/s)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("run_id", "VARCHAR NOT NULL"),
        ("epoch", "INTEGER NOT NULL"),
        ("train_loss", "DOUBLE"),
        ("val_loss", "DOUBLE"),
        ("lr", "DOUBLE"),
        ("seconds", "DOUBLE"),
        ("scans_per_s", "DOUBLE"),
    ),
    partition_by=("cohort", "run_id"),
    key=("cohort", "run_id", "epoch"),
)

CHECKPOINTS = Table(
    name="checkpoints",
    grain="one row per saved model (model_id = training run + epoch)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("run_id", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("epoch", "INTEGER NOT NULL"),
        ("path", "VARCHAR NOT NULL"),
        ("mlflow_run_id", "VARCHAR"),
        ("val_loss", "DOUBLE"),
        ("is_best", "BOOLEAN NOT NULL"),
        ("loci_count", "INTEGER"),
        ("config_json", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
    ),
    partition_by=("cohort", "run_id"),
    key=("model_id",),
)

UDIPS = Table(
    name="udips",
    grain="one row per subject x model_id: the 128 ViT-UDIPs of the subject's kept scan and its "
    "reconstruction loss",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER"),
        ("split", "VARCHAR"),
        ("recon_loss", "DOUBLE"),
        *((c, "FLOAT") for c in UDIP_COLUMNS),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "subject_id"),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (SCANS, SUBJECTS, PREPROCESSED_SCANS, TRAINING_EPOCHS, CHECKPOINTS, UDIPS)
}
