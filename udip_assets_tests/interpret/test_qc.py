"""Reconstruction QC: extreme outliers by the paper's 3-IQR rule, figures written."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from udip_assets.errors import UdipConfigError
from udip_assets.interpret.qc import extreme_outliers, loss_figure, udip_violin_figure


def test_fences_and_outliers_match_scipy_iqr():
    rng = np.random.default_rng(1)
    losses = pd.Series(np.r_[rng.normal(0.25, 0.01, 500), [0.6, 0.01]], index=[f"s{i}" for i in range(502)])
    summary, mask = extreme_outliers(losses)
    iqr = stats.iqr(losses)
    q1, q3 = np.percentile(losses, [25, 75])
    assert summary.upper_fence == pytest.approx(q3 + 3 * iqr)
    assert summary.lower_fence == pytest.approx(q1 - 3 * iqr)
    assert set(losses.index[mask]) == {"s500", "s501"}
    assert summary.n_outliers == 2


def test_non_finite_losses_refused():
    with pytest.raises(UdipConfigError, match="finite"):
        extreme_outliers(pd.Series([0.1, np.nan]))


def test_figures_are_pngs(tmp_path):
    rng = np.random.default_rng(0)
    losses = pd.Series(rng.normal(0.3, 0.02, 200))
    summary, _ = extreme_outliers(losses)
    for path in (loss_figure(losses, summary, tmp_path / "loss.png"),
                 udip_violin_figure(rng.normal(size=(50, 128)), tmp_path / "violin.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
