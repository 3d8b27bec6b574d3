"""SmoothGrad against torch.autograd and its own seeds; NIfTI and PNG writers; the reconstruction figure
with the |difference| rows."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.grids import Grid
from udip_assets.imaging.preprocess import pad_offsets, pad_to_patch_multiple
from udip_assets.interpret import saliency
from udip_assets.interpret.brainmaps import crop_to_grid, paint_patches, write_nifti
from udip_assets.interpret.saliency import smoothgrad, write_saliency_maps
from udip_assets.model import extract
from udip_assets.model.config import preset
from udip_assets.model.extract import reconstruction_figure
from udip_assets.model.vit_ae import ViTAE

CFG, _ = preset("tiny")
GRID = Grid("tiny_test", (26, 30, 27), 2.0, (50.0, -60.0, -40.0))  # pads to 28x32x28, offsets (1, 1, 0)




def brain_volume(seed: int) -> torch.Tensor:
    """A padded (1, X', Y', Z') "scan": a z-scored ellipsoid with smooth structure, 0 outside."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in GRID.shape], indexing="ij")
    radii = np.array(GRID.shape) * rng.uniform(0.3, 0.45, 3)
    centre = np.array(GRID.shape) / 2
    inside = sum(((gi - c) / r) ** 2 for gi, c, r in zip(g, centre, radii, strict=True)) <= 1
    vals = np.sin(g[0] / 3) + np.cos(g[1] / 4) + rng.normal(0, 0.3, GRID.shape)
    vol = np.zeros(GRID.shape, dtype=np.float32)
    vol[inside] = (vals[inside] - vals[inside].mean()) / vals[inside].std()
    return torch.from_numpy(pad_to_patch_multiple(vol, CFG.patch))[None]


def _model(seed: int = 0) -> ViTAE:
    torch.manual_seed(seed)
    return ViTAE(preset("tiny", dropout=0.3)[0])  # dropout: SmoothGrad must switch it off


def _inner(volume: np.ndarray) -> np.ndarray:
    """Crop a padded (X', Y', Z') volume to GRID by explicit slices."""
    o = pad_offsets(GRID.shape, CFG.patch)
    return volume[o[0]:o[0] + GRID.shape[0], o[1]:o[1] + GRID.shape[1], o[2]:o[2] + GRID.shape[2]]


def test_smoothgrad_at_noise_zero_is_the_plain_gradient_inside_the_brain():
    model, x = _model(), brain_volume(1)
    sg = smoothgrad(model, x, dim=3, grid=GRID, n_samples=3, noise_sd=0.0, seed=0, batch_size=2)
    assert model.training  # mode restored
    xx = x[None].clone().requires_grad_(True)  # (1, 1, X', Y', Z')
    model.eval()
    (grad,) = torch.autograd.grad(model.encode(xx)[0, 3], xx)
    plain = (grad[0, 0] * (x[0] != 0)).numpy()
    assert sg.shape == GRID.shape and sg.dtype == np.float32
    np.testing.assert_allclose(sg, _inner(plain), rtol=1e-4, atol=1e-7)
    assert np.all(sg[_inner(x[0].numpy()) == 0] == 0) and np.abs(sg).max() > 0


def test_smoothgrad_is_reproducible_for_a_seed_whatever_the_batch_size_and_differs_for_another():
    model, x = _model(), brain_volume(2)
    a = smoothgrad(model, x, dim=0, grid=GRID, n_samples=6, noise_sd=1.0, seed=7, batch_size=4)
    b = smoothgrad(model, x, dim=0, grid=GRID, n_samples=6, noise_sd=1.0, seed=7, batch_size=1)
    c = smoothgrad(model, x, dim=0, grid=GRID, n_samples=6, noise_sd=1.0, seed=8, batch_size=4)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert not np.allclose(a, c, rtol=1e-2, atol=1e-6)


def test_noise_never_changes_the_kept_patches(monkeypatch):
    x = brain_volume(3)[None]  # (1, 1, X', Y', Z')
    x[0, 0, 0, 0, 0] = 0.5  # a patch (padding corner) holding one brain voxel
    brain = x != 0
    gen = torch.Generator().manual_seed(0)
    noisy = saliency._noisy_copies(x, brain, 4, 2.0, gen)
    assert torch.all(noisy[:, brain[0]] != 0) and torch.all(noisy[:, ~brain[0]] == 0)
    model = _model()
    assert torch.equal(model.kept_mask(noisy), model.kept_mask(x).expand(4, -1))
    # noise that would zero every brain voxel exactly: those voxels take their clean value back
    monkeypatch.setattr(saliency.torch, "randn", lambda shape, generator: -x / 2.0)
    np.testing.assert_array_equal(saliency._noisy_copies(x, brain, 2, 2.0, gen).numpy(),
                                  x.expand(2, -1, -1, -1, -1).numpy())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dim": 32}, r"dim 32 is not a UDIP dimension; the model has enc_dim 32 \(0..31\)"),
    ({"dim": -1}, r"dim must be an integer >= 0, got -1"),
    ({"n_samples": 0}, r"n_samples must be an integer >= 1, got 0"),
    ({"noise_sd": -0.1}, r"noise_sd must be a finite number >= 0 \(z-scored units\), got -0.1"),
    ({"noise_sd": float("nan")}, r"noise_sd must be a finite number >= 0"),
    ({"batch_size": True}, r"batch_size must be an integer >= 1, got True"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"dim": 0, "n_samples": 2, "noise_sd": 0.5, "seed": 0, "batch_size": 2} | kwargs
    with pytest.raises(UdipConfigError, match=message):
        smoothgrad(_model(), brain_volume(4), grid=GRID, **args)


def test_a_volume_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"input width \(26\) does not match the model \(28\)"):
        smoothgrad(_model(), torch.ones(GRID.shape), 0, GRID, n_samples=1)


