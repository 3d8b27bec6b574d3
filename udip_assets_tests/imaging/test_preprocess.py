"""Padding, brain mask, z-score and the atomic cache, against numpy/scipy references."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from udip_assets.errors import GridMismatchError, ScanError, UdipConfigError
from udip_assets.imaging import preprocess as pp
from udip_assets.imaging.grids import MNI152_1MM, MNI152_2MM, Grid
from udip_assets.imaging.preprocess import (
    PreprocessConfig,
    load_preprocessed,
    pad_offsets,
    pad_to_patch_multiple,
    preprocess_scan,
    preprocess_volume,
)

TINY = Grid("tiny", (12, 14, 10), 2.0, (12.0, -14.0, -10.0))
TINY_PATCH = (4, 4, 4)  # -> padded 12x16x12, offsets (0, 1, 1)


def _brain(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth positive ellipsoid with noise on a zero background, float32."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s) for s in shape]
    r2 = sum(a.reshape([-1 if i == k else 1 for k in range(3)]) ** 2 / 0.7**2 for i, a in enumerate(axes))
    vol = (500 + 100 * np.cos(3 * axes[0])[:, None, None] + rng.normal(0, 30, shape)).astype(np.float32)
    vol[r2 > 1] = 0
    return vol


def _write(path, data, grid: Grid) -> str:
    nib.save(nib.Nifti1Image(data, grid.affine), path)
    return str(path)


# --- config -------------------------------------------------------------------------------------


def test_config_defaults_are_the_paper():
    cfg = PreprocessConfig()
    assert cfg.patch == (14, 16, 14) and cfg.cache_dtype == "float16"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"patch": (14, 16)}, "PreprocessConfig.patch"),
        ({"patch": (14, 0, 14)}, "PreprocessConfig.patch"),
        ({"patch": (14, 16.0, 14)}, "PreprocessConfig.patch"),
        ({"cache_dtype": "float64"}, "PreprocessConfig.cache_dtype"),
        ({"cache_dtype": "fp16"}, "PreprocessConfig.cache_dtype"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(UdipConfigError, match=field) as info:
        PreprocessConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


# --- padding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, padded, offsets",
    [
        ((182, 218, 182), (182, 224, 182), (0, 3, 0)),  # the paper
        ((91, 109, 91), (98, 112, 98), (3, 1, 3)),
    ],
)
def test_paper_padding_and_recovery(shape, padded, offsets):
    vol = np.random.default_rng(0).integers(1, 255, shape, dtype=np.uint8)
    out = pad_to_patch_multiple(vol, (14, 16, 14))
    assert out.shape == padded and out.dtype == np.uint8
    assert pad_offsets(shape, (14, 16, 14)) == offsets
    inner = tuple(slice(o, o + s) for o, s in zip(offsets, shape, strict=True))
    np.testing.assert_array_equal(out[inner], vol)
    assert int(out.astype(np.int64).sum()) == int(vol.astype(np.int64).sum())  # zeros elsewhere


def test_pad_offset_is_floor_of_half_the_pad():
    assert pad_offsets((5, 6, 7), (4, 4, 4)) == (1, 1, 0)  # pads 3, 2, 1
    assert pad_to_patch_multiple(np.ones((5, 6, 7)), (4, 4, 4))[1:6, 1:7, 0:7].sum() == 5 * 6 * 7


# --- z-score ------------------------------------------------------------------------------------


def test_zscore_inside_mask_matches_scipy_and_is_zero_outside():
    vol = _brain(TINY.shape)
    vol[0, :3, :3] = -7.0  # negative voxels are background
    z, mask = preprocess_volume(vol, TINY_PATCH)
    assert z.shape == mask.shape == (12, 16, 12)
    assert z.dtype == np.float32 and mask.dtype == bool and z.flags["C_CONTIGUOUS"]
    ref_mask = pad_to_patch_multiple(vol > 0, TINY_PATCH)
    np.testing.assert_array_equal(mask, ref_mask)
    ref = stats.zscore(vol[vol > 0].astype(np.float64))
    inner = pad_to_patch_multiple(np.ones(TINY.shape, bool), TINY_PATCH)
    np.testing.assert_allclose(z[inner].reshape(TINY.shape)[vol > 0], ref, atol=2e-6)
    assert z[mask].astype(np.float64).mean() == pytest.approx(0.0, abs=1e-6)
    assert z[mask].astype(np.float64).std() == pytest.approx(1.0, abs=1e-6)
    assert np.all(z[~mask] == 0.0) and not np.signbit(z[~mask]).any()  # +0, not -0


def test_zscore_of_fortran_ordered_volume_equals_c_ordered():
    vol = _brain(TINY.shape, seed=4)
    z_c, _ = preprocess_volume(np.ascontiguousarray(vol), TINY_PATCH)
    z_f, _ = preprocess_volume(np.asfortranarray(vol), TINY_PATCH)
    np.testing.assert_array_equal(z_c, z_f)


@pytest.mark.parametrize(
    "fill, message",
    [
        ("nan", "NaN or inf"),
        ("zeros", "no voxel > 0"),
        ("constant", "sd 0"),
    ],
)
def test_volumes_that_cannot_be_zscored(fill, message):
    vol = _brain(TINY.shape)
    if fill == "nan":
        vol[5, 5, 5] = np.nan
    elif fill == "zeros":
        vol[:] = 0
    else:
        vol[vol > 0] = 300.0
    with pytest.raises(ScanError, match=message):
        preprocess_volume(vol, TINY_PATCH)


# --- scans and cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol, rtol", [("float32", 0.0, 0.0), ("float16", 1e-6, 2.0**-11)])
def test_cache_round_trip(tmp_path, dtype, atol, rtol):
    vol = _brain(TINY.shape, seed=1)
    src = _write(tmp_path / "s.nii.gz", vol, TINY)
    dst = tmp_path / "cache" / "1000123.npy"
    res = preprocess_scan(src, dst, TINY, PreprocessConfig(patch=TINY_PATCH, cache_dtype=dtype))
    brain = vol[vol > 0].astype(np.float64)
    assert res.dst_path == str(dst) and res.src_path == src
    assert res.shape == (12, 16, 12) and res.n_mask_voxels == brain.size
    assert res.raw_mean == pytest.approx(brain.mean(), rel=1e-12)
    assert res.raw_sd == pytest.approx(brain.std(), rel=1e-12)
    assert res.seconds >= res.read_s + res.normalise_s + res.write_s - 1e-9 > 0
    assert np.load(dst).dtype == np.dtype(dtype)
    z_ref, mask = preprocess_volume(vol, TINY_PATCH)
    cached = load_preprocessed(dst)
    assert cached.dtype == np.float32 and cached.shape == (12, 16, 12) and cached.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(cached, z_ref, atol=atol, rtol=rtol)
    assert np.all(cached[~mask] == 0.0) and not np.signbit(cached[~mask]).any()
    assert sorted(os.listdir(dst.parent)) == ["1000123.npy"]  # no temporary file left


def test_interrupted_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    src = _write(tmp_path / "s.nii.gz", _brain(TINY.shape), TINY)
    dst = tmp_path / "c.npy"
    dst.write_bytes(b"previous")

    def broken_save(fh, array, allow_pickle=False):
        fh.write(b"\x93NUMPY half a header")
        raise KeyboardInterrupt

    monkeypatch.setattr(pp.np, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_scan(src, dst, TINY, PreprocessConfig(patch=TINY_PATCH))
    assert dst.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "s.nii.gz"]


def test_bad_scan_raises_and_writes_nothing(tmp_path):
    src = _write(tmp_path / "s.nii.gz", np.zeros(MNI152_2MM.shape, np.float32), MNI152_2MM)
    with pytest.raises(GridMismatchError, match=r"91x109x91 .* MNI152_1mm 182x218x182"):
        preprocess_scan(src, tmp_path / "c.npy", MNI152_1MM)
    src = _write(tmp_path / "z.nii.gz", np.zeros(TINY.shape, np.float32), TINY)
    with pytest.raises(ScanError, match="no voxel > 0"):
        preprocess_scan(src, tmp_path / "c.npy", TINY)
    assert sorted(os.listdir(tmp_path)) == ["s.nii.gz", "z.nii.gz"]


def test_destination_must_be_npy(tmp_path):
    src = _write(tmp_path / "s.nii.gz", _brain(TINY.shape), TINY)
    with pytest.raises(ValueError, match=r"dst_path must end in \.npy"):
        preprocess_scan(src, tmp_path / "c.nii", TINY)


def test_load_preprocessed_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_preprocessed(missing)
    cut = tmp_path / "cut.npy"
    np.save(cut, np.zeros((8, 8, 8), np.float16))
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(ScanError, match=rf"{cut}.*re-run preprocessing"):
        load_preprocessed(cut)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(5, np.float32))
    with pytest.raises(ScanError, match="expected a 3-D float16/float32 volume"):
        load_preprocessed(flat)
