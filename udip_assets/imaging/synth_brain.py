"""Synthetic subject brains: the template anatomy deformed and re-imaged per subject.

A subject is a :class:`Morphology` (head size, per-region volume and shape changes, age, sex, scan
quality). :func:`sample_warp` turns it into a pull-back map (for every output voxel, the template
point it shows); :func:`render_t1` images the warped template like UK Biobank's
``T1_brain_to_MNI`` (brain-extracted, intensities 0..~1000, smooth bias field, noise inside the
brain); :func:`warp_labels` warps the region labels with the same map, so the caller can measure
each region's volume in the subject (:func:`partial_volumes_mm3` measures it without label
dithering; :func:`min_jacobian` checks that a map does not fold). Everything is deterministic
given the ``np.random.Generator``.

A planted region effect changes that region's measured log-volume by the planted amount (within
~15 % at 2 mm) and moves neighbours through the tissue it pushes: a ventricle effect e moves the
caudate by ~0.75 e and the thalamus and hippocampus by ~0.25 e; a hippocampus effect moves the
amygdala and the thalamus by ~0.1-0.2 e; far regions (cerebellum for the hippocampus) stay within
1-2 %.

Coordinates are template voxel indices of the anatomy's grid throughout (the grids are isotropic,
so scaling about a centre is the same in voxels and in mm).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy import ndimage as ndi

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.anatomy import REGIONS, Anatomy
from udip_assets.imaging.grids import Grid

# Mean white-matter intensity of a rendered scan at intensity_scale 1 (arbitrary scanner units,
# chosen so that a brain-extracted scan spans roughly 0..1000 like UK Biobank's T1_brain_to_MNI).
WM_INTENSITY = 700.0

# Number of cosine modes per axis of the random warp and of the bias field (0..K-1).
_N_MODES = 3

# Bounds on the planted (user) and effective (with ageing) log-volume change and on the log stretch
# of one region: beyond them the local map of a large region can fold (see _region_parts, Notes).
_MAX_ABS_LOG_VOLUME = 0.4
_MIN_EFFECTIVE_LOG_VOLUME = -0.6
_MAX_EFFECTIVE_LOG_VOLUME = 0.8
_MAX_ABS_STRETCH = 0.1


def _default_aging_rates() -> Mapping[str, float]:
    return MappingProxyType({"ventricles": 0.02, "hippocampus": -0.01, "caudate": -0.012, "thalamus": -0.01})


def _default_male_effects() -> Mapping[str, float]:
    return MappingProxyType({"ventricles": 0.08})


@dataclass(frozen=True)
class AgingModel:
    """How age and sex change a synthetic brain.

    Attributes
    ----------
    reference_age_years : float
        Age with no ageing effect (62.5, the middle of UK Biobank's imaging visits).
    age_range_years : tuple of float
        Ages over which effects are linear; outside it the nearest end applies (45-85 years).
    region_log_per_year : Mapping[str, float]
        Natural-log volume change per year of age, per region. Defaults: ventricles +0.02 (about
        x2 from 45 to 80), hippocampus -0.01, caudate -0.012, thalamus -0.01.
    region_log_male : Mapping[str, float]
        Extra natural-log volume in males (sex = 1), per region. Default: ventricles +0.08.
    gm_contrast_loss_per_year : float
        Fraction of the grey-matter - CSF intensity difference lost per year, strongest where grey
        matter borders CSF (a partial-volume proxy of cortical thinning).

    Notes
    -----
    Growing ventricles push and stretch the thin tissue around them (see
    :func:`_add_part_displacement`): with this anatomy a ventricle log-volume change of e moves
    the measured caudate (a 4 mm-thick shell on the ventricle wall) by about 0.75 e, the thalamus
    and the hippocampus by about 0.25 e. Net of that, from 45 to 80 years the defaults give
    ventricles 12 -> 25 cm^3 (+2 %/year), hippocampus -0.3 %/year and thalamus -0.6 %/year
    (2 mm grid, female); the caudate still grows by about 0.5 %/year, as a steeper caudate rate
    against growing ventricles folds the map. Treat caudate volume as ventricle-coupled.
    """

    reference_age_years: float = 62.5
    age_range_years: tuple[float, float] = (45.0, 85.0)
    region_log_per_year: Mapping[str, float] = field(default_factory=_default_aging_rates)
    region_log_male: Mapping[str, float] = field(default_factory=_default_male_effects)
    gm_contrast_loss_per_year: float = 0.003

    def __post_init__(self) -> None:
        lo, hi = self.age_range_years
        if not lo <= self.reference_age_years <= hi:
            raise UdipConfigError(
                f"AgingModel.reference_age_years must lie in age_range_years {self.age_range_years}, "
                f"got {self.reference_age_years}; widen the range or move the reference"
            )
        for name in ("region_log_per_year", "region_log_male"):
            object.__setattr__(
                self, name, _checked_region_map(f"AgingModel.{name}", getattr(self, name), 1.0)
            )

    def years(self, age_years: float) -> float:
        """Effective years past the reference: age clipped to ``age_range_years``, minus reference."""
        lo, hi = self.age_range_years
        return min(max(age_years, lo), hi) - self.reference_age_years

    def region_log_volume(self, age_years: float, sex: int) -> dict[str, float]:
        """Log-volume change per region for this age and sex (regions not named: 0)."""
        years = self.years(age_years)
        out = {region: rate * years for region, rate in self.region_log_per_year.items()}
        for region, effect in self.region_log_male.items():
            out[region] = out.get(region, 0.0) + effect * sex
        return out


@dataclass(frozen=True)
class Morphology:
    """Per-subject parameters of a synthetic brain scan.

    Attributes
    ----------
    head_scale : float
        Linear global scale about the brain centre; 1.0 = template, 1.1 -> x1.331 brain volume.
        Must lie in [0.75, 1.2] so the brain stays on the grid.
    region_log_volume : Mapping[str, float]
        Natural-log volume change per region of :data:`udip_assets.imaging.anatomy.REGIONS`
        (0 = template, 0.1 = +10.5 %), |value| <= 0.4. Ageing adds to it (see ``aging``); the
        sum must lie in [-0.6, 0.8].
    region_stretch : Mapping[str, float]
        Volume-preserving shape change per region: log stretch along the region's main axis
        (each hemisphere's own), the two other axes shrink by half that log; |value| <= 0.1.
    age_years : float
        Age in years, in [0, 120]; drives regional atrophy, ventricle growth and grey-matter
        contrast loss through ``aging`` (linear over 45-85 years, constant outside).
    sex : int
        0 female, 1 male.
    warp_amplitude_mm : float
        RMS displacement (mm) of a smooth random low-frequency warp, in [0, 8].
    bias_amplitude : float
        RMS of the log of a smooth multiplicative intensity bias field, in [0, 0.5].
    noise_sd : float
        Standard deviation of Gaussian noise inside the brain, relative to white-matter intensity,
        in [0, 0.5].
    intensity_scale : float
        Global intensity gain (> 0); white matter renders at about ``700 * intensity_scale``.
    aging : AgingModel
        Effect sizes of age and sex.
    linear_registration : bool
        Render the scan as linearly (12-dof affine) registered to the template, as UK Biobank's
        ``T1_brain_to_MNI`` is in the paper: ``head_scale`` and the affine part of the random
        warp are normalised away (see :func:`sample_warp`, Notes); only the non-affine warp and
        the regional morphology stay in the image. False renders the subject's native geometry.
    """

    head_scale: float = 1.0
    region_log_volume: Mapping[str, float] = field(default_factory=dict)
    region_stretch: Mapping[str, float] = field(default_factory=dict)
    age_years: float = 62.5
    sex: int = 0
    warp_amplitude_mm: float = 2.0
    bias_amplitude: float = 0.1
    noise_sd: float = 0.03
    intensity_scale: float = 1.0
    aging: AgingModel = field(default_factory=AgingModel)
    linear_registration: bool = False

    def __post_init__(self) -> None:
        _check_range("head_scale", self.head_scale, 0.75, 1.2, "1.0 is the template head size")
        _check_range("age_years", self.age_years, 0.0, 120.0, "give the age in years")
        if self.sex not in (0, 1):
            raise UdipConfigError(f"Morphology.sex must be 0 (female) or 1 (male), got {self.sex!r}")
        if not isinstance(self.linear_registration, bool):
            raise UdipConfigError(
                f"Morphology.linear_registration must be True or False, got {self.linear_registration!r}"
            )
        _check_range("warp_amplitude_mm", self.warp_amplitude_mm, 0.0, 8.0, "use 0 for no random warp")
        _check_range("bias_amplitude", self.bias_amplitude, 0.0, 0.5, "use 0 for a flat bias field")
        _check_range("noise_sd", self.noise_sd, 0.0, 0.5, "use 0 for a noise-free scan")
        _check_range("intensity_scale", self.intensity_scale, 1e-3, 1e3, "use 1.0 for white matter at ~700")
        for name, bound in (("region_log_volume", _MAX_ABS_LOG_VOLUME), ("region_stretch", _MAX_ABS_STRETCH)):
            object.__setattr__(
                self, name, _checked_region_map(f"Morphology.{name}", getattr(self, name), bound)
            )
        for region, effect in self.effective_region_log_volume().items():
            if not _MIN_EFFECTIVE_LOG_VOLUME <= effect <= _MAX_EFFECTIVE_LOG_VOLUME:
                raise UdipConfigError(
                    f"Morphology.region_log_volume[{region!r}] plus ageing (age {self.age_years}, sex "
                    f"{self.sex}) is {effect:.3f}, expected in [{_MIN_EFFECTIVE_LOG_VOLUME}, "
                    f"{_MAX_EFFECTIVE_LOG_VOLUME}]; plant a smaller effect for this region"
                )

    def effective_region_log_volume(self) -> dict[str, float]:
        """Planted log-volume changes plus ageing, per region (only non-zero entries)."""
        total = dict(self.region_log_volume)
        for region, effect in self.aging.region_log_volume(self.age_years, self.sex).items():
            total[region] = total.get(region, 0.0) + effect
        return {region: effect for region, effect in total.items() if effect != 0.0}


def _check_range(name: str, value: float, lo: float, hi: float, fix: str) -> None:
    """Raise UdipConfigError unless ``lo <= value <= hi`` (and finite)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
        raise UdipConfigError(f"Morphology.{name} must be in [{lo}, {hi}], got {value!r}; {fix}")


def _checked_region_map(name: str, values: Mapping[str, float], bound: float) -> Mapping[str, float]:
    """Validate a region -> value mapping; return a read-only float copy."""
    out = {}
    for region, value in dict(values).items():
        if region not in REGIONS:
            raise UdipConfigError(f"{name} has unknown region {region!r}; expected one of {sorted(REGIONS)}")
        if not (isinstance(value, int | float) and math.isfinite(value) and abs(value) <= bound):
            raise UdipConfigError(
                f"{name}[{region!r}] must be a number in [-{bound}, {bound}], got {value!r}; "
                "plant a smaller effect"
            )
        out[region] = float(value)
    return MappingProxyType(out)


@dataclass(frozen=True, eq=False)
class Warp:
    """A subject's pull-back map: for each output voxel, the template voxel it shows.

    Attributes
    ----------
    grid : Grid
        Output grid (the anatomy's grid).
    box : tuple of slice
        Output sub-block (bx, by, bz) that can hold brain; every voxel outside it is background.
    coords : ndarray of float32, shape (3, bx, by, bz)
        Template voxel indices (fractional) sampled by each output voxel of ``box``.
    head_scale : float
        The global scale applied.
    region_log_volume : Mapping[str, float]
        Effective log-volume change per region (planted plus ageing): the ground truth.
    region_stretch : Mapping[str, float]
        Log stretch per region along its main axis.
    displacement_rms_mm : float
        RMS of the random warp's displacement over the grid (mm).
    axis_min, axis_max : tuple of 3 ndarray
        ``axis_min[d][i]`` is the smallest ``coords[d]`` over the slab of ``box`` at index ``i``
        along axis ``d`` (likewise the largest); they bound which output voxels can reach a
        template box (see :meth:`sub_box`).
    """

    grid: Grid
    box: tuple[slice, slice, slice]
    coords: np.ndarray
    head_scale: float
    region_log_volume: Mapping[str, float]
    region_stretch: Mapping[str, float]
    displacement_rms_mm: float
    axis_min: tuple[np.ndarray, np.ndarray, np.ndarray]
    axis_max: tuple[np.ndarray, np.ndarray, np.ndarray]

    def sub_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice]:
        """Slices of ``coords`` (relative to ``box``) holding every voxel that samples [lo, hi].

        ``lo``, ``hi`` (3,) are inclusive template-voxel bounds; an empty slice means none does.
        """
        out = []
        for d in range(3):
            ok = np.nonzero((self.axis_max[d] >= lo[d]) & (self.axis_min[d] <= hi[d]))[0]
            out.append(slice(int(ok[0]), int(ok[-1]) + 1) if ok.size else slice(0, 0))
        return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class _RegionPart:
    """One hemisphere of a region, with its smooth weight (see :func:`_region_parts`).

    ``centre`` (3,) and ``axis`` (3,) are in template voxels; ``weight`` is a float32 array whose
    voxel (0, 0, 0) is template voxel ``lo`` (3,); weight is 1 on the part and 0 at its border.
    """

    region: str
    side: str
    centre: np.ndarray
    axis: np.ndarray
    lo: np.ndarray
    weight: np.ndarray


def sample_warp(anatomy: Anatomy, morph: Morphology, rng: np.random.Generator) -> Warp:
    """Draw the pull-back map of one subject.

    Parameters
    ----------
    anatomy : Anatomy
        Template anatomy (from :func:`udip_assets.imaging.anatomy.load_anatomy`).
    morph : Morphology
        The subject's parameters.
    rng : numpy.random.Generator
        Source of the random warp; always consumes the same number of draws.

    Returns
    -------
    Warp
        Sampling coordinates on the output sub-block that can hold brain.

    Notes
    -----
    For an output voxel x the template point sampled is

        phi(x) = y + sum_p w_p(q_p) (q_p - y) + u(x),   y = c0 + (x - c0) / head_scale,

    with c0 the brain centroid, u a smooth random displacement (DCT-II cosine modes 0..2 per axis,
    coefficients N(0, 1) / (1 + a + b + c), scaled to the requested RMS), and one term per region
    part p with a non-zero effect: q_p = c_p + (s_p F_p)^-1 (y - c_p) its pre-image of y and w_p
    its weight (see :func:`_add_part_displacement`). Where w_p(q_p) = 1 the template is sampled at
    q_p exactly, so the part's volume becomes det(s_p F_p) = exp(effect) times larger, times
    ``head_scale**3`` and the random warp's Jacobian. The part terms are evaluated at y, not
    composed, so each is an affine resampling of a precomputed weight (fast); where two parts'
    tapers overlap their displacements add.

    With ``morph.linear_registration`` the scan is modelled as linearly registered to the
    template: head_scale is taken as 1 (a 12-dof registration scales the head to the template),
    and the least-squares affine fit of u over the template brain (per component, on [1, x, y, z])
    is subtracted from u, so translation, scaling and shear of the random warp are gone and only
    its non-affine part (natural anatomical variation that a linear registration leaves) is
    rendered. The planted regional terms are local and stay.
    """
    grid = anatomy.grid
    effects = morph.effective_region_log_volume()
    centre = _brain_centre(anatomy)
    head_scale = 1.0 if morph.linear_registration else morph.head_scale
    coefs = _random_modes(rng, morph.warp_amplitude_mm / grid.voxel_mm, n_components=3)
    full = tuple(slice(0, n) for n in grid.shape)
    fields = [_cosine_field(coefs[d], grid, full) if np.any(coefs[d]) else None for d in range(3)]
    if morph.linear_registration:
        fields = [None if f is None else _remove_affine(f, coefs[d], anatomy) for d, f in enumerate(fields)]
    umax = np.array([0.0 if f is None else float(np.abs(f).max()) for f in fields])  # (3,) voxels
    parts = [
        (part, _local_inverse(part, effects.get(region, 0.0), morph.region_stretch.get(region, 0.0)))
        for region in sorted(set(effects) | set(morph.region_stretch))
        for part in _region_parts(anatomy, region)
    ]
    lo, hi = _brain_box(anatomy)
    for part, inv_map in parts:
        plo, phi = _forward_box(part, inv_map)
        lo, hi = np.minimum(lo, plo), np.maximum(hi, phi)
    box = _output_box(full, lo, hi, centre, head_scale, umax)  # type: ignore[arg-type]
    coords = _scaled_coords(box, centre, head_scale)
    for part, inv_map in parts:
        _add_part_displacement(coords, box, part, inv_map, centre, head_scale)
    for d in range(3):
        if fields[d] is not None:
            coords[d] += fields[d][box]
    coords.setflags(write=False)
    axis_min, axis_max = _axis_bounds(coords)
    if morph.linear_registration:
        rms = math.sqrt(sum(float(np.mean(np.square(f, dtype=np.float64))) for f in fields if f is not None))
    else:
        rms = math.sqrt(float((coefs**2 * _mode_power()).sum()))
    return Warp(
        grid=grid, box=box, coords=coords, head_scale=head_scale,
        region_log_volume=MappingProxyType(effects), region_stretch=morph.region_stretch,
        displacement_rms_mm=rms * grid.voxel_mm, axis_min=axis_min, axis_max=axis_max,
    )  # fmt: skip


def _remove_affine(field_vox: np.ndarray, coefs: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """``field_vox`` (X, Y, Z), the cosine field of ``coefs`` (K, K, K), minus its affine fit over the brain.

    Notes
    -----
    A 12-dof linear registration finds the affine map that best aligns the subject with the
    template; the residual of one displacement component after that is its part orthogonal to
    span{1, x, y, z} over the template brain (least squares). The fit is linear in the mode
    coefficients, so each mode's fit is computed once per anatomy (:func:`_mode_affine_fits`) and
    the field's fit is their coefficient-weighted sum: no pass over the brain voxels per subject.
    """
    a = np.tensordot(coefs, _mode_affine_fits(anatomy), axes=3)  # (4,) intercept and slopes, voxels
    axes = [np.arange(n, dtype=np.float32) for n in field_vox.shape]
    fit = (np.float32(a[1]) * axes[0])[:, None, None] + (np.float32(a[2]) * axes[1])[None, :, None] \
        + (np.float32(a[3]) * axes[2])[None, None, :]
    fit += np.float32(a[0])
    return field_vox - fit


@functools.lru_cache(maxsize=8)
def _mode_affine_fits(anatomy: Anatomy) -> np.ndarray:
    """(K, K, K, 4): least-squares [1, x, y, z] fit over the brain voxels of each single cosine mode."""
    index = np.flatnonzero(anatomy.brain_mask.reshape(-1))
    design = np.column_stack([np.ones(index.size), *np.unravel_index(index, anatomy.brain_mask.shape)])
    solve = np.linalg.solve(design.T @ design, design.T)  # (4, n_brain)
    full = tuple(slice(0, n) for n in anatomy.grid.shape)
    out = np.zeros((_N_MODES, _N_MODES, _N_MODES, 4))
    for mode in np.ndindex(_N_MODES, _N_MODES, _N_MODES):
        unit = np.zeros((_N_MODES,) * 3)
        unit[mode] = 1.0
        out[mode] = solve @ _cosine_field(unit, anatomy.grid, full).reshape(-1)[index].astype(np.float64)
    out.setflags(write=False)
    return out


def min_jacobian(warp: Warp) -> float:
    """Smallest Jacobian determinant of the pull-back map over ``warp.box``.

    The map folds (is not one-to-one) where the determinant is <= 0; 1 is the identity, s^-3 a
    scale by s. Central differences of ``warp.coords``; a diagnostic, not used when rendering.
    """
    g = [np.gradient(warp.coords[d]) for d in range(3)]  # g[d][e] = d coords_d / d x_e, (bx, by, bz)
    det = (
        g[0][0] * (g[1][1] * g[2][2] - g[1][2] * g[2][1])
        - g[0][1] * (g[1][0] * g[2][2] - g[1][2] * g[2][0])
        + g[0][2] * (g[1][0] * g[2][1] - g[1][1] * g[2][0])
    )
    return float(det.min())


def _axis_bounds(coords: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Per axis d, min and max of ``coords[d]`` over each slab along d: 3 + 3 arrays (b_d,)."""
    reduce_over = ((1, 2), (0, 2), (0, 1))
    return (
        tuple(coords[d].min(axis=reduce_over[d]) for d in range(3)),
        tuple(coords[d].max(axis=reduce_over[d]) for d in range(3)),
    )


def warp_image(image: np.ndarray, warp: Warp, order: int) -> np.ndarray:
    """Pull a template-space image through ``warp``.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Image on the warp's grid (template space).
    warp : Warp
        From :func:`sample_warp`.
    order : int
        0 nearest neighbour (labels, masks; keeps the dtype), 1 trilinear (float32).

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Subject-space image; 0 outside ``warp.box`` and where the map leaves the template grid.
    """
    if tuple(image.shape) != warp.grid.shape:
        raise UdipConfigError(
            f"image shape {tuple(image.shape)} does not match the warp's grid {warp.grid.shape}; "
            "warp images of the anatomy the warp was sampled on"
        )
    dtype = np.float32 if order == 1 else image.dtype
    out = np.zeros(warp.grid.shape, dtype=dtype)
    out[warp.box] = ndi.map_coordinates(
        image, warp.coords, order=order, output=dtype, mode="constant", cval=0, prefilter=False
    )
    return out


def warp_labels(anatomy: Anatomy, warp: Warp) -> np.ndarray:
    """The subject's region-label image: ``anatomy.region_labels`` pulled through ``warp``.

    Parameters
    ----------
    anatomy : Anatomy
        The anatomy ``warp`` was sampled on.
    warp : Warp
        From :func:`sample_warp`.

    Returns
    -------
    ndarray of int16, shape (X, Y, Z)
        AAL3 labels, with the lateral ventricles as ``anatomy.VENTRICLES_LABEL``; measure a region
        with :func:`udip_assets.imaging.anatomy.region_volume_mm3`.

    Notes
    -----
    Nearest-neighbour pulling cannot see a sub-voxel move of a boundary: under a 5 % linear
    scale no voxel within 10 voxels of the centre changes label, so a small region at 2 mm would
    not change volume at all. Instead each region's indicator is pulled trilinearly (a partial
    volume whose sum over voxels follows the region's true volume to first order, exactly for
    shifts) and turned into labels by ordered dithering: voxel x goes to region r when
    ``cum_before(x) <= u(x) < cum_before(x) + score_r(x)``, with ``u`` a fixed low-discrepancy
    field in [0, 1) and ``cum_before`` the scores of the regions processed before r (the
    indicators are disjoint, so scores sum to <= 1). Each region's expected voxel count is thus
    its partial-volume sum; a voxel with score 1 is always kept, so the identity warp returns the
    template labels. A voxel that joins region r takes the label of r's nearest template voxel;
    voxels that join no region take the nearest-neighbour label of the template with every region
    voxel replaced by its nearest non-region label.
    """
    background, layers = _label_layers(anatomy)
    labels = ndi.map_coordinates(background, warp.coords, order=0, output=np.int16, mode="constant", cval=0)
    cum = np.zeros(labels.shape, dtype=np.float32)  # scores of regions already placed, (bx, by, bz)
    for lo, indicator, filled in layers:
        pulled = _pull_indicator(warp, lo, indicator)
        if pulled is None:
            continue
        sub, local, hit, score = pulled
        cum_block, label_block = cum[sub].reshape(-1), labels[sub].copy().reshape(-1)
        before = cum_block[hit]
        u = _dither(warp.box, sub)[hit]
        inside = hit[(before <= u) & (u < before + score)]
        label_block[inside] = ndi.map_coordinates(filled, local[:, inside], order=0, output=np.int16)
        cum_block[hit] += score
        cum[sub], labels[sub] = cum_block.reshape(cum[sub].shape), label_block.reshape(cum[sub].shape)
    out = np.zeros(warp.grid.shape, dtype=np.int16)
    out[warp.box] = labels
    return out


def partial_volumes_mm3(anatomy: Anatomy, warp: Warp) -> dict[str, float]:
    """Each region's volume in the subject as a partial-volume sum, in mm^3.

    Parameters
    ----------
    anatomy : Anatomy
        The anatomy ``warp`` was sampled on.
    warp : Warp
        From :func:`sample_warp`.

    Returns
    -------
    dict of str to float
        For every region of REGIONS, the sum over output voxels of its trilinearly pulled
        indicator times the voxel volume. Equals the template volume under the identity warp and,
        unlike a label count, has no dithering noise: the best measure of a small region's change.
    """
    return {name: volume for name, (volume, _) in measure_regions(anatomy, warp).items()}


def measure_regions(anatomy: Anatomy, warp: Warp) -> dict[str, tuple[float, float]]:
    """Each region's volume (mm^3) and shape stretch as they are in the subject's image.

    Parameters
    ----------
    anatomy : Anatomy
        The anatomy ``warp`` was sampled on.
    warp : Warp
        From :func:`sample_warp`.

    Returns
    -------
    dict of str to (float, float)
        Per region of REGIONS: the partial-volume sum of :func:`partial_volumes_mm3`, and the
        measured log stretch along the region's main axis (0 for the template's shape).

    Notes
    -----
    The stretch of one hemisphere's part is measured from the weighted second moments of its
    pulled indicator in output voxels: with sd_a the RMS extent along the part's template main
    axis and sd_1, sd_2 along the two other template principal axes, the shape index
    ``(2/3) (log sd_a - (log sd_1 + log sd_2) / 2)`` minus the template's own index. A
    volume-preserving stretch v (axis x e^v, the others x e^(-v/2)) measures v; an isotropic
    volume change measures 0. The region's value is the mean over its hemispheres.
    """
    _, layers = _label_layers(anatomy)
    out = {}
    for name, (lo, indicator, _) in zip(REGIONS, layers, strict=True):
        pulled = _pull_indicator(warp, lo, indicator)
        if pulled is None:
            out[name] = (0.0, 0.0)
            continue
        sub, _, hit, score = pulled
        volume = float(score.sum(dtype=np.float64)) * warp.grid.voxel_mm**3
        out[name] = (volume, _measured_stretch(anatomy, warp, name, sub, hit, score))
    return out


def _measured_stretch(anatomy: Anatomy, warp: Warp, region: str, sub: tuple[slice, slice, slice],
                      hit: np.ndarray, score: np.ndarray) -> float:
    """Mean over hemispheres of the measured log stretch (see :func:`measure_regions`, Notes)."""
    shape = tuple(s.stop - s.start for s in sub)
    pos = np.stack(np.unravel_index(hit, shape)).astype(np.float64)  # (3, m) relative to sub
    pos += np.array([b.start + s.start for b, s in zip(warp.box, sub, strict=True)], float)[:, None]
    x_world = anatomy.grid.affine[0, 0] * pos[0] + anatomy.grid.affine[0, 3]
    values = []
    for part in _region_parts(anatomy, region):
        side = x_world < 0 if part.side == "left" else x_world >= 0
        values.append(_shape_index(pos[:, side], score[side].astype(np.float64), part) - _template_index(anatomy, part))
    return float(np.mean(values)) if values else 0.0


def _shape_index(pos: np.ndarray, weight: np.ndarray, part: _RegionPart) -> float:
    """(2/3)(log sd along part.axis - mean log sd along the two other principal axes); pos (3, m)."""
    if weight.sum() <= 0:
        return 0.0
    centred = pos - (pos @ weight / weight.sum())[:, None]
    cov = (centred * weight) @ centred.T / weight.sum()  # (3, 3)
    axes = _part_axes(part)  # (3, 3) columns: main axis, then the two others
    sd = np.sqrt(np.maximum(np.einsum("ia,ij,ja->a", axes, cov, axes), 1e-12))
    return float(2.0 / 3.0 * (np.log(sd[0]) - 0.5 * (np.log(sd[1]) + np.log(sd[2]))))


def _part_axes(part: _RegionPart) -> np.ndarray:
    """Orthonormal (3, 3): the part's main axis and two unit vectors perpendicular to it."""
    basis, _ = np.linalg.qr(np.column_stack([part.axis, np.eye(3)])[:, :3])
    return basis


@functools.lru_cache(maxsize=64)
def _template_index(anatomy: Anatomy, part: _RegionPart) -> float:
    """The shape index of the part in the template itself (its own mask voxels)."""
    mask = anatomy.region_mask(part.region)
    x_world = anatomy.grid.affine[0, 0] * np.arange(anatomy.grid.shape[0]) + anatomy.grid.affine[0, 3]
    in_side = x_world < 0 if part.side == "left" else x_world >= 0
    pos = np.argwhere(mask & in_side[:, None, None]).T.astype(np.float64)
    return _shape_index(pos, np.ones(pos.shape[1]), part)


def _pull_indicator(
    warp: Warp, lo: np.ndarray, indicator: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Trilinear pull of a local indicator (box corner ``lo``) through ``warp``, or None if unreached.

    Returns ``sub`` (slices of ``warp.coords``), ``local`` (3, n) indicator-array coordinates of
    the n voxels of ``sub``, ``hit`` (m,) the flat indices of those inside the indicator box, and
    ``score`` (m,) float32 the pulled indicator there.
    """
    sub = warp.sub_box(lo, lo + np.array(indicator.shape) - 1)
    if any(sl.stop <= sl.start for sl in sub):
        return None
    local = warp.coords[(slice(None), *sub)].reshape(3, -1) - lo.astype(np.float32)[:, None]  # (3, n)
    upper = np.array(indicator.shape, dtype=np.float32) - 1
    inside = (local[0] >= 0) & (local[0] <= upper[0])
    for d in (1, 2):
        inside &= (local[d] >= 0) & (local[d] <= upper[d])
    hit = np.flatnonzero(inside)
    score = ndi.map_coordinates(indicator, local[:, hit], order=1, output=np.float32, prefilter=False)
    return sub, local, hit, score


def _dither(box: tuple[slice, slice, slice], sub: tuple[slice, slice, slice]) -> np.ndarray:
    """Ordered-dither thresholds in [0, 1) for the voxels of ``sub`` (relative to ``box``), flat.

    Notes
    -----
    u(i, j, k) = frac(0.5 + i a1 + j a2 + k a3) in absolute grid indices, with a = (1/p, 1/p^2,
    1/p^3) and p = 1.3247... the plastic number: the R3 low-discrepancy sequence, whose values over
    any block of neighbouring voxels are spread evenly in [0, 1), so counts follow partial volumes
    closely. Deterministic: no random draws.
    """
    p = 1.324717957244746
    axes = [
        (np.arange(b.start + s.start, b.start + s.stop) / p ** (d + 1)) % 1.0
        for d, (b, s) in enumerate(zip(box, sub, strict=True))
    ]
    u = 0.5 + axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    return (u % 1.0).astype(np.float32).reshape(-1)


def warp_mask(anatomy: Anatomy, warp: Warp, mask: np.ndarray | None = None) -> np.ndarray:
    """A template mask (default: the brain mask) pulled through ``warp``; bool (X, Y, Z).

    Notes
    -----
    A voxel is in the warped mask when the trilinear pull of the mask is >= 0.5, which tracks
    sub-voxel changes of volume (see :func:`warp_labels`); :func:`render_t1` uses the same rule.
    """
    source = _brain_fraction(anatomy) if mask is None else np.asarray(mask, dtype=np.float32)
    return warp_image(source, warp, order=1) >= 0.5


def render_t1(anatomy: Anatomy, warp: Warp, morph: Morphology, rng: np.random.Generator) -> np.ndarray:
    """Image the warped template as a brain-extracted T1 scan.

    Parameters
    ----------
    anatomy : Anatomy
        The anatomy ``warp`` was sampled on.
    warp : Warp
        From :func:`sample_warp` for this subject.
    morph : Morphology
        The subject's parameters (age for grey-matter contrast, bias, noise, gain).
    rng : numpy.random.Generator
        Source of the bias field and the noise.

    Returns
    -------
    ndarray of float32, shape grid.shape
        Scan in arbitrary units: white matter about ``700 * intensity_scale``, CSF about a third
        of that; exactly 0 outside the warped brain mask, >= 0 inside.

    Notes
    -----
    Intensity = trilinear pull of the template T1 (with age-dependent grey-matter contrast loss)
    x exp(smooth log-bias) x gain, plus N(0, (noise_sd * 700 * gain)^2) noise inside the brain.
    The brain is where the trilinear pull of the template mask is >= 0.5, as in
    :func:`warp_mask`. The bias field uses cosine modes 0..2 per axis like the random warp.
    """
    grid = anatomy.grid
    loss = morph.aging.gm_contrast_loss_per_year * morph.aging.years(morph.age_years)
    source = anatomy.t1 if loss == 0 else anatomy.t1 - np.float32(loss) * _gm_aging_map(anatomy)
    bias_coefs = _random_modes(rng, morph.bias_amplitude, n_components=1)
    box_shape = warp.coords.shape[1:]
    values, inside = pull_trilinear(np.stack([source, _brain_fraction(anatomy)]), warp.coords)
    inside = inside >= 0.5
    gain = np.float32(WM_INTENSITY * morph.intensity_scale)
    values *= np.exp(_cosine_field(bias_coefs[0], grid, warp.box)) * gain
    noise = rng.standard_normal(int(inside.sum()), dtype=np.float32) * np.float32(morph.noise_sd) * gain
    values[inside] = np.maximum(values[inside] + noise, 0.0)
    values[~inside] = 0.0
    out = np.zeros(grid.shape, dtype=np.float32)
    out[warp.box] = values.reshape(box_shape)
    return out


def pull_trilinear(volumes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of several volumes at fractional voxel coordinates, 0 outside the grid.

    Parameters
    ----------
    volumes : ndarray of float32, shape (C, X, Y, Z)
        Volumes on one grid, pulled together.
    coords : ndarray of float32, shape (3, ...)
        Voxel coordinates (x, y, z) of each sample.

    Returns
    -------
    ndarray of float32, shape (C, ...)

    Notes
    -----
    The same interpolation as ``scipy.ndimage.map_coordinates(order=1, mode='constant', cval=0,
    prefilter=False)`` (corners beyond the grid count as 0), through torch's ``grid_sample`` with
    ``align_corners=True``: all channels in one pass, ~2.5x faster on these volumes. The voxel to
    [-1, 1] normalisation leaves differences of ~1e-6 relative.
    """
    import torch

    n_x, n_y, n_z = volumes.shape[1:]
    c = torch.from_numpy(np.array(coords, dtype=np.float32)).reshape(3, -1)  # a copy: coords may be read-only
    scale = [2.0 / max(n - 1, 1) for n in (n_x, n_y, n_z)]
    grid = torch.stack([c[2] * scale[2] - 1, c[1] * scale[1] - 1, c[0] * scale[0] - 1], dim=-1)  # (n, 3) = (z, y, x)
    volumes = np.ascontiguousarray(volumes if volumes.flags.writeable else volumes.copy(), dtype=np.float32)
    source = torch.from_numpy(volumes)[None]  # (1, C, X, Y, Z)
    out = torch.nn.functional.grid_sample(source, grid[None, None, None], mode="bilinear", padding_mode="zeros",
                                          align_corners=True)  # (1, C, 1, 1, n)
    return out.reshape(volumes.shape[0], *coords.shape[1:]).numpy()


def _mode_power() -> np.ndarray:
    """Mean square over the grid of each separable cosine mode (a, b, c): (K, K, K) float64."""
    per_axis = np.where(np.arange(_N_MODES) == 0, 1.0, 0.5)
    return per_axis[:, None, None] * per_axis[None, :, None] * per_axis[None, None, :]


def _random_modes(rng: np.random.Generator, rms: float, n_components: int) -> np.ndarray:
    """Random cosine-mode coefficients (n_components, K, K, K) whose field has RMS ``rms``.

    Notes
    -----
    Coefficients are N(0, 1) / (1 + a + b + c) (lower frequencies dominate), with the constant mode
    set to 0 (no translation, no global gain), then scaled so that the mean over the grid of the
    squared field, summed over components, is ``rms**2`` (exact for DCT-II modes).
    """
    k = np.arange(_N_MODES)
    decay = 1.0 / (1.0 + k[:, None, None] + k[None, :, None] + k[None, None, :])
    coefs = rng.standard_normal((n_components, _N_MODES, _N_MODES, _N_MODES)) * decay
    coefs[:, 0, 0, 0] = 0.0
    power = float((coefs**2 * _mode_power()).sum())
    return coefs * (rms / math.sqrt(power)) if power > 0 else coefs


def _cosine_field(coefs: np.ndarray, grid: Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Evaluate one field sum_abc C[a,b,c] cos(pi a (i+.5)/X) cos(pi b (j+.5)/Y) cos(pi c (k+.5)/Z).

    Returns float32 of the shape of ``box`` (bx, by, bz); contracted one axis at a time.
    """
    bx, by, bz = (
        np.cos(np.pi * np.arange(_N_MODES)[:, None] * (np.arange(n)[sl][None, :] + 0.5) / n).astype(
            np.float32
        )
        for n, sl in zip(grid.shape, box, strict=True)
    )  # each (K, b_d)
    # small contractions by broadcasting (no BLAS threads): (K, K, bz) -> (K, by, bz) -> (bx, by, bz)
    inner = (coefs.astype(np.float32)[:, :, :, None] * bz[None, None, :, :]).sum(axis=2)
    inner = (inner[:, :, None, :] * by[None, :, :, None]).sum(axis=1)
    field = bx[0][:, None, None] * inner[0][None]
    for a in range(1, _N_MODES):
        field += bx[a][:, None, None] * inner[a][None]
    return field


@functools.lru_cache(maxsize=8)
def _brain_centre(anatomy: Anatomy) -> np.ndarray:
    """Centroid of the brain mask in template voxels, (3,) float64."""
    return np.asarray(ndi.center_of_mass(anatomy.brain_mask))


@functools.lru_cache(maxsize=8)
def _brain_box(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel bounds (lo, hi), each (3,), of the brain mask."""
    idx = np.nonzero(anatomy.brain_mask)
    return np.array([i.min() for i in idx], float), np.array([i.max() for i in idx], float)


@functools.lru_cache(maxsize=8)
def _brain_fraction(anatomy: Anatomy) -> np.ndarray:
    """The brain mask as float32 (X, Y, Z), for trilinear pulling."""
    out = anatomy.brain_mask.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _label_layers(
    anatomy: Anatomy,
) -> tuple[np.ndarray, tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]]:
    """What :func:`warp_labels` pulls: a background label image and one layer per region.

    Returns
    -------
    background : ndarray of int16, shape (X, Y, Z)
        ``region_labels`` with every region voxel replaced by its nearest non-region label.
    layers : tuple of (lo, indicator, filled)
        Per region of REGIONS: ``lo`` (3,) int template voxel of the local box's corner,
        ``indicator`` float32 (bx, by, bz) 1 on the region, ``filled`` int16 (bx, by, bz) the label
        of the nearest region voxel. The box is the region's bounding box plus 2 voxels.
    """
    labels = anatomy.region_labels
    region_ids = [i for r in REGIONS.values() for i in r.labels]
    in_any = np.isin(labels, region_ids)
    _, nearest = ndi.distance_transform_edt(in_any, return_indices=True)
    background = labels[tuple(nearest)].astype(np.int16)
    layers = []
    for name in REGIONS:
        mask = anatomy.region_mask(name)
        idx = np.argwhere(mask)
        lo = np.maximum(idx.min(axis=0) - 2, 0)
        hi = np.minimum(idx.max(axis=0) + 3, anatomy.grid.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        _, nearest = ndi.distance_transform_edt(~mask[box], return_indices=True)
        layers.append((lo, mask[box].astype(np.float32), labels[box][tuple(nearest)].astype(np.int16)))
    for arr in (background, *(a for layer in layers for a in layer)):
        arr.setflags(write=False)
    return background, tuple(layers)


@functools.lru_cache(maxsize=8)
def _gm_aging_map(anatomy: Anatomy) -> np.ndarray:
    """Per-year-unit intensity loss of grey matter, float32 (X, Y, Z), 0 outside the brain.

    Notes
    -----
    gm * (t1 - t1_csf)+ * (0.5 + 0.5 * csf smoothed with a 1-voxel Gaussian): grey matter moves
    towards CSF intensity, twice as fast where it borders CSF (the cortical surface), as partial
    volume of a thinning cortex would.
    """
    t1_csf = float(np.median(anatomy.t1[anatomy.csf > 0.9])) if (anatomy.csf > 0.9).any() else 0.0
    near_csf = ndi.gaussian_filter(anatomy.csf, 1.0)
    out = anatomy.gm * np.maximum(anatomy.t1 - t1_csf, 0) * (0.5 + 0.5 * near_csf)
    out = out.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _region_parts(anatomy: Anatomy, region: str) -> tuple[_RegionPart, ...]:
    """The region split into hemispheres (world x < 0 left, >= 0 right), each with its weight.

    Notes
    -----
    The weight of a part is 1 on the part and within one voxel of it, then falls as (1 - t)^2,
    t = distance / taper, to 0 over a taper of max(5 mm, 0.45 r_max), r_max the largest distance
    of a part voxel from the part's centroid. The weight is steepest at the region's edge, so the
    tissue just outside is pushed and compressed (a growing region squeezes its neighbours)
    rather than dragged along at the region's own scale, as a flat-topped taper would do.
    Scaling the taper with the part's size bounds the slope r_max / taper, which keeps the map
    one-to-one: along a ray the pull-back's derivative 1 + (1/s - 1)(w + r w') is smallest at the
    edge, 1 + (1/s - 1)(1 - 2 r / taper) >= 1 - 3.44 (1/s - 1) > 0 for s > 0.775, i.e. log-volume
    changes above -0.76 for one part alone; as neighbouring parts' displacements add, effects are
    bounded tighter (planted |e| <= 0.4, with ageing in [-0.6, 0.8], log stretch |v| <= 0.1;
    :func:`min_jacobian` checks a warp). The main axis is the
    first principal axis of the part's voxels.
    """
    mask = anatomy.region_mask(region)
    x_world = anatomy.grid.affine[0, 0] * np.arange(anatomy.grid.shape[0]) + anatomy.grid.affine[0, 3]
    parts = []
    for side, in_side in (("left", x_world < 0), ("right", x_world >= 0)):
        part_mask = mask & in_side[:, None, None]
        if part_mask.sum() >= 4:
            parts.append(_make_part(anatomy.grid, region, side, part_mask))
    return tuple(parts)


def _make_part(grid: Grid, region: str, side: str, part_mask: np.ndarray) -> _RegionPart:
    """Centroid, main axis and tapered weight of one part (see :func:`_region_parts`)."""
    idx = np.argwhere(part_mask).astype(np.float64)  # (n, 3)
    centre = idx.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((idx - centre).T))
    r_max_mm = float(np.sqrt(((idx - centre) ** 2).sum(axis=1)).max()) * grid.voxel_mm
    taper_mm = max(5.0, 0.45 * r_max_mm)
    margin_mm = grid.voxel_mm
    pad = int(math.ceil((taper_mm + margin_mm) / grid.voxel_mm)) + 2
    lo = np.maximum(idx.min(axis=0).astype(int) - pad, 0)
    hi = np.minimum(idx.max(axis=0).astype(int) + pad + 1, grid.shape)
    local = part_mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    dist_mm = ndi.distance_transform_edt(~local, sampling=grid.voxel_mm)
    ramp = np.clip((dist_mm - margin_mm) / taper_mm, 0.0, 1.0)
    weight = ((1.0 - ramp) ** 2).astype(np.float32)
    weight.setflags(write=False)
    return _RegionPart(region, side, centre, vecs[:, -1], lo, weight)


def _local_inverse(part: _RegionPart, effect: float, stretch: float) -> np.ndarray:
    """(3, 3) inverse of the part's forward linear map s * F (see :func:`_apply_part`)."""
    s = math.exp(effect / 3.0)
    aat = np.outer(part.axis, part.axis)
    f_inv = math.exp(stretch / 2.0) * np.eye(3) + (math.exp(-stretch) - math.exp(stretch / 2.0)) * aat
    return f_inv / s


def _forward_box(part: _RegionPart, inv_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (lo, hi), each (3,), in template voxels of the part's weight box and its image.

    The image of the box under the forward map y = c + M^-1 (q - c) is bounded through the box's
    centre and half-extent: |M^-1| times the half-extent, per axis.
    """
    half = (np.array(part.weight.shape) - 1) / 2.0
    mid = part.lo + half
    fwd = np.linalg.inv(inv_map)
    moved_mid = part.centre + fwd @ (mid - part.centre)
    moved_half = np.abs(fwd) @ half
    return np.minimum(mid - half, moved_mid - moved_half), np.maximum(mid + half, moved_mid + moved_half)


def _output_box(
    bounds: tuple[slice, slice, slice],
    lo: np.ndarray,
    hi: np.ndarray,
    centre: np.ndarray,
    head_scale: float,
    umax: np.ndarray,
) -> tuple[slice, slice, slice]:
    """Output voxels, within ``bounds``, whose globally mapped position can fall in [lo, hi].

    ``lo``, ``hi`` (3,) are template voxels; the global map is y = c + (x - c) / head_scale + u(x)
    with |u_d| <= ``umax[d]`` voxels (umax (3,)), so x = c + head_scale (y - u - c). Returns
    absolute slices.
    """
    out_lo = np.floor(centre + head_scale * (lo - 1 - umax - centre)).astype(int)
    out_hi = np.ceil(centre + head_scale * (hi + 1 + umax - centre)).astype(int) + 1
    starts = np.array([s.start for s in bounds])
    stops = np.array([s.stop for s in bounds])
    out_lo = np.clip(out_lo, starts, stops)
    out_hi = np.clip(out_hi, out_lo, stops)
    return tuple(slice(int(a), int(b)) for a, b in zip(out_lo, out_hi, strict=True))  # type: ignore[return-value]


def _scaled_coords(box: tuple[slice, slice, slice], centre: np.ndarray, head_scale: float) -> np.ndarray:
    """y = c0 + (x - c0) / head_scale for the output voxels x of ``box``: (3, bx, by, bz) float32."""
    shape = tuple(s.stop - s.start for s in box)
    coords = np.empty((3, *shape), dtype=np.float32)
    for d, sl in enumerate(box):
        view = [None, None, None]
        view[d] = slice(None)
        coords[d] = (centre[d] + (np.arange(sl.start, sl.stop) - centre[d]) / head_scale)[tuple(view)]
    return coords


def _add_part_displacement(
    coords: np.ndarray,
    box: tuple[slice, slice, slice],
    part: _RegionPart,
    inv_map: np.ndarray,
    centre: np.ndarray,
    head_scale: float,
) -> None:
    """Add the part's displacement w(q) (q - y) to ``coords`` (3, bx, by, bz) in place.

    Notes
    -----
    For y = c0 + (x - c0) / head_scale the part's pre-image is q = c + M (y - c), with c the
    part's centroid and M = (s F)^-1 (s = exp(effect / 3), F the volume-preserving stretch along
    the main axis). Where q lies on the part (w = 1) the template is sampled at q exactly, so
    the part's output volume is det(s F) = exp(effect) times its input volume. Evaluating w at
    the pre-image rather than at y keeps that exact for any s; the taper blends into the
    identity. q is affine in the output voxel, so w(q) is one ``affine_transform`` of the
    precomputed weight over the part's output sub-box, and q - y = (M - I)(y - c) is a sum of
    three 1-D arrays.
    """
    plo, phi = _forward_box(part, inv_map)
    absolute = _output_box(box, plo, phi, centre, head_scale, np.zeros(3))
    shape = tuple(a.stop - a.start for a in absolute)
    if min(shape) <= 0:
        return
    x0 = np.array([a.start for a in absolute], dtype=np.float64)
    q0 = part.centre + inv_map @ (centre + (x0 - centre) / head_scale - part.centre)  # q at the corner
    matrix = inv_map / head_scale
    if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        matrix = np.diag(matrix)  # 1-D: scipy's faster zoom-shift path
    weight = ndi.affine_transform(
        part.weight, matrix, offset=q0 - part.lo, output_shape=shape,
        output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False,
    )  # fmt: skip
    rel = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(absolute, box, strict=True))
    y_rel = [
        centre[d] + (np.arange(absolute[d].start, absolute[d].stop) - centre[d]) / head_scale - part.centre[d]
        for d in range(3)
    ]  # y - c along each axis, 1-D
    jump = inv_map - np.eye(3)
    for i in range(3):
        disp = np.zeros(shape, dtype=np.float32)
        for j in range(3):
            if jump[i, j] != 0.0:
                view = [None, None, None]
                view[j] = slice(None)
                disp += (jump[i, j] * y_rel[j]).astype(np.float32)[tuple(view)]
        coords[(i, *rel)] += weight * disp
