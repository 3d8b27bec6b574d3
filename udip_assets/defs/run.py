"""Run the asset graph for a cohort, in-process, against the persistent Dagster instance.

Used by ``udip materialize`` and ``make demo``: runs land in ``$UDIP_HOME/dagster`` so the Dagster
UI (``make ui``) shows them, with their metadata and checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


# The pipeline in runs: a Dagster run has one partition key, and GWAS partitions are cohort x chrom.
STAGES: tuple[tuple[str, str], ...] = (
    ("ingest + model", "group:ingest or group:model"),
    ("gwas", "key:gwas_sumstats"),
    ("loci + annotations", "key:minp_sumstats or key:multivariate_sumstats or group:loci or group:annotations"),
)


@dataclass
class PipelineResult:
    """The runs one ``materialize_cohort`` call launched, in order: (stage, partition key, result)."""

    runs: list[tuple[str, str, dg.ExecuteInJobResult]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.runs) and all(r.success for _, _, r in self.runs)

    @property
    def all_events(self) -> list:
        return [e for _, _, r in self.runs for e in r.all_events]

    def get_asset_check_evaluations(self) -> list:
        return [e for _, _, r in self.runs for e in r.get_asset_check_evaluations()]

    def failures(self) -> list[str]:
        """``step: message`` for every failed step."""
        return [f"{e.step_key}: {e.event_specific_data.error.message.strip()}"
                for e in self.all_events if e.is_step_failure]


def _stage_keys(defs: dg.Definitions, stage: str, selection: str | None) -> set[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    chosen = dg.AssetSelection.from_string(stage)
    if selection:
        chosen = chosen & dg.AssetSelection.from_string(selection)
    return set(chosen.resolve(graph))


def _stage_run_config(defs: dg.Definitions, keys: set[dg.AssetKey], run_config: dict) -> dict:
    """The part of ``run_config`` whose ops are in this stage (Dagster refuses config for absent ops)."""
    graph = defs.resolve_asset_graph()
    ops = {graph.get(k).assets_def.op.name for k in keys if graph.get(k).assets_def.is_executable}
    out = {k: v for k, v in run_config.items() if k != "ops"}
    out["ops"] = {name: cfg for name, cfg in run_config.get("ops", {}).items() if name in ops}
    return out


def materialize_cohort(
    cohort: str,
    selection: str | None = None,
    run_config: dict | None = None,
    instance: dg.DagsterInstance | None = None,
) -> PipelineResult:
    """Materialize the pipeline (or ``selection``, a Dagster selection string) for one cohort.

    Runs the stages in order (ingest + model for the cohort, GWAS once per chromosome present in
    its genotypes, then minP + loci + annotations); a failed stage stops the later ones. The cohort
    is added as a dynamic partition first if it is new. ``run_config`` may name ops of any stage.
    """
    from udip_assets.definitions import defs
    from udip_assets.defs.gwas import cohort_chromosomes

    if instance is None:
        ensure_dagster_home()
        instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(cohort_partitions.name, cohort):
        instance.add_dynamic_partitions(cohort_partitions.name, [cohort])
    home = UdipHome()
    out = PipelineResult()
    for stage, stage_sel in STAGES:
        keys = _stage_keys(defs, stage_sel, selection)
        if not keys:
            continue
        partitions = ([dg.MultiPartitionKey({"cohort": cohort, "chrom": c}) for c in cohort_chromosomes(home, cohort)]
                      if stage == "gwas" else [cohort])
        stage_config = _stage_run_config(defs, keys, run_config or {})
        for key in partitions:
            result = _materialize(keys, key, instance, stage_config)
            out.runs.append((stage, str(key), result))
            if not result.success:
                return out
    return out


def _materialize(keys: set[dg.AssetKey], partition_key: str, instance: dg.DagsterInstance,
                 run_config: dict) -> dg.ExecuteInJobResult:
    from udip_assets.definitions import all_assets, all_checks, resources

    return dg.materialize(
        [*all_assets, *all_checks],
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        run_config=run_config,
        selection=dg.AssetSelection.assets(*keys),
        raise_on_error=False,
    )
