"""ModelAssetConfig: typed launchpad fields and overrides_json resolve into the preset's dataclasses."""

import dagster as dg
import pytest

from udip_assets.defs.model import ModelAssetConfig, training_run_id


def test_typed_fields_and_json_resolve_to_the_dataclasses():
    model, train = ModelAssetConfig(preset="demo", epochs=7, patch=[7, 8, 7],
                                    overrides_json='{"dropout": 0.1}').resolved()
    assert model.patch == (7, 8, 7) and model.dropout == 0.1 and train.epochs == 7
    # the same resolved config whichever way a field arrives: one training run, not two
    via_json = ModelAssetConfig(preset="demo", epochs=7, overrides_json='{"dropout": 0.1, "patch": [7, 8, 7]}')
    assert training_run_id("c", model, train) == training_run_id("c", *via_json.resolved())


def test_a_field_set_twice_is_refused():
    with pytest.raises(dg.Failure, match=r"\['epochs'\] set both"):
        ModelAssetConfig(epochs=3, overrides_json='{"epochs": 4}').overrides()
