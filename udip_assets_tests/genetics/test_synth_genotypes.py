"""Synthetic genotypes: config validation, determinism, allele frequencies, LD, Fst, pedigrees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import UdipConfigError
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes

SMALL = dict(n_samples=120, chromosomes=(2, 6), chrom_length_bp=1_000_000)


@pytest.fixture(scope="module")
def sim():
    """200 samples, two 2 Mb chromosomes, 6 sibling and 6 parent-offspring pairs."""
    cfg = GenotypeSimConfig(n_samples=200, chromosomes=(2, 11), chrom_length_bp=2_000_000,
                            chrom_start_bp=(10_000_000, 60_000_000), n_sibling_pairs=6,
                            n_parent_offspring_pairs=6)
    return simulate_genotypes(cfg, seed=7)


def _hudson_fst(dosage: np.ndarray, population: np.ndarray) -> float:
    """Hudson's Fst as in Bhatia et al. (2013), ratio of averages over SNPs."""
    g = dosage.astype(np.float64)
    p1, p2 = g[population == 0].mean(0) / 2, g[population == 1].mean(0) / 2
    n1, n2 = 2 * (population == 0).sum(), 2 * (population == 1).sum()
    num = (p1 - p2) ** 2 - p1 * (1 - p1) / (n1 - 1) - p2 * (1 - p2) / (n2 - 1)
    den = p1 * (1 - p2) + p2 * (1 - p1)
    return float(num.sum() / den.sum())


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(n_samples=1), "n_samples"),
    (dict(n_samples=100, chromosomes=(2, 2)), "chromosomes"),
    (dict(n_samples=100, chromosomes=(23,)), "chromosomes"),
    (dict(n_samples=100, chrom_length_bp=10), "chrom_length_bp"),
    (dict(n_samples=100, chrom_start_bp=(1, 2)), "chrom_start_bp"),
    (dict(n_samples=100, chromosomes=(21,), chrom_start_bp=(45_000_000,)), "chrom_start_bp"),
    (dict(n_samples=100, population_fractions=(0.5, 0.6)), "population_fractions"),
    (dict(n_samples=100, mutation_rate=0.0), "mutation_rate"),
    (dict(n_samples=100, recombination_rate=-1e-8), "recombination_rate"),
    (dict(n_samples=100, min_maf=0.5), "min_maf"),
    (dict(n_samples=100, present_size=10.0), "present_size"),
    (dict(n_samples=100, growth_generations=5_000.0), "growth_generations"),
    (dict(n_samples=100, n_sibling_pairs=-1), "n_sibling_pairs"),
    (dict(n_samples=10, n_sibling_pairs=3, n_parent_offspring_pairs=3), "n_sibling_pairs"),
])
def test_config_rejects_invalid_values_naming_the_field(kwargs, field):
    with pytest.raises(UdipConfigError, match=rf"GenotypeSimConfig\.{field} must be .*, got"):
        GenotypeSimConfig(**kwargs)


def test_config_resolves_defaults():
    cfg = GenotypeSimConfig(n_samples=1300)
    assert cfg.n_sibling_pairs == 26 and cfg.n_parent_offspring_pairs == 26
    assert cfg.chrom_start_bp == (5_000_000,) * 3
    assert isinstance(cfg.chromosomes, tuple)


def test_same_seed_same_cohort_other_seed_differs():
    cfg = GenotypeSimConfig(**SMALL)
    a, b, c = simulate_genotypes(cfg, 3), simulate_genotypes(cfg, 3), simulate_genotypes(cfg, 4)
    np.testing.assert_array_equal(a.dosage, b.dosage)
    pd.testing.assert_frame_equal(a.variants, b.variants)
    pd.testing.assert_frame_equal(a.relatives, b.relatives)
    np.testing.assert_array_equal(a.population, b.population)
    assert a.variants.shape != c.variants.shape or not np.array_equal(a.dosage, c.dosage)


