"""Asset checks: the data-quality rules a cohort's partitions must meet, each with what it measured.

Every check is partitioned like its asset (one result per cohort). A *blocking* check stops what
follows in the same run when it fails, and automation waits for it (:mod:`udip_assets.defs.automation`):
blocking are the rules whose failure would poison every later result (most scans unusable,
related or split-crossing subjects, non-finite or collapsed UDIPs, a locus without a lead SNP).
The lambda GC bounds and the PerDI grid are warnings or errors a user should see, but they do
not invalidate what follows.
"""

import json

import dagster as dg
import nibabel as nib
import numpy as np

from udip_assets.cohort.ingest import zscore_summary
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.gwas import minp_sumstats
from udip_assets.defs.ingest import preprocessed_scans, scan_manifest, subjects
from udip_assets.defs.interpret import perdi_maps
from udip_assets.defs.model import udip_embeddings
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.genetics.relatedness import read_ukb_rel
from udip_assets.interpret.qc import effective_rank
from udip_assets.store.schema import model_udip_columns

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
MIN_USABLE_FRACTION = 0.9
LAMBDA_GC_BOUNDS = (0.9, 1.2)
# One PC holding all but 0.1 % of the UDIPs' variance: the encoder maps every scan to one line.
MAX_PC1_FRACTION = 0.999
LOCI = dg.AssetKey("genomic_risk_loci")  # an output of the clumping multi-asset


def _check(asset, description: str, blocking: bool):
    return dg.asset_check(asset=asset, description=description, blocking=blocking, partitions_def=cohort_partitions)


@_check(scan_manifest, f"At least {MIN_USABLE_FRACTION:.0%} of the cohort's scans are usable.", blocking=True)
def most_scans_usable(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    df = home.query("SELECT status, count(*) AS n FROM scans WHERE cohort = ? GROUP BY 1", [cohort])
    total = int(df["n"].sum())
    ok = int(df.loc[df["status"] == "ok", "n"].sum())
    frac = ok / total if total else 0.0
    return dg.AssetCheckResult(passed=total > 0 and frac >= MIN_USABLE_FRACTION, severity=ERROR, metadata={
        "n_scans": total, "ok_fraction": frac, "failure_rate": 1 - frac if total else 1.0,
        "by_status": dg.MetadataValue.json(dict(zip(df["status"], df["n"].astype(int).tolist(), strict=True)))})


@_check(subjects, "No two kept subjects are related above the kinship threshold.", blocking=True)
def kept_subjects_unrelated(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    spec = load_cohort(home.cohort_dir(cohort))
    if spec.relatedness is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "cohort has no kinship table"})
    kept = set(home.query("SELECT subject_id FROM subjects WHERE cohort = ? AND kept", [cohort])["subject_id"])
    threshold = _kinship_threshold(context, cohort)
    rel = read_ukb_rel(spec.relatedness)
    both = rel[rel["ID1"].astype(str).isin(kept) & rel["ID2"].astype(str).isin(kept) & (rel["Kinship"] > threshold)]
    return dg.AssetCheckResult(passed=both.empty, severity=ERROR, metadata={
        "n_kept": len(kept), "n_related_pairs_kept": len(both), "kinship_threshold": threshold})


@_check(subjects, "No subject is in two splits (training and GWAS subjects are disjoint, the paper's design).",
        blocking=True)
