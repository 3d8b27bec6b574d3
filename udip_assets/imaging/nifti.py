"""Read and validate T1 NIfTI scans against a cohort grid, with one decode per scan.

UK Biobank ships ``T1_brain_to_MNI.nii.gz``: a brain-extracted, bias-corrected T1 linearly registered
to FSL's MNI152 grid (182x218x182 voxels of 1 mm, see :mod:`udip_assets.imaging.grids`). Ingest
calls :func:`validate_scan` on every file and records a :class:`ScanCheck` row (status and reason);
preprocessing calls :func:`read_scan`, which returns the same check together with the decoded
voxels, so a scan is decompressed exactly once.

Notes
-----
Reading. A ``.nii.gz`` is read as bytes and inflated whole into a buffer pre-sized from the gzip
trailer (ISIZE): by the system's libdeflate through ctypes when it is installed (Debian/Ubuntu
package ``libdeflate0``), else by one ``zlib.decompress`` call. The NIfTI header is parsed by
nibabel and the voxels are a zero-copy view of that buffer in NIfTI's Fortran order. On a 1 mm scan
this takes about half the time of ``nibabel.load(path).get_fdata()``, which streams through
``gzip.GzipFile`` (libdeflate ~20 ms, zlib ~27 ms, nibabel ~40 ms on an idle AMD EPYC core; see
``benchmarks/RESULTS.md``). Both decoders verify the gzip trailer (CRC32 and length); when
libdeflate refuses a file it is decoded again by zlib so that the message is zlib's ("incomplete or
truncated stream", "incorrect data check"). Multi-member gzip files (rare) fall back to
``gzip.decompress``; formats other than single-file NIfTI-1/2 fall back to ``nibabel.load``.

Checks, in this order: ``unreadable`` (any read or decode error), ``wrong_grid`` (not a 3-D volume,
shape differs from the grid, or any affine entry differs from ``grid.affine`` by more than 1e-3 mm),
``non_finite`` (any NaN or +-inf voxel), ``empty`` (no voxel > 0). A trailing singleton 4th
dimension (X, Y, Z, 1) is squeezed.

Brain voxels. The brain mask of a brain-extracted scan is ``intensity > 0``; ``n_nonzero`` counts
those voxels and ``mean_intensity``/``sd_intensity`` are their mean and population standard
deviation (ddof 0), accumulated in float64. UK Biobank T1s are non-negative, so ``> 0`` and ``!= 0``
select the same voxels; a negative voxel (interpolation ringing) is treated as background.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gzip
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from udip_assets.errors import GridMismatchError, ScanError
from udip_assets.imaging.grids import Grid, grid_for_shape

STATUSES = ("ok", "unreadable", "wrong_grid", "non_finite", "empty")
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class ScanCheck:
    """The verdict on one scan file (one row of the ``scans`` table).

    Attributes
    ----------
    path : str
        The scan file.
    status : str
        One of ``'ok'``, ``'unreadable'``, ``'wrong_grid'``, ``'non_finite'``, ``'empty'``.
    error : str or None
        None when ``status == 'ok'``; else a message naming the file, what was expected, what came
        and what to do.
    shape : tuple of int or None
        Voxel shape as stored (after squeezing a trailing singleton 4th dim); None if unreadable.
    voxel_mm : tuple of float or None
        Voxel size (mm) per axis from the header zooms; None if unreadable.
    n_nonzero : int
        Number of brain voxels (intensity > 0); 0 if unreadable or not 3-D.
    mean_intensity : float
        Mean intensity over the brain voxels (scanner units); NaN when there are none.
    sd_intensity : float
        Population standard deviation (ddof 0) over the brain voxels; NaN when there are none.
    """

    path: str
    status: str
    error: str | None = None
    shape: tuple[int, ...] | None = None
    voxel_mm: tuple[float, ...] | None = None
    n_nonzero: int = 0
    mean_intensity: float = float("nan")
    sd_intensity: float = float("nan")

    @property
    def ok(self) -> bool:
        """True when the scan can be preprocessed."""
        return self.status == "ok"


class _ShortDataError(ValueError):
    """The decoded bytes end before the voxel block the header promises."""


@functools.cache
def _libdeflate() -> ctypes.CDLL | None:
    """The system libdeflate (faster whole-buffer gzip decoder), or None when it is not installed."""
    name = ctypes.util.find_library("deflate")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.libdeflate_alloc_decompressor.argtypes = []
        lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
        lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_free_decompressor.restype = None
        lib.libdeflate_gzip_decompress.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t)]
        lib.libdeflate_gzip_decompress.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


class _Decompressor:
    """One libdeflate decompressor per thread (they are not thread-safe), freed with the thread."""

    _local = threading.local()

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.handle = lib.libdeflate_alloc_decompressor()

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.libdeflate_free_decompressor(self.handle)

    @classmethod
    def for_thread(cls, lib: ctypes.CDLL) -> _Decompressor:
        dec = getattr(cls._local, "dec", None)
        if dec is None:
            dec = cls._local.dec = cls(lib)
        return dec


def _gunzip(raw: bytes) -> bytes | np.ndarray:
    """Inflate the first gzip member of ``raw`` into a buffer sized from the trailer's ISIZE field.

    Returns a uint8 array (libdeflate, when installed) or bytes (zlib). A libdeflate failure is
    retried with zlib, so a damaged file fails with zlib's message ("incomplete or truncated
    stream", "incorrect data check"). Only the first member is inflated; :func:`_read_voxels` falls
    back to ``gzip.decompress`` when that is shorter than the header promises.
    """
    isize = int.from_bytes(raw[-4:], "little") if len(raw) >= 18 else 0
    lib = _libdeflate()
    if lib is not None and 0 < isize <= 1032 * len(raw):  # 1032:1 is deflate's largest ratio
        out = np.empty(isize, dtype=np.uint8)
        n_out = ctypes.c_size_t(0)
        rc = lib.libdeflate_gzip_decompress(_Decompressor.for_thread(lib).handle, raw, len(raw),
                                            out.ctypes.data, isize, ctypes.byref(n_out))
        if rc == 0 and n_out.value == isize:
            return out
    return zlib.decompress(raw, wbits=31, bufsize=max(isize, 1 << 14))


def _parse_nifti(buf: bytes | np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Split single-file NIfTI-1/2 bytes into (voxels, affine (4, 4), zooms).

    The voxels are a Fortran-ordered view of ``buf`` when stored as native float32 with no scaling;
    otherwise a float32 copy with ``scl_slope``/``scl_inter`` applied. Header extensions are skipped.
    """
    head = bytes(buf[:540])
    sizeof = int.from_bytes(head[:4], "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(head[:4], "big")
    klass = nib.Nifti2Header if sizeof == 540 else nib.Nifti1Header
    hdr = klass(binaryblock=head[:sizeof], check=True)
    if hdr["magic"].item()[:3] not in (b"n+1", b"n+2"):
        raise ValueError(f"header magic is {hdr['magic'].item()!r}, not a single-file NIfTI (n+1/n+2)")
    shape = hdr.get_data_shape()
    dtype = hdr.get_data_dtype()
    offset = int(hdr.get_data_offset())
    count = int(np.prod(shape))
    need = offset + count * dtype.itemsize
    if len(buf) < need:
        raise _ShortDataError(f"data block is truncated: header promises {need} bytes, file holds {len(buf)}")
    data = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    slope, inter = hdr.get_slope_inter()
    if data.dtype != np.float32 or slope not in (None, 1.0) or inter not in (None, 0.0):
        data = data.astype(np.float32)
        if slope not in (None, 1.0):
            data *= np.float32(slope)
        if inter not in (None, 0.0):
            data += np.float32(inter)
    return data, hdr.get_best_affine(), tuple(float(z) for z in hdr.get_zooms()[:3])


def _read_voxels(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Decode a scan file into (voxels, affine, zooms); raises whatever the decoder raises."""
    name = path.name.lower()
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        raw = path.read_bytes()
        if not name.endswith(".gz"):
            return _parse_nifti(raw)
        try:
            return _parse_nifti(_gunzip(raw))
        except _ShortDataError:  # perhaps a multi-member gzip: inflate every member
            return _parse_nifti(gzip.decompress(raw))
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    return data, img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _mm(z: float) -> str:
    """A voxel size as '2.0' or '0.75' (one decimal unless more are needed)."""
    return f"{z:.1f}" if abs(z * 10 - round(z * 10)) < 1e-6 else f"{z:g}"


def _fmt_mm(zooms: tuple[float, ...]) -> str:
    if len(set(zooms)) == 1:
        return f"{_mm(zooms[0])} mm"
    return "x".join(_mm(z) for z in zooms) + " mm"


def _grid_text(grid: Grid) -> str:
    return f"{grid.name} {_fmt_shape(grid.shape)} {_mm(grid.voxel_mm)} mm"


def _grid_error(path: str, shape: tuple[int, ...], zooms: tuple[float, ...], affine: np.ndarray,
                grid: Grid) -> str | None:
    """The wrong-grid message for this scan, or None when shape and affine match ``grid``."""
    if len(shape) != 3:
        return (f"scan {path} has shape {_fmt_shape(shape)}; expected one 3-D volume on the cohort grid "
                f"{_grid_text(grid)}; export a single T1 volume (e.g. fslroi) and re-run ingest")
    if tuple(shape) != grid.shape:
        other = grid_for_shape(shape)
        fix = (f"re-register the scan or set the cohort's resolution to {other.voxel_mm:g}"
               if other is not None and other.name != grid.name
               else "re-register the scan to the cohort grid (FSL flirt -ref MNI152_T1_1mm_brain)")
        return (f"scan {path} is {_fmt_shape(shape)} with {_fmt_mm(zooms)} voxels; the cohort grid is "
                f"{_grid_text(grid)}; {fix}")
    diff = np.abs(np.asarray(affine, dtype=np.float64) - grid.affine)
    if diff.max() > AFFINE_TOLERANCE_MM:
        i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        return (f"scan {path} has the grid's shape {_fmt_shape(shape)} but a different affine "
                f"(entry [{i},{j}] differs by {diff[i, j]:.4g} mm): expected "
                f"{np.array2string(grid.affine[:3], precision=3)}, got "
                f"{np.array2string(np.asarray(affine)[:3], precision=3)} for the cohort grid "
                f"{_grid_text(grid)}; re-register the scan to that grid or fix its sform/qform")
    return None


def brain_stats(data: np.ndarray) -> tuple[int, float, float, bool]:
    """Brain-voxel statistics of a 3-D volume in one pass over the data.

    Parameters
    ----------
    data : np.ndarray, shape (X, Y, Z), float32
        Intensities (any memory order).

    Returns
    -------
    n_brain : int
        Voxels with intensity > 0.
    mean, sd : float
        Mean and population sd (ddof 0) of those voxels, accumulated in float64; NaN if none.
    finite : bool
        False if any voxel is NaN or +-inf.

    Notes
    -----
    NaN and -inf are caught by the volume minimum (NaN propagates through ``min``), +inf by the sum
    over the brain voxels, so finiteness costs one reduction instead of an ``isfinite`` pass.
    Variance is two-pass (mean first, then the mean squared deviation) to avoid cancellation.
    """
    flat = data.ravel(order="K")
    values = flat[flat > 0]
    n_brain = int(values.size)
    lowest = flat.min() if flat.size else np.float32(0)
    if n_brain == 0:
        return 0, float("nan"), float("nan"), bool(np.isfinite(lowest))
    v64 = values.astype(np.float64)
    mean = float(v64.sum()) / n_brain
    with np.errstate(invalid="ignore", over="ignore"):  # +inf voxels give NaN: reported as non-finite
        v64 -= mean
        sd = float(np.sqrt(np.dot(v64, v64) / n_brain))
    finite = bool(np.isfinite(lowest)) and np.isfinite(mean) and np.isfinite(sd)
    return n_brain, mean, sd, finite


def read_scan(path: str | Path, grid: Grid) -> tuple[ScanCheck, np.ndarray | None]:
    """Decode one scan once, check it against ``grid``, and return the check with the voxels.

    Parameters
    ----------
    path : str or Path
        A ``.nii.gz`` or ``.nii`` file (other formats nibabel reads are accepted too).
    grid : Grid
        The cohort grid the scan must lie on.

    Returns
    -------
    check : ScanCheck
        The verdict; never raises for bad data.
    data : np.ndarray of shape grid.shape, float32, or None
        The voxels (Fortran-ordered, possibly a read-only view) when the scan was readable and 3-D,
        whatever its status; None otherwise. Callers must look at ``check.status`` first.
    """
    path_s = str(path)
    try:
        data, affine, zooms = _read_voxels(Path(path))
    except Exception as exc:  # noqa: BLE001 - every decode failure is an 'unreadable' scan
        return ScanCheck(path_s, "unreadable",
                         f"scan {path_s} cannot be read ({type(exc).__name__}: {exc}); expected a "
                         "complete gzipped NIfTI file; copy or download the file again (a truncated "
                         ".nii.gz usually means an interrupted transfer)"), None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    shape = tuple(int(s) for s in data.shape)
    if data.ndim != 3:
        return ScanCheck(path_s, "wrong_grid", _grid_error(path_s, shape, zooms, affine, grid),
                         shape, zooms), None
    n_brain, mean, sd, finite = brain_stats(data)
    fields = dict(shape=shape, voxel_mm=zooms, n_nonzero=n_brain, mean_intensity=mean, sd_intensity=sd)
    grid_msg = _grid_error(path_s, shape, zooms, affine, grid)
    if grid_msg is not None:
        return ScanCheck(path_s, "wrong_grid", grid_msg, **fields), data
    if not finite:
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        return ScanCheck(path_s, "non_finite",
                         f"scan {path_s} holds {n_bad} non-finite voxels (NaN or inf); expected finite "
                         "intensities; redo registration for this subject or exclude the scan",
                         **fields), data
    if n_brain == 0:
        return ScanCheck(path_s, "empty",
                         f"scan {path_s} has no voxel > 0 (expected a brain-extracted T1 with positive "
                         "intensities inside the brain); check brain extraction for this subject or "
                         "exclude the scan", **fields), data
    return ScanCheck(path_s, "ok", None, **fields), data


def validate_scan(path: str | Path, grid: Grid) -> ScanCheck:
    """Check one scan against the cohort grid; never raises for bad data.

    Parameters
    ----------
    path : str or Path
        The scan file (``.nii.gz``).
    grid : Grid
        The cohort grid.

    Returns
    -------
    ScanCheck
        ``status`` 'ok', 'unreadable', 'wrong_grid', 'non_finite' or 'empty', with a message.

    Notes
    -----
    The whole file is decompressed: a truncated ``.nii.gz`` only fails when inflating its end.
    """
    return read_scan(path, grid)[0]


def load_scan(path: str | Path, grid: Grid) -> np.ndarray:
    """The voxels of a scan that passes :func:`validate_scan`.

    Parameters
    ----------
    path : str or Path
        The scan file.
    grid : Grid
        The cohort grid.

    Returns
    -------
    np.ndarray, shape grid.shape, float32
        Intensities in NIfTI (Fortran) order; may be a read-only view.

    Raises
    ------
    GridMismatchError
        The scan is on another grid (status 'wrong_grid').
    ScanError
        Any other failed check ('unreadable', 'non_finite', 'empty'); the message is the check's.
    """
    check, data = read_scan(path, grid)
    raise_for_status(check)
    if data is None:  # an 'ok' check always carries its voxels; kept for type checkers
        raise ScanError(f"scan {path} passed validation but decoded to no voxels; report this as a bug")
    return data


def raise_for_status(check: ScanCheck) -> None:
    """Raise the error a failed :class:`ScanCheck` describes; do nothing when it is 'ok'.

    Raises
    ------
    GridMismatchError
        ``check.status == 'wrong_grid'``.
    ScanError
        Any other status but 'ok'.
    """
    if check.status == "wrong_grid":
        raise GridMismatchError(check.error)
    if check.status != "ok":
        raise ScanError(check.error)
