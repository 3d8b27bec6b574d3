"""Model and training configuration: presets, round trips, and a table of invalid values."""

from __future__ import annotations

import dataclasses

import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.model.config import PRESETS, ModelConfig, TrainConfig, preset


def test_paper_preset_is_table_1():
    cfg, train = preset("paper")
    assert cfg.volume_shape == (182, 224, 182) and cfg.patch == (14, 16, 14)
    assert cfg.grid == (13, 14, 13) and cfg.n_patches == 2366 and cfg.patch_voxels == 3136
    assert (cfg.enc_dim, cfg.enc_heads, cfg.enc_depth) == (128, 8, 12)
    assert (cfg.dec_dim, cfg.dec_depth) == (64, 12)
    assert not cfg.union_mask
    assert train.batch_size == 2 and train.lr == 1e-3 and train.lr_gamma == 0.5 and train.lr_step_epochs == 3
    assert train.lr_at(0) == 1e-3 and train.lr_at(3) == 5e-4 and train.lr_at(300) == 1e-5


def test_demo_preset_grid():
    cfg, _ = preset("demo")
    assert cfg.grid == (7, 7, 7) and cfg.enc_depth == 12 and cfg.dec_depth == 12


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_dict(name):
    cfg, train = preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(train.to_dict()) == train


def test_overrides_go_to_their_dataclass():
    cfg, train = preset("tiny", enc_depth=3, batch_size=5, union_mask=True)
    assert cfg.enc_depth == 3 and cfg.union_mask and train.batch_size == 5


INVALID_MODEL = [
    (dict(volume_shape=(180, 224, 182)), "volume width (180) is not divisible by patch width (14)"),
    (dict(volume_shape=(182, 224, 180)), "volume depth (180) is not divisible by patch depth (14)"),
    (dict(patch=(14, 15, 14)), "volume height (224) is not divisible by patch height (15)"),
    (dict(patch=(14, 16)), "patch must be 3 positive integers (X, Y, Z), got (14, 16)"),
    (dict(volume_shape=(182, 0, 182)), "volume_shape must be 3 positive integers"),
    (dict(enc_heads=6), "enc_dim (128) is not divisible by enc_heads (6)"),
    (dict(dec_heads=5), "dec_dim (64) is not divisible by dec_heads (5)"),
    (dict(enc_dim=15, enc_heads=5), "enc_dim (15) must be even for the sin-cos positional embedding"),
    (dict(dec_dim=4, dec_heads=2), "dec_dim must be an integer >= 6, got 4"),
    (dict(enc_depth=0), "enc_depth must be an integer >= 1, got 0"),
    (dict(dec_heads=True), "dec_heads must be an integer >= 1, got True"),
    (dict(mlp_ratio=0.0), "mlp_ratio must be in (0.0, inf), got 0.0"),
    (dict(dropout=1.0), "dropout must be in [0.0, 1.0), got 1.0"),
    (dict(ln_eps=0.0), "ln_eps must be in (0.0, 1.0), got 0.0"),
    (dict(attn_backend="flash"), "attn_backend must be one of ('auto', 'sdpa', 'math', 'varlen'), got 'flash'"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID_MODEL)
def test_invalid_model_config_raises(kwargs, message):
    with pytest.raises(UdipConfigError) as err:
        dataclasses.replace(PRESETS["paper"].model, **kwargs)
    assert message in str(err.value)


INVALID_TRAIN = [
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(lr=0.0), "lr must be in (0.0, inf), got 0.0"),
    (dict(lr_min=0.1), "lr_min (0.1) is above lr (0.001)"),
    (dict(lr_gamma=1.5), "lr_gamma must be in (0.0, 1.0], got 1.5"),
    (dict(betas=(0.9,)), "betas must be 2 numbers"),
    (dict(amp="fp16"), "amp must be one of ('none', 'bf16'), got 'fp16'"),
    (dict(optimizer_impl="apex"), "optimizer_impl must be one of ('auto', 'default', 'fused'), got 'apex'"),
    (dict(resident="int8"), "resident must be one of ('none', 'float32', 'float16', 'bfloat16'), got 'int8'"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID_TRAIN)
def test_invalid_train_config_raises(kwargs, message):
    with pytest.raises(UdipConfigError) as err:
        TrainConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("huge", {}, "unknown preset 'huge'; choose one of ['demo', 'paper', 'tiny']"),
    ("tiny", {"depth": 3}, "unknown config fields ['depth']"),
    ("tiny", {"enc_heads": 5}, "enc_dim (32) is not divisible by enc_heads (5)"),
])
def test_invalid_preset_raises(name, kwargs, message):
    with pytest.raises(UdipConfigError) as err:
        preset(name, **kwargs)
    assert message in str(err.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(UdipConfigError, match=r"unknown ModelConfig fields \['heads'\]"):
        ModelConfig.from_dict({"heads": 3})
