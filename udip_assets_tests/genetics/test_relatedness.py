"""KING-robust kinship against a per-pair reference, planted relatives, ukb_rel files, unrelated selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import GenotypeError
from udip_assets.genetics.relatedness import (
    king_all_pairs,
    king_kinship,
    read_ukb_rel,
    related_pairs_table,
    select_unrelated,
    write_ukb_rel,
)
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes


@pytest.fixture(scope="module")
def sim():
    """300 samples, 3 x 4 Mb; a 4x recombination rate gives the genealogical averaging of ~3 x 16 Mb."""
    cfg = GenotypeSimConfig(n_samples=300, chromosomes=(2, 6, 11), chrom_length_bp=4_000_000,
                            recombination_rate=1e-7, n_sibling_pairs=8, n_parent_offspring_pairs=8)
    return simulate_genotypes(cfg, seed=5)


@pytest.fixture(scope="module")
def phi(sim):
    return king_all_pairs(sim.dosage)


def _king_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Manichaikul et al. (2010) between-family KING-robust estimator, written from its counts."""
    typed = (x >= 0) & (y >= 0)
    x, y = x[typed], y[typed]
    n_aa_aa = np.sum((x == 1) & (y == 1))
    n_opposite = np.sum(((x == 0) & (y == 2)) | ((x == 2) & (y == 0)))
    het_i, het_j = np.sum(x == 1), np.sum(y == 1)
    if het_i > het_j:
        het_i, het_j = het_j, het_i
    return (n_aa_aa - 2 * n_opposite) / (2 * het_i) + 0.5 - 0.25 * (het_i + het_j) / het_i


def _ids(n: int) -> list[str]:
    return [str(1_000_000 + k) for k in range(n)]


def test_vectorised_matches_per_pair_loop_with_missing(sim):
    rng = np.random.default_rng(0)
    d = sim.dosage[:40].copy()
    d[rng.random(d.shape) < 0.05] = -1
    d[3, :] = np.where(rng.random(d.shape[1]) < 0.5, -1, d[3])  # one sample with half its calls missing
    got = king_all_pairs(d)
    for i in range(40):
        for j in range(i + 1, 40):
            ref = _king_reference(d[i], d[j])
            assert got[i, j] == pytest.approx(ref, abs=1e-9)
            assert got[j, i] == pytest.approx(ref, abs=1e-9)
    assert king_kinship(d[0], d[1]) == pytest.approx(_king_reference(d[0], d[1]), abs=1e-12)
    np.testing.assert_array_equal(np.diag(got), 0.5)
    # float dosage with NaN is the same input as int8 with -1
    np.testing.assert_allclose(king_all_pairs(np.where(d < 0, np.nan, d)), got, atol=1e-12)


def test_duplicate_sample_has_kinship_one_half(sim):
    assert king_kinship(sim.dosage[0], sim.dosage[0]) == pytest.approx(0.5)


def test_planted_relatives_and_unrelated_pairs(sim, phi):
    rel = sim.relatives
    sibs = rel[rel.relationship == "sibling"]
    po = rel[rel.relationship == "parent_offspring"]
    k_sib, k_po = phi[sibs.i, sibs.j], phi[po.i, po.j]
    assert 0.18 < k_sib.mean() < 0.32 and ((k_sib > 0.15) & (k_sib < 0.35)).all()
    assert 0.2 < k_po.mean() < 0.3 and ((k_po > 0.177) & (k_po < 0.354)).all()
    related = np.zeros_like(phi, dtype=bool)
    related[rel.i, rel.j] = True
    iu = np.triu_indices(len(phi), 1)
    pop = sim.population
    unrelated = ~related[iu] & (pop[iu[0]] == pop[iu[1]])
    k_unrel = phi[iu][unrelated]
    assert abs(np.mean(k_unrel)) < 0.04 and abs(np.median(k_unrel)) < 0.04
    assert np.mean(np.abs(k_unrel) < 0.04) > 0.9
    assert np.mean(k_unrel > 0.0884) < 0.001  # second degree or closer: almost never by chance


