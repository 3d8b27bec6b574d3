"""Tests of the synthetic brain generator: parameters, deformation, labels, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.anatomy import REGIONS, load_anatomy, region_volume_mm3, region_volumes_mm3
from udip_assets.imaging.grids import MNI152_1MM, MNI152_2MM
from udip_assets.imaging.synth_brain import (
    WM_INTENSITY,
    AgingModel,
    Morphology,
    min_jacobian,
    partial_volumes_mm3,
    render_t1,
    sample_warp,
    warp_image,
    warp_labels,
    warp_mask,
)

# A subject with no random warp, bias or noise: the deformation alone.
QUIET = {"warp_amplitude_mm": 0.0, "bias_amplitude": 0.0, "noise_sd": 0.0}


@pytest.fixture(scope="module")
def anatomy():
    return load_anatomy(MNI152_2MM)


@pytest.fixture(scope="module")
def template_volumes(anatomy):
    return region_volumes_mm3(anatomy.region_labels, MNI152_2MM)


def _warp(anatomy, seed=0, **kwargs):
    return sample_warp(anatomy, Morphology(**kwargs), np.random.default_rng(seed))


def _log_ratio(new, old):
    return float(np.log(new / old))


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_scale": 0.0}, r"Morphology.head_scale must be in \[0.75, 1.2\], got 0.0"),
        ({"head_scale": float("nan")}, r"Morphology.head_scale must be in"),
        ({"region_log_volume": {"hipocampus": 0.1}}, r"unknown region 'hipocampus'; expected one of"),
        ({"region_log_volume": {"thalamus": 0.5}}, r"region_log_volume\['thalamus'\] must be a number in"),
        (
            {"region_stretch": {"caudate": 0.3}},
            r"region_stretch\['caudate'\] must be a number in \[-0.1, 0.1\]",
        ),
        ({"sex": 2}, r"Morphology.sex must be 0 \(female\) or 1 \(male\), got 2"),
        ({"age_years": 130}, r"Morphology.age_years must be in \[0.0, 120.0\], got 130"),
        ({"noise_sd": -0.1}, r"Morphology.noise_sd must be in \[0.0, 0.5\]"),
        ({"intensity_scale": 0}, r"Morphology.intensity_scale must be in"),
        ({"warp_amplitude_mm": 20}, r"Morphology.warp_amplitude_mm must be in \[0.0, 8.0\]"),
        (
            {"region_log_volume": {"ventricles": 0.4}, "age_years": 85, "sex": 1},
            r"region_log_volume\['ventricles'\] plus ageing \(age 85, sex 1\) is 0.930, expected in",
        ),
    ],
)
def test_invalid_morphology_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        Morphology(**kwargs)


def test_aging_model_refuses_a_reference_outside_its_range():
    with pytest.raises(UdipConfigError, match=r"reference_age_years must lie in age_range_years"):
        AgingModel(reference_age_years=30.0)


def test_morphology_copies_and_freezes_its_mappings():
    effects = {"thalamus": 0.1}
    morph = Morphology(region_log_volume=effects)
    effects["thalamus"] = 0.3
    assert morph.region_log_volume["thalamus"] == 0.1
    with pytest.raises(TypeError):
        morph.region_log_volume["thalamus"] = 0.2  # type: ignore[index]


def test_ageing_is_linear_in_range_and_constant_outside():
    aging = AgingModel()
    assert aging.region_log_volume(62.5, 0)["ventricles"] == 0.0
    assert aging.region_log_volume(72.5, 0)["ventricles"] == pytest.approx(0.2)
    assert aging.region_log_volume(72.5, 1)["ventricles"] == pytest.approx(0.28)
    assert aging.region_log_volume(30.0, 0) == aging.region_log_volume(45.0, 0)
    assert Morphology(age_years=62.5, **QUIET).effective_region_log_volume() == {}


# --- deformation and labels -------------------------------------------------------------------


def test_identity_warp_reproduces_the_template(anatomy):
    warp = _warp(anatomy, **QUIET)
    np.testing.assert_array_equal(warp_labels(anatomy, warp), anatomy.region_labels)
    np.testing.assert_array_equal(warp_mask(anatomy, warp), anatomy.brain_mask)
    assert min_jacobian(warp) == pytest.approx(1.0, abs=1e-4)
    for region, volume in partial_volumes_mm3(anatomy, warp).items():
        assert volume == pytest.approx(anatomy.region_volume_mm3(region), rel=1e-4), region


@pytest.mark.parametrize("warp_mm", [0.0, 2.0])
def test_planted_hippocampus_effect_is_measured_through_warp_labels(anatomy, warp_mm):
    # same seed with and without the effect: the random warp is identical
    kwargs = {"warp_amplitude_mm": warp_mm, "bias_amplitude": 0.0, "noise_sd": 0.0}
    base = region_volumes_mm3(warp_labels(anatomy, _warp(anatomy, seed=3, **kwargs)), MNI152_2MM)
    warp = _warp(anatomy, seed=3, region_log_volume={"hippocampus": 0.15}, **kwargs)
    grown = region_volumes_mm3(warp_labels(anatomy, warp), MNI152_2MM)
    assert _log_ratio(grown["hippocampus"], base["hippocampus"]) / 0.15 == pytest.approx(1.0, abs=0.15)
    assert abs(_log_ratio(grown["cerebellum"], base["cerebellum"])) < 0.02
    assert abs(_log_ratio(grown["putamen"], base["putamen"])) < 0.02
    assert warp.region_log_volume == {"hippocampus": 0.15}


@pytest.mark.parametrize("region", sorted(REGIONS))
@pytest.mark.parametrize("effect", [0.2, -0.2])
def test_every_region_changes_by_its_planted_effect(anatomy, template_volumes, region, effect):
    warp = _warp(anatomy, region_log_volume={region: effect}, **QUIET)
    measured = partial_volumes_mm3(anatomy, warp)[region]
    assert _log_ratio(measured, template_volumes[region]) / effect == pytest.approx(1.0, abs=0.15)
    assert min_jacobian(warp) > 0.2


def test_head_scale_scales_brain_volume_by_its_cube(anatomy):
    warp = _warp(anatomy, head_scale=1.1, **QUIET)
    template_mm3 = region_volume_mm3(anatomy.brain_mask, MNI152_2MM)
    ratio = region_volume_mm3(warp_mask(anatomy, warp), MNI152_2MM) / template_mm3
    assert ratio == pytest.approx(1.331, rel=0.01)
    image = render_t1(anatomy, warp, Morphology(head_scale=1.1, **QUIET), np.random.default_rng(0))
    assert np.count_nonzero(image) * 8.0 / template_mm3 == pytest.approx(1.331, rel=0.01)
    assert min_jacobian(warp) == pytest.approx(1.1**-3, rel=1e-3)


@pytest.mark.parametrize("stretch", [0.1, -0.1])
def test_stretch_changes_shape_along_the_main_axis_not_volume(anatomy, template_volumes, stretch):
    warp = _warp(anatomy, region_stretch={"hippocampus": stretch}, **QUIET)
    labels = warp_labels(anatomy, warp)
    volume = region_volumes_mm3(labels, MNI152_2MM)["hippocampus"]
    assert abs(_log_ratio(volume, template_volumes["hippocampus"])) < 0.03
    for side in (slice(0, 45), slice(46, 91)):  # right, left hemisphere (x = 90 - 2 i)

        def covariance(image, side=side):
            idx = np.argwhere(np.isin(image[side], REGIONS["hippocampus"].labels)).astype(float)
            return np.cov((idx - idx.mean(axis=0)).T)

        values, vectors = np.linalg.eigh(covariance(anatomy.region_labels))
        main = vectors[:, -1]
        ratio = main @ covariance(labels) @ main / values[-1]
        assert ratio == pytest.approx(np.exp(2 * stretch), rel=0.05)  # variance x e^(2 v) along the axis


def test_ventricles_grow_with_age_and_are_larger_in_males(anatomy):
    def ventricles_mm3(age, sex):
        warp = _warp(anatomy, age_years=age, sex=sex, **QUIET)
        return region_volumes_mm3(warp_labels(anatomy, warp), MNI152_2MM)["ventricles"]

    female = [ventricles_mm3(age, 0) for age in (50, 65, 80)]
    assert female[0] < female[1] < female[2]
    assert _log_ratio(female[2], female[0]) == pytest.approx(0.6, abs=0.1)  # 0.02 a year over 30 years
    assert ventricles_mm3(65, 1) > female[1]


def test_random_warp_has_the_requested_amplitude(anatomy):
    warp = _warp(anatomy, seed=1, warp_amplitude_mm=3.0, bias_amplitude=0.0, noise_sd=0.0)
    identity = _warp(anatomy, **QUIET)
    assert warp.displacement_rms_mm == pytest.approx(3.0)
    box = tuple(
        slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(warp.box, identity.box, strict=True)
    )
    moved = [
        warp.coords[(d, *_rel(box, warp.box))] - identity.coords[(d, *_rel(box, identity.box))]
        for d in range(3)
    ]
    rms_mm = float(np.sqrt(np.mean(sum(m.astype(np.float64) ** 2 for m in moved)))) * 2.0
    assert 1.5 < rms_mm < 4.5
    assert min_jacobian(warp) > 0.3


def _rel(inner, outer):
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))


def test_warp_image_refuses_another_grid(anatomy):
    with pytest.raises(UdipConfigError, match=r"image shape \(3, 3, 3\) does not match the warp's grid"):
        warp_image(np.zeros((3, 3, 3), np.float32), _warp(anatomy, **QUIET), order=1)


# --- rendering --------------------------------------------------------------------------------


def _subject(anatomy, seed, **kwargs):
    morph = Morphology(region_log_volume={"thalamus": -0.1}, age_years=70.0, **kwargs)
    rng = np.random.default_rng(seed)
    warp = sample_warp(anatomy, morph, rng)
    return warp, render_t1(anatomy, warp, morph, rng)


def test_rendering_is_deterministic_for_a_seed_and_differs_across_seeds(anatomy):
    warp_a, image_a = _subject(anatomy, 7)
    warp_b, image_b = _subject(anatomy, 7)
    _, image_c = _subject(anatomy, 8)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(warp_labels(anatomy, warp_a), warp_labels(anatomy, warp_b))
    assert np.abs(image_a - image_c).mean() > 5.0


def test_render_looks_like_a_brain_extracted_t1(anatomy):
    warp, image = _subject(anatomy, 11)
    assert image.shape == (91, 109, 91) and image.dtype == np.float32
    brain = warp_mask(anatomy, warp)
    assert np.all(image[~brain] == 0.0)
    assert np.all(image >= 0.0)
    assert np.mean(image[brain] > 0) > 0.999
    assert image.max() < 1200.0
    labels = warp_labels(anatomy, warp)
    wm = warp_image(anatomy.wm, warp, order=1) > 0.9
    assert image[wm].mean() == pytest.approx(WM_INTENSITY, rel=0.1)
    ventricles = image[np.isin(labels, REGIONS["ventricles"].labels)].mean()
    assert ventricles < 0.5 * image[wm].mean()


def test_noise_and_gain_follow_their_parameters(anatomy):
    warp = _warp(anatomy, **QUIET)
    clean = render_t1(anatomy, warp, Morphology(**QUIET), np.random.default_rng(0))
    noisy = render_t1(anatomy, warp, Morphology(**{**QUIET, "noise_sd": 0.05}), np.random.default_rng(0))
    brighter = render_t1(
        anatomy, warp, Morphology(**{**QUIET, "intensity_scale": 1.5}), np.random.default_rng(0)
    )
    deep = anatomy.brain_mask & (anatomy.t1 > 0.5)
    assert np.std(noisy[deep] - clean[deep]) == pytest.approx(0.05 * WM_INTENSITY, rel=0.05)
    np.testing.assert_allclose(brighter, 1.5 * clean, rtol=1e-5)


def test_grey_matter_darkens_with_age(anatomy):
    warp = _warp(anatomy, **QUIET)
    gm = anatomy.gm > 0.9

    def gm_intensity(age):
        morph = Morphology(age_years=age, **QUIET)
        image = render_t1(anatomy, warp, morph, np.random.default_rng(0))
        return image[gm].mean()

    assert gm_intensity(80) < gm_intensity(62.5) < gm_intensity(50)


def test_1mm_smoke():
    anatomy_1mm = load_anatomy(MNI152_1MM)
    assert anatomy_1mm.t1.shape == (182, 218, 182)
    volumes_2mm = region_volumes_mm3(load_anatomy(MNI152_2MM).region_labels, MNI152_2MM)
    for region, volume in region_volumes_mm3(anatomy_1mm.region_labels, MNI152_1MM).items():
        assert volume == pytest.approx(volumes_2mm[region], rel=0.1), region
    morph = Morphology(region_log_volume={"ventricles": 0.2})
    rng = np.random.default_rng(0)
    warp = sample_warp(anatomy_1mm, morph, rng)
    image = render_t1(anatomy_1mm, warp, morph, rng)
    assert image.shape == (182, 218, 182) and np.all(image[~warp_mask(anatomy_1mm, warp)] == 0)
    grown = region_volume_mm3(warp_labels(anatomy_1mm, warp), MNI152_1MM, "ventricles")
    assert _log_ratio(grown, anatomy_1mm.region_volume_mm3("ventricles")) == pytest.approx(0.2, abs=0.05)


# --- linear registration to MNI (what the paper's input shows) --------------------------------


def test_linear_registration_normalises_head_size_away(anatomy):
    """A 12-dof registration scales every head to the template: the image's brain volume ignores head_scale."""
    kwargs = {"warp_amplitude_mm": 2.0, "bias_amplitude": 0.0, "noise_sd": 0.0}
    registered, native = [], []
    for head_scale in (0.85, 1.0, 1.15):
        for flag, out in ((True, registered), (False, native)):
            morph = Morphology(head_scale=head_scale, linear_registration=flag, **kwargs)
            image = render_t1(anatomy, sample_warp(anatomy, morph, np.random.default_rng(4)), morph,
                              np.random.default_rng(0))
            out.append(np.count_nonzero(image))
    assert len(set(registered)) == 1
    assert native[2] / native[0] == pytest.approx((1.15 / 0.85) ** 3, rel=0.03)


