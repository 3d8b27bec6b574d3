"""The training run: data order rule, LR schedule, learning, exact resume, config checks, bf16, CLI."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from udip_assets.errors import UdipConfigError
from udip_assets.model.checkpoint import load_checkpoint, read_checkpoint
from udip_assets.model.config import preset
from udip_assets.model.extract import extract_udips
from udip_assets.model.train import (
    DistInfo,
    TrainCallback,
    build_model,
    epoch_order,
    main,
    make_optimizer,
    make_scheduler,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Recorder(TrainCallback):
    """Records every hook call; raises ``Killed`` after global step ``kill_at`` (a simulated kill)."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at, self.steps, self.epochs, self.saved = kill_at, [], [], []

    def on_step(self, global_step, epoch, step_in_epoch, loss):
        self.steps.append((global_step, epoch, step_in_epoch))
        if global_step == self.kill_at:
            raise Killed(global_step)

    def on_epoch_end(self, metrics):
        self.epochs.append(metrics)

    def on_checkpoint(self, path, epoch, is_best):
        self.saved.append((path.name, epoch, is_best))


class Killed(Exception):
    pass


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "scans_per_s")} for h in history]


# ------------------------------------------------------------------------------- data order / lr
def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_by_rank():
    for seed, epoch in [(0, 0), (3, 2), (7, 11)]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        expected = torch.randperm(10, generator=g).tolist()
        assert epoch_order(10, seed, epoch) == expected
        shards = [epoch_order(10, seed, epoch, rank=r, world_size=2) for r in range(2)]
        assert shards == [expected[0::2], expected[1::2]]
    assert epoch_order(10, 3, 2) != epoch_order(10, 3, 3)
    padded = [epoch_order(5, 1, 0, rank=r, world_size=2) for r in range(2)]  # DistributedSampler padding
    assert len(padded[0]) == len(padded[1]) == 3 and sorted(padded[0] + padded[1])[:5] == list(range(5))


def test_lr_schedule_is_step_lr_with_a_floor_and_round_trips():
    model_cfg, cfg = preset("tiny", lr=1e-3, lr_gamma=0.5, lr_step_epochs=3, lr_min=4e-5)
    model, _ = build_model(model_cfg, 0, CPU)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    seen = []
    for epoch in range(20):
        seen.append(opt.param_groups[0]["lr"])
        if epoch == 7:
            saved = sched.state_dict()
        opt.step()  # no gradients: a no-op, in the order torch expects
        sched.step()
    expected = [max(1e-3 * 0.5 ** (e // 3), 4e-5) for e in range(20)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] == 4e-5  # the floor binds from epoch 15 on
    opt2 = make_optimizer(model, cfg)
    sched2 = make_scheduler(opt2, cfg)
    sched2.load_state_dict(saved)
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[8], rel=1e-12)


# -------------------------------------------------------------------------------------- learning
def test_training_reduces_the_validation_loss_and_writes_checkpoints(blob_scans, tmp_path):
    model_cfg, cfg = preset("tiny", epochs=12, lr=3e-3, lr_step_epochs=100, checkpoint_every=5)
    initial, _ = build_model(model_cfg, cfg.seed, CPU)
    initial_val = extract_udips(initial, blob_scans["val"], show_progress=False)["recon_loss"].mean()
    rec = Recorder()
    result = train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path, callbacks=[rec],
                         show_progress=False)
    assert result.completed and result.epochs_run == 12 and result.global_step == 12 * 4
    assert result.final_val_loss < 0.85 * initial_val
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == result.best_val_loss
    assert sorted(result.checkpoints) == [5, 10, 12]  # every 5 epochs and the final one
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt", "epoch_0005.pt", "epoch_0010.pt",
                                                    "epoch_0012.pt"}
    assert [m.epoch for m in rec.epochs] == list(range(1, 13))
    assert [m.to_dict() for m in rec.epochs] == result.history
    vals = [h["val_loss"] for h in result.history]
    best_so_far = [v < min(vals[:i], default=math.inf) for i, v in enumerate(vals)]
    assert [best for name, _, best in rec.saved if name == "last.pt"] == best_so_far
    assert [e for name, e, _ in rec.saved if name == "best.pt"] == [i + 1 for i, b in enumerate(best_so_far)
                                                                    if b]
    assert [e for name, e, _ in rec.saved if name.startswith("epoch_")] == [5, 10, 12]
    assert load_checkpoint(result.best_path).epoch == result.best_epoch
    last = read_checkpoint(result.last_path)
    assert last["epoch"] == 12 and last["step_in_epoch"] == 0 and last["history"] == result.history
    # a finished run called again returns its result without training
    again = train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path, show_progress=False)
    assert again.global_step == result.global_step and again.history == result.history


