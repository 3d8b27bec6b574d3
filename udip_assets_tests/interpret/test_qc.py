"""Reconstruction QC: extreme outliers by the paper's 3-IQR rule, figures written."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from udip_assets.errors import UdipConfigError
from udip_assets.interpret.qc import DecoderSpreadAccumulator, extreme_outliers, loss_figure, udip_violin_figure


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


def test_effective_rank_of_a_rank_one_code_is_one():
    from udip_assets.interpret.qc import effective_rank

    rng = np.random.default_rng(2)
    x = np.outer(rng.normal(size=500), rng.normal(size=32)) + 1e-4 * rng.normal(size=(500, 32))
    spec = effective_rank(x)
    assert spec.participation_ratio == pytest.approx(1.0, abs=1e-3)
    assert spec.n_pcs_90 == 1 and spec.pc1_fraction > 0.999
    assert (spec.n_subjects, spec.n_dims) == (500, 32) and len(spec.explained) == 16


def test_effective_rank_of_isotropic_noise_is_close_to_n_dims():
    from udip_assets.interpret.qc import effective_rank

    d = 16
    spec = effective_rank(np.random.default_rng(3).normal(size=(20_000, d)))
    # Sampling spreads the eigenvalues (Marchenko-Pastur width ~ 2 sqrt(d/n)): ratio ~ d / (1 + d/n).
    assert spec.participation_ratio == pytest.approx(d, rel=0.01)
    assert spec.n_pcs_90 in (14, 15) and spec.n_pcs_99 == d
    assert sum(spec.explained) == pytest.approx(1.0)


def test_effective_rank_matches_eigvalsh_of_np_cov_on_a_diagonal_spectrum():
    from udip_assets.interpret.qc import effective_rank

    sd = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    x = np.random.default_rng(4).normal(size=(3_000, sd.size)) * sd + 7.0
    lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    frac = lam / lam.sum()
    spec = effective_rank(x)
    assert spec.participation_ratio == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-10)
    assert spec.explained == pytest.approx(tuple(frac), rel=1e-10) and len(spec.explained) == sd.size
    assert spec.pc1_fraction == pytest.approx(frac[0], rel=1e-10)
    assert spec.n_pcs_90 == int(np.argmax(np.cumsum(frac) >= 0.90)) + 1
    assert spec.n_pcs_99 == int(np.argmax(np.cumsum(frac) >= 0.99)) + 1
    # the population spectrum 16, 4, 1, ... : PC1 holds 16 / 21.33 = 75 %, two PCs 94 %, four 99.6 %
    assert (spec.n_pcs_90, spec.n_pcs_99) == (2, 4)
    assert spec.pc1_fraction == pytest.approx(16 / (sd**2).sum(), abs=0.02)


@pytest.mark.parametrize("udips, message", [
    (np.zeros(10), "2-D"),
    (np.zeros((1, 8)), "at least 2 rows"),
    (np.zeros((5, 0)), "at least 2 rows"),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 0.0]]), "finite, got 1 NaN/inf"),
    (np.ones((6, 3)), "udips must vary"),
])
def test_effective_rank_refuses_bad_input(udips, message):
    from udip_assets.interpret.qc import effective_rank

    with pytest.raises(UdipConfigError, match=message) as info:
        effective_rank(udips)
    assert "udips" in str(info.value)


# ------------------------------------------------------------------------------ decoder spread
def _spread(originals, recons, mask):
    acc = DecoderSpreadAccumulator(mask)
    for x, r in zip(originals, recons, strict=True):
        acc.update(x, r)
    return acc.result()


def test_decoder_spread_matches_a_two_pass_numpy_computation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5, 6, 4))
    r = 0.6 * x + rng.normal(scale=0.3, size=x.shape) + 2.0  # an offset must not count as a departure
    mask = rng.random((5, 6, 4)) < 0.6
    got = _spread(x, r, mask)
    xv, rv = x[:, mask], r[:, mask]  # (n, v), centred over subjects explicitly
    dx, dr = xv - xv.mean(0), rv - rv.mean(0)
    assert got.n_subjects == 7 and got.n_voxels == mask.sum()
    np.testing.assert_allclose(got.input_variance, xv.var(axis=0).mean(), rtol=1e-12)
    np.testing.assert_allclose(got.recon_variance, rv.var(axis=0).mean(), rtol=1e-12)
    np.testing.assert_allclose(got.deviation_r2, 1 - ((dx - dr) ** 2).sum() / (dx**2).sum(), rtol=1e-12)


def test_decoder_spread_of_hand_built_decoders():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 4, 4, 4)).astype(np.float32)
    mask = np.ones((4, 4, 4), dtype=bool)
    mean = x.mean(0, keepdims=True)
    perfect = _spread(x, x, mask)
    assert perfect.deviation_r2 == pytest.approx(1.0)
    assert perfect.recon_variance == pytest.approx(perfect.input_variance)
    template = _spread(x, np.repeat(mean, 6, axis=0), mask)  # the cohort mean for everyone
    assert template.deviation_r2 == pytest.approx(0.0, abs=1e-6)
    assert template.recon_variance == pytest.approx(0.0, abs=1e-9)
    half = _spread(x, mean + 0.5 * (x - mean), mask)  # every departure at half its size
    assert half.deviation_r2 == pytest.approx(0.75, rel=1e-5)
    assert half.recon_variance / half.input_variance == pytest.approx(0.25, rel=1e-5)
    # only the mask's voxels count: garbage outside it changes nothing
    noisy = x.copy()
    mask[0] = False
    noisy[:, 0] = 1e6
    assert _spread(noisy, x, mask).deviation_r2 == pytest.approx(1.0)


def test_decoder_spread_refuses_bad_input():
    mask = np.ones((2, 2, 2), dtype=bool)
    acc = DecoderSpreadAccumulator(mask)
    with pytest.raises(UdipConfigError, match="mask's shape"):
        acc.update(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)))
    acc.update(np.ones((1, 2, 2, 2)), np.ones((2, 2, 2)))  # a leading channel axis is accepted
    with pytest.raises(UdipConfigError, match="at least 2 scans"):
        acc.result()
    acc.update(np.ones((2, 2, 2)), np.ones((2, 2, 2)))
    with pytest.raises(UdipConfigError, match="do not vary"):
        acc.result()
    with pytest.raises(UdipConfigError, match="boolean brain mask"):
        DecoderSpreadAccumulator(np.zeros((2, 2, 2), dtype=bool))
