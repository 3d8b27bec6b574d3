"""What the interpretation functions accept: a model (or a DDP wrapper of one) and scan volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.preprocess import load_preprocessed
from udip_assets.model.vit_ae import ViTAE


def as_vitae(model: ViTAE | nn.Module) -> ViTAE:
    """The ViTAE itself, unwrapped from DistributedDataParallel; anything else raises UdipConfigError."""
    model = getattr(model, "module", model)  # DistributedDataParallel -> ViTAE
    if not isinstance(model, ViTAE):
        raise UdipConfigError(f"model must be a ViTAE (load a checkpoint with load_checkpoint), got "
                              f"{type(model).__name__}")
    return model


def as_volume(v: str | Path | np.ndarray | Tensor) -> Tensor:
    """A preprocessed cache path, array or tensor (X, Y, Z) / (1, X, Y, Z) -> (1, X, Y, Z) float32 CPU.

    Raises
    ------
    ValueError
        Not a single volume.
    FileNotFoundError, ScanError
        A cache path that is missing or unreadable.
    """
    if isinstance(v, str | Path):
        v = load_preprocessed(v)
    t = v.detach() if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v, dtype=np.float32))
    t = t.float().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"a volume must be (X, Y, Z) or (1, X, Y, Z), got shape {tuple(t.shape)}")
    return t.unsqueeze(0)  # (1, X, Y, Z)


__all__ = ["as_volume", "as_vitae"]
