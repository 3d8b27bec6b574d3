"""Training checkpoints of the ViT autoencoder: atomic writes, validated reads, RNG state, model ids.

A checkpoint is one ``torch.save`` dict holding everything needed to resume a run exactly (after
MAE's ``misc.save_model``, plus the RNG state and the epoch in progress):

``format``
    :data:`CHECKPOINT_FORMAT`, bumped when the layout changes.
``model``, ``optimizer``, ``scheduler``
    State dicts of the (unwrapped) :class:`~udip_assets.model.vit_ae.ViTAE`, AdamW and the LR
    scheduler.
``epoch``, ``step_in_epoch``, ``global_step``
    Completed epochs, optimiser steps already taken in epoch ``epoch`` (0-based; 0 at an epoch
    boundary) and optimiser steps since the start of the run.
``rank_states``
    One dict per training process: its RNG states (``rng``: torch, numpy, python ``random``, CUDA
    when present) and the running sums of the epoch in progress (``progress``).
``model_config``, ``train_config``
    The resolved :class:`ModelConfig` / :class:`TrainConfig` as plain dicts.
``best_val_loss``, ``best_epoch``, ``history``, ``checkpoints``
    Lowest validation loss so far and its epoch, one metrics dict per completed epoch, and the
    numbered checkpoint file of each epoch that has one (``{epoch: 'epoch_0010.pt'}``).
``world_size``
    Training processes that wrote it.

Everything is stored as tensors and plain Python values, so checkpoints load with
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udip_assets.atomic import write_bytes_atomic
from udip_assets.errors import UdipConfigError
from udip_assets.model.config import ModelConfig, TrainConfig
from udip_assets.model.vit_ae import ViTAE

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step",
                 "rank_states", "model_config", "train_config", "best_val_loss", "best_epoch", "history",
                 "checkpoints", "world_size")
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, incomplete, or does not fit its own configuration."""


def model_id_for(run_id: str, epoch: int) -> str:
    """The id of the model a training run had after ``epoch`` completed epochs: ``'{run_id}-e0010'``.

    Parameters
    ----------
    run_id : str
        The training run (non-empty).
    epoch : int
        Completed epochs (>= 0).
    """
    if not isinstance(run_id, str) or not run_id:
        raise UdipConfigError(f"run_id must be a non-empty string, got {run_id!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise UdipConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
    return f"{run_id}-e{int(epoch):04d}"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the numbered checkpoint after ``epoch`` completed epochs: ``'epoch_0010.pt'``."""
    return f"epoch_{epoch:04d}.pt"


# ------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict:
    """The global RNG states of this process (torch CPU, numpy, python ``random``, CUDA if present).

    Returns
    -------
    dict
        Tensors and plain values only (loadable with ``weights_only=True``); see
        :func:`restore_rng_state`.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Set the global RNGs to a state returned by :func:`capture_rng_state`.

    The CUDA states are restored only when CUDA is available and the device counts agree.
    """
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),  # noqa: NPY002
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(state: Mapping, *paths: str | Path) -> list[Path]:
    """Write ``state`` atomically to every path (serialised once).

    Each file is written to a temporary file in the same folder, flushed to disk and renamed over
    the destination with ``os.replace``, so a reader (or a resumed run) sees either the previous
    checkpoint or the new one, never a torn file.

    Parameters
    ----------
    state : mapping
        The checkpoint dict (see the module docstring).
    *paths : str or Path
        Destinations; their folders are created.

    Returns
    -------
    list of Path
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getbuffer()
    written = []
    for path in map(Path, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_bytes_atomic(path, payload, fsync=True))
    return written


# ------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint dict (no model is built).

    Parameters
    ----------
    path : str or Path
        A file written by :func:`save_checkpoint`.
    map_location : str or torch.device
        Where its tensors are loaded.

    Returns
    -------
    dict
        The checkpoint, with ``model_config`` / ``train_config`` checked to build valid configs.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CheckpointError
        The file is unreadable (truncated, not a checkpoint), lacks keys, has another format
        version, or holds configurations this version of udip cannot build.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train a model first or fix the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a udip checkpoint ({type(exc).__name__}: "
                              f"{exc}); delete it and resume from another checkpoint (e.g. an epoch_*.pt "
                              "in the same folder) or retrain") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a udip checkpoint dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by udip's trainer "
                              "(or by an older version); retrain or use another checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']!r} but this version of udip "
                              f"reads format {CHECKPOINT_FORMAT}; use the udip version that wrote it")
    configs_from_state(state, path)
    return state


