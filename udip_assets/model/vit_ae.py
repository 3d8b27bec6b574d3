"""The 3D vision-transformer autoencoder (ViT-AE) whose pooled encoder output is the UDIP.

Architecture (the paper's Methods and Table 1; structure after MAE):

* ``patchify``: the (X, Y, Z) volume is cut into non-overlapping patches (14x16x14 -> a 13x14x13
  grid of N = 2366 patches of P = 3136 voxels at 1 mm).
* Batch mask: only the *kept* patches (those with a non-zero voxel) become tokens.
* Encoder: linear patch embedding + fixed 3D sin-cos positional embedding, ``enc_depth`` pre-norm
  transformer blocks, final LayerNorm; the UDIP is the mean of the scan's tokens (``enc_dim``).
* Decoder: the UDIP projected to ``dec_dim`` is prepended to one token per kept patch that holds
  only that patch's positional embedding; ``dec_depth`` blocks, LayerNorm, and a linear layer that
  predicts the patch's P voxels.
* Loss: per-voxel MSE over the scan's kept patches, averaged over the scans of the batch.
* Optional centring (``ModelConfig.centre_on_mean``): a fixed buffer ``mean_patches`` (N, P), the
  training scans' voxelwise mean volume cut into patches, is subtracted from each kept patch before
  the patch embedding and added to each predicted patch; set by :meth:`ViTAE.set_mean_volume`.

Notes
-----
**Per-scan batch mask.** The authors keep the union over the batch of the non-empty patches, so a
scan's UDIP depends on its batch mates (an empty patch still becomes a token: bias plus position).
Here each scan keeps exactly its own non-empty patches (``ModelConfig.union_mask=False``), so its
UDIP and reconstruction do not depend on the batch. Scans with different kept sets are *packed*:
the kept tokens of all scans are concatenated into one ``(T, C)`` matrix (T = total kept tokens),
token-wise layers (LayerNorm, linear, MLP) run once on it, and attention runs per scan on that
scan's slice (one batched call when all scans have the same number of tokens, as with
``union_mask=True``). Packing wastes no compute on padding and needs no attention mask. Measured on
CPU at batch 2 (``benchmarks/bench_model.py``): packing and a loop over scans (batches of one) tie,
one padded call with a key-padding mask is slower; packing was kept because its token-wise matmuls
stay large (better on GPU), and the per-scan attention calls are a handful per layer.

**Attention.** ``cfg.attn_backend``: 'sdpa' (``scaled_dot_product_attention``, one call per scan
of a packed batch), 'math' (:func:`math_attention`, chunked matmuls + softmax with a hand-written
backward), 'varlen' (:func:`varlen_attention`: the packed tokens of all scans as one nested jagged
tensor and one ``scaled_dot_product_attention`` call, which CUDA runs with its variable-length flash
or memory-efficient kernels) or 'auto' (math for bfloat16 on CPU, where it is the fastest; sdpa
otherwise: 'varlen' stays opt-in until ``benchmarks/bench_gpu.py`` has measured it on a GPU).
:meth:`ViTAE.attention_maps` returns the weights of every encoder layer through the math path.

**Loss of a batch.** ``per_scan_loss[b]`` is the mean squared error over all voxels of scan b's
kept patches (target = the input voxels, background zeros inside kept patches included, as in the
paper); ``loss`` is the mean of ``per_scan_loss`` over the batch, so every scan weighs the same
whatever its brain size. With ``union_mask=True`` all scans have the same number of kept patches
and this equals the authors' MSE over all kept patches of the batch.

**Precision.** With ``cfg.bf16`` the encoder and decoder run under bfloat16 autocast; the pooling
and the loss are computed in float32 and every returned tensor is float32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udip_assets.model.config import AXIS_NAMES, ModelConfig


def sincos_pos_embed_3d(dim: int, grid: Sequence[int]) -> Tensor:
    """Fixed 3D sine-cosine positional embeddings of a patch grid.

    Parameters
    ----------
    dim : int
        Embedding width; even and >= 6.
    grid : sequence of 3 int
        Patches along (X, Y, Z).

    Returns
    -------
    Tensor (N, dim) float32
        Row ``n`` embeds patch ``n`` of the grid in C order (the order of :meth:`ViTAE.patchify`).

    Notes
    -----
    The ``dim / 2`` sine-cosine frequency pairs are split across the three axes as evenly as
    possible (X first gets the remainder): 128 -> 22/21/21 pairs, 64 -> 11/11/10. An axis with k
    pairs embeds the integer grid coordinate c as ``[sin(c w_0..w_k-1), cos(c w_0..w_k-1)]`` with
    ``w_i = 10000 ** (-i / k)`` (MAE's 1D embedding per axis). The dot product of two rows depends
    only on the offset between the two patches.
    """
    if dim % 2 or dim < 6:
        raise ValueError(f"dim must be even and >= 6 for a 3D sin-cos embedding, got {dim}")
    pairs = dim // 2
    per_axis = [pairs // 3 + (axis < pairs % 3) for axis in range(3)]
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for k, coord in zip(per_axis, coords, strict=True):
        omega = 10000.0 ** (-torch.arange(k, dtype=torch.float64) / k)  # (k,)
        angle = coord.reshape(-1, 1) * omega  # (N, k)
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1).float()  # (N, dim)


@dataclass(frozen=True)
class TokenLayout:
    """Where the kept tokens of a batch sit in the packed ``(T, C)`` token matrix.

    Attributes
    ----------
    kept : Tensor (B, N) bool
        Kept patches of each scan.
    batch_index, patch_index : Tensor (T,) long
        Scan and patch of each packed token; scan-major, patches ascending within a scan.
    seqlens : tuple of int
        Tokens per scan (sum T).
    """

    kept: Tensor
    batch_index: Tensor
    patch_index: Tensor
    seqlens: tuple[int, ...]

    @classmethod
    def from_kept(cls, kept: Tensor) -> TokenLayout:
        """Layout of a ``(B, N)`` bool kept mask."""
        batch_index, patch_index = kept.nonzero(as_tuple=True)  # (T,), (T,)
        return cls(kept, batch_index, patch_index, tuple(kept.sum(1).tolist()))

    @property
    def decoder_seqlens(self) -> tuple[int, ...]:
        """Decoder tokens per scan: the UDIP token plus one per kept patch."""
        return tuple(n + 1 for n in self.seqlens)

    def decoder_rows(self) -> tuple[Tensor, Tensor]:
        """Rows of the packed decoder sequence holding (the UDIP tokens (B,), the patch tokens (T,)).

        Scan b's decoder tokens are contiguous: its UDIP token, then its patch tokens in order.
        """
        lens = torch.tensor(self.seqlens, device=self.kept.device)  # (B,)
        arange_b = torch.arange(len(self.seqlens), device=self.kept.device)
        udip_rows = torch.cumsum(lens, 0) - lens + arange_b  # (B,)
        token_rows = torch.arange(len(self.batch_index), device=self.kept.device) + self.batch_index + 1
        return udip_rows, token_rows

    def segment_mean(self, h: Tensor) -> Tensor:
        """Mean of the packed rows ``h`` (T, C) over each scan's tokens -> (B, C) float32."""
        lens = torch.tensor(self.seqlens, device=h.device, dtype=torch.float32)  # (B,)
        total = h.new_zeros((len(self.seqlens), h.shape[1]), dtype=torch.float32)
        total = total.index_add(0, self.batch_index, h.float())  # (B, C)
        return total / lens.unsqueeze(1)


# Attention probabilities handled at once by the math path: one head of a 1 mm scan in bfloat16
# (2 MiB), so that the scores, their softmax and the products with V stay in the CPU's caches
# (measured in situ, bfloat16 paper step: 1, 2, 4, 8 and 14 MB gave 0.65, 0.61, 0.63, 0.68, 0.74 s).
MATH_CHUNK_BYTES = 2 * 2**20


def _head_chunks(n_groups: int, length: int, itemsize: int) -> list[slice]:
    step = max(1, MATH_CHUNK_BYTES // (length * length * itemsize))
    return [slice(s, min(s + step, n_groups)) for s in range(0, n_groups, step)]


def _math_forward(q_scaled: Tensor, k: Tensor, v: Tensor, keep_probs: bool) -> tuple[Tensor, list[Tensor]]:
    """softmax(q k^T) v over contiguous (G, L, d) heads, ``q`` pre-scaled.

    Returns (out (G, L, d), the probabilities (g, L, L) of each chunk of heads if ``keep_probs``).
    """
    out = torch.empty_like(q_scaled)  # (G, L, d)
    kt = k.transpose(1, 2).contiguous()  # (G, d, L), once rather than inside every bmm
    probs = []
    for c in _head_chunks(*q_scaled.shape[:2], q_scaled.element_size()):
        p = torch.softmax(torch.bmm(q_scaled[c], kt[c]), dim=-1)  # (g, L, L)
        torch.bmm(p, v[c], out=out[c])
        if keep_probs:
            probs.append(p)
    return out, probs


# 'auto' attention on CPU in bfloat16: the math path beats SDPA for short sequences (2 mm demo
# grid, ~155 tokens: 3.5 vs 6.2 ms per layer forward+backward) and loses for long ones (1 mm paper
# grid, ~910 tokens: 44 vs 40 ms); benchmarks/bench_model.py measures both.
_MATH_MAX_TOKENS = 512


class _MathAttention(torch.autograd.Function):
    """Exact attention with a hand-written, chunked backward (see :func:`math_attention`)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            q_scaled = q * scale  # (G, L, d)
            out = _math_forward(q_scaled, k, v, keep_probs=False)[0]
        ctx.save_for_backward(q_scaled, k, v)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q_scaled, k, v = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # (G, L, d)
        dq, dk, dv = torch.empty_like(q_scaled), torch.empty_like(k), torch.empty_like(v)
        kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()  # (G, d, L)
        with torch.autocast(q_scaled.device.type, enabled=False):
            for c in _head_chunks(*q_scaled.shape[:2], q_scaled.element_size()):
                p = torch.softmax(torch.bmm(q_scaled[c], kt[c]), dim=-1)  # (g, L, L), recomputed
                torch.bmm(p.transpose(1, 2), grad_out[c], out=dv[c])
                dp = torch.bmm(grad_out[c], vt[c])  # (g, L, L)
                ds = torch.ops.aten._softmax_backward_data(dp, p, -1, p.dtype)  # P * (dP - rowsum(P dP))
                torch.bmm(ds, k[c], out=dq[c])
                torch.bmm(ds.transpose(1, 2), q_scaled[c], out=dk[c])
        return dq.mul_(ctx.scale), dk, dv, None


def math_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Exact softmax attention computed with batched matmuls, a few heads at a time.

    Parameters
    ----------
    q, k, v : Tensor (b, H, L, d)
        Queries, keys and values, all of one dtype.
    scale : float
        Score scale, ``d ** -0.5``.

    Returns
    -------
    Tensor (b, H, L, d)

    Notes
    -----
    On CPU in bfloat16 this is faster than ``scaled_dot_product_attention`` for the head dims of
    the paper (16 and 8) at ~900 tokens: the flash kernel works in small blocks whose matmuls with
    K = 8-16 leave the CPU's bfloat16 dot-product units idle, while here each chunk of heads is
    one large ``bmm`` and one softmax over (L, L) blocks that stay in cache. Like flash attention it
    stores no probabilities for the backward pass but recomputes them chunk by chunk (storing them,
    ~13 MB per scan and layer, was not faster: fresh memory costs page faults). Scores and
    probabilities are rounded to the input dtype, so in bfloat16 the result differs from float32
    attention by ~1e-2 relative (``scaled_dot_product_attention`` in bfloat16: ~4e-3); in float32 by
    float rounding only.
    """
    b, h, n, d = q.shape
    q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))  # (b H, L, d) each
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        out = _MathAttention.apply(q, k, v, scale)
    else:
        with torch.autocast(q.device.type, enabled=False):
            out = _math_forward(q * scale, k, v, keep_probs=False)[0]
    return out.view(b, h, n, d)


