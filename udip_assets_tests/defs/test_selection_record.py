"""The loci sweep's record in ``checkpoints``: counts per evaluated checkpoint, one selection per cohort."""

from __future__ import annotations

import pandas as pd

from udip_assets.cohort.model_selection import SweepPoint
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.selection import _record
from udip_assets.store.schema import CHECKPOINTS


def _run(run_id: str, epochs: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"cohort": "c1", "run_id": run_id, "model_id": [f"{run_id}-e{e:04d}" for e in epochs],
                         "epoch": epochs, "path": "x.pt", "mlflow_run_id": None, "val_loss": 0.3,
                         "is_best": False, "loci_count": None, "n_significant_snps": None, "selected": None,
                         "config_json": "{}", "created_at": pd.Timestamp("2026-01-01")})


def test_a_new_selection_withdraws_the_previous_runs(tmp_path):
    home = UdipHome(home=str(tmp_path))
    other_cohort = _run("z", [10]).assign(cohort="c2", selected=True)
    home.write(CHECKPOINTS, other_cohort, cohort="c2", run_id="z")
    for run_id, n_loci in (("a", [1, 3]), ("b", [2, 0])):
        ck = _run(run_id, [10, 20])
        home.write(CHECKPOINTS, ck, cohort="c1", run_id=run_id)
        points = [SweepPoint(model_id=m, epoch=e, n_loci=n, n_significant_snps=n)
                  for m, e, n in zip(ck["model_id"], ck["epoch"], n_loci, strict=True)]
        _record(home, home.query("SELECT * FROM checkpoints WHERE run_id = ?", [run_id]), points,
                max(points, key=lambda p: p.n_loci))
    rows = home.query("SELECT cohort, model_id, loci_count, selected FROM checkpoints ORDER BY model_id")
    assert rows.loc[rows["selected"], "model_id"].tolist() == ["b-e0010", "z-e0010"]  # one per cohort
    counts = rows.set_index("model_id")["loci_count"]
    assert counts.drop("z-e0010").astype(int).to_dict() == {"a-e0010": 1, "a-e0020": 3, "b-e0010": 2, "b-e0020": 0}
