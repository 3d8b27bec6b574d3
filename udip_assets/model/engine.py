"""One epoch of training and one pass of evaluation of the ViT autoencoder (after MAE's
``engine_pretrain``): the loops only; setup, checkpoints and the epoch loop live in
:mod:`udip_assets.model.train`.

Notes
-----
**Loss of an epoch.** The training and validation losses reported for an epoch are means over
scans of the per-scan reconstruction loss (``ModelOutput.per_scan_loss``), summed in float64 and,
under DDP, summed over all processes before dividing. The training loss of an epoch is therefore the
mean over its scans of the loss each scan had when its step was taken (the weights change during the
epoch, as in MAE's ``MetricLogger``).

**Precision.** ``amp='bf16'`` runs the forward pass under bfloat16 autocast on the given device
(CUDA or CPU); the model returns float32 losses and the optimiser updates float32 weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm


@dataclass
class EpochProgress:
    """Running sums of one process over the epoch in progress (stored in mid-epoch checkpoints).

    Attributes
    ----------
    steps : int
        Optimiser steps taken in this epoch (including those before a resume).
    loss_sum : float
        Sum over this process's scans of their per-scan training loss (float64).
    n_scans : int
        Scans this process trained on in this epoch.
    seconds : float
        Wall time spent in training steps of this epoch.
    """

    steps: int = 0
    loss_sum: float = 0.0
    n_scans: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain dict for a checkpoint."""
        return {"steps": self.steps, "loss_sum": self.loss_sum, "n_scans": self.n_scans,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> EpochProgress:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["steps"]), float(data["loss_sum"]), int(data["n_scans"]), float(data["seconds"]))


def autocast(device: torch.device, amp: str):
    """bfloat16 autocast on ``device`` when ``amp == 'bf16'``, else a no-op context."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_sums(values: Iterable[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all DDP processes (float64); identity outside DDP."""
    values = [float(v) for v in values]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _batch_ids(batch: dict) -> list:
    ids = batch.get("subject_id", [])
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def train_one_epoch(model: nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer, *,
                    device: torch.device, epoch: int, amp: str = "none",
                    progress: EpochProgress | None = None, total_steps: int | None = None,
                    world_size: int = 1,
                    on_step: Callable[[EpochProgress, float], bool] | None = None,
                    show_progress: bool = True) -> EpochProgress:
    """Train over the batches of ``loader`` (one epoch, or what remains of it after a resume).

    Parameters
    ----------
    model : nn.Module
        A :class:`~udip_assets.model.vit_ae.ViTAE`, possibly wrapped in DDP; put in train mode.
    loader : iterable of dict
        Batches ``{'volume': (B, 1, X, Y, Z), 'subject_id': ...}`` of this process, already
        positioned after the ``progress.steps`` batches done before a resume.
    optimizer : torch.optim.Optimizer
    device : torch.device
    epoch : int
        0-based epoch index (for messages and the progress bar).
    amp : str
        'none' or 'bf16'.
    progress : EpochProgress, optional
        Sums of the steps already done in this epoch (a resume); a fresh one by default. Updated in
        place and returned.
    total_steps : int, optional
        Steps of a whole epoch (the progress bar's total).
    world_size : int
        Training processes; scans/s on the bar counts all of them.
    on_step : callable (progress, loss) -> bool, optional
        Called after every optimiser step; returning True stops the epoch there.
    show_progress : bool
        Show a tqdm bar with loss, lr and scans/s.

    Returns
    -------
    EpochProgress
        ``steps`` < ``total_steps`` when ``on_step`` stopped the epoch.

    Raises
    ------
    FloatingPointError
        The loss became non-finite (naming the epoch, step and subjects of the batch).

    Notes
    -----
    Gradients are zeroed before each backward pass, so after a step ``p.grad`` holds that step's
    (under DDP: averaged) gradients.
    """
    progress = progress or EpochProgress()
    model.train()
    bar = tqdm(total=total_steps, initial=progress.steps, desc=f"epoch {epoch + 1}", unit="step",
               disable=not show_progress, dynamic_ncols=True, leave=False)
    try:
        tick = time.perf_counter()
        for batch in loader:
            volumes = batch["volume"].to(device, non_blocking=True)  # (B, 1, X, Y, Z)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                out = model(volumes)
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at epoch {epoch + 1}, step {progress.steps + 1} (subjects "
                    f"{_batch_ids(batch)}); lower the learning rate or check these scans' preprocessing")
            out.loss.backward()
            optimizer.step()
            now = time.perf_counter()
            progress.steps += 1
            progress.loss_sum += float(out.per_scan_loss.detach().double().sum())
            progress.n_scans += volumes.shape[0]
            progress.seconds += now - tick
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                            scans_s=f"{world_size * progress.n_scans / max(progress.seconds, 1e-9):.1f}",
                            refresh=False)
            if on_step is not None and on_step(progress, loss):
                break
            tick = time.perf_counter()
    finally:
        bar.close()
    return progress


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict], *, device: torch.device, amp: str = "none",
             show_progress: bool = False) -> tuple[float, int]:
    """Mean per-scan reconstruction loss over ``loader``, over all DDP processes.

    Parameters
    ----------
    model : nn.Module
        The unwrapped :class:`~udip_assets.model.vit_ae.ViTAE`; put in eval mode (no dropout).
    loader : iterable of dict
        This process's share of the validation scans (the shares need not be equal).
    device : torch.device
    amp : str
        'none' or 'bf16' (as in training).
    show_progress : bool

    Returns
    -------
    (float, int)
        Mean loss over all processes' scans (nan if there are none) and their number.
    """
    model.eval()
    loss_sum, n_scans = 0.0, 0
    for batch in tqdm(loader, desc="validation", unit="batch", disable=not show_progress, leave=False):
        volumes = batch["volume"].to(device, non_blocking=True)  # (B, 1, X, Y, Z)
        with autocast(device, amp):
            out = model(volumes)
        loss_sum += float(out.per_scan_loss.double().sum())
        n_scans += volumes.shape[0]
    loss_sum, n_scans = all_reduce_sums([loss_sum, n_scans], device)
    return (loss_sum / n_scans if n_scans else math.nan), int(n_scans)


__all__ = ["EpochProgress", "all_reduce_sums", "autocast", "evaluate", "train_one_epoch"]
