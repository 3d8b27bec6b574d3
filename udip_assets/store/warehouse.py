"""The DuckDB warehouse: connections, schema creation, idempotent partition writes.

Notes
-----
DuckDB lets one process open a file for writing, or many processes for reading, never both. Every
write therefore opens a short-lived connection, writes one partition in one transaction, and
closes; a process that finds the file locked by another retries for ``lock_timeout_s`` before
giving up with a message that says which process to wait for.

Readers need not wait for writers: every read-write connection that changed the file publishes a
snapshot of it as it closes (``CHECKPOINT``, then a copy renamed over ``warehouse.snapshot.duckdb``,
taken while the connection still holds the write lock, so no other writer can tear it). A reader
(``connect(read_only=True)``, ``udip sql``) reads the snapshot when it is the live file byte for
byte (so a reader never holds the lock a writer is about to take), and one that finds the live file
locked, by a partition write or by a whole ``dbt build``, reads the latest snapshot at once: the
warehouse as of the last finished write, never a half-written partition. The copy costs one file copy per changed write
(milliseconds for the demo's warehouse); ``UDIP_WAREHOUSE_SNAPSHOT=off`` turns it off for a
warehouse so large that the copy matters (readers then wait for the lock as before).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from udip_assets.errors import WarehouseError
from udip_assets.paths import ensure_private_dir
from udip_assets.store.schema import TABLES, Table


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


def snapshot_path(path: Path) -> Path:
    """Where the published read snapshot of warehouse ``path`` lives (beside it)."""
    path = Path(path)
    return path.with_name(path.stem + ".snapshot" + path.suffix)


def snapshots_enabled() -> bool:
    return os.environ.get("UDIP_WAREHOUSE_SNAPSHOT", "on").lower() not in ("off", "0", "false", "no")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def publish_snapshot(con: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Checkpoint the open read-write ``con`` on ``path`` and copy the file to its snapshot.

    Runs while ``con`` holds the write lock, so the copy is of one consistent state. Skipped
    (returns False) when the file is unchanged since the last snapshot (same mtime and size:
    the copy keeps the source's mtime) or snapshots are off.
    """
    if not snapshots_enabled():
        return False
    path = Path(path)
    con.execute("CHECKPOINT")
    snap = snapshot_path(path)
    if _stamp(path) is not None and _stamp(path) == _stamp(snap):
        return False
    tmp = snap.with_name(f".{snap.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(path, tmp)  # keeps the mtime: the next write compares against it
        os.chmod(tmp, 0o600)
        os.replace(tmp, snap)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def refresh_snapshot(path: Path) -> None:
    """Publish the snapshot of a warehouse another program (dbt) wrote: open it read-write and close."""
    with connect(path):
        pass


def _open(path: Path, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retrying while another process holds the file's lock."""
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise WarehouseError(
                    f"cannot open the warehouse {path}: {exc}. Another udip or Dagster process is "
                    "writing it; wait for that run to finish and try again"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def connect(
    path: Path, read_only: bool = False, lock_timeout_s: float = 120.0, snapshot_after_s: float = 1.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, waiting while another process holds the write lock.

    Parameters
    ----------
    path : Path
        The DuckDB file. A read-only open of a file that does not exist raises
        :class:`WarehouseError`; a read-write open creates it.
    read_only : bool
        Open for reading only (what ``udip sql`` does). While a writer holds the file, a reader
        waits ``snapshot_after_s`` and then reads the latest snapshot (see the module Notes),
        with a note on stderr; without a snapshot it waits up to ``lock_timeout_s``.
    lock_timeout_s : float
        How long to retry while another process holds the file.
    snapshot_after_s : float
        How long a reader tries the live file before it takes the snapshot.

    Notes
    -----
    A read-write connection that changed the file publishes a snapshot when it closes without
    an error (:func:`publish_snapshot`).
    """
    path = Path(path)
    if read_only and not path.exists():
        raise WarehouseError(
            f"the warehouse {path} does not exist yet; run `make demo` (or `udip materialize "
            "--cohort NAME`) to build it, or set UDIP_HOME to the folder that holds warehouse.duckdb"
        )
    ensure_private_dir(path.parent)
    created = not path.exists()
    snap = snapshot_path(path)
    if read_only and snap.exists() and snapshots_enabled() and _stamp(snap) == _stamp(path) \
            and not path.with_name(path.name + ".wal").exists():
        # the snapshot is the live file, byte for byte: read it, and never hold the live file's lock
        # against a writer that starts meanwhile (dbt does not wait for it)
        con = _open(snap, True, lock_timeout_s)
    elif read_only and snap.exists() and snapshots_enabled():
        try:
            con = _open(path, True, min(snapshot_after_s, lock_timeout_s))
        except WarehouseError:
            con = _open(snap, True, lock_timeout_s)
            when = time.strftime("%H:%M:%S", time.localtime(snap.stat().st_mtime))
            print(f"note: {path.name} is being written by another process; answered from its snapshot of "
                  f"{when} (the last finished write)", file=sys.stderr)
    else:
        con = _open(path, read_only, lock_timeout_s)
        if created and path.exists():
            os.chmod(path, 0o600)  # subject-level data: the owner only
    try:
        yield con
        if not read_only:
            publish_snapshot(con, path)
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection, tables: Mapping[str, Table] = TABLES) -> None:
    """Create every table that is missing, add columns that a newer schema has, set comments.

    Never drops or rewrites data: a column removed from the schema stays in an old file.
    """
    for table in tables.values():
        cols = ", ".join(f"{_quote(name)} {dtype}" for name, dtype in table.columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table.name)} ({cols})")
        found = con.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() WHERE table_name = ?", [table.name]
        ).fetchall()
        existing = {name: dtype for name, dtype, _ in found}
        not_null = {name for name, _, nullable in found if not nullable}
        for name, dtype in table.columns:
            want = dtype.replace(" NOT NULL", "")
            if name in not_null and "NOT NULL" not in dtype:  # a column this version allows to be NULL
                con.execute(f"ALTER TABLE {_quote(table.name)} ALTER COLUMN {_quote(name)} DROP NOT NULL")
            if name in existing and existing[name] != want:
                raise WarehouseError(
                    f"table {table.name}.{name} is {existing[name]} in the warehouse but {want} in this "
                    f"version of udip; drop the table (it is rebuilt by re-materializing its asset) or "
                    "delete the warehouse file"
                )
            if name not in existing:
                nullable = dtype.replace(" NOT NULL", "")
                con.execute(f"ALTER TABLE {_quote(table.name)} ADD COLUMN {_quote(name)} {nullable}")
        # DuckDB takes no parameter in COMMENT ON; the grain is our own constant, quoted.
        con.execute(f"COMMENT ON TABLE {_quote(table.name)} IS {_sql_string(table.grain)}")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def replace_partition(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    rows: pd.DataFrame,
    partition: Mapping[str, Any],
    own_transaction: bool = True,
) -> int:
    """Replace one partition's rows of ``table`` with ``rows``, in one transaction.

    Parameters
    ----------
    con : duckdb connection (read-write)
    table : Table
        Target table; ``ensure_schema`` is applied first.
    rows : DataFrame
        New rows. Columns must be a subset of the table's; missing columns are written as NULL.
        Every row must carry the partition's values in the partition columns.
    partition : mapping column -> value
        Must name exactly ``table.partition_by``.
    own_transaction : bool
        False when the caller holds the transaction (:func:`write_partitions`, several tables at once).

    Returns
    -------
    int
        Rows written.

    Notes
    -----
    Delete-then-insert inside one transaction makes a re-run replace its partition: row counts do
    not grow, and a failure half way rolls back to the previous contents.
    """
    if set(partition) != set(table.partition_by):
        raise WarehouseError(
            f"table {table.name} is partitioned by {list(table.partition_by)}, got {sorted(partition)}"
        )
    unknown = [c for c in rows.columns if c not in table.column_names]
    if unknown:
        raise WarehouseError(f"table {table.name} has no column(s) {unknown}; the schema has {table.column_names}")
    for col, value in partition.items():
        if col in rows.columns and len(rows) and not (rows[col] == value).all():
            raise WarehouseError(f"rows for {table.name} carry {col} values other than the partition's {value!r}")
    frame = rows.reindex(columns=table.column_names)
    for col, value in partition.items():
        frame[col] = value
    if own_transaction:
        ensure_schema(con, {table.name: table})
    where = " AND ".join(f"{_quote(c)} = ?" for c in table.partition_by)
    params = [partition[c] for c in table.partition_by]
    cols = ", ".join(_quote(c) for c in table.column_names)
    if own_transaction:
        con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {_quote(table.name)} WHERE {where}", params)
        con.register("_udip_incoming", frame)
        con.execute(f"INSERT INTO {_quote(table.name)} ({cols}) SELECT {cols} FROM _udip_incoming")
        con.unregister("_udip_incoming")
        _check_key(con, table, where, params)
        if own_transaction:
            con.execute("COMMIT")
    except Exception:
        if own_transaction:
            con.execute("ROLLBACK")
        raise
    return len(frame)


def _check_key(con: duckdb.DuckDBPyConnection, table: Table, where: str, params: list[Any]) -> None:
    keys = ", ".join(_quote(c) for c in table.key)
    dup = con.execute(
        f"SELECT {keys}, count(*) AS n FROM {_quote(table.name)} WHERE {where} "
        f"GROUP BY {keys} HAVING count(*) > 1 LIMIT 3",
        params,
    ).fetchall()
    if dup:
        raise WarehouseError(f"table {table.name}: key {list(table.key)} is not unique, e.g. {dup}")


def write_partition(path: Path, table: Table, rows: pd.DataFrame, partition: Mapping[str, Any]) -> int:
    """Open the warehouse at ``path``, replace one partition of ``table``, close. Returns rows written."""
    with connect(path) as con:
        return replace_partition(con, table, rows, partition)


def write_partitions(path: Path, writes: Sequence[tuple[Table, pd.DataFrame]], partition: Mapping[str, Any]
                     ) -> list[int]:
    """Replace the same partition of several tables in one transaction: a reader, or a re-run after a
    kill, sees all of them from the same write (e.g. the loci with their own lead SNPs)."""
    with connect(path) as con:
        ensure_schema(con, {table.name: table for table, _ in writes})
        con.execute("BEGIN TRANSACTION")
        try:
            counts = [replace_partition(con, table, rows, partition, own_transaction=False) for table, rows in writes]
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return counts


def read_frame(path: Path, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """Run a read-only query against the warehouse and return a DataFrame."""
    with connect(path, read_only=True) as con:
        return con.execute(sql, params or []).df()
