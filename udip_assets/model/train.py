"""Training run of the ViT autoencoder: setup, the epoch loop, validation, checkpoints, exact resume, DDP.

Run it in-process with :func:`train_model`, or on several processes with ``torchrun``::

    torchrun --nproc_per_node=2 -m udip_assets.model.train --preset demo --device cuda \\
        --train-list train.txt --val-list val.txt --out-dir runs/demo

Every epoch trains on the training scans, evaluates the validation scans and writes ``last.pt``;
every ``checkpoint_every`` epochs (and after the final one) a numbered ``epoch_0010.pt``; whenever
the validation loss is the lowest so far, ``best.pt``; with ``checkpoint_every_steps`` also
``last.pt`` inside the epoch. Epoch numbers in checkpoints, metrics and model ids count completed
epochs (1..epochs); the learning rate during epoch ``k`` (1-based) is ``TrainConfig.lr_at(k - 1)``.

Notes
-----
**Exact resume.** A run killed at any point and restarted on the same ``out_dir`` continues from
``last.pt`` and ends with the same weights as an uninterrupted run (same configuration, same
number of processes, same device and library versions), because nothing it does is left to
hidden state:

* the order of the training scans in epoch ``e`` (0-based) is ``torch.randperm(n)`` drawn from a
  generator seeded ``seed * 1_000_003 + e`` (``DistributedSampler``'s rule, process ``r`` of ``W``
  taking positions ``r, r + W, ...``), and a resumed epoch skips the batches it already trained;
* the global RNGs (dropout) are reseeded at the start of every epoch from (seed, epoch, rank), and
  a mid-epoch checkpoint stores every process's RNG states, restored on resume;
* the DataLoaders draw their worker seeds from their own generators, not the global RNG;
* model, AdamW and LR-scheduler states and the epoch's running loss sums are in the checkpoint.

Bit-for-bit equality holds on CPU (tested); on CUDA some kernels (e.g. ``index_add`` with atomics)
are not deterministic, so two runs, resumed or not, agree only to float rounding.

**DDP.** Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains ``batch_size`` scans per
step on its share of the epoch's order; gradients are averaged (nccl on CUDA, gloo on CPU), so a
step equals a single-process step over the union of the processes' batches. Validation scans are
split between processes without padding and the loss sums reduced. Only rank 0 writes checkpoints
and calls the callbacks; ``out_dir`` must be on a filesystem every process can read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.dataset import PreprocessedScanDataset, ResidentLoader, ResidentScans
from udip_assets.model.checkpoint import (
    BEST_NAME,
    CHECKPOINT_FORMAT,
    LAST_NAME,
    capture_rng_state,
    config_differences,
    configs_from_state,
    epoch_checkpoint_name,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from udip_assets.model.config import ModelConfig, TrainConfig, preset
from udip_assets.model.engine import EpochProgress, all_reduce_sums, evaluate, train_one_epoch
from udip_assets.model.vit_ae import ViTAE

log = logging.getLogger(__name__)

ORDER_SEED_FACTOR = 1_000_003
RESUME_FREE_FIELDS = ("epochs", "checkpoint_every", "checkpoint_every_steps", "num_workers")
"""TrainConfig fields that may change when a run is resumed (they do not change the arithmetic)."""


# ---------------------------------------------------------------------------------- reporting
@dataclass(frozen=True)
class EpochMetrics:
    """What the loop reports after each epoch (``epoch`` counts completed epochs, from 1)."""

    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    scans_per_s: float
    global_step: int

    def to_dict(self) -> dict:
        """Plain dict (a row of ``training_epochs``)."""
        return asdict(self)


class TrainCallback:
    """Hooks of a training run; subclass and override what you need (rank 0 only).

    Exceptions raised by a hook are not caught: they stop the run (after the checkpoint that
    preceded the hook was written).
    """

    def on_step(self, global_step: int, epoch: int, step_in_epoch: int, loss: float) -> None:
        """After optimiser step ``global_step`` (``epoch`` 0-based, ``step_in_epoch`` from 1)."""

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        """After an epoch's validation and checkpoints."""

    def on_checkpoint(self, path: Path, epoch: int, is_best: bool) -> None:
        """After the checkpoint ``path`` was written at the end of completed epoch ``epoch``."""