def test_linear_registration_leaves_only_the_non_affine_part_of_the_warp(anatomy):
    """The displacement left in the image has no least-squares affine component over the brain."""
    morph = Morphology(warp_amplitude_mm=2.0, bias_amplitude=0.0, noise_sd=0.0, linear_registration=True)
    warp = sample_warp(anatomy, morph, np.random.default_rng(7))
    box_mask = anatomy.brain_mask[warp.box]
    idx = np.argwhere(box_mask).astype(np.float64) + np.array([s.start for s in warp.box], float)
    design = np.column_stack([np.ones(len(idx)), idx])
    rms_sq = 0.0
    for d in range(3):
        disp = warp.coords[d][box_mask].astype(np.float64) - idx[:, d]  # identity: head_scale 1, no regions
        coef, *_ = np.linalg.lstsq(design, disp, rcond=None)
        assert np.abs(coef[1:]).max() < 1e-4 and abs(coef[0] + coef[1:] @ idx.mean(axis=0)) < 1e-3
        rms_sq += float(np.mean(disp**2))
    native = sample_warp(anatomy, Morphology(warp_amplitude_mm=2.0, bias_amplitude=0.0, noise_sd=0.0),
                         np.random.default_rng(7))
    assert 0.3 < np.sqrt(rms_sq) * MNI152_2MM.voxel_mm < native.displacement_rms_mm
    assert warp.displacement_rms_mm < native.displacement_rms_mm


