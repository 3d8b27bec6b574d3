"""Ingest assets: scan_manifest -> subjects -> preprocessed_scans, one partition per cohort."""


import dagster as dg

from udip_assets.cohort.covariates import read_ukbb_table
from udip_assets.cohort.fingerprint import cohort_fingerprint
from udip_assets.cohort.ingest import preprocess_subjects, validate_cohort_scans
from udip_assets.cohort.spec import load_cohort
from udip_assets.cohort.splits import SplitConfig
from udip_assets.cohort.subjects import build_subjects
from udip_assets.defs.cohort_defaults import with_cohort_defaults
from udip_assets.defs.metadata import table_metadata
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.genetics.plink import read_fam
from udip_assets.genetics.relatedness import read_ukb_rel
from udip_assets.imaging.preprocess import PreprocessConfig
from udip_assets.paths import without_subject_ids
from udip_assets.store.schema import PREPROCESSED_SCANS, SCANS, SUBJECTS


@dg.asset(partitions_def=cohort_partitions, group_name="ingest", kinds={"duckdb", "nifti"})
def scan_manifest(context: dg.AssetExecutionContext, home: UdipHome) -> dg.MaterializeResult:
    """Every T1 scan of the cohort, validated (readable, grid and affine, finite, non-empty).

    A bad scan becomes a row with its status and reason; it never fails the run.
    """
    spec = load_cohort(home.cohort_dir(context.partition_key))
    fingerprint = cohort_fingerprint(spec)  # before reading: a file changed meanwhile makes it stale
    rows = validate_cohort_scans(spec)
    home.write(SCANS, rows, cohort=spec.name)
    by_status = rows["status"].value_counts().to_dict()
    bad = {k: int(v) for k, v in by_status.items() if k != "ok"}
    if bad:  # how many and why in the event log; which ones only in the (owner-only) warehouse
        context.log.warning(f"{sum(bad.values())} of {len(rows)} scans are not usable {bad}; list them with: udip sql "
                            f"\"SELECT subject_id, visit, status, error FROM scans WHERE cohort = '{spec.name}' "
                            "AND status != 'ok'\"")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "n_scans": len(rows),
            "n_ok": int(by_status.get("ok", 0)),
            "by_status": dg.MetadataValue.json({k: int(v) for k, v in by_status.items()}),
            "grid": spec.grid.name,
            "cohort_fingerprint": fingerprint,
            **table_metadata(home, SCANS, cohort=spec.name),
        }
    )


class SubjectsConfig(dg.Config):
    """Mirrors :class:`udip_assets.cohort.splits.SplitConfig` plus the kinship threshold."""

    train_fraction: float = SplitConfig().train_fraction
    val_fraction: float = SplitConfig().val_fraction
    train_count: int | None = None
    val_count: int | None = None
    split_seed: int = 0
    kinship_threshold: float = 0.0884

    def to_domain(self) -> SplitConfig:
        return SplitConfig(self.train_fraction, self.val_fraction, self.split_seed,
                           train_count=self.train_count, val_count=self.val_count)


@dg.asset(partitions_def=cohort_partitions, group_name="ingest", deps=[scan_manifest], kinds={"duckdb"})
def subjects(context: dg.AssetExecutionContext, config: SubjectsConfig, home: UdipHome) -> dg.MaterializeResult:
    """One row per subject: covariates of the last usable visit, unrelated set, train/val/inference split."""
    config = with_cohort_defaults(config, home, context.partition_key, "subjects")
    split = config.to_domain()
    spec = load_cohort(home.cohort_dir(context.partition_key))
    scans = home.query("SELECT subject_id, visit, path, status, error FROM scans WHERE cohort = ?", [spec.name])
    kinship = read_ukb_rel(spec.relatedness) if spec.relatedness else None
    fam = read_fam(spec.genotypes.with_name(spec.genotypes.name + ".fam"))
    rows = build_subjects(
        scans, read_ukbb_table(spec.covariates), fam["iid"].astype(str), kinship, split,
        kinship_threshold=config.kinship_threshold,
    )
    home.write(SUBJECTS, rows, cohort=spec.name)
    kept = rows[rows["kept"]]
    ids = set(rows["subject_id"].astype(str))
    reasons = (rows.loc[~rows["kept"], "drop_reason"].map(lambda r: without_subject_ids(r, ids))
               .str.split(":").str[0].str.slice(0, 60))
    return dg.MaterializeResult(
        metadata={
            "n_subjects": len(rows),
            "n_kept": len(kept),
            "kinship_threshold": config.kinship_threshold,
            "n_dropped": int((~rows["kept"]).sum()),
            "by_split": dg.MetadataValue.json({k: int(v) for k, v in kept["split"].value_counts().items()}),
            "drop_reasons": dg.MetadataValue.json({k: int(v) for k, v in reasons.value_counts().items()}),
            "config": dg.MetadataValue.json(config.model_dump()),
            **table_metadata(home, SUBJECTS, cohort=spec.name),
        }
    )


class PreprocessAssetConfig(dg.Config):
    """Mirrors :class:`udip_assets.imaging.preprocess.PreprocessConfig`."""

    patch: list[int] = list(PreprocessConfig().patch)
    cache_dtype: str = PreprocessConfig().cache_dtype

    def to_domain(self) -> PreprocessConfig:
        return PreprocessConfig(patch=tuple(self.patch), cache_dtype=self.cache_dtype)


@dg.asset(partitions_def=cohort_partitions, group_name="ingest", deps=[subjects], kinds={"duckdb", "numpy"})
def preprocessed_scans(
    context: dg.AssetExecutionContext, config: PreprocessAssetConfig, home: UdipHome
) -> dg.MaterializeResult:
    """Kept subjects' scans padded to whole patches, brain-masked, z-scored, cached as .npy."""
    cfg = config.to_domain()
    spec = load_cohort(home.cohort_dir(context.partition_key))
    kept = home.query(
        "SELECT subject_id, visit, scan_path, split FROM subjects WHERE cohort = ? AND kept ORDER BY subject_id",
        [spec.name],
    )
    previous = home.query("SELECT * FROM preprocessed_scans WHERE cohort = ?", [spec.name]) if _has_rows(home) else None
    cache_dir = home.artifacts("preprocessed", spec.name, f"{spec.grid.name}_{cfg.cache_dtype}")
    rows, failures = preprocess_subjects(kept, spec, cache_dir, cfg, previous=previous)
    if failures:
        context.log.error(f"{len(failures)} subjects could not be preprocessed; list them with: udip sql \"SELECT "
                          f"subject_id, reason FROM preprocessed_scans WHERE cohort = '{spec.name}' AND "
                          "status = 'failed'\"")
    home.write(PREPROCESSED_SCANS, rows, cohort=spec.name)
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    return dg.MaterializeResult(
        metadata={
            "n_scans": len(ok),
            "n_failed": len(failures),
            "cache_dir": dg.MetadataValue.path(str(cache_dir)),
            "shape": ok["shape"].iloc[0] if len(ok) else None,
            "seconds_per_scan": float(ok["seconds"].mean()) if len(ok) else None,
            "config": dg.MetadataValue.json(config.model_dump()),
            **table_metadata(home, PREPROCESSED_SCANS, cohort=spec.name),
        }
    )


def _has_rows(home: UdipHome) -> bool:
    tables = home.query("SELECT table_name FROM duckdb_tables() WHERE table_name = 'preprocessed_scans'")
    return not tables.empty


ingest_assets = [scan_manifest, subjects, preprocessed_scans]