@dataclass
class TrainResult:
    """Outcome of :func:`train_model` (the whole run so far, including earlier sessions).

    Attributes
    ----------
    run_dir : Path
    device : str
    world_size : int
    epochs_run : int
        Completed epochs.
    completed : bool
        False when ``max_steps`` stopped the run before ``epochs`` epochs.
    global_step : int
    final_train_loss, final_val_loss : float or None
        Of the last completed epoch.
    best_val_loss : float or None
    best_epoch : int or None
    best_path, last_path : Path or None
        ``best.pt`` and ``last.pt`` (None if not written).
    checkpoints : dict of int -> Path
        Numbered checkpoint of each epoch that has one.
    history : list of dict
        One :class:`EpochMetrics` dict per completed epoch.
    """

    run_dir: Path
    device: str
    world_size: int
    epochs_run: int
    completed: bool
    global_step: int
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    best_epoch: int | None
    best_path: Path | None
    last_path: Path | None
    checkpoints: dict[int, Path] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (paths as strings), the inverse of :meth:`from_json`."""
        out = asdict(self)
        for key in ("run_dir", "best_path", "last_path"):
            out[key] = None if out[key] is None else str(out[key])
        out["checkpoints"] = {str(epoch): str(path) for epoch, path in self.checkpoints.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> TrainResult:
        data = dict(data)
        for key in ("run_dir", "best_path", "last_path"):
            data[key] = None if data[key] is None else Path(data[key])
        data["checkpoints"] = {int(epoch): Path(path) for epoch, path in data["checkpoints"].items()}
        return cls(**data)


# -------------------------------------------------------------------------------- distribution
@dataclass(frozen=True)
class DistInfo:
    """Where this process trains: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: writes checkpoints and calls the callbacks."""
        return self.rank == 0


def setup_distributed(device: str | torch.device) -> DistInfo:
    """This process's rank and device; joins the process group under ``torchrun``.

    Parameters
    ----------
    device : str or torch.device
        'cpu', 'cuda' or 'cuda:N'. Under DDP on CUDA each process uses ``cuda:LOCAL_RANK``.

    Returns
    -------
    DistInfo
        ``owns_group`` is True when this call created the process group (see
        :func:`teardown_distributed`).

    Notes
    -----
    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by ``torchrun``; the rendezvous also
    needs ``MASTER_ADDR`` / ``MASTER_PORT``) when called, unless a process group already exists.
    Backend: nccl on CUDA, gloo on CPU.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UdipConfigError(f"device {str(device)!r} was asked for but torch sees no CUDA device; "
                              "use 'cpu'")
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
    else:
        world, rank, owns = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), False
    local = int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _gather(obj: object, info: DistInfo) -> list:
    """``obj`` of every process, in rank order (a collective under DDP)."""
    if info.world_size == 1:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------ building
