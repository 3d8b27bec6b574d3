"""Atlas overlap: resampling keeps labels and reports lost ones, region tables, named structures, symmetry."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.anatomy import REGIONS, VENTRICLES_LABEL, load_anatomy
from udip_assets.imaging.grids import MNI152_1MM, MNI152_2MM, Grid
from udip_assets.interpret.atlas import (
    Atlas,
    default_atlas,
    hemisphere_of,
    load_atlas,
    planted_region_rank,
    read_label_table,
    region_table,
    structure_table,
    symmetry_score,
)

# A 2 mm target grid and a 1 mm source whose voxel centres include every target centre (no ties).
TARGET = Grid("target_2mm", (8, 8, 8), 2.0, (8.0, -8.0, -8.0))
SOURCE_AFFINE = np.diag([-1.0, 1.0, 1.0, 1.0])
SOURCE_AFFINE[:3, 3] = (9.0, -9.0, -9.0)  # source voxel (i, j, k) at x = 9 - i: target voxel I is source 2I + 1


def write_source(tmp_path, table_text: str, suffix: str = ".tsv", labels: np.ndarray | None = None):
    src = np.zeros((18, 18, 18), dtype=np.int16) if labels is None else labels
    if labels is None:
        src[1:9, 1:17, 1:17] = 1  # 4 target planes in x
        src[9:17, 1:17, 1:17] = 2
        src[10, 10, 10] = 3  # one voxel at an even source index: no target centre falls on it
    img_path, table_path = tmp_path / "atlas.nii.gz", tmp_path / f"labels{suffix}"
    nib.save(nib.Nifti1Image(src, SOURCE_AFFINE), img_path)
    table_path.write_text(table_text)
    return src, img_path, table_path


def reference_nearest(src: np.ndarray, src_affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Nearest source voxel of every target centre, voxel by voxel (independent of scipy)."""
    to_src = np.linalg.inv(src_affine) @ grid.affine
    out = np.zeros(grid.shape, dtype=np.int32)
    for ijk in itertools.product(*[range(n) for n in grid.shape]):
        s = np.rint(to_src @ np.array([*ijk, 1.0]))[:3].astype(int)
        if all(0 <= v < n for v, n in zip(s, src.shape, strict=True)):
            out[ijk] = src[tuple(s)]
    return out


def test_resampling_keeps_labels_and_reports_the_lost_one(tmp_path):
    src, img, table = write_source(tmp_path, "id\tname\n1\tBig_L\n2\tBig_R\n3\tTiny_Nucleus\n")
    with pytest.warns(UserWarning, match=r"labels lost when resampling.*3 \(Tiny_Nucleus\)"):
        atlas = load_atlas(img, table, TARGET)
    assert atlas.lost == (3,)
    np.testing.assert_array_equal(atlas.labels, reference_nearest(src, SOURCE_AFFINE, TARGET))
    assert (atlas.labels == 1).sum() == 4 * 8 * 8 and (atlas.labels == 2).sum() == 4 * 8 * 8
    assert list(atlas.table["hemisphere"]) == ["L", "R", ""]
    assert atlas.name == "atlas.nii.gz"


def test_labels_missing_from_the_table_are_refused_naming_both_files(tmp_path):
    _, img, table = write_source(tmp_path, "id,name\n1,Big_L\n2,Big_R\n", suffix=".csv")
    with pytest.raises(UdipConfigError, match=r"atlas.nii.gz holds labels \[3\] that its table .*labels.csv"):
        load_atlas(img, table, TARGET)


def test_table_ids_absent_from_the_image_warn(tmp_path):
    src = np.zeros((18, 18, 18), dtype=np.int16)
    src[1:17, 1:17, 1:17] = 1
    _, img, table = write_source(tmp_path, "id\tname\n1\tBrain\n7\tNowhere\n", labels=src)
    with pytest.warns(UserWarning, match=r"ids \[7\] do not occur in"):
        atlas = load_atlas(img, table, TARGET)
    assert atlas.lost == ()


