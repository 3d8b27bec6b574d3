"""SIGKILL of a process while it replaces a warehouse partition (what UDIP extraction and the GWAS
partitions do at their end) or the same partition of several tables (the loci with their lead and
independent SNPs): the warehouse holds the previous rows or the new ones, never a mixture, a
duplicate or a gap (nor one table's new rows beside another's old ones), and the re-run leaves
exactly the new rows.

The kill is a real ``kill -9`` of a second process, at points spread over the write's measured
duration, so no handler or ``finally`` block of ours runs: what is left is DuckDB's write-ahead log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from udip_assets.store.schema import udip_columns, udips_table
from udip_assets.store.warehouse import read_frame, write_partition, write_partitions

N_DIMS = 128
PART = {"cohort": "kill", "model_id": "m-e10"}

_WRITER = r"""
import sys, numpy as np, pandas as pd
from pathlib import Path
from udip_assets.store.schema import udips_table
from udip_assets.store.warehouse import write_partition
sys.path.insert(0, sys.argv[3])
from udip_assets_tests.store.test_kill_during_write import udip_rows
from udip_assets.store.warehouse import write_partitions
from udip_assets_tests.store.test_kill_during_write import TABLES
rows = udip_rows(int(sys.argv[2]), offset=1.0)
print("WRITING", flush=True)
if sys.argv[4] == "one":
    write_partition(Path(sys.argv[1]), udips_table(128), rows, {"cohort": "kill", "model_id": "m-e10"})
else:
    write_partitions(Path(sys.argv[1]), [(t, rows) for t in TABLES], {"cohort": "kill", "model_id": "m-e10"})
print("DONE", flush=True)
"""


def udip_rows(n: int, offset: float) -> pd.DataFrame:
    """``n`` subjects' UDIP rows; ``offset`` tells the old write (0) from the new one (1) in every value."""
    rng = np.random.default_rng(n)
    dims = {c: rng.standard_normal(n) + offset for c in udip_columns(N_DIMS)}
    return pd.DataFrame({"cohort": PART["cohort"], "model_id": PART["model_id"],
                         "subject_id": [f"s{i:07d}" for i in range(n)], "visit": 2, "split": "inference",
                         "recon_loss": np.full(n, offset), "n_dims": N_DIMS, **dims})


TABLES = [udips_table(N_DIMS, name=f"loci_like_{i}") for i in range(3)]


def _state(db: Path, table: str = "udips") -> tuple[int, int, int, float, float]:
    """rows, distinct subjects, rows of the old write, min and max recon_loss (0 old, 1 new)."""
    row = read_frame(db, "SELECT count(*) AS n, count(DISTINCT subject_id) AS subjects, "
                         "count(*) FILTER (WHERE recon_loss = 0) AS old, min(recon_loss) AS lo, max(recon_loss) AS hi "
                         f"FROM {table} WHERE cohort = 'kill'").iloc[0]
    return int(row.n), int(row.subjects), int(row.old), float(row.lo), float(row.hi)


def _writer(db: Path, n: int, tables: str = "one") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(n), str(Path(__file__).parents[2]), tables],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(proc: subprocess.Popen, marker: str) -> None:
    line = proc.stdout.readline()
    assert line.strip() == marker, (line, proc.stderr.read() if proc.poll() is not None else "")


@pytest.fixture(scope="module")
def write_seconds(tmp_path_factory) -> float:
    """How long the new write takes, uninterrupted, from the writer's mark to its end."""
    db = tmp_path_factory.mktemp("kill") / "warehouse.duckdb"
    write_partition(db, udips_table(N_DIMS), udip_rows(N_OLD, offset=0.0), PART)
    proc = _writer(db, N_NEW)
    _wait_for(proc, "WRITING")
    started = time.perf_counter()
    _wait_for(proc, "DONE")
    seconds = time.perf_counter() - started
    assert proc.wait(60) == 0
    assert _state(db) == (N_NEW, N_NEW, 0, 1.0, 1.0)
    return seconds


N_OLD, N_NEW = 20_000, 60_000


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_sigkill_during_a_partition_write_leaves_old_or_new_rows_and_the_rerun_the_new(write_seconds, tmp_path,
                                                                                       fraction):
    db = tmp_path / "warehouse.duckdb"
    write_partition(db, udips_table(N_DIMS), udip_rows(N_OLD, offset=0.0), PART)
    proc = _writer(db, N_NEW)
    _wait_for(proc, "WRITING")
    time.sleep(fraction * write_seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    n, subjects, old, lo, hi = _state(db)
    assert (n, subjects, old, lo, hi) in {(N_OLD, N_OLD, N_OLD, 0.0, 0.0), (N_NEW, N_NEW, 0, 1.0, 1.0)}
    rerun = _writer(db, N_NEW)
    _wait_for(rerun, "WRITING")
    _wait_for(rerun, "DONE")
    assert rerun.wait(60) == 0
    assert _state(db) == (N_NEW, N_NEW, 0, 1.0, 1.0)
    got = read_frame(db, "SELECT * FROM udips WHERE cohort = 'kill' ORDER BY subject_id")
    want = udip_rows(N_NEW, offset=1.0)
    cols = list(udip_columns(N_DIMS))
    np.testing.assert_array_equal(got[cols].to_numpy(), want[cols].to_numpy(np.float32))  # FLOAT columns


N_MANY = 20_000  # rows per table: three tables take about the one table's 60,000


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_sigkill_during_a_write_of_several_tables_leaves_all_old_or_all_new(write_seconds, tmp_path, fraction):
    db = tmp_path / "warehouse.duckdb"
    write_partitions(db, [(t, udip_rows(N_OLD, offset=0.0)) for t in TABLES], PART)
    proc = _writer(db, N_MANY, "many")
    _wait_for(proc, "WRITING")
    time.sleep(fraction * write_seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    states = {_state(db, t.name) for t in TABLES}
    assert states in ({(N_OLD, N_OLD, N_OLD, 0.0, 0.0)}, {(N_MANY, N_MANY, 0, 1.0, 1.0)})  # one write, all tables
    rerun = _writer(db, N_MANY, "many")
    _wait_for(rerun, "WRITING")
    _wait_for(rerun, "DONE")
    assert rerun.wait(60) == 0
    assert {_state(db, t.name) for t in TABLES} == {(N_MANY, N_MANY, 0, 1.0, 1.0)}


def test_a_failing_table_rolls_back_every_table_of_the_write(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    write_partitions(db, [(t, udip_rows(100, offset=0.0)) for t in TABLES], PART)
    bad = udip_rows(50, offset=1.0)
    bad = pd.concat([bad, bad.iloc[:1]])  # a subject twice: the last table's key check fails
    with pytest.raises(Exception, match="not unique"):
        write_partitions(db, [(TABLES[0], udip_rows(50, 1.0)), (TABLES[1], udip_rows(50, 1.0)), (TABLES[2], bad)],
                         PART)
    assert {_state(db, t.name) for t in TABLES} == {(100, 100, 100, 0.0, 0.0)}
