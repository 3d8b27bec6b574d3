"""The ViT autoencoder: shapes over a grid of configs, input checks, the per-scan batch mask, the
loss against numpy, batch independence, attention maps, positional embeddings and overfitting."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udip_assets.model import vit_ae
from udip_assets.model.config import ModelConfig, preset
from udip_assets.model.vit_ae import ModelOutput, TokenLayout, ViTAE, math_attention, sincos_pos_embed_3d

TINY, _ = preset("tiny")  # 28x32x28 volumes, 7x8x7 patches, 4x4x4 grid


def _model(cfg: ModelConfig = TINY, seed: int = 0, **overrides) -> ViTAE:
    torch.manual_seed(seed)
    return ViTAE(dataclasses.replace(cfg, **overrides)).eval()


def _brain(shape, centre, radii, rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid of N(0, 1) voxels on an exact-zero background, float32 (X, Y, Z)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0
    return np.where(inside, rng.normal(size=shape), 0.0).astype(np.float32)


def _brains(cfg: ModelConfig = TINY, seed: int = 0) -> torch.Tensor:
    """Three brains of different size and position, so that their kept patch sets differ: (3, 1, X, Y, Z)."""
    rng = np.random.default_rng(seed)
    shape = np.array(cfg.volume_shape)
    specs = [(0.5, 0.35), (0.35, 0.25), (0.65, 0.3)]
    vols = [_brain(cfg.volume_shape, shape * c, shape * r, rng) for c, r in specs]
    return torch.from_numpy(np.stack(vols)[:, None])


def _numpy_kept(vol: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Non-empty patches of one (X, Y, Z) volume by explicit slicing, in C order of the grid."""
    (px, py, pz) = cfg.patch
    return np.array([np.any(vol[i * px:(i + 1) * px, j * py:(j + 1) * py, k * pz:(k + 1) * pz] != 0)
                     for i, j, k in itertools.product(*[range(g) for g in cfg.grid])])


