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