def test_residual_bias_field_has_its_rms(anatomy):
    """Bias 0.02 (what FAST leaves): the log ratio to a bias-free render has RMS ~0.02 inside the brain."""
    kwargs = {"warp_amplitude_mm": 0.0, "noise_sd": 0.0}
    warp = _warp(anatomy, **kwargs, bias_amplitude=0.0)
    flat = render_t1(anatomy, warp, Morphology(bias_amplitude=0.0, **kwargs), np.random.default_rng(3))
    biased = render_t1(anatomy, warp, Morphology(bias_amplitude=0.02, **kwargs), np.random.default_rng(3))
    inside = flat > 50
    log_ratio = np.log(biased[inside] / flat[inside])
    assert 0.008 < np.sqrt(np.mean(log_ratio**2)) < 0.04
    assert np.abs(log_ratio).max() < 0.15


@pytest.mark.parametrize("stretch", [0.08, -0.06])
def test_measured_stretch_equals_the_planted_one_and_ignores_volume(anatomy, stretch):
    from udip_assets.imaging.synth_brain import measure_regions

    stretched = measure_regions(anatomy, _warp(anatomy, region_stretch={"ventricles": stretch}, **QUIET))
    assert stretched["ventricles"][1] == pytest.approx(stretch, rel=0.25)  # the taper blends it into its neighbours
    grown = measure_regions(anatomy, _warp(anatomy, region_log_volume={"ventricles": 0.2}, **QUIET))
    assert abs(grown["ventricles"][1]) < 0.01
    identity = measure_regions(anatomy, _warp(anatomy, **QUIET))
    assert all(abs(s) < 1e-6 for _, s in identity.values())
    volumes = partial_volumes_mm3(anatomy, _warp(anatomy, **QUIET))
    assert {r: v for r, (v, _) in identity.items()} == pytest.approx(volumes)
