"""The `udip` command: sql (read-only, --csv, clear message without a warehouse)."""

import io

import pandas as pd
from click.testing import CliRunner

from udip_assets.cli import main


def test_sql_answers_the_readme_query(ingested):
    _, db, _, _ = ingested
    out = CliRunner().invoke(main, ["sql", "--db", str(db), "select status, count(*) as n from scans group by 1"])
    assert out.exit_code == 0, out.output
    assert "ok" in out.output and "unreadable" in out.output


def test_sql_csv_is_machine_readable(ingested):
    _, db, _, _ = ingested
    out = CliRunner().invoke(main, ["sql", "--csv", "--db", str(db),
                                    "select subject_id, split from subjects where kept order by 1"])
    frame = pd.read_csv(io.StringIO(out.output), dtype=str)
    assert list(frame.columns) == ["subject_id", "split"]
    assert set(frame["split"]) <= {"train", "val", "inference"} and len(frame) > 40


def test_sql_is_read_only(ingested):
    _, db, _, _ = ingested
    out = CliRunner().invoke(main, ["sql", "--db", str(db), "delete from scans"])
    assert out.exit_code != 0 and "read-only" in out.output.lower()


def test_sql_without_a_warehouse_says_how_to_make_one(tmp_path):
    out = CliRunner().invoke(main, ["sql", "--db", str(tmp_path / "none.duckdb"), "select 1"])
    assert out.exit_code != 0 and "make demo" in out.output