# ---------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("how, stop_at", [("max_steps", 2), ("kill", 4), ("kill", 7)])
def test_a_stopped_and_resumed_run_reaches_the_same_weights(blob_scans, tmp_path, how, stop_at):
    """2 epochs of 4 steps; stopped in epoch 0, after its last step (before validation), or in epoch 1.

    Dropout makes the RNG matter; the lr halves after epoch 0, so the scheduler state matters.
    """
    model_cfg, cfg = preset("tiny", epochs=2, dropout=0.1, checkpoint_every_steps=1, seed=5, lr_step_epochs=1)
    paths = (blob_scans["train"], blob_scans["val"])
    full = train_model(model_cfg, cfg, *paths, tmp_path / "a", show_progress=False)
    if how == "max_steps":
        part = train_model(model_cfg, cfg, *paths, tmp_path / "b", max_steps=stop_at, show_progress=False)
        assert not part.completed and part.global_step == stop_at
    else:
        with pytest.raises(Killed):
            train_model(model_cfg, cfg, *paths, tmp_path / "b", callbacks=[Recorder(kill_at=stop_at)],
                        show_progress=False)
    torch.manual_seed(12345)  # a new process would start from other RNG states
    rec = Recorder()
    resumed = train_model(model_cfg, cfg, *paths, tmp_path / "b", callbacks=[rec], show_progress=False)
    first_step = stop_at if stop_at % 4 == 0 else stop_at + 1  # step 4 ends epoch 0: last.pt is from step 3
    assert rec.steps[0][0] == first_step
    a, b = read_checkpoint(full.last_path), read_checkpoint(resumed.last_path)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    assert _without_timing(a["history"]) == _without_timing(b["history"])
    assert resumed.global_step == full.global_step == 8


_TRAIN_AND_WAIT = """
import json, sys, time, torch
from udip_assets.model.config import preset
from udip_assets.model.train import TrainCallback, train_model
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
class Paced(TrainCallback):  # slows the steps down so the kill lands mid-epoch; changes no number
    def on_step(self, global_step, epoch, step_in_epoch, loss):
        print(f"step {global_step}", flush=True)
        time.sleep(0.3)
model_cfg, cfg = preset("tiny", **args["preset"])
train_model(model_cfg, cfg, args["train"], args["val"], args["out"], callbacks=[Paced()], show_progress=False)
"""


def test_sigkill_mid_epoch_then_a_rerun_reaches_the_weights_of_an_uninterrupted_run(blob_scans, tmp_path):
    """A real SIGKILL of the training process (no exception handler runs) in the middle of epoch 1, with
    a checkpoint written after every step; the re-run resumes from the last complete one."""
    import json
    import os
    import signal
    import subprocess
    import sys

    kwargs = {"epochs": 2, "dropout": 0.1, "checkpoint_every_steps": 1, "seed": 5, "lr_step_epochs": 1}
    model_cfg, cfg = preset("tiny", **kwargs)
    paths = ([str(p) for p in blob_scans["train"]], [str(p) for p in blob_scans["val"]])
    full = train_model(model_cfg, cfg, *paths, tmp_path / "a", show_progress=False)
    out = tmp_path / "b"
    args = json.dumps({"preset": kwargs, "train": paths[0], "val": paths[1], "out": str(out)})
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_AND_WAIT, args], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "step 6":  # epoch 1 runs steps 5-8
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    stopped = read_checkpoint(out / "last.pt")
    assert stopped["epoch"] == 1 and 0 < stopped["step_in_epoch"] < 4  # mid-epoch, and readable
    resumed = train_model(model_cfg, cfg, *paths, out, show_progress=False)
    a, b = read_checkpoint(full.last_path), read_checkpoint(resumed.last_path)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert _without_timing(a["history"]) == _without_timing(b["history"]) and resumed.global_step == 8


def test_dropout_makes_the_seed_matter(blob_scans, tmp_path):
    """The resume test is not vacuous: with dropout another seed for the epochs gives other weights."""
    model_cfg, cfg = preset("tiny", epochs=1, dropout=0.1)
    a = train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path / "a",
                    show_progress=False)
    b = train_model(model_cfg, dataclasses.replace(cfg, seed=1), blob_scans["train"], blob_scans["val"],
                    tmp_path / "b", show_progress=False)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


