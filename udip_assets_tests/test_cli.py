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


def test_materialize_knobs_become_run_config():
    import json

    import click
    import pytest

    from udip_assets.cli import knob_run_config

    assert knob_run_config(None, None, None, None, None) == {}
    config = knob_run_config(120, 40, "demo", 45, '{"enc_depth": 8}')
    assert config["ops"]["subjects"] == {"config": {"train_count": 120, "val_count": 40}}
    # ModelAssetConfig's typed fields where it has them, the rest as JSON
    assert config["ops"]["vit_ae_model"]["config"] == {"preset": "demo", "epochs": 45, "enc_depth": 8}
    model = knob_run_config(None, None, None, None, '{"dropout": 0.1, "patch": [7, 8, 7]}')["ops"]["vit_ae_model"]
    assert model["config"]["patch"] == [7, 8, 7] and json.loads(model["config"]["overrides_json"]) == {"dropout": 0.1}
    assert knob_run_config(None, None, None, None, None, 15) == {
        "ops": {"checkpoint_loci_sweep": {"config": {"every_epochs": 15}}}}
    with pytest.raises(click.ClickException, match="--overrides is not valid JSON"):
        knob_run_config(None, None, None, None, "{enc_depth: 8}")
    with pytest.raises(click.ClickException, match="must be a JSON object"):
        knob_run_config(None, None, None, None, "[1]")


def test_materialize_refuses_val_count_without_train_count(tmp_path, monkeypatch):
    monkeypatch.setenv("UDIP_HOME", str(tmp_path))
    (tmp_path / "cohorts" / "knobs").mkdir(parents=True)
    (tmp_path / "cohorts" / "knobs" / "cohort.yaml").write_text("name: knobs\n")
    out = CliRunner().invoke(main, ["materialize", "--cohort", "knobs", "--val-count", "5"])
    assert out.exit_code != 0 and "--val-count needs --train-count" in out.output
