"""A 1 mm cohort (UK Biobank's grid) runs from its scans to PerDI maps with no run config.

The preset is not named anywhere: ``preset: auto`` picks the paper's model for the 1 mm grid
(182x224x182 input, 14x16x14 patches). The cohort's ``cohort.yaml`` ``defaults`` shrink it for test
speed (one encoder and one decoder block, one epoch, small counts), as a user would for a pilot;
they do not name a preset or a volume shape.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import yaml

from udip_assets.cohort.synthetic import PlantedEffect
from udip_assets_tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(900)

# smaller, not different: no preset, no volume_shape, no patch
DEFAULTS = {
    "subjects": {"train_count": 4, "val_count": 2},
    "vit_ae_model": {"enc_depth": 1, "dec_dim": 16, "dec_heads": 2, "dec_depth": 1, "epochs": 1, "checkpoint_every": 1,
                     "device": "cpu"},
    "checkpoint_loci_sweep": {"every_epochs": 1, "device": "cpu"},
    "udip_embeddings": {"device": "cpu"},
    "perdi_maps": {"n_subjects": 6, "device": "cpu"},
}


@pytest.fixture(scope="module")
def one_mm(tmp_path_factory):
    """(home, result) of the graph up to PerDI on a 1 mm cohort of 24 subjects, in a home of its own."""
    import dagster as dg

    from udip_assets.cohort.synth_build import generate_cohort
    from udip_assets.defs.run import materialize_cohort

    home = tmp_path_factory.mktemp("one_mm_home")
    old = os.environ.get("UDIP_HOME")
    os.environ["UDIP_HOME"] = str(home)
    try:
        cfg = replace(tiny_config(name="mm1", seed=5, with_faults=False, n_subjects=24), resolution_mm=1,
                      second_visit_fraction=0.0,
                      effects=(PlantedEffect("ventricles", variance_explained=0.45),))
        root = generate_cohort(cfg, home / "cohorts" / "mm1", progress=False).root
        raw = yaml.safe_load((root / "cohort.yaml").read_text())
        raw["defaults"] = DEFAULTS
        (root / "cohort.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        # everything PerDI needs (ingest, training, sweep, UDIPs, GWAS, loci); no run_config
        result = materialize_cohort("mm1", selection="+key:perdi_maps", instance=dg.DagsterInstance.ephemeral())
        yield home, result
    finally:
        if old is None:
            os.environ.pop("UDIP_HOME", None)
        else:
            os.environ["UDIP_HOME"] = old


def test_every_stage_succeeds_without_run_config(one_mm):
    _, result = one_mm
    assert result.success, result.failures()
    assert [stage for stage, _, _ in result.runs][1:3] == ["gwas", "gwas"]  # chromosomes 6 and 11


def test_the_paper_geometry_was_chosen_by_the_grid(one_mm):
    from udip_assets.store.warehouse import read_frame

    home, _ = one_mm
    ck = read_frame(home / "warehouse.duckdb", "SELECT * FROM checkpoints WHERE cohort = 'mm1' ORDER BY epoch")
    model = json.loads(ck["config_json"].iloc[-1])["model"]
    assert tuple(model["volume_shape"]) == (182, 224, 182) and tuple(model["patch"]) == (14, 16, 14)
    assert model["enc_depth"] == 1 and model["enc_dim"] == 128  # the cohort's override on the paper preset


def test_udips_and_maps_are_on_the_1mm_grid(one_mm):
    from udip_assets.store.warehouse import read_frame

    home, _ = one_mm
    db = home / "warehouse.duckdb"
    udips = read_frame(db, "SELECT * FROM udips WHERE cohort = 'mm1'")
    n_inference = read_frame(db, "SELECT count(*) FROM subjects WHERE cohort = 'mm1' AND kept AND split = 'inference'")
    assert len(udips) == n_inference.iloc[0, 0] > 0
    dims = udips[[c for c in udips.columns if c.startswith("udip_")]].to_numpy()
    assert dims.shape[1] == 128 and np.isfinite(dims).all()
    maps = sorted((home / "artifacts" / "perdi" / "mm1").rglob("*.nii.gz"))
    assert maps and nib.load(maps[0]).shape == (182, 218, 182)
