"""Where a step's heavy work runs: in the Dagster process, as a SLURM job through Dagster Pipes, or
as a Kubernetes pod per step.

``compute`` is a resource, so a deployment chooses it without touching the assets: ``backend``
(or ``$UDIP_COMPUTE``) is ``local`` (the default), ``slurm`` or ``k8s``; ``sbatch_args`` (or
``$UDIP_SLURM_ARGS``, split like a shell line) are added to every job, e.g.
``--partition=gpu --time=02:00:00 --mem=32G``; ``python`` (or ``$UDIP_SLURM_PYTHON``) is the
interpreter the job runs, by default this one (a venv on the shared filesystem). Today the GWAS
chromosome partitions use it: the step writes the partition's inputs, the worker (here or on a
node) writes its outputs, and the step loads the hits into the warehouse.

``k8s`` is read once, when the definitions load (the code server, the run pod and every step pod
get the same environment from the Helm values in ``deploy/k8s``): the executor becomes dagster-k8s's
``k8s_job_executor`` (one pod per step, at most ``$UDIP_K8S_MAX_CONCURRENT`` at a time per run) and
the steps that run the network (training, encoding, the checkpoint sweep, PerDI, attention,
saliency) carry a ``dagster-k8s/config`` tag asking for ``$UDIP_K8S_GPUS`` GPUs (default 1) and
tolerating the usual ``nvidia.com/gpu`` taint; the GWAS partitions ask for CPU and memory instead.
A site changes either per step through the executor's ``per_step_k8s_config`` run config.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import dagster as dg

BACKENDS = ("local", "slurm", "k8s")

# What a step of each kind asks Kubernetes for; GPU counts come from $UDIP_K8S_GPUS.
GPU_STEP = "gpu"
CPU_STEP = "cpu"
_K8S_REQUESTS = {GPU_STEP: {"cpu": "4", "memory": "32Gi"}, CPU_STEP: {"cpu": "8", "memory": "32Gi"}}
K8S_TAG = "dagster-k8s/config"


def backend_from_env() -> str:
    """``$UDIP_COMPUTE`` (default ``local``), refused with the choices when it names no backend."""
    backend = os.environ.get("UDIP_COMPUTE") or "local"
    if backend not in BACKENDS:
        raise ValueError(f"$UDIP_COMPUTE={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def _whole_number_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"${name}={raw!r} is not a whole number >= 0")
    return value


def step_tags(kind: str) -> dict[str, str]:
    """Op tags for a step of ``kind`` (``gpu`` or ``cpu``): the pod's resources under ``k8s``, else none.

    Other executors ignore the ``dagster-k8s/config`` tag, but it is only set where it means
    something, so a local UI does not show GPU requests nobody honours.
    """
    if kind not in _K8S_REQUESTS:
        raise ValueError(f"step kind {kind!r} is not one of {', '.join(_K8S_REQUESTS)}")
    if backend_from_env() != "k8s":
        return {}
    resources: dict = {"requests": dict(_K8S_REQUESTS[kind])}
    pod_spec: dict = {}
    if kind == GPU_STEP:
        gpus = _whole_number_env("UDIP_K8S_GPUS", 1)
        if gpus:
            resources["limits"] = {"nvidia.com/gpu": str(gpus)}
            pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    config = {"container_config": {"resources": resources}}
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {K8S_TAG: json.dumps(config, sort_keys=True)}


def task_report(done: dg.PipesClientCompletedInvocation, task: str, where: str | None = None) -> dict:
    """The summary the worker's ``task`` reported through Dagster Pipes (its last), or a Failure naming
    where it ran (by default the SLURM job and its output file)."""
    reports = [m for m in done.get_custom_messages() if isinstance(m, dict) and m.get("task") == task]
    if not reports:
        where = where or (f"SLURM job {done.metadata['slurm_job_id'].value} "
                          f"(output {done.metadata['slurm_output'].value})")
        raise dg.Failure(f"{where} ended without its {task} task reporting through Dagster Pipes")
    return reports[-1]["summary"]


def run_executor() -> dg.ExecutorDefinition:
    """The executor of every run: in the run's process, or a Kubernetes job per step under ``k8s``.

    In process locally and under SLURM (the heavy work leaves the process as a SLURM job): torch and
    BLAS steps each use every core, so parallel steps on one machine only thrash, and a process per
    step would re-import torch for each. Under ``k8s`` a run's config may still set
    ``execution.config``'s ``max_concurrent`` (default ``$UDIP_K8S_MAX_CONCURRENT``, else 4),
    ``step_k8s_config`` and ``per_step_k8s_config`` (e.g. four GPUs for ``vit_ae_model``).
    """
    if backend_from_env() != "k8s":
        return dg.in_process_executor
    from dagster_k8s import k8s_job_executor

    default = _whole_number_env("UDIP_K8S_MAX_CONCURRENT", 4) or 1

    def to_executor_config(config: dict) -> dict:
        out = {"max_concurrent": config["max_concurrent"], "per_step_k8s_config": config["per_step_k8s_config"]}
        if config.get("step_k8s_config"):
            out["step_k8s_config"] = config["step_k8s_config"]
        return out

    return k8s_job_executor.configured(
        to_executor_config, name="udip_k8s",
        config_schema={
            "max_concurrent": dg.Field(int, default_value=default, description="Step pods at once per run."),
            "step_k8s_config": dg.Field(dg.Permissive(), is_required=False,
                                        description="dagster-k8s config for every step's pod."),
            "per_step_k8s_config": dg.Field(dg.Permissive(), default_value={},
                                            description="dagster-k8s config per step (by op name)."),
        })


class Compute(dg.ConfigurableResource):
    """Runs partition work locally or as SLURM jobs (see the module docstring)."""

    backend: str | None = None
    sbatch_args: list[str] | None = None
    python: str | None = None
    poll_seconds: float = 0.5

    def resolved_backend(self) -> str:
        backend = self.backend or os.environ.get("UDIP_COMPUTE") or "local"
        if backend == "k8s":
            backend = "local"  # the step already runs in its own pod; its work stays there
        if backend not in BACKENDS:
            raise dg.Failure(f"compute backend {backend!r} (resource 'compute' or $UDIP_COMPUTE) is not one of "
                             f"{', '.join(BACKENDS)}")
        return backend

    def resolved_sbatch_args(self) -> list[str]:
        if self.sbatch_args is not None:
            return list(self.sbatch_args)
        return shlex.split(os.environ.get("UDIP_SLURM_ARGS", ""))

    def run_gwas_partition(self, context: dg.AssetExecutionContext, out: Path, genotypes: Path | str,
                           chrom: str, job_name: str) -> tuple[dict, dict]:
        """Run :func:`~udip_assets.genetics.gwas_partition.run_partition` on ``out``: (summary, metadata)."""
        from udip_assets.genetics.gwas_partition import run_partition

        if self.resolved_backend() == "local":
            return run_partition(out, genotypes, chrom, log=context.log.info), {"compute": "local"}
        done = self.run_job(context, "gwas", ["-m", "udip_assets.cluster.worker", "gwas"], job_dir=Path(out) / "job",
                            job_name=job_name, extras={"out": str(out), "genotypes": str(genotypes), "chrom": chrom})
        return task_report(done, "gwas"), {"compute": "slurm", **done.metadata}

    def run_job(self, context: dg.AssetExecutionContext, task: str, python_args: list[str], job_dir: Path,
                job_name: str, extras: dict | None = None,
                env: dict | None = None) -> dg.PipesClientCompletedInvocation:
        """``<python> <python_args>`` as one SLURM job through Dagster Pipes (``task`` names it in the log)."""
        from udip_assets.cluster.slurm import PipesSlurmClient, default_python

        client = PipesSlurmClient(self.resolved_sbatch_args(), poll_seconds=self.poll_seconds)
        context.log.info(f"{task}: submitting to SLURM ({' '.join(self.resolved_sbatch_args()) or 'default sbatch'})")
        return client.run(context=context, command=[self.python or default_python(), *python_args], job_dir=job_dir,
                          job_name=job_name, extras=extras, env=env)
