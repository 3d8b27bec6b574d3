"""ModelAssetConfig: typed launchpad fields and overrides_json resolve into the preset's dataclasses."""

import dagster as dg
import pytest

from udip_assets.defs.model import ModelAssetConfig, training_run_id


def test_typed_fields_and_json_resolve_to_the_dataclasses():
    model, train = ModelAssetConfig(preset="demo", epochs=7, patch=[7, 8, 7],
                                    overrides_json='{"dropout": 0.1}').resolved(2)
    assert model.patch == (7, 8, 7) and model.dropout == 0.1 and train.epochs == 7
    # the same resolved config whichever way a field arrives: one training run, not two
    via_json = ModelAssetConfig(preset="demo", epochs=7, overrides_json='{"dropout": 0.1, "patch": [7, 8, 7]}')
    assert training_run_id("c", model, train) == training_run_id("c", *via_json.resolved(2))


def test_a_field_set_twice_is_refused():
    with pytest.raises(dg.Failure, match=r"\['epochs'\] set both"):
        ModelAssetConfig(epochs=3, overrides_json='{"epochs": 4}').overrides()


def test_auto_preset_follows_the_cohort_grid():
    from udip_assets.model.config import PRESETS

    config = ModelAssetConfig()
    assert config.preset == "auto"
    assert config.resolved(1)[0] == PRESETS["paper"].model and config.resolved(2)[0] == PRESETS["demo"].model
    assert ModelAssetConfig(preset="tiny").preset_for(1) == "tiny"  # a named preset is kept


def test_a_model_that_cannot_take_the_cohorts_scans_is_refused_before_training(ingested):
    """The tiny 2 mm cohort with the paper (1 mm) preset: refused in vit_ae_model before any epoch."""
    from udip_assets.defs.run import materialize_cohort

    _, _, instance, _ = ingested
    result = materialize_cohort("tiny", selection="vit_ae_model", instance=instance,
                                run_config={"ops": {"vit_ae_model": {"config": {"preset": "paper", "device": "cpu"}}}})
    assert not result.success
    (failure,) = result.failures()
    assert "takes 182x224x182 volumes" in failure and "98x112x98" in failure and "'auto' picks it" in failure
    assert instance.fetch_materializations(dg.AssetKey("vit_ae_model"), limit=1).records == []
