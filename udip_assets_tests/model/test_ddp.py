"""DDP on CPU (gloo, 2 processes): one averaged step equals one single-process step over the union of
the two batches, and a DDP run writes its checkpoints and reports its metrics from rank 0 only."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from udip_assets.imaging.dataset import PreprocessedScanDataset
from udip_assets.model.checkpoint import read_checkpoint
from udip_assets.model.config import preset
from udip_assets.model.engine import train_one_epoch
from udip_assets.model.train import (
    DistInfo,
    TrainCallback,
    build_model,
    make_loaders,
    make_optimizer,
    setup_distributed,
    teardown_distributed,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
PER_RANK_BATCH = 2


def _configs(batch_size: int):
    return preset("tiny", batch_size=batch_size, seed=3, epochs=1, checkpoint_every_steps=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_step(info: DistInfo, batch_size: int, train_paths, val_paths) -> tuple[dict, list]:
    """Gradients of the first step of epoch 0 and the subjects of that step's batch on this process."""
    model_cfg, cfg = _configs(batch_size)
    model, wrapped = build_model(model_cfg, cfg.seed, info)
    optimizer = make_optimizer(model, cfg)
    train_ds, val_ds = PreprocessedScanDataset(train_paths), PreprocessedScanDataset(val_paths)
    loader, sampler, _ = make_loaders(train_ds, val_ds, cfg, info)
    sampler.set_epoch(0)
    ids = [train_ds.subject_ids[i] for i in list(sampler)[:batch_size]]
    train_one_epoch(wrapped, loader, optimizer, device=info.device, epoch=0, on_step=lambda *_: True,
                    show_progress=False)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, ids


class _Calls(TrainCallback):
    def __init__(self) -> None:
        self.calls = []

    def on_epoch_end(self, metrics):
        self.calls.append(("epoch", metrics.to_dict()))

    def on_checkpoint(self, path, epoch, is_best):
        self.calls.append(("checkpoint", path.name))


def _worker(rank: int, port: int, out: str, train_paths: list, val_paths: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = setup_distributed("cpu")
    try:
        grads, ids = _first_step(info, PER_RANK_BATCH, train_paths, val_paths)
        model_cfg, cfg = _configs(PER_RANK_BATCH)
        calls = _Calls()
        result = train_model(model_cfg, cfg, train_paths, val_paths, Path(out) / "run", callbacks=[calls],
                             show_progress=False)
        torch.save({"grads": grads, "ids": ids, "calls": calls.calls, "history": result.history,
                    "world_size": result.world_size}, Path(out) / f"rank{rank}.pt")
    finally:
        teardown_distributed(info)


def test_ddp_step_equals_a_single_process_step_over_the_union(blob_scans, tmp_path):
    train_paths, val_paths = blob_scans["train"], blob_scans["val"]
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), train_paths, val_paths), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    grads, ids = _first_step(single, WORLD * PER_RANK_BATCH, train_paths, val_paths)
    # the union of the ranks' first batches is the single process's first batch (positions r, r + 2, ...)
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == sorted(ids)
    assert ranks[0]["ids"] == ids[0::2] and ranks[1]["ids"] == ids[1::2]
    for name, g in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-5, atol=1e-8, msg=name)

    # the DDP run: rank 0 alone reports and writes; its losses match a single process with 2x the batch
    written = [name for kind, name in ranks[0]["calls"] if kind == "checkpoint"]
    assert written == ["last.pt", "epoch_0001.pt", "best.pt"]
    assert ranks[1]["calls"] == [] and ranks[0]["world_size"] == WORLD
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["world_size"] == WORLD and len(state["rank_states"]) == WORLD
    model_cfg, cfg = _configs(WORLD * PER_RANK_BATCH)
    ref = train_model(model_cfg, cfg, train_paths, val_paths, tmp_path / "single", show_progress=False)
    got = ranks[0]["history"][0]
    assert got["global_step"] == ref.history[0]["global_step"] == 2
    assert got["train_loss"] == pytest.approx(ref.history[0]["train_loss"], rel=1e-5)
    assert got["val_loss"] == pytest.approx(ref.history[0]["val_loss"], rel=1e-4)


def test_setup_without_torchrun_is_a_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = setup_distributed("cpu")
    assert dataclasses.astuple(info) == (0, 1, 0, torch.device("cpu"), False)
