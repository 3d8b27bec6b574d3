"""Run the asset graph for a cohort, in-process, against the persistent Dagster instance.

Used by ``udip materialize`` and ``make demo``: runs land in ``$UDIP_HOME/dagster`` so the Dagster
UI (``make ui``) shows them, with their metadata and checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from udip_assets import paths
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome

DAGSTER_YAML = """\
# Written by udip: keep the UI quiet on a machine with no internet.
telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator.queued_run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
"""


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create ``$UDIP_HOME/dagster`` with its ``dagster.yaml`` and point DAGSTER_HOME at it."""
    home = home or paths.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def materialize_cohort(
    cohort: str,
    selection: str | None = None,
    run_config: dict | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInJobResult:
    """Materialize every asset (or ``selection``, a Dagster selection string) for one cohort.

    The cohort is added as a dynamic partition first if it is new.
    """
    from udip_assets.definitions import all_assets, all_checks

    if instance is None:
        ensure_dagster_home()
        instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(cohort_partitions.name, cohort):
        instance.add_dynamic_partitions(cohort_partitions.name, [cohort])
    return dg.materialize(
        [*all_assets, *all_checks],
        partition_key=cohort,
        instance=instance,
        resources={"home": UdipHome()},
        run_config=run_config or {},
        selection=selection,
        raise_on_error=False,
    )
