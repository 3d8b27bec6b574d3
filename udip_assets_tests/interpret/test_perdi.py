"""PerDI: the streamed paired t against scipy, the mask/smoothing order, the outputs, a planted dim."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi
from scipy import stats

from udip_assets.errors import SummaryStatsError, UdipConfigError
from udip_assets.imaging.grids import Grid
from udip_assets.interpret.atlas import Atlas, planted_region_rank, region_table
from udip_assets.interpret.perdi import (
    PairedDiffStats,
    choose_dims,
    finish_map,
    perdi_t_maps,
    t_map_figure,
    template_kept,
    udip_sd,
    write_t_nifti,
)
from udip_assets.model.config import preset
from udip_assets.model.vit_ae import ViTAE

# The tiny preset's 28x32x28 volume is this grid centre-padded: offsets (1, 1, 0) with 7x8x7 patches.
GRID = Grid("tiny_test", (26, 30, 27), 2.0, (26.0, -30.0, -26.0))
OFFSETS = (1, 1, 0)
PLANTED_PATCH = (1, 2, 2)  # patch grid coordinates (4x4x4 grid) of the planted effect



@pytest.fixture(scope="module")
def cfg():
    return preset("tiny")[0]


@pytest.fixture(scope="module")
def brain_mask() -> np.ndarray:
    """An ellipsoid "template brain" on GRID."""
    axes = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in GRID.shape], indexing="ij")
    centre, radii = np.array(GRID.shape) / 2 - 0.5, np.array(GRID.shape) * 0.42
    return sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii, strict=True)) <= 1.0


def tiny_model(cfg, seed: int = 0) -> ViTAE:
    torch.manual_seed(seed)
    return ViTAE(cfg).eval()


def patch_voxels_on_grid(cfg, patch: tuple[int, int, int]) -> np.ndarray:
    """Boolean (GRID.shape) mask of one patch's voxels after cropping the padding (independent of perdi)."""
    padded = np.zeros(cfg.volume_shape, dtype=bool)
    padded[tuple(slice(i * p, (i + 1) * p) for i, p in zip(patch, cfg.patch, strict=True))] = True
    return padded[tuple(slice(o, o + s) for o, s in zip(OFFSETS, GRID.shape, strict=True))]


# ------------------------------------------------------------------------------ accumulator
def test_streamed_paired_t_matches_ttest_rel():
    rng = np.random.default_rng(3)
    n, shape = 23, (5, 7)
    original = rng.normal(size=(n, *shape)).astype(np.float32)
    perturbed = (original + rng.normal(0.4, 1.0, size=(n, *shape))).astype(np.float32)
    perturbed[:, 0, 0] = original[:, 0, 0]  # no change: sd 0 -> t 0
    perturbed[:, 0, 1] = original[:, 0, 1] + np.float32(100.0) + rng.normal(0, 1e-3, n).astype(np.float32)
    acc = PairedDiffStats()
    for lo, hi in ((0, 1), (1, 5), (5, 12), (12, 23)):  # uneven batches
        acc.update(torch.from_numpy(perturbed[lo:hi]).double() - torch.from_numpy(original[lo:hi]).double())
    ref = stats.ttest_rel(perturbed.astype(np.float64), original.astype(np.float64), axis=0).statistic
    t = acc.t().numpy()
    assert acc.n == n
    assert t[0, 0] == 0.0
    keep = np.ones(shape, dtype=bool)
    keep[0, 0] = False
    np.testing.assert_allclose(t[keep], ref[keep], rtol=1e-9)
    np.testing.assert_allclose(acc.mean().numpy(), (perturbed.astype(np.float64) - original).mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.sd().numpy(), (perturbed.astype(np.float64) - original).std(0, ddof=1),
                               rtol=1e-9, atol=1e-15)


def test_constant_difference_has_sd_exactly_zero():
    acc = PairedDiffStats()
    batch = torch.full((4, 2), 0.1, dtype=torch.float64)
    for _ in range(3):
        acc.update(batch)
    assert batch.eq(0.1).all()  # the caller's tensor is left intact
    assert acc.sd().eq(0).all() and acc.t().eq(0).all()
    assert acc.mean().numpy() == pytest.approx(0.1)


def test_one_pair_is_refused():
    acc = PairedDiffStats()
    acc.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        acc.t()