def varlen_attention(qkv: Tensor, seqlens: Sequence[int], heads: int) -> Tensor:
    """Softmax attention within each scan of a packed batch, all scans in one call.

    Parameters
    ----------
    qkv : Tensor (T, 3 C)
        The fused query/key/value projection of the packed tokens (scan-major, ``seqlens`` each).
    seqlens : sequence of int
        Tokens per scan (sum T).
    heads : int
        Attention heads; head dim d = C / heads.

    Returns
    -------
    Tensor (T, C)
        Each token's attention output over the tokens of its own scan, heads concatenated.

    Notes
    -----
    The tokens become nested jagged tensors ``(B, H, j, d)`` (``torch.nested``, offsets from
    ``seqlens``) and go through ``scaled_dot_product_attention`` once: no padding and no mask,
    and on CUDA the flash / memory-efficient kernels take variable-length sequences directly. On
    CPU it falls back to a per-sequence math path (exact; slower than 'sdpa' per scan).
    """
    t = qkv.shape[0]
    head_dim = qkv.shape[1] // (3 * heads)
    offsets = torch.zeros(len(seqlens) + 1, dtype=torch.int64, device=qkv.device)
    offsets[1:] = torch.tensor(list(seqlens), device=qkv.device).cumsum(0)
    parts = qkv.view(t, 3, heads, head_dim).unbind(1)  # 3 x (T, H, d)
    q, k, v = (torch.nested.nested_tensor_from_jagged(p.contiguous(), offsets).transpose(1, 2)
               for p in parts)  # (B, H, j, d) each
    with warnings.catch_warnings():  # torch's CPU fallback builds a strided nested tensor and says so
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, j, H, d)
    return out.values().reshape(t, heads * head_dim)  # (T, C)