def seed_for(seed: int, epoch: int, rank: int) -> int:
    """Seed of the global RNGs of process ``rank`` in epoch ``epoch`` (a numpy SeedSequence of the three)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global state, as torch.manual_seed)
    random.seed(seed)


def build_model(model_cfg: ModelConfig, seed: int, info: DistInfo) -> tuple[ViTAE, nn.Module]:
    """The model initialised from ``seed`` on ``info.device``, and its DDP wrapper (or itself).

    The initialisation draws from a forked RNG, so it is the same on every process and leaves the
    global RNG as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTAE(model_cfg)
    model.to(info.device)
    if info.world_size == 1:
        return model, model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all parameters with the configured lr, betas, weight decay and implementation
    (``optimizer_impl``; 'auto' is fused when the parameters are on CUDA)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    fused = cfg.optimizer_impl == "fused" or (cfg.optimizer_impl == "auto" and on_cuda)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """StepLR with a floor: stepped once per epoch, lr of epoch ``e`` (0-based) = ``cfg.lr_at(e)``.

    Notes
    -----
    A ``LambdaLR`` whose factor is ``lr_at(e) / lr``: torch's ``StepLR`` has no floor. Its state
    (``last_epoch``, base lrs) round-trips through ``state_dict``; the factor function is rebuilt
    from the configuration.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cfg.lr_at(e) / cfg.lr)


class EpochSampler(Sampler[int]):
    """Training indices of one process for one epoch, from a given batch on.

    Parameters
    ----------
    n : int
        Training scans.
    seed : int
        Run seed; the order of epoch ``e`` is drawn with seed ``seed * 1_000_003 + e``.
    rank, world_size : int
        This process's share: positions ``rank, rank + world_size, ...`` of the order, padded as
        ``DistributedSampler`` pads (repeating the first indices) to equal shares.
    batch_size : int
    """

    def __init__(self, n: int, seed: int, rank: int, world_size: int, batch_size: int) -> None:
        self._order = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=seed * ORDER_SEED_FACTOR, drop_last=False)
        self.batch_size = batch_size
        self.skip = 0

    @property
    def steps_per_epoch(self) -> int:
        """Batches of a whole epoch of this process."""
        return math.ceil(len(self._order) / self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Iterate epoch ``epoch``'s order after its first ``skip_batches`` batches."""
        self._order.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self):
        return iter(list(self._order)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self._order) - self.skip)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The training indices process ``rank`` sees in epoch ``epoch`` (see :class:`EpochSampler`)."""
    sampler = EpochSampler(n, seed, rank, world_size, batch_size=1)
    sampler.set_epoch(epoch)
    return list(sampler)


def make_loaders(train_ds: PreprocessedScanDataset, val_ds: PreprocessedScanDataset, cfg: TrainConfig,
                 info: DistInfo, show_progress: bool = False) -> tuple[Iterable, EpochSampler, Iterable]:
    """(training loader, its sampler, validation loader) of this process: DataLoaders over the caches,
    or with ``cfg.resident`` loaders over the scans held on the device (same order, same batches)."""
    sampler = EpochSampler(len(train_ds), cfg.seed, info.rank, info.world_size, cfg.batch_size)
    val_indices = list(range(info.rank, len(val_ds), info.world_size))
    if cfg.resident != "none":
        train_scans = ResidentScans(train_ds, info.device, cfg.resident, show_progress=show_progress)
        val_scans = ResidentScans(val_ds, info.device, cfg.resident, show_progress=show_progress)
        return (ResidentLoader(train_scans, sampler, cfg.batch_size), sampler,
                ResidentLoader(val_scans, val_indices, cfg.batch_size))
    common = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "drop_last": False,
              "pin_memory": info.device.type == "cuda", "persistent_workers": cfg.num_workers > 0}
    train = DataLoader(train_ds, sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed), **common)
    val = DataLoader(val_ds, sampler=val_indices, generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train, sampler, val


# ------------------------------------------------------------------------------------ the run
class _Run:
    """State of one training run on this process and the operations of its loop."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: Path, info: DistInfo,
                 callbacks: Sequence[TrainCallback], show_progress: bool) -> None:
        self.model_cfg, self.cfg, self.out_dir, self.info = model_cfg, train_cfg, out_dir, info
        self.callbacks, self.show_progress = list(callbacks), show_progress and info.is_main
        self.model, self.ddp = build_model(model_cfg, train_cfg.seed, info)
        self.optimizer = make_optimizer(self.model, train_cfg)
        self.scheduler = make_scheduler(self.optimizer, train_cfg)
        self.epoch = self.global_step = self.best_epoch = 0
        self.best_val_loss = math.inf
        self.history: list[dict] = []
        self.checkpoints: dict[int, str] = {}
        self.progress = EpochProgress()
        self.pending_rng: dict | None = None

    # -------------------------------------------------------------------------- checkpoints
    def resume_from(self, path: Path) -> None:
        """Load ``path`` after checking that it belongs to this configuration and world size."""
        state = read_checkpoint(path, map_location="cpu")
        saved_model, saved_train = configs_from_state(state, path)
        diffs = (config_differences(saved_model.to_dict(), self.model_cfg.to_dict())
                 + config_differences(saved_train.to_dict(), self.cfg.to_dict(), ignore=RESUME_FREE_FIELDS))
        if diffs:
            raise UdipConfigError(
                f"{path} was written by a run with a different configuration: {'; '.join(diffs)}. To resume "
                f"it, use the checkpoint's configuration; to start fresh, use another out_dir than "
                f"{self.out_dir} or pass resume=False (which overwrites its checkpoints)")
        step = int(state["step_in_epoch"])
        if step and int(state["world_size"]) != self.info.world_size:
            raise UdipConfigError(
                f"{path} was written mid-epoch (step {step}) by {state['world_size']} processes but this "
                f"run has {self.info.world_size}; resume with {state['world_size']} processes, or from "
                f"the last epoch_*.pt in {self.out_dir} (copy it to {LAST_NAME})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.best_val_loss, self.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        self.history = [dict(h) for h in state["history"]]
        self.checkpoints = {int(k): str(v) for k, v in state["checkpoints"].items()}
        if step:
            mine = state["rank_states"][self.info.rank]
            self.progress, self.pending_rng = EpochProgress.from_dict(mine["progress"]), mine["rng"]
        log.info("resumed %s: %d epochs and %d steps done", path, self.epoch, step)

    def state(self) -> dict:
        """The checkpoint dict (gathers every process's RNG state: a collective under DDP)."""
        rank_states = _gather({"rng": capture_rng_state(), "progress": self.progress.to_dict()}, self.info)
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.progress.steps, "global_step": self.global_step,
                "rank_states": rank_states, "model_config": self.model_cfg.to_dict(),
                "train_config": self.cfg.to_dict(), "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch, "history": self.history, "checkpoints": dict(self.checkpoints),
                "world_size": self.info.world_size}

    def save(self, names: Sequence[str]) -> list[Path]:
        """Write the checkpoint under each file name of ``out_dir`` (rank 0; all ranks must call)."""
        state = self.state()
        if not self.info.is_main:
            return []
        return save_checkpoint(state, *(self.out_dir / n for n in names))

    def _call(self, hook: str, *args) -> None:
        if self.info.is_main:
            for cb in self.callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(*args)

    # ---------------------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int, loader: DataLoader, sampler: EpochSampler,
                    max_steps: int | None) -> bool:
        """Train (the rest of) epoch ``epoch`` (0-based); True if ``max_steps`` stopped it."""
        if max_steps is not None and self.global_step >= max_steps:
            return True
        if self.pending_rng is not None:
            restore_rng_state(self.pending_rng)
            self.pending_rng = None
        elif self.progress.steps == 0:
            seed_everything(seed_for(self.cfg.seed, epoch, self.info.rank))
        sampler.set_epoch(epoch, skip_batches=self.progress.steps)
        total, every = sampler.steps_per_epoch, self.cfg.checkpoint_every_steps
        stopped = False

        def on_step(progress: EpochProgress, loss: float) -> bool:
            nonlocal stopped
            self.global_step += 1
            stopped = max_steps is not None and self.global_step >= max_steps
            if stopped or (every and self.global_step % every == 0 and progress.steps < total):
                self.save([LAST_NAME])
            self._call("on_step", self.global_step, epoch, progress.steps, loss)
            return stopped

        train_one_epoch(self.ddp, loader, self.optimizer, device=self.info.device, epoch=epoch,
                        amp=self.cfg.amp, progress=self.progress, total_steps=total,
                        world_size=self.info.world_size, on_step=on_step, show_progress=self.show_progress)
        return stopped

    def end_epoch(self, epoch: int, val_loader: DataLoader) -> EpochMetrics:
        """Validate, step the scheduler, record metrics and write the epoch's checkpoints."""
        started = time.perf_counter()
        loss_sum, n_scans = all_reduce_sums([self.progress.loss_sum, self.progress.n_scans], self.info.device)
        val_loss, _ = evaluate(self.model, val_loader, device=self.info.device, amp=self.cfg.amp,
                               show_progress=self.show_progress)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        done = epoch + 1
        train_seconds = self.progress.seconds
        metrics = EpochMetrics(epoch=done, train_loss=loss_sum / max(n_scans, 1), val_loss=val_loss, lr=lr,
                               seconds=train_seconds + time.perf_counter() - started,
                               scans_per_s=n_scans / max(train_seconds, 1e-9), global_step=self.global_step)
        self.epoch, self.progress = done, EpochProgress()
        self.history.append(metrics.to_dict())
        names = [LAST_NAME]
        if done % self.cfg.checkpoint_every == 0 or done == self.cfg.epochs:
            names.append(epoch_checkpoint_name(done))
            self.checkpoints[done] = names[-1]
        is_best = val_loss < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_epoch = val_loss, done
            names.append(BEST_NAME)
        paths = self.save(names)
        if self.info.is_main:
            log.info("epoch %d: train %.4f val %.4f lr %.2e %.1f scans/s", done, metrics.train_loss, val_loss,
                     lr, metrics.scans_per_s)
        self._call("on_epoch_end", metrics)
        for path in paths:
            self._call("on_checkpoint", path, done, is_best)
        return metrics

    def result(self, completed: bool) -> TrainResult:
        """The run so far as a :class:`TrainResult`."""
        last = self.history[-1] if self.history else {}
        best, last_path = self.out_dir / BEST_NAME, self.out_dir / LAST_NAME
        return TrainResult(
            run_dir=self.out_dir, device=str(self.info.device), world_size=self.info.world_size,
            epochs_run=self.epoch, completed=completed, global_step=self.global_step,
            final_train_loss=last.get("train_loss"), final_val_loss=last.get("val_loss"),
            best_val_loss=self.best_val_loss if self.best_epoch else None, best_epoch=self.best_epoch or None,
            best_path=best if best.exists() else None, last_path=last_path if last_path.exists() else None,
            checkpoints={e: self.out_dir / name for e, name in sorted(self.checkpoints.items())},
            history=list(self.history))