# ------------------------------------------------------------------------------- end to end
def reference_t_maps(model: ViTAE, udips: np.ndarray, dims, sd, kept: np.ndarray):
    """Decode every subject whole, crop, and run scipy's paired t-test voxel by voxel."""
    crop = tuple(slice(o, o + s) for o, s in zip(OFFSETS, GRID.shape, strict=True))
    kept_t = torch.as_tensor(kept).expand(len(udips), -1)
    with torch.no_grad():
        z = torch.as_tensor(udips)
        base = model.unpatchify(model.decode(z, kept_t))[:, 0][(slice(None), *crop)].double().numpy()
        out = []
        for d in dims:
            zp = z.clone()
            zp[:, d] += float(sd[d])
            pert = model.unpatchify(model.decode(zp, kept_t))[:, 0][(slice(None), *crop)].double().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                t = stats.ttest_rel(pert, base, axis=0).statistic
            out.append((np.nan_to_num(t, nan=0.0), (pert - base).mean(0)))
    return out


def test_perdi_t_maps_match_ttest_rel_on_a_tiny_model(cfg, brain_mask):
    model = tiny_model(cfg)
    rng = np.random.default_rng(0)
    udips = rng.normal(size=(9, cfg.enc_dim)).astype(np.float32)
    sd = udip_sd(udips)
    res = perdi_t_maps(model, udips, [3, 7], sd, brain_mask, batch_size=4, device="cpu", progress=False)
    kept = template_kept(brain_mask, cfg)
    assert res.dims == (3, 7) and res.n_subjects == 9 and res.t_maps.shape == (2, *GRID.shape)
    assert res.t_maps.dtype == np.float32
    for i, (t_ref, mean_ref) in enumerate(reference_t_maps(model, udips, (3, 7), sd, kept)):
        np.testing.assert_allclose(res.t_maps[i], t_ref, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(res.mean_diff[i], mean_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(res.delta, sd[[3, 7]])
    np.testing.assert_array_equal(res.t_map(7), res.t_maps[1])


def test_template_kept_is_the_patches_holding_a_brain_voxel(cfg, brain_mask):
    kept = template_kept(brain_mask, cfg)
    gx, gy, gz = cfg.grid
    for i in range(gx):
        for j in range(gy):
            for k in range(gz):
                expected = (patch_voxels_on_grid(cfg, (i, j, k)) & brain_mask).any()
                assert kept[(i * gy + j) * gz + k] == expected
    assert 0 < kept.sum() < cfg.n_patches


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dims": [32]}, r"dims \[32\] are out of range for a 32-d UDIP"),
    ({"dims": []}, "at least one UDIP dim"),
    ({"sd": np.zeros(32)}, "sd must be finite and > 0 at the perturbed dims"),
    ({"sd": np.ones(5)}, r"sd must be \(32,\)"),
    ({"udips": np.zeros((4, 16))}, r"udips must be \(n_subjects >= 2, 32\)"),
    ({"mask": np.ones((20, 30, 27), dtype=bool)}, r"pads to \(21, 32, 28\).*expects volumes \(28, 32, 28\)"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"kept": np.zeros(64, dtype=bool)}, r"kept must be a \(64,\) bool array with a True"),
])
def test_invalid_arguments_are_refused(cfg, brain_mask, kwargs, message):
    args = {"udips": np.zeros((4, 32)), "dims": [1], "sd": np.ones(32), "mask": brain_mask, "batch_size": 2,
            "kept": None} | kwargs
    with pytest.raises(UdipConfigError, match=message):
        perdi_t_maps(tiny_model(cfg), args["udips"], args["dims"], args["sd"], args["mask"],
                     batch_size=args["batch_size"], device="cpu", kept=args["kept"], progress=False)


# ---------------------------------------------------------------------------- choosing dims
def minp(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["snp", "dim", "p", "significant"])


def test_choose_dims_takes_the_most_significant_then_novel():
    rows = [(f"s{i}", d, 1e-10, True) for i, d in enumerate([4] * 5 + [9] * 3 + [2] * 3 + [7] * 2 + [1, 8])]
    rows[5] = ("s5", 9, 1e-20, True)  # dims 9 and 2 tie on count: the smaller best p first
    rows += [("x", 30, 1e-30, False), ("y", 11, None, None)]
    dims, reason = choose_dims(minp(rows), novel_dims=[8, 20, 4])
    assert dims == (4, 9, 2, 7, 1, 8, 20)  # 1 and 8 tie on count and p: the smaller dim is top; 8 is novel
    assert "most significant SNPs" in reason and "4: 5" in reason and "novel loci [8, 20, 4]" in reason
    assert choose_dims(minp(rows), n_top=2) == ((4, 9), "the 2 dims with the most significant SNPs "
                                                        "(dim: n_snps 4: 5, 9: 3)")


def test_choose_dims_without_significant_snp_takes_smallest_minp():
    rows = [("a", 3, 1e-4, False), ("b", 3, 1e-2, False), ("c", 5, 1e-6, False), ("d", 9, 0.5, False)]
    dims, reason = choose_dims(minp(rows), n_top=5)
    assert dims == (5, 3, 9)
    assert reason.startswith("no significant SNP: the 3 dims with the smallest minP instead")