def no_subject_in_two_splits(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    rows = home.query("SELECT subject_id, count(DISTINCT split) AS n, count(*) AS rows FROM subjects "
                      "WHERE cohort = ? AND kept GROUP BY 1 HAVING count(DISTINCT split) > 1 OR count(*) > 1",
                      [cohort])
    by_split = home.query("SELECT split, count(*) AS n FROM subjects WHERE cohort = ? AND kept GROUP BY 1", [cohort])
    return dg.AssetCheckResult(passed=rows.empty, severity=ERROR, metadata={
        "n_crossing": len(rows), "examples": dg.MetadataValue.json(rows["subject_id"].head(5).tolist()),
        "by_split": dg.MetadataValue.json(dict(zip(by_split["split"], by_split["n"].astype(int).tolist(),
                                                   strict=True)))})


def _kinship_threshold(context: dg.AssetCheckExecutionContext, cohort: str) -> float:
    """The threshold ``subjects`` used for this cohort (SubjectsConfig.kinship_threshold), from its metadata."""
    meta = _latest_metadata(context, subjects.key, cohort)
    if "kinship_threshold" not in meta:
        raise dg.Failure(f"subjects has no materialization recording its kinship_threshold for cohort {cohort!r}; "
                         "re-materialize subjects")
    return float(meta["kinship_threshold"].value)


@_check(preprocessed_scans, "Cached volumes are z-scored: mean 0, sd 1 inside the mask.", blocking=False)
def caches_are_zscored(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    paths = home.query(
        "SELECT cache_path FROM preprocessed_scans WHERE cohort = ? AND status = 'ok' ORDER BY subject_id LIMIT 5",
        [cohort]
    )["cache_path"].tolist()
    if not paths:
        return dg.AssetCheckResult(passed=False, severity=ERROR, metadata={"note": "no cached scans"})
    stats = zscore_summary(paths)
    worst_mean = float(stats["mean"].abs().max())
    worst_sd = float((stats["sd"] - 1).abs().max())
    # float16 storage rounds each voxel by < 1e-3 relative; the mask is taken as the non-zero voxels.
    passed = worst_mean < 1e-2 and worst_sd < 1e-2
    return dg.AssetCheckResult(passed=passed, severity=ERROR,
                               metadata={"max_abs_mean": worst_mean, "max_abs_sd_minus_1": worst_sd})


def _latest_metadata(context, key: dg.AssetKey, cohort: str) -> dict:
    """The metadata of the asset's latest materialization of ``cohort`` (the one just checked); {} if none."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[cohort]), limit=1).records
    return dict(records[0].event_log_entry.asset_materialization.metadata) if records else {}


def _latest_model_id(context, key: dg.AssetKey, cohort: str) -> str:
    """The model_id the asset's latest materialization of ``cohort`` recorded."""
    meta = _latest_metadata(context, key, cohort)
    if "model_id" not in meta:
        raise dg.Failure(f"{key.to_user_string()} has no materialization with a model_id for cohort {cohort!r}")
    return str(meta["model_id"].value)


@_check(udip_embeddings, f"UDIPs are finite and not collapsed (PC1 holds < {MAX_PC1_FRACTION:.1%} of their "
        "variance).", blocking=True)
def udips_finite_and_not_collapsed(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    model_id = _latest_model_id(context, udip_embeddings.key, cohort)
    rows = home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    matrix = rows[model_udip_columns(rows)].to_numpy(np.float64)
    finite = bool(np.isfinite(matrix).all())
    spectrum = effective_rank(np.nan_to_num(matrix)) if len(matrix) > 1 else None
    pc1 = spectrum.pc1_fraction if spectrum else 1.0
    return dg.AssetCheckResult(passed=finite and pc1 < MAX_PC1_FRACTION, severity=ERROR, metadata={
        "model_id": model_id, "n_subjects": len(rows), "finite": finite, "pc1_fraction": pc1,
        "participation_ratio": spectrum.participation_ratio if spectrum else 0.0,
        "n_pcs_90": spectrum.n_pcs_90 if spectrum else 0, "n_pcs_99": spectrum.n_pcs_99 if spectrum else 0})


@_check(minp_sumstats, f"Genome-wide lambda GC of every UDIP dim within {LAMBDA_GC_BOUNDS} (inflation or "
        "deflation: structure or covariates to look at).", blocking=False)
def lambda_gc_within_bounds(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    model_id = _latest_model_id(context, minp_sumstats.key, cohort)
    path = home.root() / "artifacts" / "gwas_reports" / cohort / model_id / "lambda_gc.json"
    lambdas = np.asarray(json.loads(path.read_text())["lambda_gc"], dtype=np.float64)
    lo, hi = LAMBDA_GC_BOUNDS
    outside = [int(d) for d in np.flatnonzero((lambdas < lo) | (lambdas > hi))]
    return dg.AssetCheckResult(passed=not outside, severity=WARN, metadata={
        "model_id": model_id, "lambda_gc_min": float(lambdas.min()), "lambda_gc_max": float(lambdas.max()),
        "lambda_gc_median": float(np.median(lambdas)), "dims_outside": dg.MetadataValue.json(outside)})


@_check(LOCI, "Every genomic risk locus has at least one lead SNP, listed in lead_snps.", blocking=True)
def every_locus_has_a_lead_snp(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    model_id = _latest_model_id(context, LOCI, cohort)
    loci = home.query("SELECT method, \"GenomicLocus\" AS locus, \"nLeadSNPs\" AS n, \"LeadSNPs\" AS leads "
                      "FROM genomic_risk_loci WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    leads = set(home.query("SELECT \"rsID\" FROM lead_snps WHERE cohort = ? AND model_id = ?",
                           [cohort, model_id])["rsID"])
    bad = [f"{r.method}:{r.locus}" for r in loci.itertuples()
           if not r.n or not r.leads or not set(str(r.leads).split(";")) <= leads]
    return dg.AssetCheckResult(passed=not bad, severity=ERROR, metadata={
        "model_id": model_id, "n_loci": len(loci), "loci_without_lead": dg.MetadataValue.json(bad)})


@_check(perdi_maps, "Every PerDI map is a NIfTI on the cohort's template grid (shape and affine).", blocking=False)
def perdi_maps_on_template_grid(context: dg.AssetCheckExecutionContext, home: UdipHome) -> dg.AssetCheckResult:
    cohort = context.partition_key
    model_id = _latest_model_id(context, perdi_maps.key, cohort)
    grid = load_cohort(home.cohort_dir(cohort)).grid
    files = home.query("SELECT dim, nifti_path FROM perdi_dims WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    off = []
    for row in files.itertuples():
        img = nib.load(row.nifti_path)
        if img.shape != tuple(grid.shape) or not np.allclose(img.affine, grid.affine):
            off.append(int(row.dim))
    return dg.AssetCheckResult(passed=bool(len(files)) and not off, severity=ERROR, metadata={
        "model_id": model_id, "grid": grid.name, "n_maps": len(files), "dims_off_grid": dg.MetadataValue.json(off)})


ingest_checks = [most_scans_usable, kept_subjects_unrelated, no_subject_in_two_splits, caches_are_zscored]
result_checks = [udips_finite_and_not_collapsed, lambda_gc_within_bounds, every_locus_has_a_lead_snp,
                 perdi_maps_on_template_grid]