def _check_inputs(model_cfg: object, train_cfg: object, train_paths: Sequence, val_paths: Sequence,
                  max_steps: int | None) -> None:
    if not isinstance(model_cfg, ModelConfig) or not isinstance(train_cfg, TrainConfig):
        raise UdipConfigError(f"model_cfg and train_cfg must be ModelConfig and TrainConfig, got "
                              f"{type(model_cfg).__name__} and {type(train_cfg).__name__}")
    for name, paths in (("train_paths", train_paths), ("val_paths", val_paths)):
        if isinstance(paths, str | Path) or len(paths) == 0:
            raise UdipConfigError(f"{name} must be a non-empty sequence of preprocessed scan paths, "
                                  f"got {paths!r}")
    bad_int = isinstance(max_steps, bool) or not isinstance(max_steps, int)
    if max_steps is not None and (bad_int or max_steps < 0):
        raise UdipConfigError(f"max_steps must be None or an integer >= 0, got {max_steps!r}")


def training_mean_volume(dataset: PreprocessedScanDataset, show_progress: bool = False) -> torch.Tensor:
    """Voxelwise mean of the training volumes (X, Y, Z) float32, summed in float64 in file order.

    The centre of a ``centre_on_mean`` model (:meth:`ViTAE.set_mean_volume`); one pass over the
    caches, one volume in memory at a time, so every process of a DDP run computes the same mean.
    """
    total = None
    for i in tqdm(range(len(dataset)), desc="mean volume", unit="scan", disable=not show_progress):
        volume = dataset[i]["volume"][0].double()  # (X, Y, Z)
        total = volume if total is None else total.add_(volume)
    return (total / len(dataset)).float()


