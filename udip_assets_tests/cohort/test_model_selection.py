"""Model selection by loci count, and the patience rule."""

from __future__ import annotations

import pytest

from udip_assets.cohort.model_selection import SweepPoint, patience_stop, select_by_loci
from udip_assets.errors import UdipConfigError


def _points(counts: dict[int, int]) -> list[SweepPoint]:
    return [SweepPoint(e, f"m-e{e:04d}", n) for e, n in counts.items()]


def test_most_loci_wins_and_ties_go_earlier():
    pts = _points({10: 3, 20: 7, 30: 7, 40: 5})
    assert select_by_loci(pts).epoch == 20
    pts.append(SweepPoint(30, "m-e0030b", 7, n_significant_snps=50))
    assert select_by_loci(pts).model_id == "m-e0030b"


def test_patience_rule():
    counts = {10: 1, 20: 4, 30: 4, 40: 3, 50: 4, 60: 2, 70: 9}
    assert patience_stop(_points(counts), patience_epochs=30) == 50  # last gain at 20; 50 - 20 >= 30
    assert patience_stop(_points(counts), patience_epochs=100) is None
    assert patience_stop(_points({10: 0, 20: 0}), patience_epochs=10) == 20


def test_errors():
    with pytest.raises(UdipConfigError, match="no checkpoints were evaluated"):
        select_by_loci([])
    with pytest.raises(UdipConfigError, match="patience_epochs must be >= 1, got 0"):
        patience_stop(_points({1: 1}), 0)
