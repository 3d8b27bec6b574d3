"""Voxel grids of the FSL MNI152 space.

UK Biobank ships T1 scans linearly registered to FSL's MNI152 template: 182x218x182 voxels of 1 mm,
affine diag(-1, 1, 1) with the origin at (90, -126, -72) mm. The 2 mm grid (91x109x91) is FSL's
``MNI152_T1_2mm`` and serves the fast demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from udip_assets.errors import UdipConfigError


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (X, Y, Z) and the 4x4 voxel-to-world affine in mm."""

    name: str
    shape: tuple[int, int, int]
    voxel_mm: float
    origin_mm: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """The (4, 4) float64 affine mapping voxel indices (i, j, k, 1) to world mm."""
        aff = np.diag([-self.voxel_mm, self.voxel_mm, self.voxel_mm, 1.0])
        aff[:3, 3] = self.origin_mm
        return aff

    def padded_shape(self, patch: tuple[int, int, int]) -> tuple[int, int, int]:
        """Smallest shape >= ``shape`` divisible by ``patch`` on every axis (182x224x182 at 1 mm)."""
        return tuple(int(-(-s // p) * p) for s, p in zip(self.shape, patch, strict=True))  # type: ignore[return-value]


MNI152_1MM = Grid("MNI152_1mm", (182, 218, 182), 1.0, (90.0, -126.0, -72.0))
MNI152_2MM = Grid("MNI152_2mm", (91, 109, 91), 2.0, (90.0, -126.0, -72.0))

GRIDS = {1: MNI152_1MM, 2: MNI152_2MM}

# The paper's patch size (voxels); the model issue owns the model config, this is the preprocessing
# default so that padded volumes divide into whole patches (182x224x182 -> 13x14x13 patches).
PAPER_PATCH = (14, 16, 14)


def grid_for_resolution(resolution_mm: int) -> Grid:
    """The FSL MNI152 grid at ``resolution_mm`` (1 or 2)."""
    if resolution_mm not in GRIDS:
        raise UdipConfigError(
            f"resolution must be 1 or 2 (mm), got {resolution_mm!r}; "
            "use 1 for the UK Biobank grid (182x218x182) or 2 for the fast demo grid (91x109x91)"
        )
    return GRIDS[resolution_mm]


def grid_for_shape(shape: tuple[int, ...]) -> Grid | None:
    """The known grid with this shape, or None."""
    for grid in GRIDS.values():
        if tuple(shape) == grid.shape:
            return grid
    return None


def resample_voxels(src: np.ndarray, vox_map: np.ndarray, shape: tuple[int, int, int], order: int,
                    dtype=None) -> np.ndarray:
    """``src`` sampled at ``vox_map`` (target voxel -> source voxel, (4, 4)) on a target of ``shape``.

    Trilinear (``order=1``) or nearest-neighbour (``order=0``); 0 outside the source. When the map
    sends every target voxel to a source voxel centre (a diagonal integer matrix and an integer
    offset: the MNI152 templates onto the 1 and 2 mm grids), either order is exactly that voxel's
    value, so it is read by indexing instead of interpolating (~100x faster at 1 mm).
    """
    dtype = np.dtype(dtype if dtype is not None else src.dtype)
    matrix, offset = vox_map[:3, :3], vox_map[:3, 3]
    step = np.diag(matrix)
    on_lattice = (np.array_equal(matrix, np.diag(step)) and np.array_equal(step, np.rint(step))
                  and np.array_equal(offset, np.rint(offset)))
    if not on_lattice:
        from scipy import ndimage as ndi

        return ndi.affine_transform(src, matrix, offset=offset, output_shape=tuple(shape), output=dtype,
                                    order=order, mode="constant", cval=0.0)
    index = [np.rint(s * np.arange(n) + o).astype(np.intp) for s, o, n in zip(step, offset, shape, strict=True)]
    inside = [(i >= 0) & (i < m) for i, m in zip(index, src.shape, strict=True)]
    out = np.zeros(tuple(shape), dtype=dtype)
    out[np.ix_(*inside)] = src[np.ix_(*(i[k] for i, k in zip(index, inside, strict=True)))]
    return out
