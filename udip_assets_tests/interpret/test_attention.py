"""Attention analysis against hand computations: coordinates, attention received, spotlights, W_K^T W_Q,
input-embedding correlations, and the spotlight maps on the cohort grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.grids import Grid
from udip_assets.imaging.preprocess import pad_to_patch_multiple
from udip_assets.interpret.attention import (
    SUMMARY_COLUMNS,
    attention_summary,
    cluster_order,
    embedding_correlation_figure,
    iter_attention_maps,
    patch_centres_mm,
    patch_embedding_correlation,
    patch_of_mm,
    patch_of_voxel,
    qk_singular_values,
    spotlight_mask,
    spotlight_volume,
    summarize_attention,
    write_spotlight_maps,
)
from udip_assets.model.config import preset
from udip_assets.model.vit_ae import AttentionMaps, ViTAE

CFG, _ = preset("tiny")  # 28x32x28 volumes, 7x8x7 patches, 4x4x4 grid, enc_dim 32, 4 heads, 2 layers
# pads to CFG.volume_shape with offsets (1, 1, 0); 2 mm voxels, +x flipped as FSL's MNI grids
GRID = Grid("tiny_test", (26, 30, 27), 2.0, (50.0, -60.0, -40.0))




def brain_volumes(n: int, seed: int) -> torch.Tensor:
    """``n`` padded (1, X', Y', Z') "scans": ellipsoids of different sizes, z-scored inside, 0 outside."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in GRID.shape], indexing="ij")
    out = []
    for _ in range(n):
        centre = np.array(GRID.shape) / 2 + rng.uniform(-1, 1, 3)
        radii = np.array(GRID.shape) * rng.uniform(0.25, 0.45, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        vol = np.zeros(GRID.shape, dtype=np.float32)
        vals = rng.normal(size=int(inside.sum())) + grids[0][inside] / 10
        vol[inside] = (vals - vals.mean()) / vals.std()
        out.append(pad_to_patch_multiple(vol, CFG.patch))
    return torch.from_numpy(np.stack(out)[:, None]).float()  # (n, 1, X', Y', Z')


def _model(seed: int = 0, **overrides) -> ViTAE:
    torch.manual_seed(seed)
    cfg = CFG if not overrides else preset("tiny", **overrides)[0]
    return ViTAE(cfg).eval()


# ------------------------------------------------------------------------------ attention maps
def test_attention_rows_sum_to_one_over_each_scans_own_columns():
    x = brain_volumes(3, seed=1)
    maps = _model().attention_maps(x)
    lengths = (maps.patch_index >= 0).sum(1).tolist()
    assert len(set(lengths)) > 1  # scans of different sizes: padding is exercised
    for a in maps.maps:
        assert a.shape == (3, CFG.enc_heads, max(lengths), max(lengths))
        for b, n in enumerate(lengths):
            np.testing.assert_allclose(a[b, :, :n, :n].sum(-1).numpy(), 1.0, atol=1e-5)
            assert torch.all(a[b, :, n:, :] == 0) and torch.all(a[b, :, :, n:] == 0)


# ---------------------------------------------------------------------------------- coordinates
def test_patch_centre_by_hand():
    # patch (1, 2, 3): padded centre voxel (1*7 + 3, 2*8 + 3.5, 3*7 + 3) = (10, 19.5, 24), minus the
    # offsets (1, 1, 0) -> (9, 18.5, 24) on the grid -> x = 50 - 2*9, y = -60 + 2*18.5, z = -40 + 2*24
    n = (1 * 4 + 2) * 4 + 3
    np.testing.assert_allclose(patch_centres_mm(CFG, GRID)[n], [32.0, -23.0, 8.0])


def test_patch_centres_round_trip_through_mm_and_voxels():
    centres = patch_centres_mm(CFG, GRID)
    assert centres.shape == (CFG.n_patches, 3)
    np.testing.assert_array_equal(patch_of_mm(CFG, GRID, centres), np.arange(CFG.n_patches))
    inv = np.linalg.inv(GRID.affine)
    ijk = centres @ inv[:3, :3].T + inv[:3, 3]
    np.testing.assert_array_equal(patch_of_voxel(CFG, GRID, ijk), np.arange(CFG.n_patches))


def test_a_single_voxel_lands_in_the_patch_the_mapping_names():
    model = _model()
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 0], np.array(GRID.shape) - 1])
    voxels = np.concatenate([corners, rng.integers(0, GRID.shape, size=(30, 3))])
    for ijk in voxels:
        vol = np.zeros(GRID.shape, dtype=np.float32)
        vol[tuple(ijk)] = 1.0
        padded = torch.from_numpy(pad_to_patch_multiple(vol, CFG.patch))[None, None]
        hit = torch.nonzero(model.patchify(padded)[0].abs().sum(1)).squeeze(1).tolist()
        assert hit == [int(patch_of_voxel(CFG, GRID, ijk))]


