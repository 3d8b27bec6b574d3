"""The one Definitions object: assets, checks, resources, sensors, jobs and the executor."""

import dagster as dg

from udip_assets.defs.checks import ingest_checks
from udip_assets.defs.ingest import ingest_assets
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.sensors import ingest_job, new_cohort_sensor

all_assets = [*ingest_assets]
all_checks = [*ingest_checks]

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[ingest_job],
    sensors=[new_cohort_sensor],
    resources={"home": UdipHome()},
    # Two cores: more than two concurrent steps only thrash (torch and BLAS use both cores).
    executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)
