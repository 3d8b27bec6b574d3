"""resample_voxels against scipy's affine_transform, on and off the voxel lattice."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from udip_assets.imaging.grids import resample_voxels


def _reference(src, vox_map, shape, order, dtype):
    return ndi.affine_transform(src, vox_map[:3, :3], offset=vox_map[:3, 3], output_shape=shape, output=dtype,
                                order=order, mode="constant", cval=0.0)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("steps, offset", [
    ((-1, 1, 1), (20, 2, -3)),    # the template onto the 1 mm grid: a flip and a shift, partly outside
    ((-2, 2, 2), (22, 1, 0)),     # onto the 2 mm grid: every second voxel
    ((1, 1, 1), (0, 0, 0)),       # identity
])
def test_on_the_lattice_it_is_exactly_the_interpolation(order, steps, offset):
    rng = np.random.default_rng(0)
    shape_in = (21, 17, 13)
    src = rng.normal(size=shape_in).astype(np.float32) if order else rng.integers(0, 9, shape_in).astype(np.int32)
    vox_map = np.eye(4)
    vox_map[:3, :3] = np.diag(steps)
    vox_map[:3, 3] = offset
    shape = (15, 12, 16)
    got = resample_voxels(src, vox_map, shape, order, dtype=src.dtype)
    want = _reference(src, vox_map, shape, order, src.dtype)
    assert got.dtype == want.dtype and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert (got == 0).any() and (got != 0).any()  # the case reaches outside the source and inside it


def test_off_the_lattice_it_interpolates():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(12, 11, 10)).astype(np.float32)
    vox_map = np.eye(4)
    vox_map[:3, :3] = [[0.9, 0.1, 0], [0, 1.1, 0], [0, 0, 1]]
    vox_map[:3, 3] = (0.5, -0.25, 1.5)
    got = resample_voxels(src, vox_map, (9, 9, 9), 1, dtype=np.float32)
    np.testing.assert_array_equal(got, _reference(src, vox_map, (9, 9, 9), 1, np.float32))