def test_explicit_dims_win():
    assert choose_dims(None, novel_dims=[1], explicit=[40, 2, 40]) == ((40, 2), "explicit: dims [40, 2] given "
                                                                                  "by the caller")


@pytest.mark.parametrize(("table", "kwargs", "error", "message"), [
    (pd.DataFrame({"dim": [1], "p": [0.1]}), {}, SummaryStatsError, r"lacks columns \['significant'\]"),
    (minp([("a", 1, None, False)]), {}, SummaryStatsError, "no row with a finite p"),
    (minp([("a", 1, 0.1, False)]), {"n_top": 0}, UdipConfigError, "n_top must be an integer >= 1"),
    (minp([("a", 1, 0.1, False)]), {"novel_dims": [-1]}, UdipConfigError, "non-negative integer UDIP dims"),
])
def test_choose_dims_refuses_bad_input(table, kwargs, error, message):
    with pytest.raises(error, match=message):
        choose_dims(table, **kwargs)


# ---------------------------------------------------------------------------- finishing maps
def test_finish_map_masks_then_smooths_then_masks_again():
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    t = np.zeros(mask.shape)
    t[7, 5, 5] = 10.0  # inside, at the mask's edge
    t[8, 5, 5] = 50.0  # just outside: must not leak in
    paper = ndi.gaussian_filter(np.where(mask, t, 0.0), sigma=1.0)
    np.testing.assert_allclose(finish_map(t, mask, remask=False), paper, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(finish_map(t, mask), paper * mask, rtol=1e-6, atol=1e-7)
    assert finish_map(t, mask, remask=False)[8, 5, 5] > 0  # spread just outside the mask
    assert finish_map(t, mask)[8, 5, 5] == 0
    inside_only = np.where(mask, t, 0.0)
    np.testing.assert_array_equal(finish_map(t, mask), finish_map(inside_only, mask))  # nothing leaks in
    smooth_then_mask = ndi.gaussian_filter(t, sigma=1.0) * mask
    assert smooth_then_mask[7, 5, 5] > finish_map(t, mask)[7, 5, 5] + 1  # the other order would leak
    np.testing.assert_array_equal(finish_map(t, mask, sigma=0), np.where(mask, t, 0).astype(np.float32))


def test_finish_map_refuses_mismatched_mask():
    with pytest.raises(UdipConfigError, match="one shape with a boolean mask"):
        finish_map(np.zeros((3, 3, 3)), np.zeros((3, 3, 4), dtype=bool))


def test_nifti_carries_the_grid_affine_and_shape(tmp_path):
    t = np.random.default_rng(0).normal(size=GRID.shape)
    path = write_t_nifti(t, GRID, tmp_path / "perdi_dim_003.nii.gz", dof=499)
    img = nib.load(path)
    assert img.shape == GRID.shape and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, GRID.affine)
    assert img.header.get_sform(coded=True)[1] == 4  # MNI152
    assert img.header.get_intent()[:2] == ("t test", (499.0,))
    np.testing.assert_allclose(np.asarray(img.dataobj), t.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["perdi_dim_003.nii.gz"]  # no temporary left
    with pytest.raises(UdipConfigError, match=r"t_map has shape \(3, 3, 3\) but grid tiny_test"):
        write_t_nifti(np.zeros((3, 3, 3)), GRID, tmp_path / "x.nii.gz")


def test_figure_is_a_png(tmp_path, brain_mask):
    t = np.where(brain_mask, np.random.default_rng(1).normal(size=GRID.shape), 0.0)
    path = t_map_figure(t, brain_mask * 1.0, tmp_path / "dim.png", "PerDI dim 3", grid=GRID, threshold=1.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ planted dim
def plant_dim(model: ViTAE, dim: int, patch: int, gain: float = 12.0, udip_norm: float = 10.0) -> ViTAE:
    """Set decoder weights so that UDIP dim ``dim`` reaches the output of patch ``patch`` only.

    The UDIP token is ``udip_norm * u + z[dim] * f`` with u, f zero-mean directions orthogonal to
    every patch token after LayerNorm. Block 0, head 0: the query of a patch is
    ``gain * (n_patch . n_p - thr)`` with thr between ``n_p . n_p`` and the largest other overlap,
    the key ``gain * (u . n)``, so patch p attends (weight 1 in float32) to the UDIP token and every
    other patch gives it weight exactly 0 (the scores differ by >> 104, where exp underflows). The
    value carries ``f . n`` (the dim, through LayerNorm's nonlinearity, so the differences vary
    between subjects). All other residual branches are zero: the other patches decode their
    positions only, whatever the UDIP. Every output voxel reads one direction of the decoder's
    last features (scaled by 0.5..1.5), so the patch's voxels move together (one t).
    """
    cfg = model.cfg
    c = cfg.dec_dim
    n_pos = torch.nn.functional.layer_norm(model.decoder_pos_embed.double(), (c,), eps=cfg.ln_eps)  # (N, C)
    _, s, vh = torch.linalg.svd(torch.cat([n_pos, torch.ones(1, c, dtype=torch.float64)]))
    u, f = vh[int((s > 1e-6).sum())], vh[int((s > 1e-6).sum()) + 1]
    n_p = n_pos[patch]
    overlap = n_pos @ n_p
    thr = (float(overlap[patch]) + float(torch.cat([overlap[:patch], overlap[patch + 1:]]).max())) / 2
    qkv_w, qkv_b = torch.zeros(3 * c, c, dtype=torch.float64), torch.zeros(3 * c, dtype=torch.float64)
    qkv_w[0], qkv_b[0] = gain * n_p, -gain * thr  # query, head 0
    qkv_w[c] = gain * u  # key, head 0
    qkv_w[2 * c + 1] = f  # value, head 0
    proj = torch.zeros(c, c, dtype=torch.float64)
    proj[:, 1] = 0.05 * torch.linspace(-1, 1, c, dtype=torch.float64)
    with torch.no_grad():
        model.decoder_embed.weight.zero_()
        model.decoder_embed.weight[:, dim] = f.float()
        model.decoder_embed.bias.copy_((udip_norm * u).float())
        first = model.decoder_blocks[0]
        first.attn.qkv.weight.copy_(qkv_w.float())
        first.attn.qkv.bias.copy_(qkv_b.float())
        first.attn.proj.weight.copy_(proj.float())
        first.attn.proj.bias.zero_()
        for blk in model.decoder_blocks:
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
        for blk in model.decoder_blocks[1:]:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
        pred = model.decoder_pred.weight  # (P, C): every voxel reads one direction, scaled
        pred.copy_(torch.linspace(0.5, 1.5, len(pred))[:, None] * pred[:1])
    return model


def planted_atlas(cfg, brain_mask) -> tuple[Atlas, np.ndarray]:
    """Labels on GRID: the planted patch in two halves (structure 'thalamus'), its mirror patch, the rest."""
    planted = patch_voxels_on_grid(cfg, PLANTED_PATCH) & brain_mask
    mirror = patch_voxels_on_grid(cfg, (2, 2, 2)) & brain_mask
    labels = np.zeros(GRID.shape, dtype=np.int32)
    labels[brain_mask] = 5
    labels[brain_mask & (np.arange(GRID.shape[1])[None, :, None] < 15)] = 6
    labels[mirror] = 3
    labels[planted] = 1
    labels[planted & (np.arange(GRID.shape[2])[None, None, :] >= 17)] = 2
    table = pd.DataFrame({"id": [1, 2, 3, 5, 6], "name": ["Thal_A_L", "Thal_B_L", "Patch_R", "Rest_Post", "Rest_Ant"],
                          "hemisphere": ["L", "L", "R", "", ""],
                          "structure": ["thalamus", "thalamus", "", "", ""]})
    return Atlas("planted", GRID, labels, table), planted


def test_planted_dim_lights_up_exactly_its_patch(cfg, brain_mask):
    gx, gy, gz = cfg.grid
    i, j, k = PLANTED_PATCH
    model = plant_dim(tiny_model(cfg, seed=5), dim=3, patch=(i * gy + j) * gz + k)
    rng = np.random.default_rng(2)
    udips = rng.normal(size=(12, cfg.enc_dim)).astype(np.float32)
    res = perdi_t_maps(model, udips, [3, 8], udip_sd(udips), brain_mask, batch_size=5, device="cpu",
                       progress=False)
    patch = patch_voxels_on_grid(cfg, PLANTED_PATCH)
    np.testing.assert_array_equal(res.t_map(3) != 0, patch)  # every voxel of the patch, nothing else
    assert np.abs(res.t_map(3)[patch]).min() > 20
    assert not res.t_map(8).any()  # an unplanted dim moves nothing
    atlas, planted = planted_atlas(cfg, brain_mask)
    table = region_table(finish_map(res.t_map(3), brain_mask), atlas, threshold=5.0, min_volume_mm3=0)
    assert set(table.loc[table["rank"] <= 2, "label"]) == {1, 2}  # the two halves of the planted patch
    assert table["fraction"].iloc[0] > 0.9
    assert planted_region_rank(table, "thalamus", min_volume_mm3=0) == 1