# ------------------------------------------------------------------------------- shapes grid
SHAPE_CONFIGS = [
    TINY,
    ModelConfig(volume_shape=(16, 20, 12), patch=(4, 5, 6), enc_dim=12, enc_heads=2, enc_depth=1,
                dec_dim=6, dec_heads=3, dec_depth=2),
    ModelConfig(volume_shape=(24, 24, 24), patch=(8, 8, 8), enc_dim=24, enc_heads=6, enc_depth=3,
                dec_dim=8, dec_heads=1, dec_depth=1, mlp_ratio=2.0, qkv_bias=False),
    ModelConfig(volume_shape=(18, 16, 10), patch=(6, 4, 5), enc_dim=16, enc_heads=4, enc_depth=2,
                dec_dim=16, dec_heads=4, dec_depth=1, union_mask=True),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cfg", SHAPE_CONFIGS, ids=lambda c: "x".join(map(str, c.volume_shape)))
def test_shapes(cfg, batch):
    model = _model(cfg)
    x = _brains(cfg)[:batch]
    n, p = cfg.n_patches, cfg.patch_voxels
    assert model.patchify(x).shape == (batch, n, p)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    assert model.kept_mask(x).shape == (batch, n) and model.kept_mask(x).dtype == torch.bool
    z = model.encode(x)
    assert z.shape == (batch, cfg.enc_dim) and z.dtype == torch.float32
    assert model.decode(z).shape == (batch, n, p)
    out = model(x)
    assert isinstance(out, ModelOutput) and out.loss.shape == () and out.per_scan_loss.shape == (batch,)
    assert out.udip.shape == (batch, cfg.enc_dim) and out.pred.shape == (batch, n, p)
    assert out.kept.shape == (batch, n)
    assert model.reconstruct(x).shape == (batch, 1, *cfg.volume_shape)


def test_input_without_channel_axis_is_accepted():
    model, x = _model(), _brains()
    torch.testing.assert_close(model.encode(x[:, 0]), model.encode(x), rtol=0, atol=0)


def test_patchify_follows_its_contract():
    model = _model()
    x = torch.randn(2, 1, *TINY.volume_shape)
    p = model.patchify(x)
    (_, gy, gz), (px, py, pz) = TINY.grid, TINY.patch
    for b, i, j, k, u, v, w in [(0, 0, 0, 0, 0, 0, 0), (1, 3, 2, 1, 6, 7, 5), (1, 1, 3, 2, 2, 0, 6)]:
        voxel = x[b, 0, i * px + u, j * py + v, k * pz + w]
        assert p[b, (i * gy + j) * gz + k, (u * py + v) * pz + w] == voxel


# ------------------------------------------------------------------------------ invalid input
@pytest.mark.parametrize(("shape", "message"), [
    ((2, 1, 28, 32, 27), "input depth (27) does not match the model (28)"),
    ((2, 28, 31, 28), "input height (31) does not match the model (32)"),
    ((2, 1, 30, 32, 28), "input width (30) does not match the model (28)"),
    ((2, 2, 28, 32, 28), "input must be volumes (B, 1, X, Y, Z) or (B, X, Y, Z)"),
    ((28, 32, 28), "input must be volumes (B, 1, X, Y, Z) or (B, X, Y, Z)"),
    ((0, 1, 28, 32, 28), "with B >= 1, got shape (0, 1, 28, 32, 28)"),
])
def test_wrong_input_shape_raises(shape, message):
    model = _model()
    for call in (model.encode, model.forward, model.kept_mask, model.reconstruct, model.attention_maps):
        with pytest.raises(ValueError) as err:
            call(torch.zeros(shape))
        assert message in str(err.value)


def test_integer_and_empty_inputs_raise():
    model = _model()
    with pytest.raises(ValueError, match="floating-point tensor, got torch.int64"):
        model.encode(torch.ones((1, 1, *TINY.volume_shape), dtype=torch.long))
    x = _brains()
    x[1] = 0
    with pytest.raises(ValueError, match=r"scans \[1\] of the batch are all zero"):
        model(x)


@pytest.mark.parametrize(("z_shape", "kept_shape", "message"), [
    ((2, 31), None, "z must be UDIPs (B, 32), got shape (2, 31)"),
    ((2, 32), (2, 63), "kept must be a bool tensor (2, 64), got torch.bool (2, 63)"),
    ((2, 32), (3, 64), "kept must be a bool tensor (2, 64), got torch.bool (3, 64)"),
])
def test_decode_checks_arguments(z_shape, kept_shape, message):
    kept = None if kept_shape is None else torch.ones(kept_shape, dtype=torch.bool)
    with pytest.raises(ValueError) as err:
        _model().decode(torch.zeros(z_shape), kept)
    assert message in str(err.value)


# ---------------------------------------------------------------------------- batch mask, loss
def test_kept_patches_are_exactly_the_non_empty_ones():
    model, x = _model(), _brains()
    kept = model.kept_mask(x).numpy()
    expected = np.stack([_numpy_kept(v[0], TINY) for v in x.numpy()])
    np.testing.assert_array_equal(kept, expected)
    assert len({tuple(k) for k in expected}) == 3 and 0 < expected.sum() < expected.size
    union = _model(union_mask=True).kept_mask(x).numpy()
    np.testing.assert_array_equal(union, np.broadcast_to(expected.any(0), expected.shape))


def test_loss_is_numpy_mse_over_kept_patches_only():
    model, x = _model(), _brains()
    with torch.no_grad():
        out = model(x)
    kept, pred = out.kept.numpy(), out.pred.numpy().astype(np.float64)
    target = model.patchify(x).numpy().astype(np.float64)
    per_scan = np.array([np.mean((pred[b][kept[b]] - target[b][kept[b]]) ** 2) for b in range(3)])
    np.testing.assert_allclose(out.per_scan_loss.numpy(), per_scan, rtol=1e-5)
    np.testing.assert_allclose(out.loss.item(), per_scan.mean(), rtol=1e-5)
    assert np.all(pred[~kept] == 0) and np.all(pred[kept] != 0)
    over_all = np.array([np.mean((pred[b] - target[b]) ** 2) for b in range(3)])
    assert np.all(over_all < 0.9 * per_scan)  # a mean over all N patches would dilute it


def test_patches_not_kept_get_no_gradient():
    model, x = _model(), _brains()
    x.requires_grad_(True)
    out = model(x)
    out.loss.backward()
    grad = model.patchify(x.grad).abs().amax(-1)  # (B, N)
    assert torch.all(grad[~out.kept] == 0) and torch.all(grad[out.kept] > 0)
    union = _model(union_mask=True)
    x.grad = None
    out = union(x)
    out.loss.backward()
    own = model.kept_mask(x)
    assert torch.any(model.patchify(x.grad).abs().amax(-1)[~own] > 0)  # the authors' mask scores them


def test_reconstruct_is_decoded_patches_on_the_brain():
    model, x = _model(), _brains()
    with torch.no_grad():
        out = model(x)
        recon = model.reconstruct(x)
    torch.testing.assert_close(recon, model.unpatchify(out.pred) * (x != 0))
    assert torch.all(recon[x == 0] == 0) and torch.all(recon[x != 0] != 0)
    with torch.no_grad():
        raw = model.reconstruct(x, mask_background=False)
    torch.testing.assert_close(raw, model.unpatchify(out.pred))  # the decoder's own prediction, kept patches
    kept_voxels = model.unpatchify(out.kept[..., None].expand(-1, -1, TINY.patch_voxels).float()) > 0
    assert torch.all(raw[~kept_voxels] == 0) and torch.all(raw[kept_voxels & (x == 0)] != 0)


# ------------------------------------------------------------------------ batch independence
@pytest.mark.parametrize(("backend", "bf16"), [("sdpa", False), ("math", False), ("auto", True),
                                             ("varlen", False)])
def test_udip_and_reconstruction_do_not_depend_on_the_batch(backend, bf16):
    model = _model(attn_backend=backend, bf16=bf16)
    a, b, c = _brains()
    alone = dict(z=model.encode(a[None]), r=model.reconstruct(a[None]), loss=model(a[None]).per_scan_loss)
    with torch.no_grad():
        for batch, pos in [((a, b), 0), ((c, a), 1), ((b, a, c), 1), ((a, a, b), 1)]:
            x = torch.stack(batch)
            out = model(x)
            torch.testing.assert_close(model.encode(x)[pos], alone["z"][0], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.udip[pos], alone["z"][0], rtol=0, atol=1e-5)
            torch.testing.assert_close(model.reconstruct(x)[pos], alone["r"][0], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.per_scan_loss[pos], alone["loss"][0], rtol=0, atol=1e-5)


def test_union_mask_reproduces_the_batch_dependence_of_the_authors():
    model = _model(union_mask=True)
    a, b, _ = _brains()
    with torch.no_grad():
        alone, paired = model.encode(a[None])[0], model.encode(torch.stack([a, b]))[0]
    assert (alone - paired).abs().max() > 1e-3


def test_decode_of_encode_is_the_forward_prediction():
    model, x = _model(), _brains()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model.decode(model.encode(x), out.kept), out.pred, rtol=0, atol=1e-6)
        assert torch.all(model.decode(out.udip) != 0)  # kept=None: every patch predicted


