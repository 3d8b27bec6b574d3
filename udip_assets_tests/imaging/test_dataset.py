"""The torch dataset over preprocessed caches: shapes, dtypes, values, ids and missing files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from udip_assets.imaging.dataset import PreprocessedScanDataset

PADDED = (12, 16, 12)


def _caches(folder, n: int = 3, dtype=np.float16) -> tuple[list, list[np.ndarray]]:
    """``n`` cache files of random z-scored volumes; returns (paths, arrays as float32)."""
    rng = np.random.default_rng(7)
    paths, arrays = [], []
    for i in range(n):
        arr = rng.normal(size=PADDED).astype(dtype)
        path = folder / f"{1000100 + i}.npy"
        np.save(path, arr)
        paths.append(path)
        arrays.append(arr.astype(np.float32))
    return paths, arrays


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_items_have_shape_dtype_values_and_ids(tmp_path, dtype):
    paths, arrays = _caches(tmp_path, dtype=dtype)
    ds = PreprocessedScanDataset(paths, subject_ids=[11, 12, 13])
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"volume", "subject_id"} and item["subject_id"] == 12
    vol = item["volume"]
    assert isinstance(vol, torch.Tensor) and vol.dtype == torch.float32
    assert tuple(vol.shape) == (1, *PADDED) and vol.is_contiguous()
    np.testing.assert_array_equal(vol[0].numpy(), arrays[1])


def test_default_ids_are_file_stems_and_loader_batches(tmp_path):
    paths, arrays = _caches(tmp_path)
    ds = PreprocessedScanDataset([str(p) for p in paths])
    assert [ds[i]["subject_id"] for i in range(3)] == ["1000100", "1000101", "1000102"]
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert tuple(batch["volume"].shape) == (2, 1, *PADDED)
    assert batch["subject_id"] == ["1000100", "1000101"]
    np.testing.assert_array_equal(batch["volume"][1, 0].numpy(), arrays[1])


def test_ids_must_match_paths(tmp_path):
    paths, _ = _caches(tmp_path)
    with pytest.raises(ValueError, match="subject_ids has 2 entries but paths has 3"):
        PreprocessedScanDataset(paths, subject_ids=[1, 2])


def test_missing_file_is_named_at_construction(tmp_path):
    paths, _ = _caches(tmp_path)
    gone = tmp_path / "9999999.npy"
    with pytest.raises(FileNotFoundError, match=rf"1 of 4 preprocessed scans are missing, e\.g\. {gone}"):
        PreprocessedScanDataset([*paths, gone])


def test_file_removed_after_construction_names_item_subject_and_file(tmp_path):
    paths, _ = _caches(tmp_path)
    ds = PreprocessedScanDataset(paths, subject_ids=["a", "b", "c"])
    paths[2].unlink()
    with pytest.raises(FileNotFoundError, match=rf"item 2 \(subject c\): preprocessed scan {paths[2]}"):
        ds[2]