# ------------------------------------------------------------------------------ config on resume
def test_resume_with_another_config_names_the_fields_and_the_way_out(blob_scans, tmp_path):
    model_cfg, cfg = preset("tiny", epochs=1)
    paths = (blob_scans["train"], blob_scans["val"])
    first = train_model(model_cfg, cfg, *paths, tmp_path, show_progress=False)
    with pytest.raises(UdipConfigError) as err:
        train_model(dataclasses.replace(model_cfg, enc_depth=3), dataclasses.replace(cfg, lr=2e-3), *paths,
                    tmp_path, show_progress=False)
    msg = str(err.value)
    assert str(tmp_path / "last.pt") in msg
    assert "enc_depth: 2 (checkpoint) vs 3 (now)" in msg and "lr: 0.001 (checkpoint) vs 0.002 (now)" in msg
    assert "another out_dir" in msg and "resume=False" in msg
    # epochs may grow: the run continues where it stopped
    longer = train_model(model_cfg, dataclasses.replace(cfg, epochs=2), *paths, tmp_path, show_progress=False)
    assert longer.epochs_run == 2 and longer.history[0] == first.history[0]
    # resume=False starts over (same seed: the first epoch is reproduced, not continued)
    fresh = train_model(model_cfg, cfg, *paths, tmp_path, resume=False, show_progress=False)
    assert fresh.epochs_run == 1 and _without_timing(fresh.history) == _without_timing(first.history)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_paths": []}, "train_paths must be a non-empty sequence"),
    ({"val_paths": "scan.npy"}, "val_paths must be a non-empty sequence"),
    ({"max_steps": -1}, "max_steps must be None or an integer >= 0"),
    ({"train_cfg": None}, "must be ModelConfig and TrainConfig"),
])
def test_bad_arguments_raise(blob_scans, tmp_path, kwargs, message):
    model_cfg, cfg = preset("tiny")
    args = {"model_cfg": model_cfg, "train_cfg": cfg, "train_paths": blob_scans["train"],
            "val_paths": blob_scans["val"], "out_dir": tmp_path} | kwargs
    with pytest.raises(UdipConfigError, match=message):
        train_model(**args)


def test_cuda_without_a_gpu_is_refused(blob_scans, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model_cfg, cfg = preset("tiny")
    with pytest.raises(UdipConfigError, match="torch sees no CUDA device"):
        train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path, device="cuda")


# ------------------------------------------------------------------------------------ bf16 / CLI
def test_bf16_autocast_trains_on_cpu(blob_scans, tmp_path):
    model_cfg, cfg = preset("tiny", epochs=1, amp="bf16")
    result = train_model(model_cfg, cfg, blob_scans["train"], blob_scans["val"], tmp_path,
                         show_progress=False)
    assert math.isfinite(result.final_train_loss) and math.isfinite(result.final_val_loss)
    assert result.device == "cpu"
    ref = train_model(model_cfg, dataclasses.replace(cfg, amp="none"), blob_scans["train"], blob_scans["val"],
                      tmp_path / "fp32", show_progress=False)
    assert result.final_val_loss == pytest.approx(ref.final_val_loss, rel=0.05)
    assert result.final_val_loss != ref.final_val_loss