def test_related_pairs_table_lists_planted_pairs_with_hethet_ibs0(sim, phi):
    ids = _ids(sim.n_samples)
    table = related_pairs_table(ids, sim.dosage)
    assert list(table.columns) == ["ID1", "ID2", "HetHet", "IBS0", "Kinship"]
    assert (table["Kinship"] > 0.0442).all()
    listed = set(zip(table.ID1, table.ID2, strict=True))
    for row in sim.relatives.itertuples():
        assert (ids[row.i], ids[row.j]) in listed
    k = table.set_index(["ID1", "ID2"])
    d = sim.dosage
    for row in sim.relatives.itertuples():
        entry = k.loc[(ids[row.i], ids[row.j])]
        assert entry.HetHet == pytest.approx(np.mean((d[row.i] == 1) & (d[row.j] == 1)))
        assert entry.IBS0 == pytest.approx(np.mean(np.abs(d[row.i].astype(int) - d[row.j]) == 2))
        assert entry.Kinship == pytest.approx(phi[row.i, row.j])
        if row.relationship == "parent_offspring":
            assert entry.IBS0 == 0.0
    with pytest.raises(GenotypeError, match="ids has 2 entries but dosage has 300 rows"):
        related_pairs_table(["a", "b"], sim.dosage)


def test_ukb_rel_round_trip(tmp_path):
    df = pd.DataFrame({"ID1": ["1000001", "1000002"], "ID2": ["1000005", "1000009"],
                       "HetHet": [0.081, 0.0712], "IBS0": [0.0, 0.0123], "Kinship": [0.2501, 0.1234]})
    path = write_ukb_rel(tmp_path / "ukb_rel.dat", df)
    assert path.read_text().splitlines()[0] == "ID1 ID2 HetHet IBS0 Kinship"
    assert path.read_text().splitlines()[1] == "1000001 1000005 0.0810 0.0000 0.2501"
    pd.testing.assert_frame_equal(read_ukb_rel(path), df, atol=1e-4)
    with pytest.raises(GenotypeError, match="does not exist"):
        read_ukb_rel(tmp_path / "missing.dat")


def test_select_unrelated_hand_made_graph():
    rel = pd.DataFrame({
        "ID1": ["a", "c", "d", "f", "a", "x"],
        "ID2": ["b", "d", "e", "g", "h", "a"],
        "Kinship": [0.25, 0.24, 0.26, 0.05, 0.09, 0.5],
    })
    ids = ["a", "b", "c", "d", "e", "f", "g", "h"]
    kept, dropped = select_unrelated(ids, rel)
    # a has two relatives (b, h) and goes; d is the centre of c-d-e; f-g is below threshold;
    # x is not a candidate, so its pair is ignored
    assert set(dropped) == {"a", "d"}
    assert kept == ["b", "c", "e", "f", "g", "h"]
    assert dropped["a"] == "related to b (kinship 0.250 > 0.0884); and 1 other relative(s)"
    assert dropped["d"].startswith("related to e (kinship 0.260 > 0.0884)")
    # an isolated pair loses exactly one member, chosen deterministically (the smaller ID)
    kept, dropped = select_unrelated(["p", "q"], pd.DataFrame({"ID1": ["q"], "ID2": ["p"], "Kinship": [0.3]}))
    assert kept == ["q"] and list(dropped) == ["p"]


def test_select_unrelated_on_simulated_cohort(sim):
    ids = _ids(sim.n_samples)
    table = related_pairs_table(ids, sim.dosage)
    kept, dropped = select_unrelated(ids, table)
    kept_set = set(kept)
    above = table[table.Kinship > 0.0884]
    assert not any(a in kept_set and b in kept_set for a, b in zip(above.ID1, above.ID2, strict=True))
    for row in sim.relatives.itertuples():  # exactly one of each planted pair goes
        assert (ids[row.i] in kept_set) != (ids[row.j] in kept_set)
    assert len(sim.relatives) <= len(dropped) <= len(above)  # at most one drop per related pair
    assert len(kept) + len(dropped) == sim.n_samples
