"""The one Definitions object: assets, checks, resources, sensors, jobs and the executor."""

import dagster as dg

from udip_assets.defs.automation import automation_sensor, with_automation
from udip_assets.defs.checks import ingest_checks, result_checks
from udip_assets.defs.compute import Compute, run_executor
from udip_assets.defs.dbt import dbt_annotations, dbt_resource
from udip_assets.defs.gwas import gwas_assets
from udip_assets.defs.ingest import ingest_assets
from udip_assets.defs.interpret import interpret_assets
from udip_assets.defs.lineage import LINEAGE_IO, LineageIOManager
from udip_assets.defs.loci import loci_assets
from udip_assets.defs.model import model_assets
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.selection import selection_assets
from udip_assets.defs.sensors import ingest_job, new_cohort_sensor
from udip_assets.defs.tracking import MlflowTracking

all_assets = with_automation([*ingest_assets, *model_assets, *selection_assets, *gwas_assets, *loci_assets,
                              dbt_annotations, *interpret_assets])
all_checks = [*ingest_checks, *result_checks]
home = UdipHome()
resources = {"home": home, "compute": Compute(), LINEAGE_IO: LineageIOManager(home=home), "mlflow": MlflowTracking(),
             "dbt": dbt_resource}

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[ingest_job],
    sensors=[new_cohort_sensor, automation_sensor],
    resources=resources,
    # In the run's process (one step at a time), or a Kubernetes job per step under UDIP_COMPUTE=k8s.
    executor=run_executor(),
)
