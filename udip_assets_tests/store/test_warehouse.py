"""The warehouse: schema with grain comments, idempotent partition writes, clear errors."""

import duckdb
import pandas as pd
import pytest

from udip_assets.errors import WarehouseError
from udip_assets.store.schema import SCANS, TABLES
from udip_assets.store.warehouse import connect, ensure_schema, read_frame, write_partition


def _scan_rows(cohort: str, n: int, status: str = "ok") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cohort": cohort,
            "subject_id": [str(1000 + i) for i in range(n)],
            "visit": 2,
            "path": [f"/x/{cohort}/{i}.nii.gz" for i in range(n)],
            "status": status,
            "checked_at": pd.Timestamp("2026-01-01"),
        }
    )


def test_every_table_states_its_grain(tmp_path):
    with connect(tmp_path / "w.duckdb") as con:
        ensure_schema(con)
        comments = dict(con.execute("SELECT table_name, comment FROM duckdb_tables()").fetchall())
    assert set(TABLES) <= set(comments)
    for name in TABLES:
        assert comments[name].startswith("one row per"), name


def test_rewriting_a_partition_replaces_it_and_leaves_others(tmp_path):
    db = tmp_path / "w.duckdb"
    write_partition(db, SCANS, _scan_rows("a", 5), {"cohort": "a"})
    write_partition(db, SCANS, _scan_rows("b", 3), {"cohort": "b"})
    write_partition(db, SCANS, _scan_rows("a", 4, status="empty"), {"cohort": "a"})
    counts = dict(read_frame(db, "SELECT cohort, count(*) AS n FROM scans GROUP BY 1").itertuples(index=False))
    assert counts == {"a": 4, "b": 3}
    statuses = read_frame(db, "SELECT DISTINCT status FROM scans WHERE cohort = 'a'")["status"].tolist()
    assert statuses == ["empty"]


def test_failed_write_rolls_back_to_previous_rows(tmp_path):
    db = tmp_path / "w.duckdb"
    write_partition(db, SCANS, _scan_rows("a", 3), {"cohort": "a"})
    dup = pd.concat([_scan_rows("a", 2), _scan_rows("a", 2)])  # key (cohort, path) repeated
    with pytest.raises(WarehouseError, match="not unique"):
        write_partition(db, SCANS, dup, {"cohort": "a"})
    assert read_frame(db, "SELECT count(*) AS n FROM scans")["n"].item() == 3


def test_rows_of_another_partition_are_refused(tmp_path):
    with pytest.raises(WarehouseError, match="partition"):
        write_partition(tmp_path / "w.duckdb", SCANS, _scan_rows("b", 2), {"cohort": "a"})


def test_unknown_column_is_named(tmp_path):
    rows = _scan_rows("a", 1).assign(colour="red")
    with pytest.raises(WarehouseError, match="colour"):
        write_partition(tmp_path / "w.duckdb", SCANS, rows, {"cohort": "a"})


def test_read_only_open_of_missing_warehouse_says_what_to_do(tmp_path):
    with pytest.raises(WarehouseError, match="make demo"):
        with connect(tmp_path / "absent.duckdb", read_only=True):
            pass


def test_old_file_gains_new_columns_without_losing_rows(tmp_path):
    db = tmp_path / "w.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE scans (cohort VARCHAR, subject_id VARCHAR, visit INTEGER, path VARCHAR, "
                "status VARCHAR, checked_at TIMESTAMP)")
    con.execute("INSERT INTO scans VALUES ('old', '1', 2, '/p', 'ok', now())")
    con.close()
    write_partition(db, SCANS, _scan_rows("a", 2), {"cohort": "a"})
    got = read_frame(db, "SELECT cohort, count(*) AS n, count(error) AS with_error FROM scans GROUP BY 1 ORDER BY 1")
    assert got["cohort"].tolist() == ["a", "old"]
    assert got["n"].tolist() == [2, 1]