def test_the_niftis_carry_the_grid_affine_and_shape(tmp_path):
    model, x = _model(), brain_volume(5)
    sg = smoothgrad(model, x, dim=1, grid=GRID, n_samples=2, noise_sd=0.5, seed=1)
    background = np.abs(_inner(x[0].numpy()))
    nifti, png = write_saliency_maps(sg, GRID, tmp_path / "sal" / "udip_001.nii.gz", tmp_path / "sal" / "udip_001.png",
                                     title="UDIP 1, scan A", background=background)
    img = nib.load(nifti)
    assert img.shape == GRID.shape and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, GRID.affine)
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), sg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = write_nifti(paint_patches(np.arange(CFG.n_patches), CFG, GRID), GRID, tmp_path / "patches.nii")
    np.testing.assert_array_equal(nib.load(plain).affine, GRID.affine)
    with pytest.raises(ValueError, match=r"is not on grid tiny_test \(26, 30, 27\)"):
        write_nifti(np.zeros(CFG.volume_shape), GRID, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=r"must end in .nii or .nii.gz, got x.img"):
        write_nifti(sg, GRID, tmp_path / "x.img")


def test_crop_and_paint_agree_with_explicit_slices():
    padded = np.random.default_rng(0).normal(size=CFG.volume_shape)
    np.testing.assert_array_equal(crop_to_grid(padded, CFG, GRID), _inner(padded))
    values = np.arange(CFG.n_patches, dtype=np.float32)
    painted = paint_patches(values, CFG, GRID)
    o, (px, py, pz) = pad_offsets(GRID.shape, CFG.patch), CFG.patch
    for i, j, k in [(0, 0, 0), (25, 29, 26), (10, 17, 3)]:
        a, b, c = (i + o[0]) // px, (j + o[1]) // py, (k + o[2]) // pz
        assert painted[i, j, k] == (a * 4 + b) * 4 + c


def test_reconstruction_figure_with_the_absolute_difference(tmp_path):
    model, vols = _model(), [brain_volume(6), brain_volume(7)]
    labels = ["validation scan A", "validation scan B"]
    path = reconstruction_figure(model, vols, labels, tmp_path / "recon.png", difference=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    originals, recon = extract._reconstruct(model, vols)
    fig = extract._figure(originals, recon, labels, difference=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 18 and titles[6] == "validation scan A: |difference|, axial"
    assert titles[-1] == "validation scan B: |difference|, sagittal"
    axial_b = fig.axes[15].get_images()[0].get_array()
    z = originals.shape[3] // 2
    np.testing.assert_allclose(axial_b, np.abs(originals[1] - recon[1])[:, :, z].T, rtol=1e-6)
    assert len(extract._figure(originals, recon, labels).axes) == 12  # default unchanged
