"""Maps on the cohort grid: the model's padded volume <-> the grid, patch painting, NIfTI and PNG.

The model sees padded volumes ``cfg.volume_shape`` (the cohort grid centre-padded with zeros to a
multiple of the patch, :func:`udip_assets.imaging.preprocess.pad_offsets`); maps meant for a
viewer or an atlas live on the cohort grid (``grid.shape``, ``grid.affine``). Every writer here is
atomic (:func:`udip_assets.atomic.atomic_path`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from udip_assets.atomic import atomic_path  # noqa: E402
from udip_assets.errors import UdipConfigError  # noqa: E402
from udip_assets.imaging.grids import Grid  # noqa: E402
from udip_assets.imaging.preprocess import pad_offsets, padded_shape  # noqa: E402
from udip_assets.model.config import ModelConfig  # noqa: E402


def grid_offsets(cfg: ModelConfig, grid: Grid) -> tuple[int, int, int]:
    """Where ``grid`` starts inside the model's padded volume, after checking that they fit.

    Parameters
    ----------
    cfg : ModelConfig
        The model's configuration (``volume_shape``, ``patch``).
    grid : Grid
        The cohort grid the scans were preprocessed on.

    Returns
    -------
    tuple of 3 int
        Voxel offsets (X, Y, Z): grid voxel (i, j, k) is padded voxel (i + o0, j + o1, k + o2).

    Raises
    ------
    UdipConfigError
        ``grid`` padded to the model's patch is not the model's input shape.
    """
    padded = padded_shape(grid.shape, cfg.patch)
    if tuple(padded) != tuple(cfg.volume_shape):
        raise UdipConfigError(
            f"grid {grid.name} {grid.shape} pads to {tuple(padded)} with patch {cfg.patch}, but the model "
            f"takes volumes {cfg.volume_shape}; pass the grid the model's scans were preprocessed on")
    return tuple(pad_offsets(grid.shape, cfg.patch))  # type: ignore[return-value]


def crop_to_grid(volume: np.ndarray, cfg: ModelConfig, grid: Grid) -> np.ndarray:
    """A padded volume ``cfg.volume_shape`` -> the cohort grid ``grid.shape`` (a copy).

    Raises
    ------
    ValueError
        ``volume`` does not have the model's padded shape.
    """
    volume = np.asarray(volume)
    if volume.shape != tuple(cfg.volume_shape):
        raise ValueError(f"volume must have the model's padded shape {cfg.volume_shape}, got {volume.shape}")
    offsets = grid_offsets(cfg, grid)
    inner = tuple(slice(o, o + s) for o, s in zip(offsets, grid.shape, strict=True))
    return volume[inner].copy()


def paint_patches(values: np.ndarray, cfg: ModelConfig, grid: Grid) -> np.ndarray:
    """One value per patch -> a volume on the cohort grid where every voxel holds its patch's value.

    Parameters
    ----------
    values : ndarray (N,)
        Per patch in the C order of ``cfg.grid`` (the order of ``ViTAE.patchify``); NaN paints NaN.

    Returns
    -------
    ndarray (X, Y, Z) = ``grid.shape``, float32
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (cfg.n_patches,):
        raise ValueError(f"values must be one per patch ({cfg.n_patches},), got shape {values.shape}")
    blocks = values.reshape(cfg.grid)  # (gx, gy, gz)
    for axis, p in enumerate(cfg.patch):
        blocks = np.repeat(blocks, p, axis=axis)  # -> (X', Y', Z') after the three axes
    return crop_to_grid(blocks, cfg, grid)


def write_nifti(volume: np.ndarray, grid: Grid, path: str | Path) -> Path:
    """Write a float32 NIfTI-1 (``.nii`` or ``.nii.gz``) of a volume on ``grid``, atomically.

    Parameters
    ----------
    volume : ndarray (X, Y, Z) = ``grid.shape``
    grid : Grid
        Its affine becomes the sform and qform (code 4, MNI).
    path : str or Path
        Destination; its folder is created.

    Returns
    -------
    Path
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != tuple(grid.shape):
        raise ValueError(f"volume {volume.shape} is not on grid {grid.name} {grid.shape}; crop or paint it "
                         "onto the cohort grid first (crop_to_grid, paint_patches)")
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz, got {path.name}")
    img = nib.Nifti1Image(volume, grid.affine)
    img.set_sform(grid.affine, code=4)
    img.set_qform(grid.affine, code=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def overlay_figure(volume: np.ndarray, grid: Grid, path: str | Path, *, title: str,
                   background: np.ndarray | None = None, threshold: float = 1e-6, vmin: float = 0.0,
                   vmax: float | None = None, cmap: str = "hot") -> Path:
    """PNG of a map over the template T1 (nilearn ``plot_stat_map``, orthogonal cuts), atomically.

    Parameters
    ----------
    volume : ndarray (X, Y, Z) = ``grid.shape``
        Non-negative map (attention, |saliency|); NaN is drawn as 0.
    grid : Grid
    path : str or Path
        Destination PNG; its folder is created.
    title : str
    background : ndarray (X, Y, Z), optional
        Background image on ``grid``; default the template T1 of
        :func:`udip_assets.imaging.anatomy.load_anatomy` (a few seconds the first time per grid).
    threshold : float
        Values whose magnitude is below it are transparent (default 1e-6: only zeros).
    vmin, vmax : float
        Colour scale; ``vmax`` None is the map's maximum. Values above ``vmax`` take its colour.
    cmap : str
        Matplotlib colour map.

    Returns
    -------
    Path
    """
    from nilearn import plotting  # ~1 s to import: only when a figure is drawn

    volume = np.nan_to_num(np.asarray(volume, dtype=np.float32))
    if background is None:
        from udip_assets.imaging.anatomy import load_anatomy

        background = load_anatomy(grid).t1
    for name, arr in (("volume", volume), ("background", np.asarray(background))):
        if arr.shape != tuple(grid.shape):
            raise ValueError(f"{name} {arr.shape} is not on grid {grid.name} {grid.shape}")
    stat = nib.Nifti1Image(volume, grid.affine)
    bg = nib.Nifti1Image(np.asarray(background, dtype=np.float32), grid.affine)
    if vmax is None:
        vmax = float(volume.max()) if volume.max() > vmin else vmin + 1.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        display = plotting.plot_stat_map(stat, bg_img=bg, display_mode="ortho", threshold=threshold,
                                         cmap=cmap, vmin=vmin, vmax=vmax, symmetric_cbar=False,
                                         title=title, draw_cross=False, black_bg=False)
        display.savefig(str(tmp), dpi=100)
        display.close()
    return path


def write_map(volume: np.ndarray, grid: Grid, nifti_path: str | Path, png_path: str | Path, *, title: str,
              background: np.ndarray | None = None, **figure) -> tuple[Path, Path]:
    """:func:`write_nifti` of ``volume`` and :func:`overlay_figure` of it (``figure``: its keywords)
    -> (the NIfTI path, the PNG path)."""
    nifti = write_nifti(volume, grid, nifti_path)
    png = overlay_figure(volume, grid, png_path, title=title, background=background, **figure)
    return nifti, png


__all__ = ["crop_to_grid", "grid_offsets", "overlay_figure", "paint_patches", "write_map", "write_nifti"]
