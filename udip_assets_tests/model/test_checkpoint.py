"""Checkpoints: model ids, round trip of every state, RNG, atomic writes, and the errors on bad files."""
# ruff: noqa: NPY002 (the global numpy RNG, legacy API included, is what checkpoints must restore)

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from udip_assets.errors import UdipConfigError
from udip_assets.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    config_differences,
    epoch_checkpoint_name,
    load_checkpoint,
    model_id_for,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from udip_assets.model.config import preset
from udip_assets.model.train import DistInfo, build_model, make_optimizer, make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_model_id_and_file_names():
    assert model_id_for("tiny-0123abcd", 10) == "tiny-0123abcd-e0010"
    assert model_id_for("run", 400) == "run-e0400"
    assert epoch_checkpoint_name(7) == "epoch_0007.pt"
    with pytest.raises(UdipConfigError, match="run_id must be a non-empty string"):
        model_id_for("", 3)
    with pytest.raises(UdipConfigError, match="epoch must be an integer >= 0, got -1"):
        model_id_for("run", -1)


def _trained_state(steps: int = 3) -> dict:
    """A checkpoint dict after ``steps`` AdamW steps and two scheduler steps on random volumes."""
    model_cfg, cfg = preset("tiny", lr_step_epochs=1)
    model, _ = build_model(model_cfg, 0, CPU)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn((2, 1, *model_cfg.volume_shape), generator=gen)
        opt.zero_grad()
        model(x).loss.backward()
        opt.step()
    sched.step()
    sched.step()
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": 2, "step_in_epoch": 1, "global_step": steps,
            "rank_states": [{"rng": capture_rng_state(), "progress": {}}],
            "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(), "best_val_loss": 0.25,
            "best_epoch": 2,
            "history": [{"epoch": 1, "val_loss": 0.3}, {"epoch": 2, "val_loss": 0.25}],
            "checkpoints": {2: "epoch_0002.pt"}, "world_size": 1}


def test_round_trip_of_model_optimizer_scheduler_and_rng(tmp_path):
    state = _trained_state()
    save_checkpoint(state, tmp_path / "a.pt", tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert not loaded.model.training and loaded.epoch == 2 and loaded.step_in_epoch == 1
    assert loaded.best_epoch == 2 and loaded.best_val_loss == 0.25 and loaded.history == state["history"]
    assert loaded.model_cfg.to_dict() == state["model_config"]
    for name, value in state["model"].items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    # optimizer and scheduler states load into fresh objects (built first, as the trainer does)
    cfg = loaded.train_cfg
    opt = make_optimizer(loaded.model, cfg)
    sched = make_scheduler(opt, cfg)
    opt.load_state_dict(loaded.state["optimizer"])
    sched.load_state_dict(loaded.state["scheduler"])
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.lr_gamma ** 2)
    for key, per_param in state["optimizer"]["state"].items():
        for k, v in per_param.items():
            assert torch.equal(opt.state_dict()["state"][key][k], v)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.lr_gamma ** 3)


def test_rng_state_round_trips_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in the legacy state
    state = _trained_state(steps=1)
    state["rank_states"][0]["rng"] = capture_rng_state()
    expected = (torch.rand(5), np.random.normal(size=3), [random.random() for _ in range(3)])
    save_checkpoint(state, tmp_path / "c.pt")
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(read_checkpoint(tmp_path / "c.pt")["rank_states"][0]["rng"])
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.normal(size=3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_load_does_not_touch_the_global_rng(tmp_path):
    save_checkpoint(_trained_state(steps=1), tmp_path / "c.pt")
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(torch.rand(3), expected)


def test_a_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_trained_state(steps=1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as by a killed non-atomic copy
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt or not a udip checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="delete it and resume from another checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'none.pt'} does not exist"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("optimizer"), r"lacks \['optimizer'\]"),
    (lambda s: s.update(format=99), "has format 99 but this version of udip reads format 1"),
    (lambda s: s["model_config"].update(n_experts=4), r"incompatible .*unknown ModelConfig fields"),
    (lambda s: s["train_config"].update(batch_size=0), "incompatible .*batch_size must be an integer >= 1"),
    (lambda s: s["model_config"].update(enc_dim=64, enc_heads=4), "weights do not fit its own model config"),
])
def test_an_incompatible_checkpoint_names_the_file_and_the_problem(tmp_path, mutate, message):
    state = _trained_state(steps=1)
    mutate(state)
    path = tmp_path / "bad.pt"
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_a_list_is_not_a_checkpoint(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a udip checkpoint dict"):
        read_checkpoint(tmp_path / "list.pt")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_trained_state(steps=1), path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_trained_state(steps=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_config_differences():
    saved = {"lr": 0.001, "epochs": 3, "betas": [0.9, 0.999]}
    now = {"lr": 0.002, "epochs": 5, "betas": [0.9, 0.999], "amp": "bf16"}
    assert config_differences(saved, now, ignore=("epochs",)) == [
        "amp: '<absent>' (checkpoint) vs 'bf16' (now)", "lr: 0.001 (checkpoint) vs 0.002 (now)"]
