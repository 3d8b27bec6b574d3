"""Launch asset runs through the instance, as the UI does: ordinary runs, re-executable from it.

``udip materialize`` (and so ``make demo``) uses this when its instance is persistent: each stage
and partition becomes a run of the code location's asset job (``__ASSET_JOB``) with the stage's
asset selection and checks, created with its remote origin and launched by the instance's run
launcher (a subprocess per run, so no daemon or second terminal is needed). The UI lists these
runs like any it launched itself, with their partition, config and tags, and can re-execute them.

The code location is the one ``workspace.yaml`` names (``udip``, module ``udip_assets.definitions``),
served by a code server this process starts for the duration of the launch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

LOCATION = "udip"  # as in workspace.yaml, so UI and CLI runs belong to one code location
ASSET_JOB = "__ASSET_JOB"
_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@contextmanager
def code_location(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    """The udip code location, loaded by a code server for as long as the block runs."""
    target = ModuleTarget(module_name="udip_assets.definitions", attribute=None, working_directory=None,
                          location_name=LOCATION)
    with WorkspaceProcessContext(instance, target) as process:
        errors = process.create_request_context().get_code_location_error(LOCATION)
        if errors is not None:
            raise dg.DagsterError(f"the code location {LOCATION} failed to load: {errors.message}")
        yield process


def launch_run(process: WorkspaceProcessContext, keys: set[dg.AssetKey], partition_key: str,
               run_config: dict, tags: dict[str, str] | None = None) -> str:
    """Create and launch one run of ``keys`` (their checks included) for ``partition_key``; its id."""
    instance = process.instance
    context = process.create_request_context()
    location = context.get_code_location(LOCATION)
    (repo,) = location.get_repositories().values()
    graph = repo.asset_graph
    checks = {k for k in graph.asset_check_keys if k.asset_key in keys}
    selector = JobSubsetSelector(location_name=LOCATION, repository_name=repo.name, job_name=ASSET_JOB,
                                 op_selection=None, asset_selection=keys, asset_check_selection=checks)
    job = location.get_job(selector)
    plan = location.get_execution_plan(job, run_config, step_keys_to_execute=None, known_state=None,
                                       instance=instance)
    partitions_def = graph.get(next(iter(keys))).partitions_def
    run_tags = {**job.tags, **partitions_def.get_tags_for_partition_key(partition_key), **(tags or {})}
    run = instance.create_run(
        job_name=ASSET_JOB, run_id=None, run_config=run_config, resolved_op_selection=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None,
        status=DagsterRunStatus.NOT_STARTED, root_run_id=None, parent_run_id=None, tags=run_tags,
        job_snapshot=job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=job.parent_job_snapshot, remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(), asset_selection=frozenset(keys),
        asset_check_selection=frozenset(checks), asset_graph=graph)
    instance.launch_run(run.run_id, context)
    return run.run_id


def wait_for_run(instance: dg.DagsterInstance, run_id: str, on_event: Callable[[object], None] | None = None,
                 poll_s: float = 1.0) -> dg.DagsterRun:
    """Block until the run finishes, passing each new event-log entry to ``on_event``; the finished run."""
    cursor = None
    while True:
        run = instance.get_run_by_id(run_id)
        records = instance.get_records_for_run(run_id, cursor=cursor)
        cursor = records.cursor
        for record in records.records:
            if on_event is not None:
                on_event(record.event_log_entry)
        if run.status in _FINISHED and not records.has_more:
            return run
        if not records.has_more:
            time.sleep(poll_s)
