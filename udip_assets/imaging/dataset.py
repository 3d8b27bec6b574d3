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