def attention_probs(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """As :func:`math_attention` without gradient, also returning the weights (b, H, L, L)."""
    b, h, n, d = q.shape
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        out, probs = _math_forward(*(t.reshape(b * h, n, d) for t in (q * scale, k, v)), keep_probs=True)
    return out.view(b, h, n, d), torch.cat(probs).view(b, h, n, n)


class Attention(nn.Module):
    """Multi-head self-attention over the packed tokens of several scans.

    Parameters
    ----------
    dim, heads : int
        Width and number of heads (head dim = dim / heads).
    qkv_bias : bool
        Bias of the fused query/key/value projection.
    proj_drop : float
        Dropout after the output projection.
    backend : str
        'sdpa' (``torch.nn.functional.scaled_dot_product_attention``), 'math'
        (:func:`math_attention`), 'varlen' (:func:`varlen_attention` when the scans' lengths differ)
        or 'auto' (math for bfloat16 on CPU up to ``_MATH_MAX_TOKENS`` tokens per scan, where it is
        faster; sdpa otherwise).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_drop: float, backend: str) -> None:
        super().__init__()
        self.heads, self.head_dim, self.backend = heads, dim // heads, backend
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: Tensor, seqlens: Sequence[int]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(q, k, v) groups, each (b, H, L, d): one group if all scans have L tokens, else one per scan."""
        qkv = self.qkv(x)  # (T, 3C)
        if len(set(seqlens)) == 1:
            chunks = [qkv.view(len(seqlens), seqlens[0], -1)]  # [(B, L, 3C)]
        else:
            chunks = [c.unsqueeze(0) for c in torch.split(qkv, list(seqlens))]  # [(1, L_b, 3C)]
        groups = []
        for c in chunks:
            b, n = c.shape[:2]
            q, k, v = c.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (b, H, L, d)
            groups.append((q, k, v))
        return groups

    def _merge_heads(self, outs: list[Tensor]) -> Tensor:
        """[(b, H, L, d)] -> projected (T, C)."""
        flat = [o.transpose(1, 2).reshape(-1, self.heads * self.head_dim) for o in outs]  # [(b L, C)]
        out = flat[0] if len(flat) == 1 else torch.cat(flat)  # (T, C)
        return self.proj_drop(self.proj(out))

    def _use_math(self, q: Tensor) -> bool:
        if self.backend == "auto":
            return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[2] <= _MATH_MAX_TOKENS
        return self.backend == "math"

    def _use_varlen(self, seqlens: Sequence[int]) -> bool:
        """One nested call, when asked for and the scans' lengths differ (else the per-scan path is one call)."""
        return self.backend == "varlen" and len(set(seqlens)) > 1

    def forward(self, x: Tensor, seqlens: Sequence[int]) -> Tensor:
        """Attend within each scan: x (T, C) -> (T, C)."""
        if self._use_varlen(seqlens):
            return self.proj_drop(self.proj(varlen_attention(self.qkv(x), seqlens, self.heads)))
        outs = []
        for q, k, v in self._split_heads(x, seqlens):
            if self._use_math(q):
                outs.append(math_attention(q, k, v, self.scale))  # (b, H, L, d)
            else:
                outs.append(F.scaled_dot_product_attention(q, k, v))  # (b, H, L, d)
        return self._merge_heads(outs)

    def forward_with_weights(self, x: Tensor, seqlens: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """As :meth:`forward` through the math path without gradient, also returning each scan's
        (H, L_b, L_b) attention weights."""
        outs, weights = [], []
        for q, k, v in self._split_heads(x, seqlens):
            out, probs = attention_probs(q, k, v, self.scale)  # (b, H, L, d), (b, H, L, L)
            outs.append(out)
            weights.extend(probs.unbind(0))
        return self._merge_heads(outs), weights


class Mlp(nn.Module):
    """Linear -> GELU -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """(T, C) -> (T, C)."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = Attention(dim, heads, cfg.qkv_bias, cfg.dropout, cfg.attn_backend)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.dropout)

    def forward(self, x: Tensor, seqlens: Sequence[int]) -> Tensor:
        """Packed tokens (T, C) -> (T, C)."""
        x = x + self.attn(self.norm1(x), seqlens)
        return x + self.mlp(self.norm2(x))

    def forward_with_weights(self, x: Tensor, seqlens: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """As :meth:`forward`, also returning the attention weights of each scan (H, L_b, L_b)."""
        a, weights = self.attn.forward_with_weights(self.norm1(x), seqlens)
        x = x + a
        return x + self.mlp(self.norm2(x)), weights


def scatter_patches(kept: Tensor, tokens: Tensor) -> Tensor:
    """Packed patches (T, P) -> (B, N, P), zeros where ``kept`` (B, N) is False; inverse of ``p[kept]``."""
    b, n = kept.shape
    out = tokens.new_zeros((b, n, tokens.shape[1]))  # (B, N, P)
    return out.index_put((kept,), tokens)


@dataclass
class ModelOutput:
    """What :meth:`ViTAE.forward` returns (all float32 except ``kept``).

    Attributes
    ----------
    loss : Tensor ()
        Mean of ``per_scan_loss``.
    per_scan_loss : Tensor (B,)
        Per-voxel MSE over each scan's kept patches.
    udip : Tensor (B, enc_dim)
        The UDIPs.
    kept : Tensor (B, N) bool
        Patches that were computed (and scored).
    pred_tokens : Tensor (T, P)
        Predicted voxels of the kept patches, packed scan by scan in patch order (``pred[kept]``).
    pred : Tensor (B, N, P)
        Predicted patches, zeros where not kept; built from ``pred_tokens`` on first access (a
        training step that only needs the loss does not pay for the (B, N, P) tensor).
    """

    loss: Tensor
    per_scan_loss: Tensor
    udip: Tensor
    kept: Tensor
    pred_tokens: Tensor

    @functools.cached_property
    def pred(self) -> Tensor:
        """(B, N, P) predicted patches, zeros where not kept."""
        return scatter_patches(self.kept, self.pred_tokens)


@dataclass
class AttentionMaps:
    """Encoder attention weights of a batch (what :meth:`ViTAE.attention_maps` returns).

    Attributes
    ----------
    maps : list of Tensor (B, H, L, L) float32, one per encoder layer
        ``maps[layer][b, h, i, j]``: how much token i of scan b attends to token j in head h. L is
        the largest number of kept patches in the batch; rows and columns past scan b's own count
        are zero, every other row sums to 1.
    patch_index : Tensor (B, L) long
        Grid patch (0..N-1, C order) shown by each token; -1 for padding.
    kept : Tensor (B, N) bool
        Kept patches.
    """

    maps: list[Tensor]
    patch_index: Tensor
    kept: Tensor


def _init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTAE(nn.Module):
    """The 3D ViT autoencoder; ``encode`` gives the UDIPs, ``decode`` the patches they predict.

    Parameters
    ----------
    cfg : ModelConfig
        Architecture (see :mod:`udip_assets.model.config`).

    Notes
    -----
    Inputs are volumes ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` with ``(X, Y, Z) ==
    cfg.volume_shape``, z-scored inside the brain and exactly 0 outside (the preprocessed caches).
    See the module docstring for the batch mask, the loss and the precision.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_voxels = cfg.patch_voxels
        self.patch_embed = nn.Linear(n_voxels, cfg.enc_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(cfg.enc_dim, cfg.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.enc_dim, cfg.enc_heads, cfg) for _ in range(cfg.enc_depth))
        self.norm = nn.LayerNorm(cfg.enc_dim, eps=cfg.ln_eps)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_3d(cfg.dec_dim, cfg.grid),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(cfg.dec_dim, cfg.dec_heads, cfg)
                                            for _ in range(cfg.dec_depth))
        self.decoder_norm = nn.LayerNorm(cfg.dec_dim, eps=cfg.ln_eps)
        self.decoder_pred = nn.Linear(cfg.dec_dim, n_voxels)
        self.apply(_init_weights)
        if cfg.centre_on_mean:
            self.register_buffer("mean_patches", torch.zeros(cfg.n_patches, n_voxels))

    def set_mean_volume(self, volume: Tensor) -> None:
        """Store the mean volume (X, Y, Z) that a ``centre_on_mean`` model is centred on.

        Raises
        ------
        ValueError
            The model was built without ``centre_on_mean``, or ``volume`` is not (X, Y, Z) of
            ``cfg.volume_shape`` or not finite.
        """
        if not self.cfg.centre_on_mean:
            raise ValueError("this model was built with centre_on_mean=False; it has no mean volume to set")
        volume = torch.as_tensor(volume)
        if tuple(volume.shape) != self.cfg.volume_shape:
            raise ValueError(f"the mean volume must have the model's shape {self.cfg.volume_shape}, got "
                             f"{tuple(volume.shape)}")
        if not torch.isfinite(volume).all():
            raise ValueError("the mean volume has non-finite voxels; check the training caches")
        x = volume.to(self.patch_embed.weight.device, torch.float32)[None, None]  # (1, 1, X, Y, Z)
        self.mean_patches.copy_(self.patchify(x)[0])  # (N, P)

    def _mean_tokens(self, layout: TokenLayout) -> Tensor | None:
        """The mean's patches at the layout's kept positions (T, P), or None without centring."""
        return self.mean_patches[layout.patch_index] if self.cfg.centre_on_mean else None

    # ----------------------------------------------------------------- patches and input checks
    def patchify(self, x: Tensor) -> Tensor:
        """Volumes -> patches.

        Parameters
        ----------
        x : Tensor (B, 1, X, Y, Z) or (B, X, Y, Z)

        Returns
        -------
        Tensor (B, N, P)
            N = ``cfg.n_patches`` patches in C order of the (gx, gy, gz) grid; each patch's
            P = ``cfg.patch_voxels`` voxels in C order of its (px, py, pz) offsets, i.e.
            ``p[b, (i*gy + j)*gz + k, (u*py + v)*pz + w] = x[b, 0, i*px + u, j*py + v, k*pz + w]``.
        """
        x = self.check_volumes(x)
        (gx, gy, gz), (px, py, pz) = self.cfg.grid, self.cfg.patch
        b = x.shape[0]
        p = x.reshape(b, gx, px, gy, py, gz, pz)  # (B, gx, px, gy, py, gz, pz)
        p = p.permute(0, 1, 3, 5, 2, 4, 6)  # (B, gx, gy, gz, px, py, pz)
        return p.reshape(b, self.cfg.n_patches, self.cfg.patch_voxels)  # (B, N, P)

    def unpatchify(self, p: Tensor) -> Tensor:
        """Patches (B, N, P) -> volumes (B, 1, X, Y, Z); the exact inverse of :meth:`patchify`."""
        n, n_voxels = self.cfg.n_patches, self.cfg.patch_voxels
        if p.ndim != 3 or p.shape[1:] != (n, n_voxels):
            raise ValueError(f"patches must be (B, {n}, {n_voxels}) for this model, got {tuple(p.shape)}")
        (gx, gy, gz), (px, py, pz) = self.cfg.grid, self.cfg.patch
        b = p.shape[0]
        x = p.reshape(b, gx, gy, gz, px, py, pz)  # (B, gx, gy, gz, px, py, pz)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, gx, px, gy, py, gz, pz)
        return x.reshape(b, 1, *self.cfg.volume_shape)  # (B, 1, X, Y, Z)

    def check_volumes(self, x: Tensor) -> Tensor:
        """Validate a batch of volumes; return it as (B, 1, X, Y, Z) in the parameters' dtype.

        Raises
        ------
        ValueError
            Not a floating tensor of rank 4 or 5 with one channel, a spatial size that differs from
            ``cfg.volume_shape`` (naming the axis and both sizes), an empty batch, or another device.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor of volumes, got {type(x).__name__}")
        if x.ndim == 4:
            x = x.unsqueeze(1)  # (B, 1, X, Y, Z)
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[0] == 0:
            raise ValueError(f"input must be volumes (B, 1, X, Y, Z) or (B, X, Y, Z) with B >= 1, got shape "
                             f"{tuple(x.shape)}")
        for axis, got, want in zip(AXIS_NAMES, x.shape[2:], self.cfg.volume_shape, strict=True):
            if got != want:
                raise ValueError(f"input {axis} ({got}) does not match the model ({want}); the model expects "
                                 f"volumes {self.cfg.volume_shape} (preprocess with patch={self.cfg.patch})")
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got {x.dtype}")
        weight = self.patch_embed.weight
        if x.device != weight.device:
            raise ValueError(f"input is on {x.device} but the model is on {weight.device}; move one of them")
        return x.to(weight.dtype)

    def _kept_from_volumes(self, x: Tensor) -> Tensor:
        """Validated volumes (B, 1, X, Y, Z) -> kept patches (B, N) bool (see :meth:`kept_mask`)."""
        (gx, gy, gz), (px, py, pz) = self.cfg.grid, self.cfg.patch
        nonzero = x.ne(0).view(x.shape[0], gx, px, gy, py, gz, pz)  # (B, gx, px, gy, py, gz, pz)
        kept = nonzero.any(dim=6).any(dim=4).any(dim=2).reshape(x.shape[0], -1)  # (B, N)
        if self.cfg.union_mask:
            kept = kept.any(dim=0, keepdim=True).expand_as(kept).contiguous()  # (B, N)
        return kept

    def kept_mask(self, x: Tensor) -> Tensor:
        """Patches computed for each scan -> (B, N) bool.

        A patch is kept if any of its voxels is non-zero; with ``cfg.union_mask`` every scan keeps
        the union over the batch (the authors' batch mask).
        """
        return self._kept_from_volumes(self.check_volumes(x))

    def _layout(self, x: Tensor) -> TokenLayout:
        layout = TokenLayout.from_kept(self._kept_from_volumes(x))
        empty = [b for b, n in enumerate(layout.seqlens) if n == 0]
        if empty:
            raise ValueError(f"scans {empty} of the batch are all zero (no brain voxel); a UDIP needs at "
                             "least one non-zero patch: drop these scans or check their preprocessing")
        return layout

    def _gather_tokens(self, x: Tensor, layout: TokenLayout) -> Tensor:
        """The kept patches of validated volumes, packed: (T, P), rows as ``patchify(x)[kept]``.

        Gathers straight from the volume (no copy of every patch, as ``patchify`` would make).
        """
        (gx, gy, gz), (px, py, pz) = self.cfg.grid, self.cfg.patch
        grid = x.view(x.shape[0], gx, px, gy, py, gz, pz)  # (B, gx, px, gy, py, gz, pz)
        grid = grid.permute(0, 1, 3, 5, 2, 4, 6)  # (B, gx, gy, gz, px, py, pz), a view
        n = layout.patch_index
        i, j, k = n // (gy * gz), n // gz % gy, n % gz  # (T,) grid coordinates
        return grid[layout.batch_index, i, j, k].reshape(len(n), self.cfg.patch_voxels)  # (T, P)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bfloat16 autocast if ``cfg.bf16``; otherwise nothing, so that a caller's autocast still holds."""
        if self.cfg.bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------- encoder / decoder
    def _embed(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """Kept patches (T, P) -> embedded tokens with positions (T, C) (minus the mean if centred)."""
        mean = self._mean_tokens(layout)
        if mean is not None:
            tokens = tokens - mean  # (T, P)
        return self.patch_embed(tokens) + self.pos_embed[layout.patch_index]  # (T, C)

    def forward_encoder(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """Kept patches, packed (T, P) -> UDIPs (B, enc_dim) float32 (mean of the normed tokens)."""
        h = self._embed(tokens, layout)  # (T, C)
        for blk in self.blocks:
            h = blk(h, layout.seqlens)  # (T, C)
        return layout.segment_mean(self.norm(h))  # (B, C)

    def forward_decoder(self, z: Tensor, layout: TokenLayout) -> Tensor:
        """UDIPs (B, enc_dim) -> predicted voxels of every kept patch, packed (T, P)."""
        u = self.decoder_embed(z)  # (B, Cd)
        pos = self.decoder_pos_embed[layout.patch_index].to(u.dtype)  # (T, Cd)
        udip_rows, token_rows = layout.decoder_rows()
        h = u.new_empty((len(pos) + len(u), u.shape[1]))  # (T + B, Cd)
        h = h.index_put((udip_rows,), u).index_put((token_rows,), pos)  # (T + B, Cd)
        for blk in self.decoder_blocks:
            h = blk(h, layout.decoder_seqlens)  # (T + B, Cd)
        h = self.decoder_norm(h[token_rows])  # (T, Cd)
        pred = self.decoder_pred(h)  # (T, P)
        mean = self._mean_tokens(layout)
        return pred if mean is None else pred.float() + mean  # (T, P)

    @staticmethod
    def forward_loss(tokens: Tensor, pred_tokens: Tensor, layout: TokenLayout) -> Tensor:
        """Per-voxel MSE over each scan's kept patches -> (B,) float32.

        ``tokens`` and ``pred_tokens`` are the packed (T, P) targets and predictions.
        """
        err = F.mse_loss(pred_tokens.float(), tokens.float(), reduction="none")  # (T, P)
        return layout.segment_mean(err.mean(-1, keepdim=True)).squeeze(1)  # (B,)

    # -------------------------------------------------------------------------------- public
    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, TokenLayout]:
        """Volumes -> (UDIPs (B, C) float32, packed kept patches (T, P), layout)."""
        x = self.check_volumes(x)  # (B, 1, X, Y, Z)
        layout = self._layout(x)
        tokens = self._gather_tokens(x, layout)  # (T, P)
        with self._autocast(x.device):
            udip = self.forward_encoder(tokens, layout)  # (B, C)
        return udip.float(), tokens, layout

    def encode(self, x: Tensor) -> Tensor:
        """Volumes (B, 1, X, Y, Z) or (B, X, Y, Z) -> UDIPs (B, enc_dim) float32."""
        return self._encode(x)[0]

    def decode(self, z: Tensor, kept: Tensor | None = None) -> Tensor:
        """UDIPs (B, enc_dim) -> predicted patches (B, N, P) float32, zero where ``kept`` is False.

        ``kept`` (B, N) bool selects the patches to predict (as :meth:`kept_mask` of the scans);
        None predicts every patch.
        """
        if z.ndim != 2 or z.shape[1] != self.cfg.enc_dim:
            raise ValueError(f"z must be UDIPs (B, {self.cfg.enc_dim}), got shape {tuple(z.shape)}")
        z = z.to(self.decoder_embed.weight.dtype)
        if kept is None:
            kept = torch.ones((z.shape[0], self.cfg.n_patches), dtype=torch.bool, device=z.device)
        if kept.dtype != torch.bool or tuple(kept.shape) != (z.shape[0], self.cfg.n_patches):
            raise ValueError(f"kept must be a bool tensor ({z.shape[0]}, {self.cfg.n_patches}), got "
                             f"{kept.dtype} {tuple(kept.shape)}")
        kept = kept.to(z.device)
        with self._autocast(z.device):
            pred_tokens = self.forward_decoder(z, TokenLayout.from_kept(kept))  # (T, P)
        return scatter_patches(kept, pred_tokens.float())  # (B, N, P)

    def forward(self, x: Tensor) -> ModelOutput:
        """Encode, decode and score a batch of volumes (see :class:`ModelOutput`)."""
        udip, tokens, layout = self._encode(x)
        with self._autocast(tokens.device):
            pred_tokens = self.forward_decoder(udip, layout)  # (T, P)
        pred_tokens = pred_tokens.float()
        per_scan = self.forward_loss(tokens, pred_tokens, layout)  # (B,)
        return ModelOutput(loss=per_scan.mean(), per_scan_loss=per_scan, udip=udip, kept=layout.kept,
                           pred_tokens=pred_tokens)

    def reconstruct(self, x: Tensor, mask_background: bool = True) -> Tensor:
        """Volumes -> reconstructions (B, 1, X, Y, Z) float32.

        With ``mask_background`` (for pictures) zero on the background = voxels exactly 0 in the input
        (outside the scan's brain; all of every patch not kept), so the image shows the prediction
        inside the brain only. Without it, the decoder's own prediction on every kept patch, zero on
        the patches not kept: what the code alone says, with no voxel of the input's brain outline
        (use it to measure how much of a subject the decoder reproduces).
        """
        x = self.check_volumes(x)
        udip, _, layout = self._encode(x)
        recon = self.unpatchify(self.decode(udip, layout.kept))  # (B, 1, X, Y, Z)
        return recon * (x != 0) if mask_background else recon

    def attention_maps(self, x: Tensor) -> AttentionMaps:
        """Encoder attention weights of every layer (math path, computed without gradient).

        Returns
        -------
        AttentionMaps
            ``maps``: per encoder layer (B, H, L, L) float32, ``patch_index`` (B, L) and ``kept``.
        """
        with torch.no_grad():
            return self._attention_maps(x)

    def _attention_maps(self, x: Tensor) -> AttentionMaps:
        x = self.check_volumes(x)  # (B, 1, X, Y, Z)
        layout = self._layout(x)
        tokens = self._gather_tokens(x, layout)  # (T, P)
        b, length = len(layout.seqlens), max(layout.seqlens)
        maps = []
        with self._autocast(x.device):
            h = self._embed(tokens, layout)  # (T, C)
            for blk in self.blocks:
                h, weights = blk.forward_with_weights(h, layout.seqlens)  # [(H, L_b, L_b)]
                layer = tokens.new_zeros((b, self.cfg.enc_heads, length, length), dtype=torch.float32)
                for i, (w, n) in enumerate(zip(weights, layout.seqlens, strict=True)):
                    layer[i, :, :n, :n] = w.float()
                maps.append(layer)  # (B, H, L, L)
        patch_index = torch.full((b, length), -1, dtype=torch.long, device=tokens.device)
        for i, n in enumerate(layout.seqlens):
            patch_index[i, :n] = layout.patch_index[layout.batch_index == i]
        return AttentionMaps(maps=maps, patch_index=patch_index, kept=layout.kept)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["AttentionMaps", "ModelOutput", "TokenLayout", "ViTAE", "count_parameters", "math_attention",
           "scatter_patches",
           "sincos_pos_embed_3d"]