def test_command_line_trains_a_run(blob_scans, tmp_path, capsys):
    train_list, val_list = tmp_path / "train.txt", tmp_path / "val.txt"
    train_list.write_text("\n".join(map(str, blob_scans["train"])) + "\n")
    val_list.write_text("# validation scans\n" + "\n".join(map(str, blob_scans["val"])))
    rc = main(["--preset", "tiny", "--set", "epochs=2", "--set", "lr=0.002", "--train-list", str(train_list),
               "--val-list", str(val_list), "--out-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    assert '"epochs_run": 2' in capsys.readouterr().out
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["train_config"]["lr"] == 0.002 and state["epoch"] == 2


def test_a_centred_run_stores_the_numpy_mean_of_its_training_scans_and_resumes_exactly(blob_scans, tmp_path):
    import numpy as np

    model_cfg, cfg = preset("tiny", epochs=2, centre_on_mean=True, checkpoint_every_steps=1)
    paths = (blob_scans["train"], blob_scans["val"])
    full = train_model(model_cfg, cfg, *paths, tmp_path / "a", show_progress=False)
    want = np.mean([np.load(p).astype(np.float64) for p in blob_scans["train"]], axis=0)
    model = load_checkpoint(full.last_path).model
    got = model.unpatchify(model.mean_patches[None])[0, 0].double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # stopped after 3 steps and resumed: the mean comes back from the checkpoint, the weights agree
    train_model(model_cfg, cfg, *paths, tmp_path / "b", max_steps=3, show_progress=False)
    resumed = train_model(model_cfg, cfg, *paths, tmp_path / "b", show_progress=False)
    a, b = read_checkpoint(full.last_path), read_checkpoint(resumed.last_path)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    # a centred model learns faster than the plain one from the same seed on the same scans
    plain_cfg, _ = preset("tiny")
    plain = train_model(plain_cfg, cfg, *paths, tmp_path / "c", show_progress=False)
    assert full.final_val_loss < plain.final_val_loss


# ------------------------------------------------------------------- GPU-path options, on the CPU
def _weights(path):
    return read_checkpoint(path)["model"]


def test_scans_held_on_the_device_in_float32_train_the_same_weights_as_the_dataloader(blob_scans, tmp_path):
    """resident='float32' gathers the same batches in the same order, so the run is bit for bit the same,
    through a mid-run stop and resume too; float16 scans round the voxels and land close."""
    model_cfg, cfg = preset("tiny", epochs=2, dropout=0.1, seed=3, lr_step_epochs=1, checkpoint_every_steps=1)
    paths = (blob_scans["train"], blob_scans["val"])
    disk = train_model(model_cfg, cfg, *paths, tmp_path / "disk", show_progress=False)
    held = dataclasses.replace(cfg, resident="float32")
    train_model(model_cfg, held, *paths, tmp_path / "held", max_steps=3, show_progress=False)
    resident = train_model(model_cfg, held, *paths, tmp_path / "held", show_progress=False)
    a, b = _weights(disk.last_path), _weights(resident.last_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timing(disk.history) == _without_timing(resident.history)
    half = train_model(model_cfg, dataclasses.replace(cfg, resident="float16"), *paths, tmp_path / "half",
                       show_progress=False)
    assert half.history[-1]["val_loss"] == pytest.approx(disk.history[-1]["val_loss"], rel=2e-2)


def test_resident_scans_that_do_not_fit_are_refused_naming_sizes_and_the_fix(blob_scans):
    from udip_assets.imaging.dataset import PreprocessedScanDataset, ResidentLoader, ResidentScans

    dataset = PreprocessedScanDataset(blob_scans["train"])
    one = dataset[0]["volume"].numel()
    with pytest.raises(UdipConfigError, match=r"resident='float16': 8 scans of \(28, 32, 28\) take .* GiB on cpu, "
                                              r"more than 80% of .*use resident='float16'.*resident='none'"):
        ResidentScans(dataset, "cpu", "float16", free_bytes=8 * one * 2)  # needs all, 80 % allowed
    scans = ResidentScans(dataset, "cpu", "bfloat16", free_bytes=10 * 8 * one * 2)
    assert scans.volumes.dtype == torch.bfloat16 and len(scans) == 8
    batches = list(ResidentLoader(scans, [5, 1, 7], batch_size=2))
    assert [b["subject_id"] for b in batches] == [[dataset.subject_ids[5], dataset.subject_ids[1]],
                                                 [dataset.subject_ids[7]]]
    torch.testing.assert_close(batches[0]["volume"][1], dataset[1]["volume"].bfloat16().float(), rtol=0, atol=0)
    with pytest.raises(UdipConfigError, match="resident dtype must be one of"):
        ResidentScans(dataset, "cpu", "int8")


def test_fused_adamw_takes_the_steps_of_the_default_implementation(blob_scans):
    """Three AdamW steps on the same gradients: fused and torch's default move every weight alike
    (to float rounding, far below the ~1e-3 size of a step)."""
    from udip_assets.imaging.dataset import PreprocessedScanDataset

    model_cfg, cfg = preset("tiny", epochs=1, seed=2)
    x = torch.stack([PreprocessedScanDataset(blob_scans["train"])[i]["volume"] for i in range(2)])
    models, opts = {}, {}
    for impl in ("default", "fused"):
        models[impl], _ = build_model(model_cfg, cfg.seed, CPU)
        opts[impl] = make_optimizer(models[impl], dataclasses.replace(cfg, optimizer_impl=impl))
    assert opts["default"].defaults["fused"] is None and opts["fused"].defaults["fused"] is True
    assert make_optimizer(models["default"], cfg).defaults["fused"] is None  # 'auto' on the CPU: the default
    start = {k: v.clone() for k, v in models["default"].state_dict().items()}
    for _ in range(3):
        models["default"].zero_grad()
        models["default"](x).loss.backward()
        for p_fused, p_default in zip(models["fused"].parameters(), models["default"].parameters(), strict=True):
            p_fused.grad = p_default.grad.clone()
        for opt in opts.values():
            opt.step()
    a, b = models["default"].state_dict(), models["fused"].state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # the weights moved
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-7)
    with pytest.raises(UdipConfigError, match="optimizer_impl must be one of"):
        preset("tiny", optimizer_impl="apex")