def test_shapes_dtypes_and_variant_table(sim):
    cfg = sim.config
    assert sim.dosage.dtype == np.int8 and sim.dosage.shape == (200, len(sim.variants))
    assert set(np.unique(sim.dosage)) <= {0, 1, 2}
    v = sim.variants
    assert list(v.columns) == ["snp", "chrom", "pos_bp", "a1", "a2", "a1_freq"]
    assert v["snp"].is_unique and v["snp"].str.fullmatch(r"rs\d+").all()
    assert set(v["chrom"]) == {2, 11}
    for chrom, start in zip(cfg.chromosomes, cfg.chrom_start_bp, strict=True):
        pos = v.loc[v["chrom"] == chrom, "pos_bp"].to_numpy()
        assert (np.diff(pos) > 0).all()
        assert pos.min() > start and pos.max() <= start + cfg.chrom_length_bp
    assert (v["a1"] != v["a2"]).all() and set(v["a1"]) | set(v["a2"]) <= set("ACGT")
    assert sim.population.shape == (200,) and set(sim.population) == {0, 1}


def test_a1_frequency_matches_dosage_and_passes_maf_filter(sim):
    freq = sim.dosage.mean(axis=0) / 2
    np.testing.assert_allclose(sim.variants["a1_freq"], freq, atol=1e-12)
    assert ((freq > 0) & (freq < 1)).all()
    assert (np.minimum(freq, 1 - freq) >= sim.config.min_maf).all()
    assert (freq <= 0.5).all()  # a1 is the minor allele


def test_ld_decays_with_distance(sim):
    v = sim.variants
    on2 = (v["chrom"] == 2).to_numpy()
    g = sim.dosage[:, on2].astype(np.float64)
    pos = v.loc[on2, "pos_bp"].to_numpy()
    r2_adjacent = np.mean([np.corrcoef(g[:, k], g[:, k + 1])[0, 1] ** 2 for k in range(0, g.shape[1] - 1, 3)])
    far = np.searchsorted(pos, pos + 1_000_000)
    pairs = [(k, far[k]) for k in range(0, g.shape[1], 3) if far[k] < g.shape[1]]
    r2_far = np.mean([np.corrcoef(g[:, a], g[:, b])[0, 1] ** 2 for a, b in pairs])
    assert r2_adjacent > 0.08
    assert r2_far < 0.02  # ~1/n sampling noise for 200 samples
    assert r2_adjacent > 5 * r2_far


def test_populations_have_target_sizes_and_fst(sim):
    share = np.mean(sim.population == 1)
    assert share == pytest.approx(0.15, abs=0.05)
    fst = _hudson_fst(sim.dosage, sim.population)
    assert 0.04 < fst < 0.16  # T / (T + 2N) = 0.09 with the defaults


def test_relatives_table_and_mendelian_consistency(sim):
    rel = sim.relatives
    assert list(rel.columns) == ["i", "j", "relationship"]
    assert rel["relationship"].value_counts().to_dict() == {"sibling": 6, "parent_offspring": 6}
    assert (rel["i"] < rel["j"]).all() and rel["j"].max() < 200
    assert not pd.concat([rel["i"], rel["j"]]).duplicated().any()  # everyone in at most one pair
    d = sim.dosage
    for row in rel.itertuples():
        opposite_homs = np.sum(np.abs(d[row.i].astype(int) - d[row.j]) == 2)
        assert sim.population[row.i] == sim.population[row.j]
        if row.relationship == "parent_offspring":
            assert opposite_homs == 0  # a parent and child always share an allele
        else:
            assert opposite_homs > 0  # siblings can inherit different haplotypes


def test_progress_reports_each_chromosome():
    messages = []
    simulate_genotypes(GenotypeSimConfig(**SMALL), 1, progress=messages.append)
    assert any("chromosome 2" in m for m in messages) and any("chromosome 6" in m for m in messages)
