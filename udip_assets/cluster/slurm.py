"""A thin Dagster Pipes client over SLURM's ``sbatch``: a step's work runs as a batch job.

The job is an ordinary batch script that ``exec``s the worker command with Dagster Pipes' bootstrap
variables set. Pipes' context and messages travel through files in the job's folder, which must be
on a filesystem the compute nodes share with the Dagster process (the cohort and ``$UDIP_HOME`` are
already such a path on an HPC cluster). While the job runs, the worker's ``pipes.log`` lines reach
the Dagster event log as they are written; when it ends, the job's own output file is logged too,
and a failed job fails the step with the job id, its state and the tail of that file. Interrupting
the step (terminating the Dagster run sends the run worker SIGINT) cancels the job with ``scancel``.

Nothing here needs more than the SLURM client commands (``sbatch``, ``scontrol``, ``scancel``) on
PATH and ``SLURM_CONF`` (or the system's configuration) naming the cluster.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

# job states after which a job will not run again (scontrol's names)
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


class SlurmError(RuntimeError):
    """A SLURM command failed or a job did not complete."""


@dataclass(frozen=True)
class JobState:
    """One ``scontrol show job`` reading: the state, the exit code ``code:signal`` and the node."""

    job_id: str
    state: str
    exit_code: str = ""
    node: str = ""
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def _slurm(*args: str, timeout: float = 60) -> str:
    exe = shutil.which(args[0])
    if exe is None:
        raise SlurmError(f"{args[0]} is not on PATH: udip's SLURM backend needs the SLURM client commands "
                         "(Debian: apt-get install slurm-client) and SLURM_CONF naming the cluster")
    done = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SlurmError(f"{shlex.join(args)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def job_state(job_id: str) -> JobState | None:
    """The job's current state, or None once slurmctld has forgotten it (``MinJobAge`` after it ended)."""
    try:
        text = _slurm("scontrol", "show", "job", "--oneliner", job_id)
    except SlurmError as err:
        if "Invalid job id" in str(err):
            return None
        raise
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    return JobState(job_id=job_id, state=fields.get("JobState", "UNKNOWN"), exit_code=fields.get("ExitCode", ""),
                    node=fields.get("BatchHost", fields.get("NodeList", "")), reason=fields.get("Reason", ""))


def submit(script: Path, sbatch_args: Sequence[str] = ()) -> str:
    """``sbatch --parsable`` the script; the job id."""
    out = _slurm("sbatch", "--parsable", *sbatch_args, str(script)).strip()
    job_id = out.split(";")[0]  # --parsable prints "id" or "id;cluster"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed {out!r}, not a job id")
    return job_id


def cancel(job_id: str) -> None:
    _slurm("scancel", job_id)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no output file {path})"
    text = path.read_text(errors="replace").rstrip("\n").splitlines()
    return "\n".join(text[-lines:])


class PipesSlurmClient(dg.PipesClient):
    """Run a command as a SLURM batch job with Dagster Pipes (see the module docstring).

    Parameters
    ----------
    sbatch_args : sequence of str
        Extra ``sbatch`` options for every job (partition, account, ``--time``, ``--mem``, GPUs).
    poll_seconds : float
        How often the job's state is read while it runs.
    """

    def __init__(self, sbatch_args: Sequence[str] = (), poll_seconds: float = 0.5):
        self.sbatch_args = list(sbatch_args)
        self.poll_seconds = poll_seconds

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def run(self, *, context: dg.AssetExecutionContext | dg.OpExecutionContext, command: Sequence[str],
            job_dir: Path, job_name: str, extras: Mapping | None = None, env: Mapping[str, str] | None = None,
            sbatch_args: Sequence[str] = ()) -> dg.PipesClientCompletedInvocation:
        """Submit ``command`` as one job whose files live in ``job_dir`` (shared with the nodes); wait for it.

        Returns the completed invocation: its custom messages are what the worker reported, its
        metadata the job's id, node, seconds and output file. Raises
        ``dg.Failure`` naming the job, its state and its output's tail when it does not complete.
        """
        job_dir = Path(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        context_file, messages_file = job_dir / "pipes_context.json", job_dir / "pipes_messages.jsonl"
        for stale in (context_file, messages_file):
            stale.unlink(missing_ok=True)
        with dg.open_pipes_session(context=context, extras=extras,
                                   context_injector=dg.PipesFileContextInjector(str(context_file)),
                                   message_reader=dg.PipesFileMessageReader(str(messages_file))) as session:
            variables = {**(env or {}), **session.get_bootstrap_env_vars()}
            script = job_dir / "job.sh"
            script.write_text("#!/bin/bash\n"
                              "# written by udip: one step of a Dagster run, reporting through Dagster Pipes\n"
                              "set -eu\n"
                              + "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in variables.items())
                              + f"cd {shlex.quote(str(job_dir))}\n"
                              + f"exec {shlex.join(command)}\n")
            script.chmod(0o700)
            args = [f"--job-name={job_name}", f"--output={job_dir}/slurm-%j.out", f"--chdir={job_dir}",
                    *self.sbatch_args, *sbatch_args]
            job_id = submit(script, args)
            output = job_dir / f"slurm-{job_id}.out"
            context.log.info(f"submitted SLURM job {job_id} ({job_name}); its output: {output}")
            started = time.monotonic()
            try:
                state = self._wait(context, job_id)
            except BaseException:
                # the run was terminated (SIGINT in the run worker) or this process is going away
                context.log.warning(f"cancelling SLURM job {job_id}")
                cancel(job_id)
                raise
            seconds = time.monotonic() - started
            log = output.read_text(errors="replace").strip() if output.exists() else ""
            if log:
                context.log.info(f"SLURM job {job_id} output ({output}):\n{log[-4000:]}")
            if state is not None and (state.state != "COMPLETED" or not state.exit_code.startswith("0:")):
                raise dg.Failure(
                    f"SLURM job {job_id} ({job_name}) ended {state.state} with exit code {state.exit_code} "
                    f"on {state.node or 'no node'}{f' ({state.reason})' if state.reason not in ('', 'None') else ''}"
                    f"; its output {output} ends:\n{_tail(output)}",
                    metadata={"slurm_job_id": job_id, "slurm_output": dg.MetadataValue.path(str(output))})
            context.log.info(f"SLURM job {job_id} completed on {state.node if state else '?'} in {seconds:.1f} s")
        return dg.PipesClientCompletedInvocation(session, metadata={
            "slurm_job_id": job_id, "slurm_node": state.node if state else "",
            "slurm_seconds": round(seconds, 2), "slurm_output": dg.MetadataValue.path(str(output))})

    def _wait(self, context, job_id: str) -> JobState | None:
        last = None
        while True:
            state = job_state(job_id)
            if state is None:  # forgotten: it ended more than MinJobAge ago
                return last
            if last is None or state.state != last.state:
                context.log.debug(f"SLURM job {job_id}: {state.state}")
            if state.finished:
                return state
            last = state
            time.sleep(self.poll_seconds)


def slurm_available() -> bool:
    """Whether the SLURM client commands are on PATH (not whether a cluster answers)."""
    return all(shutil.which(c) for c in ("sbatch", "scontrol", "scancel"))


def default_python() -> str:
    """The interpreter a job runs the worker with: ``$UDIP_SLURM_PYTHON`` or this one (a shared venv)."""
    import sys

    return os.environ.get("UDIP_SLURM_PYTHON") or sys.executable
