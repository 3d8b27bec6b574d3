"""Sensors: a new cohort folder becomes a partition and an ingest run; a changed one is ingested again.

The rest of the graph follows on its own: the assets after ingest carry ``AutomationCondition``\\ s
(:mod:`udip_assets.defs.automation`) that Dagster's automation sensor evaluates while the daemon
runs (``make ui`` starts it).
"""

import dagster as dg

from udip_assets.cohort.fingerprint import cohort_fingerprint
from udip_assets.cohort.spec import COHORT_FILE, check_cohort, format_problems
from udip_assets.defs.ingest import ingest_assets, scan_manifest
from udip_assets.defs.partitions import add_cohort_partitions
from udip_assets.defs.resources import UdipHome

ingest_job = dg.define_asset_job(
    "ingest_cohort", selection=dg.AssetSelection.assets(*ingest_assets), description="Ingest one cohort."
)


def ingested_fingerprint(instance: dg.DagsterInstance, cohort: str) -> str | None:
    """The cohort fingerprint (data version) of the latest ``scan_manifest`` materialization, if any."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=scan_manifest.key, asset_partitions=[cohort]), limit=1).records
    if not records:
        return None
    return records[0].event_log_entry.asset_materialization.tags.get("dagster/data_version")


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_cohort_sensor(context: dg.SensorEvaluationContext, home: UdipHome) -> dg.SensorResult:
    """Watch the configured home's ``cohorts/``. A folder with a valid ``cohort.yaml`` that is not a
    partition yet is added (with its genotyped chromosomes) and ingested; a known cohort whose input
    files changed since its last ingest (:func:`~udip_assets.cohort.fingerprint.cohort_fingerprint`)
    is ingested again. An invalid ``cohort.yaml`` starts nothing: its problems are the skip reason."""
    requests, refused = [], []
    for yml in sorted((home.root() / "cohorts").glob(f"*/{COHORT_FILE}")):
        spec, problems = check_cohort(yml)
        if problems:
            refused.append(format_problems(problems))
            continue
        fingerprint = cohort_fingerprint(spec)
        before = ingested_fingerprint(context.instance, spec.name)
        if before == fingerprint:
            continue
        add_cohort_partitions(context.instance, spec)
        reason = "new cohort" if before is None else "cohort files changed"
        requests.append(dg.RunRequest(partition_key=spec.name, run_key=f"ingest-{spec.name}-{fingerprint}",
                                      tags={"udip/trigger": reason}))
    for message in refused:
        context.log.warning(message)
    if not requests:
        return dg.SensorResult(skip_reason="\n".join(refused) or "no new or changed cohort")
    return dg.SensorResult(run_requests=requests)
