"""The loci sweep's own table, ``model_selection``: one row per evaluated checkpoint, one selected, and a
re-run of training (which rewrites ``checkpoints``) leaves it as it was."""

from __future__ import annotations

import pandas as pd

from udip_assets.cohort.model_selection import SweepPoint, select_by_loci
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.selection import selection_rows
from udip_assets.store.schema import CHECKPOINTS, MODEL_SELECTION


def _checkpoints(run_id: str, epochs: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"cohort": "c1", "run_id": run_id, "model_id": [f"{run_id}-e{e:04d}" for e in epochs],
                         "epoch": epochs, "path": "x.pt", "mlflow_run_id": None, "val_loss": 0.3,
                         "is_best": False, "n_dims": 32, "config_json": "{}", "created_at": pd.Timestamp("2026-01-01")})


def test_selection_rows_mark_the_checkpoint_with_most_loci():
    points = [SweepPoint(10, "a-e0010", 1, 5), SweepPoint(20, "a-e0020", 3, 9), SweepPoint(30, "a-e0030", 3, 7)]
    rows = selection_rows("c1", "a", points, select_by_loci(points), "c1", "inference", 250)
    assert rows.loc[rows["selected"], "model_id"].tolist() == ["a-e0020"]  # tie on loci -> more significant SNPs
    assert rows["loci_count"].tolist() == [1, 3, 3] and (rows["n_subjects"] == 250).all()


def test_rewriting_checkpoints_keeps_the_selection(tmp_path):
    home = UdipHome(home=str(tmp_path))
    home.write(CHECKPOINTS, _checkpoints("a", [10, 20]), cohort="c1", run_id="a")
    points = [SweepPoint(10, "a-e0010", 1, 1), SweepPoint(20, "a-e0020", 2, 2)]
    home.write(MODEL_SELECTION, selection_rows("c1", "a", points, points[1], "c1", "inference", 9), cohort="c1")
    home.write(CHECKPOINTS, _checkpoints("a", [10, 20, 30]), cohort="c1", run_id="a")  # training re-run, extended
    chosen = home.query("SELECT model_id FROM model_selection WHERE cohort = 'c1' AND selected")
    assert chosen["model_id"].tolist() == ["a-e0020"]
    assert "selected" not in home.query("SELECT * FROM checkpoints").columns  # one writer per table