def configs_from_state(state: Mapping, path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """The (ModelConfig, TrainConfig) stored in a checkpoint dict; CheckpointError naming ``path``."""
    try:
        return ModelConfig.from_dict(state["model_config"]), TrainConfig.from_dict(state["train_config"])
    except (UdipConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a configuration incompatible with this version of "
                              f"udip: {exc}; use the udip version that wrote it or retrain") from exc


@dataclass
class LoadedCheckpoint:
    """A checkpoint read by :func:`load_checkpoint`, its model built and loaded.

    Attributes
    ----------
    path : Path
    model : ViTAE
        In eval mode, on the requested device.
    model_cfg, train_cfg : ModelConfig, TrainConfig
    epoch, step_in_epoch, global_step : int
    best_val_loss : float
    best_epoch : int
    history : list of dict
    state : dict
        The raw checkpoint (optimizer, scheduler, RNG states ...).
    """

    path: Path
    model: ViTAE
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    epoch: int
    step_in_epoch: int
    global_step: int
    best_val_loss: float
    best_epoch: int
    history: list = field(default_factory=list)
    state: dict = field(default_factory=dict, repr=False)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint and build its model.

    Parameters
    ----------
    path : str or Path
        A checkpoint written by the trainer (``epoch_0010.pt``, ``best.pt``, ``last.pt``).
    device : str or torch.device
        Device of the returned model.

    Returns
    -------
    LoadedCheckpoint
        The model is in eval mode. Building it does not touch the global RNG.

    Raises
    ------
    FileNotFoundError, CheckpointError
        As :func:`read_checkpoint`; also when the weights do not fit the stored ModelConfig.
    """
    path = Path(path)
    state = read_checkpoint(path, map_location="cpu")
    model_cfg, train_cfg = configs_from_state(state, path)
    with torch.random.fork_rng(devices=[]):
        model = ViTAE(model_cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its own model configuration "
                              f"({exc}); the file is inconsistent, retrain or use another checkpoint"
                              ) from exc
    model.to(device).eval()
    return LoadedCheckpoint(path=path, model=model, model_cfg=model_cfg, train_cfg=train_cfg,
                            epoch=int(state["epoch"]), step_in_epoch=int(state["step_in_epoch"]),
                            global_step=int(state["global_step"]),
                            best_val_loss=float(state["best_val_loss"]), best_epoch=int(state["best_epoch"]),
                            history=list(state["history"]), state=state)


def config_differences(saved: Mapping, current: Mapping, ignore: tuple[str, ...] = ()) -> list[str]:
    """Fields whose values differ between two config dicts, as ``'name: saved -> current'``.

    Fields missing from one side count as differing; names in ``ignore`` are skipped.
    """
    out = []
    for name in sorted(set(saved) | set(current)):
        if name in ignore:
            continue
        a, b = saved.get(name, "<absent>"), current.get(name, "<absent>")
        if a != b:
            out.append(f"{name}: {a!r} (checkpoint) vs {b!r} (now)")
    return out


__all__ = ["BEST_NAME", "CHECKPOINT_FORMAT", "CheckpointError", "LAST_NAME", "LoadedCheckpoint",
           "capture_rng_state", "config_differences", "configs_from_state", "epoch_checkpoint_name",
           "load_checkpoint", "model_id_for", "read_checkpoint", "restore_rng_state", "save_checkpoint"]
