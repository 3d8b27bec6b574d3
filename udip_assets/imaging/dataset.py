"""A torch dataset over preprocessed (padded, masked, z-scored) scan caches.

Notes
-----
Each item is one cache file read whole and widened to float32 (see
:func:`udip_assets.imaging.preprocess.load_preprocessed`: ~2 ms per 1 mm scan from the page cache),
so a ``DataLoader`` with a few workers keeps a GPU fed without holding the cohort in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from udip_assets.errors import UdipConfigError
from udip_assets.imaging.preprocess import load_preprocessed


class PreprocessedScanDataset(Dataset):
    """Preprocessed volumes, one per cache file, with their subject ids.

    Parameters
    ----------
    paths : sequence of str or Path
        Cache files written by :func:`~udip_assets.imaging.preprocess.preprocess_scan`, all of the
        same padded shape.
    subject_ids : sequence, optional
        One id per path (the UK Biobank eid); defaults to each file's stem.
    check_files : bool
        If True (default), refuse missing files at construction, before any training starts.

    Raises
    ------
    ValueError
        ``subject_ids`` and ``paths`` differ in length.
    FileNotFoundError
        ``check_files`` and some cache files are missing (the first few are named).

    Notes
    -----
    ``__getitem__(i)`` returns ``{'volume': tensor (1, X', Y', Z') float32, 'subject_id': id}``;
    the default collate stacks volumes into (B, 1, X', Y', Z') and ids into a list or tensor.
    """

    def __init__(self, paths: Sequence[str | Path], subject_ids: Sequence | None = None,
                 check_files: bool = True) -> None:
        self.paths = [Path(p) for p in paths]
        if subject_ids is None:
            subject_ids = [p.stem for p in self.paths]
        if len(subject_ids) != len(self.paths):
            raise ValueError(f"subject_ids has {len(subject_ids)} entries but paths has {len(self.paths)}; "
                             "pass one subject id per cache file (or none)")
        self.subject_ids = list(subject_ids)
        if check_files:
            missing = [str(p) for p in self.paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(self.paths)} preprocessed scans are missing, e.g. "
                    f"{', '.join(missing[:3])}; run preprocessing for this cohort or drop these subjects")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        """The volume ``(1, X', Y', Z')`` float32 and subject id of item ``index``."""
        path = self.paths[index]
        try:
            volume = load_preprocessed(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"item {index} (subject {self.subject_ids[index]}): {exc}") from exc
        return {"volume": torch.from_numpy(volume).unsqueeze(0),  # (1, X', Y', Z')
                "subject_id": self.subject_ids[index]}


RESIDENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def device_free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: CUDA's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return int(fields["MemAvailable"].split()[0]) * 1024


class ResidentScans:
    """Every scan of a dataset loaded once onto a device, in one dtype; batches are index gathers.

    Parameters
    ----------
    dataset : PreprocessedScanDataset
    device : torch.device
        Where the scans are held (the training device).
    dtype : str
        'float32' (bit-identical batches to the dataset's), 'float16' or 'bfloat16' (half the
        memory; each voxel rounded to 11 / 8 significant bits, widened to float32 per batch).
    max_fraction : float
        Refuse when the scans would take more than this share of the device's free memory.
    free_bytes : int, optional
        Free memory to check against (default: :func:`device_free_bytes`).
    show_progress : bool

    Raises
    ------
    UdipConfigError
        Unknown dtype, or the scans do not fit (naming their size, the free memory and the fix).

    Notes
    -----
    The paper's 4,597 training scans at 1 mm (182x224x182) take 68 GB in float16: they fit beside
    the model on one H200 (139 GB), not on an 80 GB H100. Under DDP every process holds every scan
    (each epoch's order spans the whole set).
    """

    def __init__(self, dataset: PreprocessedScanDataset, device: torch.device | str, dtype: str = "float16",
                 max_fraction: float = 0.8, free_bytes: int | None = None, show_progress: bool = False) -> None:
        if dtype not in RESIDENT_DTYPES:
            raise UdipConfigError(f"resident dtype must be one of {sorted(RESIDENT_DTYPES)}, got {dtype!r}")
        device = torch.device(device)
        first = dataset[0]["volume"]  # (1, X, Y, Z)
        need = len(dataset) * first.numel() * RESIDENT_DTYPES[dtype].itemsize
        free = device_free_bytes(device) if free_bytes is None else free_bytes
        if need > max_fraction * free:
            raise UdipConfigError(
                f"resident={dtype!r}: {len(dataset)} scans of {tuple(first.shape[1:])} take {need / 2**30:.1f} GiB on "
                f"{device}, more than {max_fraction:.0%} of its {free / 2**30:.1f} GiB free; use resident='float16' "
                "(half of float32), fewer scans per process, or resident='none' to read them from disk each epoch")
        self.volumes = torch.empty((len(dataset), *first.shape), dtype=RESIDENT_DTYPES[dtype], device=device)
        for i in tqdm(range(len(dataset)), desc=f"scans to {device}", unit="scan", disable=not show_progress):
            self.volumes[i] = (first if i == 0 else dataset[i]["volume"]).to(device, self.volumes.dtype)
        self.subject_ids = list(dataset.subject_ids)

    def __len__(self) -> int:
        return len(self.subject_ids)

    def batch(self, indices: Sequence[int]) -> dict:
        """``{'volume': (B, 1, X, Y, Z) float32 on the device, 'subject_id': [...]}`` of ``indices``."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.volumes.device)
        return {"volume": self.volumes.index_select(0, index).float(),
                "subject_id": [self.subject_ids[i] for i in indices]}


class ResidentLoader:
    """Batches of a :class:`ResidentScans` in the order of ``indices`` (a sampler or a list), as a
    ``DataLoader`` without workers would give them (``drop_last=False``)."""

    def __init__(self, scans: ResidentScans, indices, batch_size: int) -> None:
        self.scans, self.indices, self.batch_size = scans, indices, batch_size

    def __iter__(self):
        order = list(self.indices)
        for start in range(0, len(order), self.batch_size):
            yield self.scans.batch(order[start:start + self.batch_size])

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)
