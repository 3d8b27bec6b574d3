"""The dbt annotation project (``dbt_annotations/``) as Dagster assets, downstream of the loci.

dagster-dbt reads the project's ``manifest.json`` when this module is imported. The manifest is
prepared the dagster-dbt way (see :mod:`udip_assets.defs.dbt_project`): by ``make install``
(``dagster-dbt project prepare-and-package``), under ``dagster dev`` when stale
(``DbtProject.prepare_if_dev``), and at the test session's start, never by hand. Models run with
``dbt build`` (seeds, models and their tests) against ``$UDIP_HOME/warehouse.duckdb``, passed to the
profile as UDIP_WAREHOUSE.
"""

import json
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from udip_assets.defs.dbt_project import dbt_project
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.errors import UdipConfigError
from udip_assets.store.warehouse import refresh_snapshot

if not dbt_project.manifest_path.exists():
    raise UdipConfigError(
        f"the dbt manifest {dbt_project.manifest_path} is missing; build it with `make install`, which runs "
        "`dagster-dbt project prepare-and-package --file udip_assets/defs/dbt_project.py` (dbt parse)"
    )


class _Translator(DagsterDbtTranslator):
    """dbt models and seeds go to the 'annotations' group; sources map to our assets via their meta."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "annotations"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    partitions_def=cohort_partitions,
    dagster_dbt_translator=_Translator(),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10),
)
def dbt_annotations(context: dg.AssetExecutionContext, dbt: DbtCliResource, home: UdipHome):
    """``dbt build``: seeds, the annotation models (loci_annotated, novel_loci, loci_by_dim), their
    data tests and unit tests, for the run's cohort.

    The cohort is passed as the dbt var ``cohort``: the marts are incremental, and a build deletes and
    re-inserts that cohort's rows only (``macros/cohort_partition.sql``); the staging models are views.
    The retry covers a warehouse file briefly locked by another step's write.
    """
    os.environ["UDIP_WAREHOUSE"] = str(home.warehouse_path())
    cohort_var = json.dumps({"cohort": context.partition_key})
    yield from dbt.cli(["build", "--vars", cohort_var], context=context).stream()
    refresh_snapshot(home.warehouse_path())  # readers see dbt's tables while the next run writes


def _dbt_executable() -> str:
    """The ``dbt`` installed beside this Python (the venv's), so a run needs no activated venv on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "dbt")
    if os.path.exists(beside):
        return beside
    found = shutil.which("dbt")
    if found is None:
        raise UdipConfigError(f"no dbt executable beside {sys.executable} or on PATH; run `make install`, which "
                              "installs dbt-core and dbt-duckdb into the venv")
    return found


dbt_resource = DbtCliResource(project_dir=dbt_project, dbt_executable=_dbt_executable())