@pytest.mark.parametrize(("text", "message"), [
    ("label\tname\n1\tA\n", r"lacks columns \['id'\]"),
    ("id\tname\n1\tA\n1\tB\n", r"ids \[1\] appear more than once"),
    ("id\tname\n0\tA\n", "ids must be positive integers"),
    ("id\tname\themisphere\n1\tA\tup\n", "hemisphere must be L, R or empty"),
])
def test_bad_label_tables_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(UdipConfigError, match=message) as exc:
        read_label_table(path)
    assert f"label table {path}" in str(exc.value)


def test_table_hemisphere_column_wins_over_names(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("id\tname\themisphere\tstructure\n1\tHippo_L\tright\thippocampus\n2\tVermis\t\t\n")
    table = read_label_table(path)
    assert list(table["hemisphere"]) == ["R", ""] and list(table["structure"]) == ["hippocampus", ""]


@pytest.mark.parametrize(("name", "hemi"), [("Hippocampus_L", "L"), ("Thal_PuM_R", "R"), ("Vermis_1_2", ""),
                                            ("Left Amygdala", "L"), ("Right Caudate", "R"), ("Raphe_D", "")])
def test_hemisphere_from_names(name, hemi):
    assert hemisphere_of(name) == hemi


def test_4d_images_are_refused(tmp_path):
    img = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), dtype=np.float32), np.eye(4)), img)
    (tmp_path / "t.tsv").write_text("id\tname\n1\tA\n")
    with pytest.raises(UdipConfigError, match=r"prob.nii.gz has shape \(4, 4, 4, 3\)"):
        load_atlas(img, tmp_path / "t.tsv", TARGET)


# ------------------------------------------------------------------------------ default atlas
@pytest.fixture(scope="module")
def aal3_2mm() -> Atlas:
    return default_atlas(MNI152_2MM)


def test_default_atlas_is_aal3_plus_ventricles(aal3_2mm):
    table = aal3_2mm.table.set_index("id")
    assert table.loc[41, "name"] == "Hippocampus_L" and table.loc[41, "hemisphere"] == "L"
    assert table.loc[114, "name"] == "Vermis_3" and table.loc[114, "hemisphere"] == ""
    assert table.loc[VENTRICLES_LABEL, "name"] == "Ventricles" and table.loc[VENTRICLES_LABEL, "hemisphere"] == ""
    assert not {35, 36, 81, 82} & set(table.index)  # empty in AAL3
    np.testing.assert_array_equal(aal3_2mm.labels, load_anatomy(MNI152_2MM).region_labels)
    assert 133 in aal3_2mm.lost  # a thalamic nucleus too small for 2 mm voxels
    for name, region in REGIONS.items():
        assert set(aal3_2mm.structure_ids(name)) == set(region.labels)
    assert len(aal3_2mm.structure_ids("thalamus")) == 30


@pytest.mark.parametrize("region", ["hippocampus", "thalamus", "ventricles", "cerebellum"])
def test_a_map_on_a_named_region_ranks_it_first(aal3_2mm, region):
    rng = np.random.default_rng(0)
    inside = load_anatomy(MNI152_2MM).region_mask(region)
    t = rng.normal(0, 1.0, MNI152_2MM.shape) + 8.0 * inside
    table = region_table(t, aal3_2mm, threshold=5.0)
    assert planted_region_rank(table, region) == 1
    assert planted_region_rank(structure_table(table), region) == 1  # merging again changes nothing


