"""Sensors: a new cohort folder becomes a partition and an ingest run."""


import dagster as dg

from udip_assets.cohort.spec import COHORT_FILE
from udip_assets.defs.ingest import ingest_assets
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome

ingest_job = dg.define_asset_job(
    "ingest_cohort", selection=dg.AssetSelection.assets(*ingest_assets), description="Ingest one cohort."
)


@dg.sensor(job=ingest_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def new_cohort_sensor(context: dg.SensorEvaluationContext, home: UdipHome) -> dg.SensorResult:
    """Watch the configured home's ``cohorts/``: each folder with a ``cohort.yaml`` that is not yet a
    partition is added as one and ingested."""
    root = home.root() / "cohorts"
    found = sorted(q.parent.name for q in root.glob(f"*/{COHORT_FILE}"))
    known = set(context.instance.get_dynamic_partitions(cohort_partitions.name))
    new = [name for name in found if name not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=f"ingest-{name}") for name in new],
        dynamic_partitions_requests=[cohort_partitions.build_add_request(new)] if new else [],
    )
