"""Run the asset graph for a cohort against the persistent Dagster instance.

Used by ``udip materialize`` and ``make demo``: runs are launched through ``$UDIP_HOME/dagster``
(:mod:`udip_assets.defs.launch`), so the Dagster UI (``make ui``) shows them as its own, with
their metadata and checks, and can re-execute them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from udip_assets import paths
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.launch import code_location, launch_run, wait_for_run
from udip_assets.defs.partitions import add_cohort_partitions
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
    home = paths.ensure_private_dir(home or paths.dagster_home())
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass(frozen=True)
class Stage:
    """Assets that run together: one partitions definition, each upstream in this or an earlier stage."""

    keys: frozenset[dg.AssetKey]
    multi: bool  # cohort x chromosome partitions (one run per chromosome)
    label: str


def plan_stages(defs: dg.Definitions, selection: str | None = None) -> list[Stage]:
    """The selected assets cut into stages, from the asset graph: a Dagster run has one partition key.

    An asset's stage is its latest parent's, plus one where the partitions change (cohort ->
    cohort x chromosome -> cohort), so the stages are as few as the graph allows and in its order.
    """
    graph = defs.resolve_asset_graph()
    # a multi-asset (genomic_risk_loci with lead_snps, ind_sig_snps) runs whole: its siblings join the selection
    wanted = (dg.AssetSelection.from_string(selection).required_multi_asset_neighbors() if selection
              else dg.AssetSelection.all())
    chosen = {k for k in wanted.resolve(graph) if graph.get(k).is_materializable}
    level = _stage_levels(graph, chosen)
    stages = []
    for index in sorted(set(level.values())):
        keys = [k for k, v in level.items() if v == index]
        for multi in (False, True):
            part = [k for k in keys if _is_multi(graph.get(k).partitions_def) == multi]
            if part:
                groups = sorted({graph.get(k).group_name or "default" for k in part})
                stages.append(Stage(frozenset(part), multi, " + ".join(groups)))
    return stages


def _stage_levels(graph, chosen: set[dg.AssetKey]) -> dict[dg.AssetKey, int]:
    """Stage index per asset; the assets of one op (the dbt project) share the latest of their stages,
    so that the op runs once."""
    floor: dict[dg.AssetKey, int] = {}
    while True:
        level: dict[dg.AssetKey, int] = {}
        for key in graph.toposorted_asset_keys:
            if key in chosen:
                node = graph.get(key)
                level[key] = max([floor.get(key, 0), *(level[p] + (graph.get(p).partitions_def != node.partitions_def)
                                                       for p in node.parent_keys if p in level)])
        by_op: dict[int, list[dg.AssetKey]] = {}
        for key in level:
            by_op.setdefault(id(graph.get(key).assets_def), []).append(key)
        lifted = {k: max(level[j] for j in keys) for keys in by_op.values() for k in keys}
        if lifted == level:
            return level
        floor = lifted


def _is_multi(partitions_def) -> bool:
    return isinstance(partitions_def, dg.MultiPartitionsDefinition)


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
    on_event: Callable[[str, object], None] | None = None,
) -> PipelineResult:
    """Materialize the pipeline (or ``selection``, a Dagster selection string) for one cohort.

    Runs the stages of :func:`plan_stages` in order (the cohort's assets up to its UDIPs, the
    GWAS once per chromosome present in its genotypes, then the assets downstream of it); a failed
    stage stops the later ones. The cohort and its chromosomes are added as dynamic partitions first
    if they are new. ``run_config`` may name ops of any stage.

    On a persistent instance (the default, ``$UDIP_HOME/dagster``) each run is launched through it
    (:mod:`udip_assets.defs.launch`): an ordinary run of the code location, re-executable from the
    UI, whose events ``on_event(stage label, event log entry)`` receives as they happen. On an
    ephemeral instance (tests) the runs execute in this process.
    """
    from udip_assets.definitions import defs, resources
    from udip_assets.defs.gwas import cohort_chromosomes

    home: UdipHome = resources["home"]
    spec = load_cohort(home.cohort_dir(cohort))  # every problem of its cohort.yaml, before any run
    if instance is None:
        ensure_dagster_home()
        instance = dg.DagsterInstance.get()
    add_cohort_partitions(instance, spec)
    stages = plan_stages(defs, selection)
    with ExitStack() as stack:
        process = None if instance.is_ephemeral else stack.enter_context(code_location(instance))
        out = PipelineResult()
        for stage in stages:
            partitions = ([dg.MultiPartitionKey({"cohort": cohort, "chrom": c})
                           for c in cohort_chromosomes(home, cohort)] if stage.multi else [cohort])
            stage_config = _stage_run_config(defs, set(stage.keys), run_config or {})
            for key in partitions:
                if process is None:
                    result = _materialize(set(stage.keys), key, instance, stage_config)
                else:
                    result = _launch(process, stage, key, stage_config, on_event)
                out.runs.append((stage.label, str(key), result))
                if not result.success:
                    return out
        return out


@dataclass
class LaunchedRun:
    """A finished run launched through the instance, read back from its event log."""

    run: dg.DagsterRun
    instance: dg.DagsterInstance

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def success(self) -> bool:
        return self.run.status == dg.DagsterRunStatus.SUCCESS

    @property
    def all_events(self) -> list:
        return [e.dagster_event for e in self.instance.all_logs(self.run_id) if e.dagster_event is not None]

    def get_asset_check_evaluations(self) -> list:
        return [e.event_specific_data for e in self.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def _launch(process, stage: Stage, key, run_config: dict,
            on_event: Callable[[str, object], None] | None) -> LaunchedRun:
    """One stage x partition as a launched run, waited for."""
    run_id = launch_run(process, set(stage.keys), str(key), run_config, tags={"udip/stage": stage.label})
    label = f"{stage.label} [{key}]"
    run = wait_for_run(process.instance, run_id, (lambda e: on_event(label, e)) if on_event else None)
    return LaunchedRun(run, process.instance)


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
