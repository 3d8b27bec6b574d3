"""Declarative automation: once a cohort is ingested, the rest of its graph follows on its own.

- ``scan_manifest`` is started by the new-cohort sensor (new folder, or changed input files).
- Training (``vit_ae_model``) runs once per cohort, when missing (``on_missing``): days of GPU
  time are not spent again because a scan was added; a new model is trained by materializing
  ``vit_ae_model`` by hand (UI or ``udip materialize``). The checkpoint sweep, whose only parent
  is the model, is eager: it runs once per trained model.
- Everything else is ``eager``: it runs when it is missing or a parent was updated (new scans
  re-encode the UDIPs with the selected model; a new selection re-runs the GWAS, loci,
  annotation and interpretation), and not while a parent is missing or in progress.
- Every condition waits until the blocking checks of the parents passed.

The conditions are evaluated by :data:`automation_sensor` (running by default, every
:data:`AUTOMATION_INTERVAL_S` seconds) while the daemon runs.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Sequence

import dagster as dg

SENSOR_STARTED = {"scan_manifest"}
AUTOMATION_INTERVAL_S = 15

automation_sensor = dg.AutomationConditionSensorDefinition(
    "udip_automation", target=dg.AssetSelection.all(), minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates every asset's AutomationCondition: a new or changed cohort flows down to its loci.")
ONCE_PER_COHORT = {"vit_ae_model"}


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition | None:
    """The automation condition of one asset (None: started by the sensor)."""
    name = key.to_user_string()
    if name in SENSOR_STARTED:
        return None
    base = dg.AutomationCondition.on_missing() if name in ONCE_PER_COHORT else dg.AutomationCondition.eager()
    return base & dg.AutomationCondition.all_deps_blocking_checks_passed()


def module_code_version(assets_def: dg.AssetsDefinition) -> str | None:
    """12 hex digits of the source of the module that defines the asset's function (None for dbt's,
    which dagster-dbt versions by their SQL)."""
    fn = getattr(assets_def.op.compute_fn, "decorated_fn", None)
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    if module is None or not module.__name__.startswith("udip_assets."):
        return None
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:12]


def with_automation(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """``assets`` with :func:`condition_for` and, where none is set, :func:`module_code_version` on each spec.

    The code version changes when the defining ``udip_assets.defs`` module changes, so the UI marks
    what was materialized by older code (a change in a domain module alone does not).
    """
    out = []
    for assets_def in assets:
        version = module_code_version(assets_def)

        def replace(spec: dg.AssetSpec, version=version) -> dg.AssetSpec:
            return spec.replace_attributes(automation_condition=condition_for(spec.key),
                                           code_version=spec.code_version or version)

        out.extend(dg.map_asset_specs(replace, [assets_def]))
    return out
