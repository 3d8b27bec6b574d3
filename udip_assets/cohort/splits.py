"""Disjoint train / val / inference splits by subject.

Notes
-----
Each subject's split is a function of the seed and its id alone: a uniform number u is drawn from
a SHA-256 hash of ``"{seed}:{subject_id}"`` and compared with the cumulative fractions. A subject
keeps its split when others join or leave the cohort (a re-run on a grown cohort never moves a
training subject into inference), at the cost of realised proportions that match the targets only
up to sampling noise (binomial, sd ~ sqrt(f(1-f)/n)).

With absolute counts (``train_count``, ``val_count``) the subjects are ranked by u: the
``train_count`` smallest go to train, the next ``val_count`` to val, the rest to inference. A
grown cohort then keeps the counts; a newcomer enters train only if its u is among the smallest,
pushing the subject at the margin to val (or val's to inference), never inference to train. This is
how a demo (or a study) trains on a fixed number of scans whatever the cohort size, as the paper
trained on 4,597 scans while the GWAS grew with the cohort.

The paper's proportions are the defaults: 4,597 train, 1,533 val, 37,376 inference of 43,506 scans.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from udip_assets.errors import UdipConfigError

PAPER_COUNTS = {"train": 4597, "val": 1533, "inference": 37376}
_PAPER_TOTAL = sum(PAPER_COUNTS.values())


@dataclass(frozen=True)
class SplitConfig:
    """Split fractions (inference takes the rest) or absolute counts, and the seed.

    ``train_count`` (with an optional ``val_count``, default 0) replaces the fractions when set.
    """

    train_fraction: float = PAPER_COUNTS["train"] / _PAPER_TOTAL
    val_fraction: float = PAPER_COUNTS["val"] / _PAPER_TOTAL
    seed: int = 0
    train_count: int | None = None
    val_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("train_count", "val_count"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise UdipConfigError(f"{name} must be None or a whole number >= 0, got {value!r}")
        if self.val_count is not None and self.train_count is None:
            raise UdipConfigError("val_count needs train_count; give both counts, or use the fractions")
        for name in ("train_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UdipConfigError(f"{name} must be in [0, 1), got {value}")
        if self.train_fraction + self.val_fraction >= 1.0:
            raise UdipConfigError(
                f"train_fraction + val_fraction must leave room for inference (< 1), got "
                f"{self.train_fraction} + {self.val_fraction}"
            )

    @property
    def inference_fraction(self) -> float:
        return 1.0 - self.train_fraction - self.val_fraction


def subject_uniform(subject_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, subject_id)."""
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(subject_ids: pd.Series, cfg: SplitConfig) -> pd.Series:
    """'train', 'val' or 'inference' for each subject, aligned with ``subject_ids``.

    Raises
    ------
    UdipConfigError
        Absolute counts that leave no subject for inference (the message gives the numbers).
    """
    u = np.array([subject_uniform(str(s), cfg.seed) for s in subject_ids], dtype=np.float64)
    labels = np.array(["train", "val", "inference"], dtype=object)
    if cfg.train_count is None:
        edges = [cfg.train_fraction, cfg.train_fraction + cfg.val_fraction]
        return pd.Series(labels[np.searchsorted(edges, u, side="right")], index=subject_ids.index)
    n_train, n_val = cfg.train_count, cfg.val_count or 0
    if n_train + n_val >= len(u):
        raise UdipConfigError(
            f"train_count {n_train} + val_count {n_val} leave none of the {len(u)} kept subjects for "
            "inference; lower the counts or use train_fraction / val_fraction"
        )
    rank = np.empty(len(u), dtype=np.int64)
    rank[np.argsort(u, kind="stable")] = np.arange(len(u))
    which = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
    return pd.Series(labels[which], index=subject_ids.index)
