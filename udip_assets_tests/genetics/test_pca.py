"""Genetic PCs: population separation, agreement with a full SVD, missing data, thinning, signs."""

from __future__ import annotations

import numpy as np
import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.genetics.pca import genetic_pcs
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes


@pytest.fixture(scope="module")
def sim():
    cfg = GenotypeSimConfig(n_samples=200, chromosomes=(2, 6), chrom_length_bp=1_500_000)
    return simulate_genotypes(cfg, seed=2)


def _reference_pcs(dosage: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Full SVD of the EIGENSTRAT-standardised matrix (mean imputation of missing calls)."""
    g = np.where(dosage < 0, np.nan, dosage).astype(np.float64)
    p = np.nanmean(g, axis=0) / 2
    keep = (p > 0) & (p < 1)
    x = np.nan_to_num((g[:, keep] - 2 * p[keep]) / np.sqrt(2 * p[keep] * (1 - p[keep])))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :n_pcs] * s[:n_pcs], s[:n_pcs] ** 2 / np.sum(s**2)


def test_pc1_separates_the_two_populations(sim):
    scores, ratio = genetic_pcs(sim.dosage, n_pcs=5)
    pc1, pop = scores[:, 0], sim.population
    m0, m1 = pc1[pop == 0].mean(), pc1[pop == 1].mean()
    pooled_sd = np.sqrt((pc1[pop == 0].var() + pc1[pop == 1].var()) / 2)
    assert abs(m1 - m0) > 8 * pooled_sd
    accuracy = np.mean((pc1 > (m0 + m1) / 2) == (pop == (1 if m1 > m0 else 0)))
    assert accuracy > 0.95
    assert ratio[0] > 3 * ratio[1]  # one axis of ancestry dominates


def test_matches_full_svd_reference_with_missing_data(sim):
    rng = np.random.default_rng(1)
    d = sim.dosage.copy()
    d[rng.random(d.shape) < 0.03] = -1
    scores, ratio = genetic_pcs(d, n_pcs=4)
    ref_scores, ref_ratio = _reference_pcs(d, 4)
    np.testing.assert_allclose(ratio, ref_ratio, rtol=1e-4)
    for k in range(4):  # eigenvectors agree up to sign
        sign = np.sign(scores[:, k] @ ref_scores[:, k])
        tol = 1e-3 * np.abs(ref_scores[:, k]).max()
        np.testing.assert_allclose(scores[:, k], sign * ref_scores[:, k], atol=tol)
    scores_nan, _ = genetic_pcs(np.where(d < 0, np.nan, d), n_pcs=4)
    np.testing.assert_allclose(scores_nan, scores, atol=1e-8)


def test_sign_convention_and_determinism(sim):
    a, _ = genetic_pcs(sim.dosage, n_pcs=3)
    b, _ = genetic_pcs(sim.dosage, n_pcs=3)
    np.testing.assert_array_equal(a, b)
    largest = a[np.argmax(np.abs(a), axis=0), np.arange(3)]
    assert (largest > 0).all()


def test_randomized_agrees_with_exact_on_pc1(sim):
    exact, r_exact = genetic_pcs(sim.dosage, n_pcs=3, method="exact")
    rand, r_rand = genetic_pcs(sim.dosage, n_pcs=3, method="randomized", seed=3)
    assert abs(np.corrcoef(exact[:, 0], rand[:, 0])[0, 1]) > 0.999
    assert r_rand[0] == pytest.approx(r_exact[0], rel=1e-3)
    again, _ = genetic_pcs(sim.dosage, n_pcs=3, method="randomized", seed=3)
    np.testing.assert_array_equal(rand, again)


def test_thinning_uses_every_kth_snp(sim):
    thinned, _ = genetic_pcs(sim.dosage, n_pcs=2, thin=3)
    direct, _ = genetic_pcs(sim.dosage[:, ::3], n_pcs=2)
    np.testing.assert_allclose(thinned, direct, atol=1e-10)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(n_pcs=0), r"n_pcs must be an integer in \[1, n_samples - 1 = 199\], got 0"),
    (dict(n_pcs=200), r"n_pcs must be .* got 200"),
    (dict(thin=0), r"thin must be an integer >= 1"),
    (dict(method="svd"), r"method must be 'auto', 'exact' or 'randomized', got 'svd'"),
])
def test_invalid_arguments(sim, kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        genetic_pcs(sim.dosage, **kwargs)