def test_coordinates_refuse_a_grid_the_model_does_not_take_and_points_outside_it():
    with pytest.raises(UdipConfigError, match=r"grid wrong \(40, 30, 27\) pads to \(42, 32, 28\)"):
        patch_centres_mm(CFG, Grid("wrong", (40, 30, 27), 2.0, (0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="outside the model's padded volume"):
        patch_of_voxel(CFG, GRID, [-2, 0, 0])  # offset 1 on x: voxel -1 is padding, -2 is outside
    assert patch_of_voxel(CFG, GRID, [-1, 0, 0]) == 0


# ----------------------------------------------------------------------------- attention received
def _row_stochastic(rng, h: int, n: int) -> np.ndarray:
    a = rng.uniform(size=(h, n, n))
    return a / a.sum(-1, keepdims=True)


def _hand_maps(rng, kept_lists: list[list[int]], n_layers: int = 2, heads: int = 2) -> AttentionMaps:
    """Random attention maps for scans keeping ``kept_lists``; junk in the padding rows (to be ignored)."""
    length = max(len(k) for k in kept_lists)
    maps = []
    for _ in range(n_layers):
        layer = np.zeros((len(kept_lists), heads, length, length))
        for b, patches in enumerate(kept_lists):
            n = len(patches)
            layer[b, :, :n, :n] = _row_stochastic(rng, heads, n)
            layer[b, :, n:, :] = 5.0  # padding rows: must not count
        maps.append(torch.from_numpy(layer).float())
    patch_index = torch.full((len(kept_lists), length), -1, dtype=torch.long)
    kept = torch.zeros((len(kept_lists), CFG.n_patches), dtype=torch.bool)
    for b, patches in enumerate(kept_lists):
        patch_index[b, :len(patches)] = torch.tensor(patches)
        kept[b, patches] = True
    return AttentionMaps(maps=maps, patch_index=patch_index, kept=kept)


def _hand_attention_in(batches: list[AttentionMaps]) -> dict[tuple[int, int, int], float]:
    """{(layer, head, patch): mean over scans keeping the patch of the mean over its query rows}."""
    values: dict[tuple[int, int, int], list[float]] = {}
    for m in batches:
        for layer, a in enumerate(m.maps):
            a = a.double().numpy()
            for b in range(a.shape[0]):
                patches = [int(p) for p in m.patch_index[b] if p >= 0]
                for h in range(a.shape[1]):
                    for j, p in enumerate(patches):
                        col = [a[b, h, i, j] for i in range(len(patches))]
                        values.setdefault((layer, h, p), []).append(sum(col) / len(col))
    return {key: float(np.mean(v)) for key, v in values.items()}


def test_attention_in_equals_a_hand_computation_over_batches():
    rng = np.random.default_rng(3)
    batches = [_hand_maps(rng, [[0, 2, 4, 9], [2, 9]]), _hand_maps(rng, [[4, 9, 63]])]
    summary = attention_summary(iter(batches), CFG, GRID)
    assert list(summary.columns) == SUMMARY_COLUMNS
    expected = _hand_attention_in(batches)
    assert len(summary) == len(expected) == 2 * 2 * 5  # layers x heads x patches kept somewhere
    got = {(r.layer, r.head, r.patch_index): r.attention_in for r in summary.itertuples()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12)
    centres = patch_centres_mm(CFG, GRID)[summary["patch_index"]]
    np.testing.assert_allclose(summary[["x_mm", "y_mm", "z_mm"]].to_numpy(), centres)


def test_summary_of_a_model_does_not_depend_on_the_batch_size():
    model, x = _model(), brain_volumes(3, seed=2)
    one = summarize_attention(model, list(x), GRID, batch_size=1)
    three = attention_summary(iter_attention_maps(model, list(x), batch_size=3), CFG, GRID)
    pd.testing.assert_frame_equal(one, three, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ spotlights
def test_spotlight_rule_on_hand_built_heads():
    values = np.array([[1.0] * 9 + [10.0, np.nan],  # mean 1.9, SD 2.7: 10 > 7.3 only
                       [0.5] * 10 + [np.nan]])  # uniform head: no spotlight
    expected = np.zeros(values.shape, dtype=bool)
    expected[0, 9] = True
    np.testing.assert_array_equal(spotlight_mask(values, 2.0), expected)
    np.testing.assert_array_equal(spotlight_mask(values[:1], 3.5), np.zeros((1, 11), dtype=bool))  # 10 < 11.35


def test_the_patch_every_query_attends_to_is_the_spotlight():
    patches = list(range(10, 20))
    a = np.full((1, 1, 10, 10), 0.4 / 9)
    a[..., 3] = 0.6  # every query puts 0.6 on token 3 (patch 13): attention_in 0.6, others 0.044
    kept = torch.zeros((1, CFG.n_patches), dtype=torch.bool)
    kept[0, patches] = True
    maps = AttentionMaps([torch.from_numpy(a).float()], torch.tensor([patches]), kept)
    summary = attention_summary(maps, CFG, GRID)
    assert summary.loc[summary["is_spotlight"], "patch_index"].tolist() == [13]
    assert summary["attention_in"].sum() == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------------- W_K^T W_Q
def test_qk_singular_values_equal_numpy_svd_of_hand_built_matrices():
    model = _model(seed=4)
    table = qk_singular_values(model)
    c, h, d = CFG.enc_dim, CFG.enc_heads, CFG.enc_dim // CFG.enc_heads
    assert list(table.columns) == ["layer", "head", "k", "singular_value"]
    assert len(table) == CFG.enc_depth * h * d
    for layer, block in enumerate(model.blocks):
        w = block.attn.qkv.weight.detach().double().numpy()  # (3C, C): q rows, k rows, v rows
        for head in range(h):
            w_q, w_k = w[head * d:(head + 1) * d], w[c + head * d:c + (head + 1) * d]  # (d, C) each
            sv = np.linalg.svd(w_k.T @ w_q, compute_uv=False)
            assert np.all(sv[d:] < 1e-10 * sv[0])  # rank head_dim
            rows = table[(table["layer"] == layer) & (table["head"] == head)]
            got = rows.sort_values("k")["singular_value"]
            np.testing.assert_allclose(got.to_numpy(), sv[:d], rtol=1e-10)


def test_the_hand_built_head_blocks_are_the_models_query_and_key():
    model = _model(seed=5, qkv_bias=False)
    x = torch.randn(7, CFG.enc_dim)
    attn = model.blocks[1].attn
    q, k, _ = attn._split_heads(x, [7])[0]  # (1, H, 7, d) each
    c, d = CFG.enc_dim, attn.head_dim
    w = attn.qkv.weight.detach()
    for head in range(CFG.enc_heads):
        w_q, w_k = w[head * d:(head + 1) * d], w[c + head * d:c + (head + 1) * d]
        bilinear = x @ (w_k.T @ w_q).T @ x.T  # [i, j] = x_j^T W_K^T W_Q x_i
        torch.testing.assert_close((q[0, head] @ k[0, head].T).detach(), bilinear.detach(), rtol=1e-4,
                                   atol=1e-5)


# --------------------------------------------------------------------------- input embeddings
def test_patch_embedding_correlation_is_the_clustered_correlation_of_mean_input_embeddings(tmp_path):
    model, x = _model(seed=6), brain_volumes(3, seed=6)
    corr, order = patch_embedding_correlation(model, x)
    # reference: explicit slicing of each patch, numpy linear layer, mean over the scans keeping it
    (px, py, pz), (gx, gy, gz) = CFG.patch, CFG.grid
    w, bias = model.patch_embed.weight.detach().double().numpy(), model.patch_embed.bias.detach().double().numpy()
    pos = model.pos_embed.double().numpy()
    vols = x[:, 0].double().numpy()
    emb, kept_patches = [], []
    for n in range(CFG.n_patches):
        i, j, k = np.unravel_index(n, (gx, gy, gz))
        blocks = vols[:, i * px:(i + 1) * px, j * py:(j + 1) * py, k * pz:(k + 1) * pz].reshape(len(vols), -1)
        keep = np.any(blocks != 0, axis=1)
        if keep.any():
            emb.append((blocks[keep] @ w.T + bias + pos[n]).mean(0))
            kept_patches.append(n)
    emb = np.array(emb) - np.mean(emb, axis=1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = emb @ emb.T  # (M, M) in patch order
    assert sorted(order.tolist()) == kept_patches
    rows = np.searchsorted(kept_patches, order)
    np.testing.assert_allclose(corr, ref[np.ix_(rows, rows)], atol=1e-5)
    png = embedding_correlation_figure(corr, tmp_path / "corr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_clustered_order_puts_correlated_patches_together():
    emb = np.repeat(np.eye(3) * 5, 4, axis=0) + np.random.default_rng(0).normal(0, 0.01, (12, 3))
    perm = np.random.default_rng(1).permutation(12)
    leaves = cluster_order(np.corrcoef(emb[perm]))
    assert sorted(leaves.tolist()) == list(range(12))
    groups = (perm // 4)[leaves]
    assert all(len(set(groups[s:s + 4])) == 1 for s in (0, 4, 8))  # three blocks of four


# ------------------------------------------------------------------------------ spotlight maps
def test_spotlight_volume_paints_patches_and_the_nifti_carries_the_grid(tmp_path):
    model, x = _model(seed=7), brain_volumes(2, seed=7)
    summary = summarize_attention(model, list(x), GRID, batch_size=2)
    inv = np.linalg.inv(GRID.affine)
    for layer in (None, 1):
        vol = spotlight_volume(summary, CFG, GRID, layer=layer)
        assert vol.shape == GRID.shape and vol.dtype == np.float32
        rows = summary if layer is None else summary[summary["layer"] == layer]
        expected = rows.groupby("patch_index")["attention_in"].mean()
        centres = patch_centres_mm(CFG, GRID)[expected.index]
        ijk = np.floor(centres @ inv[:3, :3].T + inv[:3, 3]).astype(int)  # a voxel of each patch
        np.testing.assert_allclose(vol[tuple(ijk.T)], expected.to_numpy(), rtol=1e-6)
    background = np.abs(x[0, 0, 1:27, 1:31, 0:27].numpy())
    nifti, png = write_spotlight_maps(summary, CFG, GRID, tmp_path / "maps", layer=0, background=background)
    img = nib.load(nifti)
    assert img.shape == GRID.shape and nifti.name == "spotlight_layer_00.nii.gz"
    np.testing.assert_allclose(img.affine, GRID.affine)
    np.testing.assert_allclose(img.get_fdata(), spotlight_volume(summary, CFG, GRID, layer=0), rtol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"layer 5 is not in the summary; it holds layers \[0, 1\]"):
        spotlight_volume(summary, CFG, GRID, layer=5)
