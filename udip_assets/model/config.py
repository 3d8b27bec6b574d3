"""Configuration of the ViT autoencoder and of its training.

Two frozen dataclasses, validated at construction so that a bad configuration stops a run before
any work: :class:`ModelConfig` (architecture) and :class:`TrainConfig` (optimisation). Three
named presets (:data:`PRESETS`, :func:`preset`):

``paper``
    Exactly Table 1 of the paper: 182x224x182 padded volumes, 14x16x14 patches (13x14x13 grid),
    encoder dim 128 / 8 heads / 12 layers, decoder dim 64 / 8 heads / 12 layers, batch 2, AdamW
    lr 1e-3, StepLR gamma 0.5 every 3 epochs with the lr floored at 1e-5, 400 epochs.
``demo``
    The same architecture on the 2 mm grid: 98x112x98 padded volumes, the same 14x16x14 patches
    (a 7x7x7 grid, ~150 brain tokens per scan), so that the demo cohort trains in minutes on CPU;
    10 epochs, the learning rate halved every 2 epochs.
``tiny``
    For tests: 28x32x28 volumes, 7x8x7 patches (4x4x4 grid), two layers of small dims.

Axis names in messages: X is "width", Y is "height", Z is "depth" (C order of the cached volumes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from udip_assets.errors import UdipConfigError

AXIS_NAMES = ("width", "height", "depth")
ATTN_BACKENDS = ("auto", "sdpa", "math", "varlen")
AMP_MODES = ("none", "bf16")
OPTIMIZER_IMPLS = ("auto", "default", "fused")
RESIDENT_MODES = ("none", "float32", "float16", "bfloat16")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UdipConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False,
                   hi_open: bool = True) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (isinstance(value, int | float) and math.isfinite(value) and ok_lo and ok_hi):
        lo_b, hi_b = "(" if lo_open else "[", ")" if hi_open else "]"
        raise UdipConfigError(f"{name} must be in {lo_b}{lo}, {hi}{hi_b}, got {value!r}")


def _require_triple(name: str, value: tuple) -> tuple[int, int, int]:
    value = tuple(value)
    if len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise UdipConfigError(f"{name} must be 3 positive integers (X, Y, Z), got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the ViT autoencoder.

    Attributes
    ----------
    volume_shape : tuple of 3 int
        Padded input volume (X, Y, Z) in voxels; every axis a multiple of ``patch``.
    patch : tuple of 3 int
        Patch size (X, Y, Z) in voxels. Paper: 14x16x14.
    enc_dim, enc_heads, enc_depth : int
        Encoder width (= UDIP dimension), attention heads, transformer blocks. Paper: 128, 8, 12.
    dec_dim, dec_heads, dec_depth : int
        Decoder width, heads, blocks. Paper: 64, 8, 12 (head dim 8).
    mlp_ratio : float
        Hidden width of each block's MLP as a multiple of the block width (4).
    dropout : float
        Dropout after the attention projection and the MLP, in [0, 1). Paper: 0.
    qkv_bias : bool
        Bias in the query/key/value projection (as timm's ``Block``).
    ln_eps : float
        LayerNorm epsilon (1e-6, as MAE).
    bf16 : bool
        Run every forward pass of the model under bfloat16 autocast (weights stay float32).
        Independent of :attr:`TrainConfig.amp`, which autocasts training only.
    attn_backend : str
        'sdpa' (``torch.nn.functional.scaled_dot_product_attention``, one call per scan when the
        scans keep different numbers of patches), 'math' (explicit matmul + softmax; fastest on CPU
        in bfloat16 for head dims 8-16), 'varlen' (one ``scaled_dot_product_attention`` call over
        all scans' packed tokens as a nested jagged tensor: on CUDA the flash / memory-efficient
        kernels for variable-length sequences; opt-in until measured on a GPU) or 'auto' (math on CPU
        under bfloat16 autocast, sdpa otherwise).
    union_mask : bool
        The authors' batch mask: the kept patch set is the union over the batch, so a scan's
        UDIP depends on its batch mates. Default False: each scan keeps exactly its own non-empty
        patches. True only to reproduce or benchmark the reference behaviour.
    centre_on_mean : bool
        Centre the model on the training scans' voxelwise mean volume: the encoder embeds each
        patch minus the mean's patch and the decoder predicts the departure from it (a buffer
        computed once before training, stored in every checkpoint). The optimum is the same model
        family's; what changes is that no capacity or optimiser step is spent drawing the mean
        brain from positional embeddings. Default False (the paper's model) in every preset: a
        lower loss, but UDIPs that encoded the demo's planted structures worse (see :data:`PRESETS`).
    """

    volume_shape: tuple[int, int, int] = (182, 224, 182)
    patch: tuple[int, int, int] = (14, 16, 14)
    enc_dim: int = 128
    enc_heads: int = 8
    enc_depth: int = 12
    dec_dim: int = 64
    dec_heads: int = 8
    dec_depth: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    bf16: bool = False
    attn_backend: str = "auto"
    union_mask: bool = False
    centre_on_mean: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "volume_shape", _require_triple("volume_shape", self.volume_shape))
        object.__setattr__(self, "patch", _require_triple("patch", self.patch))
        for axis, size, p in zip(AXIS_NAMES, self.volume_shape, self.patch, strict=True):
            if size % p:
                raise UdipConfigError(
                    f"volume {axis} ({size}) is not divisible by patch {axis} ({p}); pad the volumes to a "
                    f"multiple of the patch (preprocess with patch={self.patch}) or choose another patch")
        for part in ("enc", "dec"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            _require_int(f"{part}_dim", dim, 6)
            _require_int(f"{part}_heads", heads, 1)
            _require_int(f"{part}_depth", getattr(self, f"{part}_depth"), 1)
            if dim % heads:
                raise UdipConfigError(f"{part}_dim ({dim}) is not divisible by {part}_heads ({heads}); "
                                      f"choose heads that divide the width")
            if dim % 2:
                raise UdipConfigError(f"{part}_dim ({dim}) must be even for the sin-cos positional "
                                      "embedding (sin and cos pairs)")
        _require_range("mlp_ratio", self.mlp_ratio, 0.0, math.inf, lo_open=True)
        _require_range("dropout", self.dropout, 0.0, 1.0)
        _require_range("ln_eps", self.ln_eps, 0.0, 1.0, lo_open=True)
        if self.attn_backend not in ATTN_BACKENDS:
            raise UdipConfigError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Patches along (X, Y, Z): 13x14x13 for the paper."""
        return tuple(s // p for s, p in zip(self.volume_shape, self.patch, strict=True))  # type: ignore

    @property
    def n_patches(self) -> int:
        """Patches per volume, N (2366 for the paper)."""
        return math.prod(self.grid)

    @property
    def patch_voxels(self) -> int:
        """Voxels per patch, P (3136 for the paper)."""
        return math.prod(self.patch)

    def to_dict(self) -> dict:
        """Plain-Python dict of the fields (tuples as lists), for JSON, MLflow and checkpoints."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UdipConfigError`."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the ViT autoencoder.

    Attributes
    ----------
    batch_size : int
        Scans per optimiser step (per process under DDP). Paper: 2.
    lr : float
        Initial AdamW learning rate. Paper: 1e-3.
    weight_decay : float
        AdamW decoupled weight decay (0.01, the torch default; the paper does not state it).
    betas : tuple of 2 float
        AdamW betas ((0.9, 0.999), the torch default).
    lr_gamma, lr_step_epochs : float, int
        StepLR: the lr is multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs (0.5, 3).
    lr_min : float
        Floor of the learning rate (1e-5): ``lr(e) = max(lr * gamma ** (e // step), lr_min)``.
    epochs : int
        Epochs to train (400).
    checkpoint_every : int
        Keep a numbered checkpoint every this many epochs (10; the paper evaluates loci every 10).
    checkpoint_every_steps : int
        Also overwrite ``last.pt`` every this many optimiser steps inside an epoch, so that a killed
        run resumes mid-epoch (0: only at epoch ends).
    seed : int
        Seeds the weights and the data order; the order of epoch ``e`` is a function of (seed, e).
    num_workers : int
        DataLoader worker processes.
    amp : str
        'none' (float32) or 'bf16' (bfloat16 autocast for the training forward pass).
    optimizer_impl : str
        AdamW's implementation: 'default' (torch's choice: a loop over parameters on CPU,
        multi-tensor 'foreach' kernels on CUDA), 'fused' (one kernel for all parameters; CUDA or
        CPU) or 'auto' (fused on CUDA, torch's default elsewhere). They agree to float rounding; a
        run resumes only with the implementation it started with.
    resident : str
        'none' (read the scan caches from disk every epoch through the DataLoader) or the dtype in
        which every training and validation scan is loaded once onto the training device: 'float32'
        (the same batches as from disk), 'float16' or 'bfloat16' (half the memory, voxels rounded).
        For GPUs, where reading and copying scans each step would starve the kernels; refused
        before training when the scans do not fit the device's free memory.
    """

    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_gamma: float = 0.5
    lr_step_epochs: int = 3
    lr_min: float = 1e-5
    epochs: int = 400
    checkpoint_every: int = 10
    checkpoint_every_steps: int = 0
    seed: int = 0
    num_workers: int = 0
    amp: str = "none"
    optimizer_impl: str = "auto"
    resident: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _require_int("batch_size", self.batch_size, 1)
        _require_range("lr", self.lr, 0.0, math.inf, lo_open=True)
        _require_range("weight_decay", self.weight_decay, 0.0, math.inf)
        if len(self.betas) != 2:
            raise UdipConfigError(f"betas must be 2 numbers, got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            _require_range(f"betas[{i}]", beta, 0.0, 1.0)
        _require_range("lr_gamma", self.lr_gamma, 0.0, 1.0, lo_open=True, hi_open=False)
        _require_int("lr_step_epochs", self.lr_step_epochs, 1)
        _require_range("lr_min", self.lr_min, 0.0, math.inf)
        if self.lr_min > self.lr:
            raise UdipConfigError(f"lr_min ({self.lr_min}) is above lr ({self.lr}); the floor must be "
                                  "at most the initial learning rate")
        _require_int("epochs", self.epochs, 1)
        _require_int("checkpoint_every", self.checkpoint_every, 1)
        _require_int("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        _require_int("seed", self.seed, 0)
        _require_int("num_workers", self.num_workers, 0)
        if self.amp not in AMP_MODES:
            raise UdipConfigError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise UdipConfigError(f"optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {self.optimizer_impl!r}")
        if self.resident not in RESIDENT_MODES:
            raise UdipConfigError(f"resident must be one of {RESIDENT_MODES}, got {self.resident!r}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate during epoch ``epoch`` (0-based): StepLR with the floor."""
        return max(self.lr * self.lr_gamma ** (epoch // self.lr_step_epochs), self.lr_min)

    def to_dict(self) -> dict:
        """Plain-Python dict of the fields (tuples as lists)."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UdipConfigError`."""
        return _from_dict(cls, data)


def _to_dict(cfg) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v
            for f in dataclasses.fields(cfg)}


def _from_dict(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UdipConfigError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Preset:
    """A named pair of configurations."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, Preset] = {
    "paper": Preset(ModelConfig(), TrainConfig()),
    # 10 epochs over ~360 training scans, lr halved every 2: the optimiser steps of 30 epochs over 120
    # scans spent on three times as many distinct scans; validation MSE 0.155 at epoch 10 on the demo
    # cohort (30 epochs x 120 scans, lr halved every 6: 0.235), and the UDIPs encode the small
    # structures better (hippocampus CV R2 0.13 -> 0.40, thalamus 0.19 -> 0.33).
    # ``centre_on_mean`` stays off: on the same 360 + 40 demo scans and seed it lowers the validation
    # MSE (0.155 -> 0.118), but the UDIPs encode the planted structures worse (CV R2 ventricles 0.94 ->
    # 0.76, caudate 0.69 -> 0.49, hippocampus 0.40 -> 0.24, thalamus 0.33 -> 0.17) and the demo
    # found fewer loci (joint test 5/8 -> 3/8, minP 3/8 -> 2/8; one run, seed 0, 2026-12-04).
    "demo": Preset(ModelConfig(volume_shape=(98, 112, 98)),
                   TrainConfig(epochs=10, checkpoint_every=5, lr_step_epochs=2)),
    "tiny": Preset(ModelConfig(volume_shape=(28, 32, 28), patch=(7, 8, 7), enc_dim=32, enc_heads=4,
                               enc_depth=2, dec_dim=16, dec_heads=2, dec_depth=2),
                   TrainConfig(epochs=3, checkpoint_every=1)),
}


def preset(name: str, **overrides) -> tuple[ModelConfig, TrainConfig]:
    """The (model, train) configurations of preset ``name`` with fields overridden.

    Parameters
    ----------
    name : str
        'paper', 'demo' or 'tiny'.
    **overrides
        Field values of either dataclass, e.g. ``enc_depth=4, batch_size=8``; each name must belong
        to exactly one of them.

    Returns
    -------
    (ModelConfig, TrainConfig)

    Raises
    ------
    UdipConfigError
        Unknown preset or field name, or an invalid resulting value.
    """
    if name not in PRESETS:
        raise UdipConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - model_names - train_names)
    if unknown:
        raise UdipConfigError(f"unknown config fields {unknown}; ModelConfig has {sorted(model_names)}, "
                              f"TrainConfig has {sorted(train_names)}")
    model = dataclasses.replace(base.model, **{k: v for k, v in overrides.items() if k in model_names})
    train = dataclasses.replace(base.train, **{k: v for k, v in overrides.items() if k in train_names})
    return model, train
