"""Tiny synthetic scan caches for the training, checkpoint, DDP and extraction tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from udip_assets.model.config import preset


@pytest.fixture
def one_thread():
    """Two cores are shared: keep torch to one thread (``pytestmark = usefixtures('one_thread')``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blob_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth "brain": an ellipsoid holding a few Gaussian blobs, z-scored inside, exact 0 outside.

    Returns
    -------
    ndarray (X, Y, Z) float32
    """
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    size = np.array(shape, dtype=np.float64)
    centre = size / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = size * rng.uniform(0.3, 0.4, 3)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0
    intensity = np.zeros(shape)
    for _ in range(3):
        c = centre + rng.uniform(-0.5, 0.5, 3) * radii
        width = rng.uniform(2.5, 5.0)
        dist2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        intensity += rng.uniform(0.5, 2.0) * np.exp(-dist2 / (2 * width ** 2))
    brain = intensity[inside]
    out = np.zeros(shape, dtype=np.float32)
    out[inside] = (brain - brain.mean()) / brain.std()
    return out


def write_blob_scans(directory: Path, n: int, shape: tuple[int, int, int], seed: int) -> list[Path]:
    """``n`` float16 .npy caches of :func:`blob_volume` (as the preprocessing writes them)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = directory / f"{1000000 + i}.npy"
        np.save(path, blob_volume(shape, rng).astype(np.float16))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def blob_scans(tmp_path_factory) -> dict[str, list[Path]]:
    """8 training, 4 validation and 3 inference caches on the tiny preset's 28x32x28 grid."""
    root = tmp_path_factory.mktemp("blob_scans")
    shape = preset("tiny")[0].volume_shape
    return {"train": write_blob_scans(root / "train", 8, shape, seed=1),
            "val": write_blob_scans(root / "val", 4, shape, seed=2),
            "inference": write_blob_scans(root / "inference", 3, shape, seed=3)}
