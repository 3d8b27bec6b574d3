"""The one Definitions object: assets, checks, resources, sensors, jobs and the executor."""

import dagster as dg

from udip_assets.defs.checks import ingest_checks
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

all_assets = [*ingest_assets, *model_assets, *selection_assets, *gwas_assets, *loci_assets, dbt_annotations,
              *interpret_assets]
all_checks = [*ingest_checks]
home = UdipHome()
resources = {"home": home, LINEAGE_IO: LineageIOManager(home=home), "mlflow": MlflowTracking(), "dbt": dbt_resource}

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[ingest_job],
    sensors=[new_cohort_sensor],
    resources=resources,
    # Two cores: more than two concurrent steps only thrash (torch and BLAS use both cores).
    executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)
