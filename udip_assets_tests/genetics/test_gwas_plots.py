"""Manhattan and QQ plots: the QQ points against scipy.stats, both figures written as PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from udip_assets.errors import SummaryStatsError
from udip_assets.genetics.gwas_plots import manhattan_figure, qq_figure, qq_points


def test_qq_points_are_beta_order_statistics_and_lambda_is_the_chi2_median_ratio():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=3000), [1e-12, 1e-30, 0.0, np.nan]])
    expected, observed, lower, upper, lam, n = qq_points(p)
    finite = np.sort(p[np.isfinite(p)])
    assert n == finite.size and len(expected) == n  # below 20,000 p-values none is thinned
    kk = np.arange(1, n + 1)
    np.testing.assert_allclose(observed, -np.log10(np.maximum(finite, 1e-300)), rtol=1e-12)
    np.testing.assert_allclose(expected, -np.log10(stats.beta.median(kk, n - kk + 1)), rtol=1e-10)
    np.testing.assert_allclose(lower, -np.log10(stats.beta.ppf(0.975, kk, n - kk + 1)), rtol=1e-10)
    np.testing.assert_allclose(upper, -np.log10(stats.beta.ppf(0.025, kk, n - kk + 1)), rtol=1e-10)
    assert lam == pytest.approx(np.median(stats.chi2.isf(finite, 1)) / stats.chi2.ppf(0.5, 1), rel=1e-12)
    assert observed.max() == pytest.approx(300.0)  # p = 0 drawn at 1e-300


def test_qq_of_a_minp_is_sidak_adjusted():
    p = np.array([0.01, 0.2, 0.5])
    _, observed, _, _, _, _ = qq_points(p, min_of=4)
    np.testing.assert_allclose(np.sort(observed)[::-1], -np.log10(1 - (1 - np.sort(p)) ** 4), rtol=1e-12)


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(1)
    minp = pd.DataFrame({"chrom": np.repeat(["2", "11", "X"], 200), "pos_bp": np.tile(np.arange(200) * 1000, 3),
                         "p": rng.uniform(size=600), "dim": rng.integers(0, 128, 600)})
    man = manhattan_figure(minp, tmp_path / "m.png", sig_p=5e-8 / 128, n_dims=128)
    qq = qq_figure(minp["p"].to_numpy(), tmp_path / "q.png", min_of=128)
    for path in (man, qq):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(SummaryStatsError, match="lacks"):
        manhattan_figure(pd.DataFrame({"chrom": ["1"], "p": [0.5]}), tmp_path / "m.png")
    with pytest.raises(SummaryStatsError, match="no finite p-values"):
        qq_figure(np.array([np.nan]), tmp_path / "q.png")


def test_many_p_values_are_thinned_only_below_the_threshold():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=100_000)
    expected, observed, _, _, _, n = qq_points(p)
    assert n == 100_000 and len(observed) < 25_000
    assert (observed >= 2).sum() == (p <= 0.01).sum()  # every point above -log10 p = 2 is drawn
    assert np.all(np.diff(expected) <= 0) and expected[0] == pytest.approx(-np.log10(stats.beta.median(1, n)))
