"""Asset checks: data-quality rules each ingest partition must meet."""


import dagster as dg

from udip_assets.cohort.ingest import zscore_summary
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.ingest import preprocessed_scans, scan_manifest, subjects
from udip_assets.defs.resources import UdipHome
from udip_assets.genetics.relatedness import read_ukb_rel


@dg.asset_check(asset=scan_manifest, description="At least 90% of the cohort's scans are usable.")
def most_scans_usable(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = _partition(context)
    df = home.query("SELECT status, count(*) AS n FROM scans WHERE cohort = ? GROUP BY 1", [cohort])
    total = int(df["n"].sum())
    ok = int(df.loc[df["status"] == "ok", "n"].sum())
    frac = ok / total if total else 0.0
    return dg.AssetCheckResult(passed=total > 0 and frac >= 0.9, metadata={"n_scans": total, "ok_fraction": frac})


@dg.asset_check(asset=subjects, description="No two kept subjects are related above the kinship threshold.")
def kept_subjects_unrelated(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = _partition(context)
    spec = load_cohort(home.cohort_dir(cohort))
    if spec.relatedness is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "cohort has no kinship table"})
    kept = set(home.query("SELECT subject_id FROM subjects WHERE cohort = ? AND kept", [cohort])["subject_id"])
    threshold = _kinship_threshold(context, cohort)
    rel = read_ukb_rel(spec.relatedness)
    both = rel[rel["ID1"].astype(str).isin(kept) & rel["ID2"].astype(str).isin(kept) & (rel["Kinship"] > threshold)]
    return dg.AssetCheckResult(passed=both.empty, metadata={"n_kept": len(kept), "n_related_pairs_kept": len(both),
                                                            "kinship_threshold": threshold})


def _kinship_threshold(context: dg.AssetCheckExecutionContext, cohort: str) -> float:
    """The threshold ``subjects`` used for this cohort (SubjectsConfig.kinship_threshold), from its metadata."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=subjects.key, asset_partitions=[cohort]), limit=1).records
    meta = records[0].event_log_entry.asset_materialization.metadata if records else {}
    if "kinship_threshold" not in meta:
        raise dg.Failure(f"subjects has no materialization recording its kinship_threshold for cohort {cohort!r}; "
                         "re-materialize subjects")
    return float(meta["kinship_threshold"].value)


@dg.asset_check(asset=preprocessed_scans, description="Cached volumes are z-scored: mean 0, sd 1 inside the mask.")
def caches_are_zscored(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = _partition(context)
    paths = home.query(
        "SELECT cache_path FROM preprocessed_scans WHERE cohort = ? AND status = 'ok' ORDER BY subject_id LIMIT 5",
        [cohort]
    )["cache_path"].tolist()
    if not paths:
        return dg.AssetCheckResult(passed=False, metadata={"note": "no cached scans"})
    stats = zscore_summary(paths)
    worst_mean = float(stats["mean"].abs().max())
    worst_sd = float((stats["sd"] - 1).abs().max())
    # float16 storage rounds each voxel by < 1e-3 relative; the mask is taken as the non-zero voxels.
    passed = worst_mean < 1e-2 and worst_sd < 1e-2
    return dg.AssetCheckResult(passed=passed, metadata={"max_abs_mean": worst_mean, "max_abs_sd_minus_1": worst_sd})


def _partition(context: dg.AssetCheckExecutionContext) -> str:
    # Checks of a partitioned asset run once per run: in our runs, one cohort partition.
    return context.run.tags.get("dagster/partition") or ""


ingest_checks = [most_scans_usable, kept_subjects_unrelated, caches_are_zscored]
