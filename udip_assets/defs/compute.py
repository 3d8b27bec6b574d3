"""Where a step's heavy work runs: in the Dagster process, or as a SLURM job through Dagster Pipes.

``compute`` is a resource, so a deployment chooses it without touching the assets: ``backend``
(or ``$UDIP_COMPUTE``) is ``local`` (the default) or ``slurm``; ``sbatch_args`` (or
``$UDIP_SLURM_ARGS``, split like a shell line) are added to every job, e.g.
``--partition=gpu --time=02:00:00 --mem=32G``; ``python`` (or ``$UDIP_SLURM_PYTHON``) is the
interpreter the job runs, by default this one (a venv on the shared filesystem). Today the GWAS
chromosome partitions use it: the step writes the partition's inputs, the worker (here or on a
node) writes its outputs, and the step loads the hits into the warehouse.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import dagster as dg

BACKENDS = ("local", "slurm")


class Compute(dg.ConfigurableResource):
    """Runs partition work locally or as SLURM jobs (see the module docstring)."""

    backend: str | None = None
    sbatch_args: list[str] | None = None
    python: str | None = None
    poll_seconds: float = 0.5

    def resolved_backend(self) -> str:
        backend = self.backend or os.environ.get("UDIP_COMPUTE") or "local"
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
        from udip_assets.cluster.slurm import PipesSlurmClient, default_python

        client = PipesSlurmClient(self.resolved_sbatch_args(), poll_seconds=self.poll_seconds)
        done = client.run(context=context, command=[self.python or default_python(), "-m",
                                                    "udip_assets.cluster.worker", "gwas"],
                          job_dir=Path(out) / "job", job_name=job_name,
                          extras={"out": str(out), "genotypes": str(genotypes), "chrom": chrom})
        reports = [m for m in done.get_custom_messages() if isinstance(m, dict) and m.get("task") == "gwas"]
        if not reports:
            raise dg.Failure(f"SLURM job {done.metadata['slurm_job_id'].value} ended without reporting its "
                             f"summary through Dagster Pipes; see {done.metadata['slurm_output'].value}")
        return reports[-1]["summary"], {"compute": "slurm", **done.metadata}