# --------------------------------------------------------------------- attention and precision
def test_sdpa_and_math_paths_agree():
    x = _brains()
    outs = {}
    for backend in ("sdpa", "math", "auto"):
        with torch.no_grad():
            outs[backend] = _model(attn_backend=backend)(x)
    for backend in ("math", "auto"):
        torch.testing.assert_close(outs[backend].udip, outs["sdpa"].udip, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[backend].pred, outs["sdpa"].pred, rtol=1e-4, atol=1e-5)


def test_varlen_attention_equals_attention_scan_by_scan():
    """One nested-jagged call over packed scans of 5, 9 and 2 tokens = softmax(q k^T / sqrt d) v per scan."""
    gen = torch.Generator().manual_seed(3)
    heads, d, lens = 4, 6, [5, 9, 2]
    qkv = torch.randn(sum(lens), 3 * heads * d, generator=gen, requires_grad=True)
    out = vit_ae.varlen_attention(qkv, lens, heads)  # (T, C)
    ref = []
    for part in torch.split(qkv, lens):
        q, k, v = part.view(len(part), 3, heads, d).permute(1, 2, 0, 3)  # 3 x (H, L, d)
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)  # (H, L, L)
        ref.append((probs @ v).transpose(0, 1).reshape(len(part), heads * d))
    ref = torch.cat(ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn(out.shape, generator=gen)
    grad, = torch.autograd.grad((out * weights).sum(), qkv)
    grad_ref, = torch.autograd.grad((ref * weights).sum(), qkv)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_varlen_model_matches_the_per_scan_path_in_value_and_gradient():
    x = _brains()
    models = {b: _model(attn_backend=b).train() for b in ("sdpa", "varlen")}
    outs, grads = {}, {}
    for backend, model in models.items():
        outs[backend] = model(x)
        outs[backend].loss.backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert len(set(models["sdpa"].kept_mask(x).sum(1).tolist())) == 3  # three lengths: the nested path ran
    torch.testing.assert_close(outs["varlen"].udip, outs["sdpa"].udip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["varlen"].per_scan_loss, outs["sdpa"].per_scan_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["varlen"], grads["sdpa"], rtol=1e-3, atol=1e-6)


def test_attention_maps_are_row_stochastic_and_index_the_kept_patches():
    model, x = _model(), _brains()
    with torch.no_grad():
        maps = model.attention_maps(x)
        z = model.encode(x)
    kept = model.kept_mask(x)
    n_tok = kept.sum(1)
    length = int(n_tok.max())
    assert len(maps.maps) == TINY.enc_depth and torch.equal(maps.kept, kept)
    assert maps.patch_index.shape == (3, length)
    for b in range(3):
        n = int(n_tok[b])
        assert torch.equal(maps.patch_index[b, :n], kept[b].nonzero()[:, 0])
        assert torch.all(maps.patch_index[b, n:] == -1)
        for layer in maps.maps:
            assert layer.shape == (3, TINY.enc_heads, length, length) and layer.dtype == torch.float32
            torch.testing.assert_close(layer[b, :, :n, :n].sum(-1), torch.ones(TINY.enc_heads, n))
            assert torch.all(layer[b, :, n:] == 0) and torch.all(layer[b, :, :, n:] == 0)
            assert torch.all(layer[b, :, :n, :n] > 0)
    assert z.shape == (3, TINY.enc_dim)


def test_attention_weights_reproduce_the_sdpa_output():
    model = _model()
    attn = model.blocks[0].attn
    h = torch.randn(7 + 4, TINY.enc_dim)
    with torch.no_grad():
        out, weights = attn.forward_with_weights(h, (7, 4))
        torch.testing.assert_close(out, attn(h, (7, 4)), rtol=1e-5, atol=1e-5)
    assert [tuple(w.shape) for w in weights] == [(TINY.enc_heads, 7, 7), (TINY.enc_heads, 4, 4)]


def test_bf16_returns_float32_close_to_float32():
    x = _brains()
    with torch.no_grad():
        ref = _model()(x)
        out = _model(bf16=True)(x)
    for name in ("loss", "per_scan_loss", "udip", "pred"):
        assert getattr(out, name).dtype == torch.float32
    torch.testing.assert_close(out.per_scan_loss, ref.per_scan_loss, rtol=2e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(out.udip, ref.udip).min() > 0.99


# ------------------------------------------------------------------------ embeddings and init
@pytest.mark.parametrize(("dim", "grid"), [(128, (13, 14, 13)), (64, (7, 7, 7)), (6, (4, 5, 4)),
                                           (32, (4, 4, 4))])
def test_sincos_pos_embed_properties(dim, grid):
    emb = sincos_pos_embed_3d(dim, grid).double()
    n = math.prod(grid)
    assert emb.shape == (n, dim) and emb.abs().max() <= 1
    torch.testing.assert_close((emb ** 2).sum(1), torch.full((n,), dim / 2, dtype=torch.float64))
    assert torch.unique(emb, dim=0).shape[0] == n  # every patch has its own position
    idx = torch.arange(n).reshape(grid)
    p, q = idx[0, 1, 0], idx[1, 2, 2]
    p2, q2 = idx[2, 2, 1], idx[3, 3, 3]  # the same offset (1, 1, 2), shifted by (2, 1, 1)
    torch.testing.assert_close(emb[p] @ emb[q], emb[p2] @ emb[q2])
    assert emb[p] @ emb[q] < emb[p] @ emb[p]


def test_pos_embed_is_fixed_and_not_in_the_state_dict():
    model = _model()
    names = {n for n, _ in model.named_parameters()}
    assert not any("pos_embed" in n for n in names)
    assert "pos_embed" not in model.state_dict() and "decoder_pos_embed" not in model.state_dict()
    torch.testing.assert_close(model.pos_embed, sincos_pos_embed_3d(TINY.enc_dim, TINY.grid))


def test_init_is_mae_like():
    model = _model()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            fan_out, fan_in = module.weight.shape
            assert module.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7
            assert module.bias is None or torch.all(module.bias == 0)
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_token_layout_decoder_rows():
    kept = torch.tensor([[True, False, True], [False, True, False]])
    layout = TokenLayout.from_kept(kept)
    assert layout.seqlens == (2, 1) and layout.decoder_seqlens == (3, 2)
    udip_rows, token_rows = layout.decoder_rows()
    assert udip_rows.tolist() == [0, 3] and token_rows.tolist() == [1, 2, 4]


# ------------------------------------------------------------------------------------ training
def _smooth_brains(cfg: ModelConfig = TINY, n: int = 2) -> torch.Tensor:
    """``n`` brain-like volumes: smooth concentric "tissue" rings in random ellipsoids, (n, 1, X, Y, Z)."""
    rng = np.random.default_rng(3)
    shape = np.array(cfg.volume_shape)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    vols = []
    for _ in range(n):
        centre, radii = shape * rng.uniform(0.4, 0.6, 3), shape * rng.uniform(0.25, 0.35, 3)
        dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
        vols.append(np.where(dist <= 1, 1.0 + 0.8 * np.cos(3 * np.pi * dist), 0.0))
    return torch.from_numpy(np.stack(vols)[:, None].astype(np.float32))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = ViTAE(TINY).train()
    x = _smooth_brains()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(400):
        opt.zero_grad(set_to_none=True)
        loss = model(x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


# --------------------------------------------------------------------------- math attention
def test_math_attention_matches_sdpa_and_has_exact_gradients():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    scale = 4 ** -0.5
    torch.testing.assert_close(math_attention(q, k, v, scale), F.scaled_dot_product_attention(q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: math_attention(a, b, c, scale), (q, k, v))


def test_math_attention_chunks_over_heads(monkeypatch):
    monkeypatch.setattr(vit_ae, "MATH_CHUNK_BYTES", 2 * 9 * 9 * 4)  # two heads per chunk
    q, k, v = (torch.randn(1, 5, 9, 4, requires_grad=True) for _ in range(3))
    out = math_attention(q, k, v, 0.5)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_math_attention_bf16_is_close_to_float32():
    q, k, v = (torch.randn(1, 4, 50, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    out = math_attention(*(t.bfloat16() for t in (q, k, v)), 8 ** -0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2)


def test_a_callers_autocast_still_holds_when_bf16_is_off():
    model, x = _model(), _brains()
    with torch.no_grad():
        ref = _model(bf16=True)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    torch.testing.assert_close(out.per_scan_loss, ref.per_scan_loss, rtol=1e-6, atol=0)
    assert out.udip.dtype == torch.float32 and out.pred.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_matches_cpu(bf16):
    x = _brains()
    cpu = _model(bf16=bf16)
    gpu = _model(bf16=bf16).cuda()
    with torch.no_grad():
        ref, out = cpu(x), gpu(x.cuda())
        alone = gpu(x[:1].cuda())
    tol = 2e-2 if bf16 else 1e-4
    torch.testing.assert_close(out.per_scan_loss.cpu(), ref.per_scan_loss, rtol=tol, atol=0)
    torch.testing.assert_close(out.udip[:1], alone.udip, rtol=0, atol=5e-3 if bf16 else 1e-5)
    assert out.pred.device.type == "cuda" and out.pred.dtype == torch.float32


@pytest.mark.parametrize(("tokens", "dtype", "math_path"), [
    (150, torch.bfloat16, True), (vit_ae._MATH_MAX_TOKENS, torch.bfloat16, True),
    (vit_ae._MATH_MAX_TOKENS + 1, torch.bfloat16, False), (150, torch.float32, False)])
def test_auto_attention_takes_the_math_path_only_for_short_bf16_sequences(tokens, dtype, math_path):
    attn = vit_ae.Attention(dim=32, heads=4, qkv_bias=True, proj_drop=0.0, backend="auto")
    assert attn._use_math(torch.zeros(1, 4, tokens, 8, dtype=dtype)) is math_path


# ----------------------------------------------------------------------------- mean centring
def test_a_centred_model_is_the_plain_model_on_departures_from_the_mean():
    """encode(x) = plain.encode(x - m) and decode(z) = plain.decode(z) + m, with the same weights."""
    rng = np.random.default_rng(3)
    centred = _model(centre_on_mean=True)
    plain = _model()  # same seed: same weights
    mean = torch.from_numpy(rng.normal(size=TINY.volume_shape).astype(np.float32))
    centred.set_mean_volume(mean)
    x = torch.from_numpy(rng.normal(size=(2, 1, *TINY.volume_shape)).astype(np.float32))  # every patch kept
    with torch.no_grad():
        z = centred.encode(x)
        torch.testing.assert_close(z, plain.encode(x - mean), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(centred.decode(z), plain.decode(z) + plain.patchify(mean[None, None]),
                                   rtol=1e-5, atol=1e-6)
        out = centred(x)
        want = ((centred.unpatchify(centred.decode(z)) - x) ** 2).mean(dim=(1, 2, 3, 4))
        torch.testing.assert_close(out.per_scan_loss, want, rtol=1e-5, atol=1e-7)
    assert "mean_patches" in centred.state_dict() and "mean_patches" not in plain.state_dict()


def test_the_mean_volume_round_trips_through_patches_and_is_checked():
    centred = _model(centre_on_mean=True)
    mean = torch.arange(math.prod(TINY.volume_shape), dtype=torch.float32).reshape(TINY.volume_shape)
    centred.set_mean_volume(mean)
    torch.testing.assert_close(centred.unpatchify(centred.mean_patches[None])[0, 0], mean, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape \(28, 32, 28\)"):
        centred.set_mean_volume(mean[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        centred.set_mean_volume(torch.full(TINY.volume_shape, float("nan")))
    with pytest.raises(ValueError, match="centre_on_mean=False"):
        _model().set_mean_volume(mean)