def train_model(model_cfg: ModelConfig, train_cfg: TrainConfig, train_paths: Sequence[str | Path],
                val_paths: Sequence[str | Path], out_dir: str | Path, *, device: str | torch.device = "cpu",
                callbacks: Sequence[TrainCallback] | None = None, resume: bool = True,
                max_steps: int | None = None, train_ids: Sequence | None = None,
                val_ids: Sequence | None = None, show_progress: bool = True) -> TrainResult:
    """Train the ViT autoencoder, validating every epoch, checkpointing into ``out_dir``.

    Parameters
    ----------
    model_cfg, train_cfg : ModelConfig, TrainConfig
        Architecture and optimisation (stored in every checkpoint).
    train_paths, val_paths : sequence of str or Path
        Preprocessed scan caches (:mod:`udip_assets.imaging.preprocess`) of the two splits.
    out_dir : str or Path
        Checkpoint folder: ``last.pt``, ``best.pt``, ``epoch_NNNN.pt``.
    device : str or torch.device
        'cpu', 'cuda' or 'cuda:N' (logged; under torchrun on CUDA, ``cuda:LOCAL_RANK``).
    callbacks : sequence of TrainCallback, optional
        Objects with any of ``on_step``, ``on_epoch_end``, ``on_checkpoint`` (called on rank 0).
    resume : bool
        If ``out_dir/last.pt`` exists, continue it (True, default) or start over and overwrite it.
    max_steps : int, optional
        Stop once the run has taken this many optimiser steps in all (``last.pt`` is written there;
        the result has ``completed=False``).
    train_ids, val_ids : sequence, optional
        Subject ids of the scans (for error messages); default the file stems.
    show_progress : bool
        tqdm bars with loss, lr and scans/s (rank 0).

    Returns
    -------
    TrainResult

    Raises
    ------
    UdipConfigError
        Bad arguments, or ``last.pt`` comes from a different configuration (the differing fields
        are named; ``epochs``, ``checkpoint_every``, ``checkpoint_every_steps`` and
        ``num_workers`` may change) or, mid-epoch, from another number of processes.
    FloatingPointError
        The training loss became non-finite.

    Notes
    -----
    Seeds the global RNGs of the process at every epoch start (see the module Notes).
    """
    _check_inputs(model_cfg, train_cfg, train_paths, val_paths, max_steps)
    out_dir = Path(out_dir)
    train_ds = PreprocessedScanDataset(train_paths, train_ids)
    val_ds = PreprocessedScanDataset(val_paths, val_ids)
    info = setup_distributed(device)
    try:
        log.info("training on %s (process %d of %d): %d train / %d val scans -> %s", info.device,
                 info.rank + 1, info.world_size, len(train_ds), len(val_ds), out_dir)
        run = _Run(model_cfg, train_cfg, out_dir, info, callbacks or [], show_progress)
        last = out_dir / LAST_NAME
        if last.exists() and resume:
            run.resume_from(last)
        else:
            if last.exists():
                log.warning("resume=False: starting over in %s; its checkpoints will be overwritten", out_dir)
            if model_cfg.centre_on_mean:
                run.model.set_mean_volume(training_mean_volume(train_ds, show_progress and info.is_main))
        train_loader, sampler, val_loader = make_loaders(train_ds, val_ds, train_cfg, info,
                                                         show_progress and info.is_main)
        for epoch in range(run.epoch, train_cfg.epochs):
            if run.train_epoch(epoch, train_loader, sampler, max_steps):
                return run.result(completed=False)
            run.end_epoch(epoch, val_loader)
        return run.result(completed=True)
    finally:
        teardown_distributed(info)


