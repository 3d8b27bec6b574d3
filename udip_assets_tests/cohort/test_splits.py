"""Splits: disjoint, seeded, stable when the cohort grows, near the target proportions."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from udip_assets.cohort.splits import SplitConfig, assign_splits
from udip_assets.errors import UdipConfigError


def _ids(n: int, start: int = 1_000_000) -> pd.Series:
    return pd.Series([str(start + i) for i in range(n)])


def test_proportions_match_targets_within_sampling_noise():
    cfg = SplitConfig(train_fraction=0.3, val_fraction=0.1, seed=3)
    counts = assign_splits(_ids(20_000), cfg).value_counts()
    observed = [counts["train"], counts["val"], counts["inference"]]
    expected = np.array([0.3, 0.1, 0.6]) * 20_000
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_paper_defaults_are_paper_proportions():
    cfg = SplitConfig()
    assert cfg.train_fraction == pytest.approx(4597 / 43506)
    assert cfg.val_fraction == pytest.approx(1533 / 43506)


def test_same_seed_same_split_and_growth_does_not_move_anyone():
    cfg = SplitConfig(0.2, 0.1, seed=7)
    small = assign_splits(_ids(500), cfg)
    grown = assign_splits(_ids(800), cfg)
    assert (grown.iloc[:500].to_numpy() == small.to_numpy()).all()
    other_seed = assign_splits(_ids(500), SplitConfig(0.2, 0.1, seed=8))
    assert (other_seed != small).mean() > 0.2


@pytest.mark.parametrize(
    "kwargs, field",
    [({"train_fraction": -0.1}, "train_fraction"), ({"val_fraction": 1.0}, "val_fraction"),
     ({"train_fraction": 0.6, "val_fraction": 0.4}, "leave room")],
)
def test_invalid_fractions_are_named(kwargs, field):
    with pytest.raises(UdipConfigError, match=field):
        SplitConfig(**kwargs)


def test_absolute_counts_give_exact_sizes_ranked_by_the_subject_hash():
    from udip_assets.cohort.splits import subject_uniform

    ids = _ids(1_000)
    split = assign_splits(ids, SplitConfig(seed=2, train_count=120, val_count=40))
    assert split.value_counts().to_dict() == {"inference": 840, "train": 120, "val": 40}
    u = np.array([subject_uniform(s, 2) for s in ids])
    assert u[(split == "train").to_numpy()].max() < u[(split == "val").to_numpy()].min()
    assert u[(split == "val").to_numpy()].max() < u[(split == "inference").to_numpy()].min()


def test_growth_with_counts_never_moves_a_gwas_subject_into_training():
    cfg = SplitConfig(seed=5, train_count=50, val_count=20)
    small = assign_splits(_ids(400), cfg)
    grown = assign_splits(_ids(900), cfg).iloc[:400]
    assert not ((small == "inference") & (grown != "inference")).any()
    assert not ((small == "val") & (grown == "train")).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"train_count": -1}, "train_count must be None or a whole number >= 0, got -1"),
     ({"train_count": 1.5}, "train_count must be None or a whole number"),
     ({"val_count": 10}, "val_count needs train_count")],
)
def test_invalid_counts_are_named(kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        SplitConfig(**kwargs)


def test_counts_that_leave_no_gwas_subject_are_refused():
    with pytest.raises(UdipConfigError, match="train_count 90 \\+ val_count 10 leave none of the 100 kept subjects"):
        assign_splits(_ids(100), SplitConfig(train_count=90, val_count=10))