# ------------------------------------------------------------------------------ region tables
@pytest.fixture
def three_regions() -> tuple[Atlas, np.ndarray]:
    grid = Grid("hand", (6, 4, 4), 2.0, (5.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, dtype=np.int32)
    labels[0:2] = 1  # 32 voxels each
    labels[2:4] = 2
    labels[4:6] = 3
    t = np.zeros(grid.shape)
    t[0:2] = 6.0  # A: all above, mean 6
    t[2] = -10.0  # B: half at -10: fraction 0.5, mean -5, mean |t| 5, score 2.5
    t[4:6] = 2.0  # C: below the threshold: score 0
    table = pd.DataFrame({"id": [1, 2, 3, 4], "name": ["A_L", "B_R", "C", "Absent"], "hemisphere": ["L", "R", "", ""],
                          "structure": ["pair", "pair", "", ""]})
    return Atlas("hand", grid, labels, table), t


def test_region_table_on_a_hand_built_map(three_regions):
    atlas, t = three_regions
    table = region_table(t, atlas, threshold=5.0, min_volume_mm3=0).set_index("region")
    assert list(table.index) == ["A_L", "B_R", "C"]  # rank order; the label without voxels is left out
    assert list(table["rank"]) == [1, 2, 3]
    np.testing.assert_allclose(table["fraction"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(table["mean_t"], [6.0, -5.0, 2.0])
    np.testing.assert_allclose(table["peak_t"], [6.0, -10.0, 2.0])
    np.testing.assert_allclose(table["score"], [6.0, 2.5, 0.0])
    assert list(table["n_voxels"]) == [32, 32, 32] and list(table["hemisphere"]) == ["L", "R", ""]
    np.testing.assert_allclose(table["volume_mm3"], [256.0] * 3)


def test_small_regions_are_listed_but_not_ranked(three_regions):
    atlas, t = three_regions
    table = region_table(t, atlas, threshold=5.0, min_volume_mm3=300.0)
    assert table["rank"].isna().all() and len(table) == 3


def test_structure_table_merges_labels_voxel_weighted(three_regions):
    atlas, t = three_regions
    merged = structure_table(region_table(t, atlas, threshold=5.0, min_volume_mm3=0), min_volume_mm3=0)
    pair = merged.set_index("region").loc["pair"]
    assert pair["n_voxels"] == 64 and pair["hemisphere"] == "" and pd.isna(pair["label"])
    assert pair["fraction"] == pytest.approx(0.75) and pair["mean_t"] == pytest.approx(0.5)
    assert pair["mean_abs_t"] == pytest.approx(5.5) and pair["peak_t"] == -10.0
    assert pair["score"] == pytest.approx(5.5 * 0.75) and pair["rank"] == 1
    with pytest.raises(UdipConfigError, match=r"region 'hippocampus' is not a structure of this table.*\['pair'\]"):
        planted_region_rank(merged, "hippocampus")


def test_region_table_refuses_a_map_on_another_grid(three_regions):
    atlas, _ = three_regions
    with pytest.raises(UdipConfigError, match=r"grid shape \(6, 4, 4\), got \(6, 4, 5\)"):
        region_table(np.zeros((6, 4, 5)), atlas)


# ------------------------------------------------------------------------------ symmetry
def test_symmetry_of_hand_built_maps_on_the_2mm_grid():
    rng = np.random.default_rng(0)
    half = rng.normal(size=MNI152_2MM.shape)
    # x = 90 - 2 i: voxel i mirrors onto 90 - i, i.e. the x axis reversed
    assert symmetry_score(half + half[::-1], MNI152_2MM) == pytest.approx(1.0)
    assert symmetry_score(half - half[::-1], MNI152_2MM) == pytest.approx(-1.0)
    one_sided = np.zeros(MNI152_2MM.shape)
    one_sided[10:30, 40:60, 30:50] = 3.0
    assert symmetry_score(one_sided, MNI152_2MM) == 0.0
    assert np.isnan(symmetry_score(np.zeros(MNI152_2MM.shape), MNI152_2MM))


def test_symmetry_excludes_voxels_whose_mirror_is_outside_the_1mm_grid():
    rng = np.random.default_rng(1)
    t = rng.normal(size=MNI152_1MM.shape).astype(np.float32)
    t[:181] = t[:181] + t[:181][::-1]  # x = 90 - i: i mirrors onto 180 - i; plane 181 (x = -91) has none
    t[181] = 100.0
    assert symmetry_score(t, MNI152_1MM) == pytest.approx(1.0, abs=1e-6)


def test_symmetry_needs_x_zero_on_a_voxel_plane():
    with pytest.raises(UdipConfigError, match="x = 0 mm is not on or halfway between voxel planes"):
        symmetry_score(np.zeros((4, 2, 2)), Grid("odd", (4, 2, 2), 2.0, (3.3, 0.0, 0.0)))
