"""Pad, mask and z-score T1 scans, and cache them for training.

The paper (Data Selection) pads the 182x218x182 scans to 182x224x182 so that they divide into
14x16x14 patches, masks the brain (removes the background) and z-transforms the intensities. This
module does exactly that, once per scan, and writes a cache file that training loads every epoch.

Notes
-----
Padding. Each axis is padded with zeros to the next multiple of the patch size; the pad is split
with ``floor(pad / 2)`` voxels before the data and the rest after (:func:`pad_offsets`). At 1 mm
only Y is padded: 218 -> 224, offset 3. At 2 mm: 91 -> 98 (offset 3), 109 -> 112 (offset 1).

Mask and z-score. The brain mask is ``intensity > 0`` of the brain-extracted scan. Inside it,
``z = (x - mean) / sd`` with the mean and the population sd (ddof 0, as ``scipy.stats.zscore``)
of the brain voxels accumulated in float64; outside it (and in the padding) ``z`` is exactly 0, so
the model's "non-zero patch" masks see only the brain.

Cache format. One uncompressed ``.npy`` per scan, C order, shape (X', Y', Z') padded, float16 by
default. Measured on this machine (2 cores, AMD EPYC; page cache warm; ``benchmarks/RESULTS.md``)
per scan, load to a float32 array:

============================  ==========  ===========
format                        2 mm (ms)   1 mm (ms)
============================  ==========  ===========
.npy float16 (this module)    0.21        1.9
.npy float16 mmap + astype    1.6         10.5
.npy float32                  0.16        2.3
.nii.gz via nibabel           6.0         52
============================  ==========  ===========

float16 halves the disk and page-cache footprint (15 MB vs 29 MB per 1 mm scan; 70 GB vs 133 GB
for the paper's 4,597 training scans) and loads as fast as float32 when the widening is done by
torch's vectorised cast (numpy's float16 cast is scalar and ~5x slower). The precision cost is
2**-11 relative (|error| < 0.004 for |z| < 8), far below the scan noise. C order is chosen so
that a loaded volume is contiguous (X, Y, Z) and the model's patchify needs no transposition; the
NIfTI -> C transposition is paid once here, fused with the z-score in cache-sized Y slabs.

Atomic writes. The cache is written to a temporary file in the destination folder and moved into
place with ``os.replace``; an interrupted run leaves either the old file or none, never half a
file. No ``fsync``: the cache can be rebuilt from the scans, and a cut-off write after a power
loss fails to load (``np.load`` checks the size) and is recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from udip_assets.atomic import atomic_path
from udip_assets.errors import ScanError, UdipConfigError
from udip_assets.imaging.grids import PAPER_PATCH, Grid
from udip_assets.imaging.nifti import brain_stats, raise_for_status, read_scan

CACHE_DTYPES = ("float16", "float32")
# Y planes per block of the fused z-score: 2 planes of 182x182 float32 (~260 kB) stay in L2.
_SLAB_PLANES = 2


@dataclass(frozen=True)
class PreprocessConfig:
    """How scans are turned into training volumes.

    Attributes
    ----------
    patch : tuple of 3 int
        Patch size in voxels (X, Y, Z); every axis is padded to a multiple of it. Paper: (14, 16, 14).
    cache_dtype : str
        'float16' (default; half the disk, same load speed) or 'float32'.
    """

    patch: tuple[int, int, int] = PAPER_PATCH
    cache_dtype: str = "float16"

    def __post_init__(self) -> None:
        patch = tuple(self.patch)
        if len(patch) != 3 or not all(isinstance(p, int | np.integer) and p > 0 for p in patch):
            raise UdipConfigError(
                f"PreprocessConfig.patch must be 3 positive integers (voxels), got {self.patch!r}; "
                "use the model's patch size, e.g. (14, 16, 14)")
        object.__setattr__(self, "patch", tuple(int(p) for p in patch))
        if self.cache_dtype not in CACHE_DTYPES:
            raise UdipConfigError(
                f"PreprocessConfig.cache_dtype must be one of {CACHE_DTYPES}, got {self.cache_dtype!r}; "
                "use 'float16' unless exact float32 volumes are needed")


@dataclass(frozen=True)
class PreprocessResult:
    """What :func:`preprocess_scan` wrote.

    Attributes
    ----------
    src_path, dst_path : str
        The scan read and the cache file written.
    shape : tuple of 3 int
        Padded shape of the cached volume (X', Y', Z').
    n_mask_voxels : int
        Brain voxels (intensity > 0).
    raw_mean, raw_sd : float
        Brain-voxel mean and population sd before normalisation (scanner units).
    seconds : float
        Wall time of the whole call; ``read_s``, ``normalise_s`` and ``write_s`` split it.
    """

    src_path: str
    dst_path: str
    shape: tuple[int, int, int]
    n_mask_voxels: int
    raw_mean: float
    raw_sd: float
    seconds: float
    read_s: float = 0.0
    normalise_s: float = 0.0
    write_s: float = 0.0


def padded_shape(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Smallest shape >= ``shape`` divisible by ``patch`` on every axis (182x218x182 -> 182x224x182)."""
    if len(shape) != len(patch):
        raise ValueError(f"shape {shape} and patch {patch} must have the same number of axes")
    return tuple(int(-(-s // p) * p) for s, p in zip(shape, patch, strict=True))


def pad_offsets(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Where the original volume starts inside the padded one, per axis.

    Parameters
    ----------
    shape : tuple of int
        Original shape, e.g. (182, 218, 182).
    patch : tuple of int
        Patch size, e.g. (14, 16, 14).

    Returns
    -------
    tuple of int
        ``floor((padded - original) / 2)`` per axis, e.g. (0, 3, 0); the original voxel (i, j, k)
        sits at ``padded[i + o0, j + o1, k + o2]``.
    """
    return tuple((p - s) // 2 for s, p in zip(shape, padded_shape(shape, patch), strict=True))


def _inner(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices selecting the original volume inside the padded one."""
    return tuple(slice(o, o + s) for o, s in zip(pad_offsets(shape, patch), shape, strict=True))


def pad_to_patch_multiple(volume: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """Centre-pad a volume with zeros so every axis divides by the patch size.

    Parameters
    ----------
    volume : np.ndarray, shape (X, Y, Z)
        Any dtype.
    patch : tuple of 3 int
        Patch size in voxels.

    Returns
    -------
    np.ndarray, shape padded_shape((X, Y, Z), patch), same dtype, C order
        182x218x182 -> 182x224x182; 91x109x91 -> 98x112x98. The input sits at :func:`pad_offsets`.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (X, Y, Z), got shape {volume.shape}")
    out = np.zeros(padded_shape(volume.shape, patch), dtype=volume.dtype)
    out[_inner(volume.shape, patch)] = volume
    return out


def _zscore_padded(data: np.ndarray, mean: float, sd: float, patch: tuple[int, int, int],
                   dtype: str) -> np.ndarray:
    """z-score the brain voxels of ``data`` into a zero, C-ordered, padded array of ``dtype``.

    Notes
    -----
    One pass over the data in blocks of ``_SLAB_PLANES`` Y planes: subtract, scale and mask a block
    in float32 in its own (NIfTI) order, then copy it, transposed and cast, into the C-ordered
    output. Blocks fit in L2, so the transposition costs little. The float16 cast goes through
    torch (vectorised) because numpy's float32 -> float16 cast is scalar.
    """
    out = np.zeros(padded_shape(data.shape, patch), dtype=dtype)
    ox, oy, oz = pad_offsets(data.shape, patch)
    nx, ny, nz = data.shape
    out_t = torch.from_numpy(out) if dtype == "float16" else None
    shift, scale = np.float32(mean), np.float32(1.0 / sd)
    for y0 in range(0, ny, _SLAB_PLANES):
        y1 = min(y0 + _SLAB_PLANES, ny)
        block = data[:, y0:y1, :]                              # (X, b, Z), NIfTI order
        z = block - shift
        z *= scale
        z *= block > 0                                         # 0 outside the brain ...
        z += np.float32(0.0)                                   # ... and +0, not -0
        if out_t is None:
            out[ox:ox + nx, oy + y0:oy + y1, oz:oz + nz] = z
        else:
            out_t[ox:ox + nx, oy + y0:oy + y1, oz:oz + nz].copy_(torch.from_numpy(z))
    return out


def preprocess_volume(volume: np.ndarray, patch: tuple[int, int, int] = PAPER_PATCH,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Pad, brain-mask and z-score one volume.

    Parameters
    ----------
    volume : np.ndarray, shape (X, Y, Z)
        A brain-extracted T1 (background 0), any float or int dtype, finite.
    patch : tuple of 3 int
        Patch size; every axis is padded to a multiple of it.

    Returns
    -------
    z : np.ndarray, shape padded (X', Y', Z'), float32, C order
        ``(x - mean) / sd`` inside the mask (mean 0, sd 1 there), exactly 0 elsewhere.
    mask : np.ndarray, shape (X', Y', Z'), bool
        The brain mask ``volume > 0``, padded with False.

    Raises
    ------
    ScanError
        The volume has non-finite voxels, no voxel > 0, or a constant brain (sd 0).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (X, Y, Z), got shape {volume.shape}")
    data = volume if volume.dtype == np.float32 else volume.astype(np.float32)
    n_brain, mean, sd, finite = brain_stats(data)
    _check_stats(n_brain, sd, finite, "volume")
    return (_zscore_padded(data, mean, sd, patch, "float32"),
            pad_to_patch_multiple(data > 0, patch))


def _check_stats(n_brain: int, sd: float, finite: bool, what: str) -> None:
    """Refuse volumes that cannot be z-scored."""
    if not finite:
        raise ScanError(f"{what} holds NaN or inf voxels; expected finite intensities; "
                        "run validate_scan and exclude scans whose status is not 'ok'")
    if n_brain == 0:
        raise ScanError(f"{what} has no voxel > 0, so there is no brain to z-score; expected a "
                        "brain-extracted T1; exclude it (validate_scan reports it as 'empty')")
    if not sd > 0:
        raise ScanError(f"{what} has the same intensity in all {n_brain} brain voxels (sd 0); expected "
                        "a T1 image, not a mask; check that the right file was exported")


def _write_npy_atomic(array: np.ndarray, dst: Path) -> None:
    """Write ``array`` to ``dst`` (.npy) atomically (:func:`udip_assets.atomic.atomic_path`)."""
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def preprocess_scan(src_path: str | Path, dst_path: str | Path, grid: Grid,
                    cfg: PreprocessConfig | None = None) -> PreprocessResult:
    """Read, check, pad, mask and z-score one scan and write its cache file atomically.

    Parameters
    ----------
    src_path : str or Path
        The scan (``.nii.gz``) on ``grid``.
    dst_path : str or Path
        The cache file to write; must end in ``.npy``. Its folder is created if missing; an existing
        file is replaced.
    grid : Grid
        The cohort grid.
    cfg : PreprocessConfig, optional
        Patch size and cache dtype (default: paper patch, float16).

    Returns
    -------
    PreprocessResult

    Raises
    ------
    GridMismatchError, ScanError
        The scan fails validation (the message is :func:`validate_scan`'s) or cannot be z-scored.

    Notes
    -----
    The scan is decompressed once; validation and normalisation share that decode.
    """
    cfg = cfg or PreprocessConfig()
    dst = Path(dst_path)
    if dst.suffix != ".npy":
        raise ValueError(f"dst_path must end in .npy, got {str(dst)!r}; name the cache file <subject>.npy")
    t0 = time.perf_counter()
    check, data = read_scan(src_path, grid)  # decode + validate + brain statistics, once
    raise_for_status(check)
    n_brain, mean, sd = check.n_nonzero, check.mean_intensity, check.sd_intensity
    _check_stats(n_brain, sd, True, f"scan {src_path}")
    t1 = time.perf_counter()
    z = _zscore_padded(data, mean, sd, cfg.patch, cfg.cache_dtype)
    t2 = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_npy_atomic(z, dst)
    t3 = time.perf_counter()
    return PreprocessResult(str(src_path), str(dst), tuple(z.shape), n_brain, mean, sd,
                            t3 - t0, t1 - t0, t2 - t1, t3 - t2)


def load_preprocessed(path: str | Path) -> np.ndarray:
    """Load a cache file written by :func:`preprocess_scan` as float32.

    Parameters
    ----------
    path : str or Path
        The ``.npy`` cache file.

    Returns
    -------
    np.ndarray, shape (X', Y', Z'), float32, C order
        The padded z-scored volume.

    Raises
    ------
    FileNotFoundError
        The file does not exist (preprocessing has not run for this scan).
    ScanError
        The file is not a readable 3-D float cache (truncated or foreign).

    Notes
    -----
    float16 caches are read whole (no mmap: the file is used entirely) and widened with torch's
    vectorised cast, ~5x faster than ``ndarray.astype`` (see the module Notes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preprocessed scan {path} does not exist; run preprocessing for this "
                                "cohort (the preprocess asset) or fix the cache path")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ScanError(f"preprocessed scan {path} cannot be read ({exc}); expected a .npy written by "
                        "preprocess_scan; delete it and re-run preprocessing") from exc
    if arr.ndim != 3 or arr.dtype not in (np.float16, np.float32):
        raise ScanError(f"preprocessed scan {path} holds a {arr.dtype} array of shape {arr.shape}; "
                        "expected a 3-D float16/float32 volume; delete it and re-run preprocessing")
    if arr.dtype == np.float16:
        out = np.empty(arr.shape, dtype=np.float32)  # numpy allocation: huge pages, fewer faults
        torch.from_numpy(out).copy_(torch.from_numpy(arr))
        return out
    return arr
