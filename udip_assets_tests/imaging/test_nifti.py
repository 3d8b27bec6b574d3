"""Scan validation: every status, its message, and the decoded voxels against nibabel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from udip_assets.errors import GridMismatchError, ScanError
from udip_assets.imaging import nifti
from udip_assets.imaging.grids import MNI152_1MM, MNI152_2MM, Grid
from udip_assets.imaging.nifti import ScanCheck, load_scan, read_scan, validate_scan

TINY = Grid("tiny", (12, 14, 10), 2.0, (12.0, -14.0, -10.0))


def _brain(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth positive ellipsoid with noise on a zero background, float32."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s) for s in shape]
    r2 = sum(a.reshape([-1 if i == k else 1 for k in range(3)]) ** 2 / 0.7**2 for i, a in enumerate(axes))
    vol = (500 + 100 * np.cos(3 * axes[0])[:, None, None] + rng.normal(0, 30, shape)).astype(np.float32)
    vol[r2 > 1] = 0
    return vol


@pytest.fixture(params=["libdeflate", "zlib"])
def decoder(request, monkeypatch):
    """Run a test with the libdeflate decoder (skipped when absent) and with the zlib fallback."""
    if request.param == "zlib":
        monkeypatch.setattr(nifti, "_libdeflate", lambda: None)
    elif nifti._libdeflate() is None:
        pytest.skip("libdeflate is not installed on this machine")
    return request.param


def _write(path, data, affine, **header) -> str:
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return str(path)


def test_valid_scan_is_ok_with_brain_statistics(tmp_path, decoder):
    vol = _brain(TINY.shape)
    path = _write(tmp_path / "s.nii.gz", vol, TINY.affine)
    check = validate_scan(path, TINY)
    brain = vol[vol > 0].astype(np.float64)
    assert check == ScanCheck(
        path, "ok", None, TINY.shape, (2.0, 2.0, 2.0), brain.size, check.mean_intensity, check.sd_intensity
    )
    assert check.ok and brain.size > 100
    assert check.mean_intensity == pytest.approx(brain.mean(), rel=1e-12)
    assert check.sd_intensity == pytest.approx(brain.std(), rel=1e-12)
    loaded = load_scan(path, TINY)
    assert loaded.dtype == np.float32 and loaded.shape == TINY.shape
    np.testing.assert_array_equal(loaded, nib.load(path).get_fdata(dtype=np.float32))


def test_uncompressed_nii_and_trailing_singleton_dim(tmp_path):
    vol = _brain(TINY.shape, seed=1)
    path = _write(tmp_path / "s.nii", vol[..., None], TINY.affine)
    check, data = read_scan(path, TINY)
    assert check.status == "ok" and check.shape == TINY.shape
    np.testing.assert_array_equal(data, vol)


def test_scaled_integer_data_matches_nibabel(tmp_path):
    raw = np.random.default_rng(2).integers(0, 300, TINY.shape, dtype=np.int16)
    img = nib.Nifti1Image(raw, TINY.affine)
    img.header.set_slope_inter(0.5, 2.0)
    path = str(tmp_path / "int.nii.gz")
    nib.save(img, path)
    np.testing.assert_allclose(load_scan(path, TINY), nib.load(path).get_fdata(), rtol=1e-6)


def test_multi_member_gzip_is_read_whole(tmp_path, decoder):
    vol = _brain(TINY.shape, seed=3)
    nii = tmp_path / "s.nii"
    _write(nii, vol, TINY.affine)
    raw = nii.read_bytes()
    half = len(raw) // 2
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(load_scan(path, TINY), vol)


@pytest.mark.parametrize("damage", ["truncate", "flip_crc", "garbage"])
def test_damaged_file_is_unreadable_and_named(tmp_path, damage, decoder):
    path = tmp_path / "1000123_20252_2_0.nii.gz"
    _write(path, _brain(TINY.shape), TINY.affine)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "flip_crc":
        path.write_bytes(raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    check = validate_scan(path, TINY)
    assert check.status == "unreadable"
    assert check.shape is None and check.n_nonzero == 0
    assert str(path) in check.error and "copy or download the file again" in check.error
    if damage == "truncate":
        assert "incomplete or truncated stream" in check.error  # zlib's own words
    elif damage == "flip_crc":
        assert "incorrect data check" in check.error
    with pytest.raises(ScanError, match="cannot be read") as info:
        load_scan(path, TINY)
    assert not isinstance(info.value, GridMismatchError)


@pytest.mark.parametrize("version", [1, 2])
def test_big_endian_and_nifti2_match_nibabel(tmp_path, version, decoder):
    vol = _brain(TINY.shape, seed=5)
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)(endianness=">")
    path = str(tmp_path / "be.nii.gz")
    nib.save(klass(vol, TINY.affine, header=header), path)
    assert nib.load(path).header.endianness == ">"
    check, data = read_scan(path, TINY)
    assert check.ok
    np.testing.assert_array_equal(data, vol)


def test_2mm_scan_on_1mm_grid_names_both_grids_and_the_fix(tmp_path):
    path = _write(tmp_path / "s.nii.gz", np.zeros(MNI152_2MM.shape, np.float32), MNI152_2MM.affine)
    check = validate_scan(path, MNI152_1MM)
    assert check.status == "wrong_grid"
    assert check.shape == (91, 109, 91) and check.voxel_mm == (2.0, 2.0, 2.0)
    assert check.error == (
        f"scan {path} is 91x109x91 with 2.0 mm voxels; the cohort grid is MNI152_1mm 182x218x182 1.0 mm; "
        "re-register the scan or set the cohort's resolution to 2"
    )
    with pytest.raises(GridMismatchError, match="set the cohort's resolution to 2"):
        load_scan(path, MNI152_1MM)


def test_unknown_shape_names_the_grid(tmp_path):
    path = _write(tmp_path / "s.nii.gz", _brain((12, 14, 11)), TINY.affine)
    check = validate_scan(path, TINY)
    assert check.status == "wrong_grid"
    assert "is 12x14x11 with 2.0 mm voxels" in check.error
    assert "the cohort grid is tiny 12x14x10 2.0 mm" in check.error and "re-register" in check.error
    assert check.n_nonzero > 0  # still readable: statistics are filled


def test_shifted_affine_is_wrong_grid(tmp_path):
    affine = TINY.affine.copy()
    affine[1, 3] += 2.5
    path = _write(tmp_path / "s.nii.gz", _brain(TINY.shape), affine)
    check = validate_scan(path, TINY)
    assert check.status == "wrong_grid"
    assert "different affine (entry [1,3] differs by 2.5 mm)" in check.error
    assert str(path) in check.error and "tiny 12x14x10 2.0 mm" in check.error
    affine[1, 3] = TINY.affine[1, 3] + 5e-4  # within the 1e-3 mm tolerance
    assert validate_scan(_write(tmp_path / "t.nii.gz", _brain(TINY.shape), affine), TINY).ok


def test_four_volumes_is_wrong_grid(tmp_path):
    path = _write(tmp_path / "s.nii.gz", np.stack([_brain(TINY.shape)] * 2, axis=-1), TINY.affine)
    check = validate_scan(path, TINY)
    assert check.status == "wrong_grid" and check.shape == (12, 14, 10, 2)
    assert "expected one 3-D volume" in check.error


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    vol = _brain(TINY.shape)
    vol[0, 0, 0] = bad
    vol[6, 7, 5] = bad  # inside the brain too
    path = _write(tmp_path / "s.nii.gz", vol, TINY.affine)
    check = validate_scan(path, TINY)
    assert check.status == "non_finite"
    assert check.error.startswith(f"scan {path} holds 2 non-finite voxels")
    with pytest.raises(ScanError, match="non-finite"):
        load_scan(path, TINY)


def test_all_zero_scan_is_empty(tmp_path):
    path = _write(tmp_path / "s.nii.gz", np.zeros(TINY.shape, np.float32), TINY.affine)
    check = validate_scan(path, TINY)
    assert check.status == "empty" and check.n_nonzero == 0
    assert np.isnan(check.mean_intensity)
    assert str(path) in check.error and "no voxel > 0" in check.error


def test_negative_voxels_are_background(tmp_path):
    vol = _brain(TINY.shape)
    vol[0, :, :] = -5.0
    check = validate_scan(_write(tmp_path / "s.nii.gz", vol, TINY.affine), TINY)
    assert check.ok and check.n_nonzero == int((vol > 0).sum())
    assert check.mean_intensity == pytest.approx(vol[vol > 0].astype(np.float64).mean(), rel=1e-12)
