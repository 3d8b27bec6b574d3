"""The SLURM Pipes client against a real one-node cluster: logs and reports come back, failures name the
job, and interrupting the step (what terminating a Dagster run does to its run worker) cancels the job.

The GWAS partition run through SLURM is tested on the end-to-end pipeline
(``test_pipeline_end_to_end.py``), against the same partition run in process.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from udip_assets.cluster.slurm import PipesSlurmClient, job_state

WORKER = textwrap.dedent("""
    import os, sys, time
    from dagster_pipes import open_dagster_pipes
    with open_dagster_pipes() as pipes:
        pipes.log.info(f"worker on {os.uname().nodename} in SLURM job {os.environ['SLURM_JOB_ID']}")
        print("plain stdout of the job")
        mode = pipes.extras["mode"]
        if mode == "fail":
            print("the input is broken", file=sys.stderr)
            sys.exit(3)
        if mode == "sleep":
            time.sleep(300)
        pipes.report_custom_message({"answer": pipes.extras["x"] * 2})
""")


def _asset(tmp_path: Path, mode: str):
    @dg.asset(name=f"on_slurm_{mode}")
    def on_slurm(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        done = PipesSlurmClient(poll_seconds=0.2).run(
            context=context, command=[sys.executable, "-c", WORKER], job_dir=tmp_path / mode,
            job_name=f"udip-test-{mode}", extras={"mode": mode, "x": 21})
        return dg.MaterializeResult(metadata={**done.metadata, "answer": done.get_custom_messages()[-1]["answer"]})

    return on_slurm


def test_a_job_logs_and_reports_back_through_pipes(slurm_cluster, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([_asset(tmp_path, "ok")], instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("on_slurm_ok")[0].metadata
    assert meta["answer"].value == 42
    job_id = meta["slurm_job_id"].value
    state = job_state(job_id)
    assert state.state == "COMPLETED" and state.exit_code == "0:0"
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any(f"in SLURM job {job_id}" in m for m in logs)  # pipes.log, forwarded while the job ran
    assert any("plain stdout of the job" in m for m in logs)  # the job's own output file, logged at the end
    assert (tmp_path / "ok" / f"slurm-{job_id}.out").exists()


def test_a_failed_job_fails_the_step_with_its_state_and_output(slurm_cluster, tmp_path):
    result = dg.materialize([_asset(tmp_path, "fail")], instance=dg.DagsterInstance.ephemeral(),
                            raise_on_error=False)
    assert not result.success
    message = " ".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert "SLURM job" in message and "ended FAILED with exit code 3:0" in message
    assert "the input is broken" in message  # the tail of the job's output, where a user looks first


def test_interrupting_the_step_cancels_the_job(slurm_cluster, tmp_path):
    """SIGINT to the process running the step, as Dagster sends its run worker when the run is terminated."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        import dagster as dg
        from test_slurm import _asset
        dg.materialize([_asset(Path({str(tmp_path)!r}), "sleep")], instance=dg.DagsterInstance.ephemeral(),
                       raise_on_error=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, **slurm_cluster.env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job_id = _wait_for(lambda: slurm_cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").split(), 60)[0]
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        state = _wait_for(lambda: (s := job_state(job_id)) and s.state == "CANCELLED" and s, 30)
        assert state.state == "CANCELLED"
        out, _ = proc.communicate(timeout=60)
        assert f"cancelling SLURM job {job_id}" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait_for(probe, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s")