# -------------------------------------------------------------------------------------- CLI
def _read_list(path: str) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _parse_overrides(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UdipConfigError(f"--set expects KEY=VALUE (e.g. epochs=10), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``[torchrun --nproc_per_node=N] -m udip_assets.model.train ...`` (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m udip_assets.model.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", help="paper, demo or tiny (default demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig/TrainConfig field (JSON value), repeatable")
    p.add_argument("--train-list", required=True, help="text file: one training cache path per line")
    p.add_argument("--val-list", required=True, help="text file: one validation cache path per line")
    p.add_argument("--out-dir", required=True, help="checkpoint folder (resumed if it holds last.pt)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-resume", action="store_true", help="start over even if out-dir holds last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model_cfg, train_cfg = preset(args.preset, **_parse_overrides(args.set))
    result = train_model(model_cfg, train_cfg, _read_list(args.train_list), _read_list(args.val_list),
                         args.out_dir, device=args.device, resume=not args.no_resume,
                         max_steps=args.max_steps, show_progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in asdict(result).items() if k not in ("history", "checkpoints")}
        print(json.dumps(summary, default=str))
    return 0


__all__ = ["DistInfo", "EpochMetrics", "EpochSampler", "TrainCallback", "TrainResult", "build_model",
           "epoch_order", "main", "make_loaders", "make_optimizer", "make_scheduler", "seed_everything",
           "seed_for", "setup_distributed", "teardown_distributed", "train_model"]


if __name__ == "__main__":
    sys.exit(main())

