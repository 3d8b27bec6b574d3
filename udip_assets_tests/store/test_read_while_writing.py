"""SQL while runs write: readers answer from the published snapshot while a writer holds the file.

Real processes throughout: the writer is a second Python process (a GWAS partition write through
``write_partition``) or the real ``dbt build``; the reader is the ``udip sql`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

from udip_assets.cli import main
from udip_assets.store.schema import GWAS_HITS, SCANS
from udip_assets.store.warehouse import connect, snapshot_path, write_partition

UDIP = str(Path(sys.executable).parent / "udip")
PART = {"cohort": "c", "model_id": "m", "chrom": "6"}


def _hits(n: int, chrom: str = "6") -> pd.DataFrame:
    return pd.DataFrame({"cohort": "c", "model_id": "m", "snp": [f"rs{i}" for i in range(n)], "chrom": chrom,
                         "pos_bp": range(n), "a1": "A", "a2": "G", "dim": 0, "beta": 0.1, "se": 0.01, "t": 10.0,
                         "p": 1e-20})


def _locked(db: Path) -> bool:
    try:
        duckdb.connect(str(db), read_only=True).close()
    except duckdb.IOException as exc:
        return "lock" in str(exc).lower() or "conflicting" in str(exc).lower()
    return False


def _wait_until_locked(db: Path, writer: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not _locked(db):
        assert writer.poll() is None, f"the writer finished before it was seen holding {db}"
        assert time.monotonic() < deadline, f"{db} was never locked by the writer"
        time.sleep(0.05)


def _udip_sql(db: Path, query: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run([UDIP, "sql", "--csv", "--db", str(db), query], capture_output=True, text=True,
                          timeout=120)
    return time.monotonic() - started, proc


def test_a_write_publishes_a_snapshot_once(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    write_partition(db, GWAS_HITS, _hits(10), PART)
    snap = snapshot_path(db)
    with duckdb.connect(str(snap), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM gwas_hits").fetchone()[0] == 10
    stamp = snap.stat().st_mtime_ns
    with connect(db) as con:  # a read-write connection that changes nothing copies nothing
        con.execute("SELECT count(*) FROM gwas_hits").fetchone()
    assert snap.stat().st_mtime_ns == stamp
    assert oct(snap.stat().st_mode & 0o777) == "0o600"


_WRITER = """
import sys, time, pandas as pd
from pathlib import Path
from udip_assets.store.schema import GWAS_HITS
from udip_assets.store.warehouse import write_partition
sys.path.insert(0, {tests!r})
from test_read_while_writing import _hits
write_partition(Path({db!r}), GWAS_HITS, _hits({n}, chrom={chrom!r}), {part!r})
"""


def test_udip_sql_answers_during_a_gwas_partition_write(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    write_partition(db, GWAS_HITS, _hits(1000), PART)
    code = _WRITER.format(tests=str(Path(__file__).parent), db=str(db), n=8_000_000, chrom="11",
                          part={**PART, "chrom": "11"})
    writer = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_until_locked(db, writer)
        seconds, proc = _udip_sql(db, "SELECT chrom, count(*) AS n FROM gwas_hits GROUP BY 1 ORDER BY 1")
        still_writing = writer.poll() is None
    finally:
        assert writer.wait(300) == 0
    assert proc.returncode == 0, proc.stderr
    assert seconds < 5, f"udip sql took {seconds:.1f} s while the GWAS partition was written"
    assert still_writing, "the write ended before the answer: the reader was not tested against a held lock"
    # the state before the write: the half-written partition is never seen. (Whether a note says so
    # depends on the path: a snapshot still identical to the live file is read without touching the
    # live file, silently; one the writer has already changed is read after a failed try, with a note.)
    assert proc.stdout.split() == ["chrom,n", "6,1000"]
    _, after = _udip_sql(db, "SELECT chrom, count(*) AS n FROM gwas_hits GROUP BY 1 ORDER BY 1")
    assert after.stdout.split() == ["chrom,n", "11,8000000", "6,1000"] and "snapshot" not in after.stderr


def _sql_during_dbt_build(folder: Path) -> tuple[bool, float, object]:
    """One dbt build over a fresh warehouse in ``folder`` and ``udip sql`` as soon as dbt holds the file:
    (whether the reader met the held lock, its seconds, its CliRunner result)."""
    from udip_assets.defs.dbt_project import DBT_PROJECT_DIR
    from udip_assets_tests.test_dbt_annotations import seed_annotation_inputs

    folder.mkdir()
    db = folder / "warehouse.duckdb"
    seed_annotation_inputs(db)
    scans = pd.DataFrame({"cohort": "c", "subject_id": ["s1", "s2", "s3"], "visit": 2, "path": ["a", "b", "c"],
                          "status": "ok", "checked_at": pd.Timestamp("2026-12-01")})
    write_partition(db, SCANS, scans, {"cohort": "c"})
    build = subprocess.Popen(
        [str(Path(sys.executable).parent / "dbt"), "build", "--project-dir", str(DBT_PROJECT_DIR),
         "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(folder / "target"),
         "--vars", json.dumps({"cohort": "c"})],
        env={**os.environ, "UDIP_WAREHOUSE": str(db)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until_locked(db, build)
        # in this process (the command's own code, without a second interpreter's start-up): a dbt build
        # of the small test project holds the file for a few seconds only
        started = time.monotonic()
        proc = CliRunner().invoke(main, ["sql", "--csv", "--db", str(db), "SELECT count(*) AS n FROM scans "
                                         "WHERE cohort = 'c'"])
        seconds = time.monotonic() - started
        still_building = build.poll() is None
    finally:
        out, _ = build.communicate(timeout=300)
    assert build.returncode == 0, out[-3000:]
    # the reader met the held lock: it answered from the snapshot, or dbt was still running when it answered
    return still_building or "snapshot" in proc.stderr, seconds, proc


def test_udip_sql_answers_during_a_dbt_build(tmp_path):
    # The small dbt build holds the file for a few seconds; now and then it lets go between the moment
    # the lock is seen and the reader's first try, and that attempt tests nothing (the reader then
    # meets a free file). Such an attempt is repeated, up to three in all; every attempt's answer must
    # be right and quick, and one of them must have met the lock.
    met = False
    for attempt in range(3):
        met, seconds, proc = _sql_during_dbt_build(tmp_path / f"attempt{attempt}")
        assert proc.exit_code == 0, proc.output
        assert seconds < 5, f"udip sql took {seconds:.1f} s during dbt build"
        assert proc.stdout.split() == ["n", "3"]
        if met:
            break
    assert met, "in three dbt builds, each finished before the reader met its lock"


def test_without_snapshots_a_reader_waits_for_the_lock(tmp_path, monkeypatch):
    from udip_assets.errors import WarehouseError

    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("UDIP_WAREHOUSE_SNAPSHOT", "off")
    write_partition(db, GWAS_HITS, _hits(10), PART)
    assert not snapshot_path(db).exists()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
                               "print('held', flush=True); time.sleep(20)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WarehouseError, match="Another udip or Dagster process is writing it"):
            with connect(db, read_only=True, lock_timeout_s=1):
                pass
    finally:
        holder.kill()
        holder.wait()
