"""Disjoint train / val / inference splits by subject.

Notes
-----
Each subject's split is a function of the seed and its id alone: a uniform number u is drawn from
a SHA-256 hash of ``"{seed}:{subject_id}"`` and compared with the cumulative fractions. A subject
keeps its split when others join or leave the cohort (a re-run on a grown cohort never moves a
training subject into inference), at the cost of realised proportions that match the targets only
up to sampling noise (binomial, sd ~ sqrt(f(1-f)/n)).

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
    """Split fractions (inference takes the rest) and the seed."""

    train_fraction: float = PAPER_COUNTS["train"] / _PAPER_TOTAL
    val_fraction: float = PAPER_COUNTS["val"] / _PAPER_TOTAL
    seed: int = 0

    def __post_init__(self) -> None:
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
    """'train', 'val' or 'inference' for each subject, aligned with ``subject_ids``."""
    u = np.array([subject_uniform(str(s), cfg.seed) for s in subject_ids], dtype=np.float64)
    edges = [cfg.train_fraction, cfg.train_fraction + cfg.val_fraction]
    labels = np.array(["train", "val", "inference"], dtype=object)
    return pd.Series(labels[np.searchsorted(edges, u, side="right")], index=subject_ids.index)
