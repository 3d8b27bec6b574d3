"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd on localhost, in a folder.

Debian's ``slurm-wlm`` and ``munge`` (``make test-tools`` installs them). Everything the daemons
write (key, state, spool, logs) lives under the given folder, the ports are free ones, and
``SLURM_CONF`` points the client commands at it, so a system's own cluster is never touched.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def missing_daemons() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str) -> str:
        return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60,
                              env={**os.environ, **self.env}).stdout

    def log(self, daemon: str) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], env={**os.environ, **self.env},
                           capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_cluster(root: Path, cpus: int | None = None, timeout: float = 60) -> SlurmCluster:
    """Start munged + slurmctld + slurmd under ``root``; return once the node is idle."""
    root = Path(root)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    socket_path = root / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=udiptest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
        f"SlurmUser={getpass.getuser()}", f"SlurmdUser={getpass.getuser()}",  # root in CI; one user here
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        # no cgroups in a container: track a job's processes by their parent, no task binding
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "KillWait=5", "MinJobAge=600",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN",
        "PartitionName=udip Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n")
    cluster = SlurmCluster(root=root, conf=conf)
    env = {**os.environ, **cluster.env}
    daemons = [
        ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
         f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
         f"--seed-file={root / 'munge' / 'munged.seed'}"],
        ["slurmctld", "-D", "-c", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf), "-N", node],
    ]
    try:
        for argv in daemons:
            cluster.processes.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL, start_new_session=True))
            if argv[0] == "munged":
                _wait(lambda: socket_path.exists(), timeout, "munged did not create its socket", cluster)
        _wait(lambda: "idle" in _sinfo(env), timeout, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _sinfo(env) -> str:
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=30)
    return done.stdout


def _wait(ready, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"one-node SLURM cluster in {cluster.root}: {what}"
                               f"{f' ({dead[0]} exited)' if dead else ''}; slurmctld log:\n"
                               f"{cluster.log('slurmctld')[-2000:]}\nslurmd log:\n{cluster.log('slurmd')[-2000:]}")
        time.sleep(0.2)
