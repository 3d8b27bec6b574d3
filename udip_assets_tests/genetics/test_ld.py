"""LD (r²) from PLINK files: numpy and PLINK 1.9 references, windows, missing calls, edge cases."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import GenotypeError, UdipConfigError
from udip_assets.genetics.ld import LDCalculator
from udip_assets.genetics.plink import write_plink
from udip_assets.genetics.synth_genotypes import GenotypeSimConfig, simulate_genotypes

PLINK = shutil.which("plink1.9")


def _variants(chrom, pos) -> pd.DataFrame:
    n = len(pos)
    return pd.DataFrame({"snp": [f"rs{c}_{p}" for c, p in zip(chrom, pos, strict=True)], "chrom": chrom,
                         "pos_bp": pos, "a1": ["A"] * n, "a2": ["G"] * n})


def _simulated(tmp_path, n_samples=300, length_bp=300_000, missing=0.0, seed=3):
    """A coalescent fileset (realistic LD), optionally with missing calls; returns (prefix, dosage)."""
    cfg = GenotypeSimConfig(n_samples=n_samples, chromosomes=(6,), chrom_length_bp=length_bp,
                            n_sibling_pairs=0, n_parent_offspring_pairs=0)
    sim = simulate_genotypes(cfg, seed=seed)
    d = sim.dosage.astype(np.float64)
    d[np.random.default_rng(seed).random(d.shape) < missing] = np.nan
    write_plink(tmp_path / "g", [f"s{i}" for i in range(d.shape[0])], d, sim.variants)
    return tmp_path / "g", d


def _pairwise_complete_r2(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(x) & ~np.isnan(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1] ** 2)


def test_genotype_r2_equals_numpy_corrcoef_on_complete_data(tmp_path):
    prefix, d = _simulated(tmp_path, length_bp=100_000)
    ref = np.nan_to_num(np.corrcoef(d.T) ** 2)  # monomorphic SNPs cannot occur (MAF >= 1%)
    # tiny blocks and cache: windows cross block borders and blocks are evicted and re-read
    ld = LDCalculator(prefix, block_variants=7, cache_mb=0.001, window_bp=10**9)
    np.testing.assert_allclose(ld.r2_matrix(np.arange(d.shape[1])), ref, atol=1e-12)
    np.testing.assert_allclose(ld.r2_with(5, np.arange(d.shape[1])), ref[5], atol=1e-12)
    snps = ld.variants["snp"].tolist()
    np.testing.assert_allclose(ld.r2_with(snps[9], snps[:20]), ref[9, :20], atol=1e-12)
    for (idx, r2), i in zip(ld.window_r2([0, 17, d.shape[1] - 1]), [0, 17, d.shape[1] - 1], strict=True):
        np.testing.assert_array_equal(idx, np.arange(d.shape[1]))
        np.testing.assert_allclose(r2, ref[i], atol=1e-12)


def test_missing_calls_use_pairwise_complete_samples(tmp_path):
    prefix, d = _simulated(tmp_path, missing=0.1, length_bp=60_000)
    ld = LDCalculator(prefix, window_bp=10**9)
    got = ld.r2_matrix(np.arange(40))
    ref = np.array([[_pairwise_complete_r2(d[:, i], d[:, j]) for j in range(40)] for i in range(40)])
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_sample_subset_matches_the_subset_alone(tmp_path):
    prefix, d = _simulated(tmp_path, length_bp=50_000)
    keep = [f"s{i}" for i in range(0, d.shape[0], 3)]
    got = LDCalculator(prefix, sample_iids=keep, window_bp=10**9).r2_matrix(np.arange(30))
    np.testing.assert_allclose(got, np.corrcoef(d[::3, :30].T) ** 2, atol=1e-12)
    with pytest.raises(GenotypeError, match=r"sample_iids \['nobody'\] are not in .*g\.fam"):
        LDCalculator(prefix, sample_iids=["s0", "nobody"])


@pytest.mark.parametrize("method", ["genotype", "haplotype"])
def test_monomorphic_snp_has_r2_zero(tmp_path, method):
    rng = np.random.default_rng(0)
    d = rng.integers(0, 3, size=(50, 3)).astype(float)
    d[:, 1] = 2  # monomorphic
    d[:5, 2] = np.nan
    write_plink(tmp_path / "m", [f"s{i}" for i in range(50)], d, _variants([1, 1, 1], [100, 200, 300]))
    ld = LDCalculator(tmp_path / "m", method=method)
    np.testing.assert_array_equal(ld.r2_with(1, [0, 1, 2]), [0.0, 0.0, 0.0])
    assert ld.r2_with(0, [0])[0] == pytest.approx(1.0)


def test_haplotype_r2_is_one_in_perfect_ld_and_matches_genotype_r2_closely(tmp_path):
    prefix, d = _simulated(tmp_path, length_bp=100_000)
    gen = LDCalculator(prefix, method="genotype").r2_matrix(np.arange(60))
    hap = LDCalculator(prefix, method="haplotype").r2_matrix(np.arange(60))
    np.testing.assert_allclose(np.diag(hap), 1.0, atol=1e-12)
    assert np.abs(hap - gen).max() < 0.1  # same LD, different estimator (HWE holds in the simulation)


def test_window_is_same_chromosome_and_strictly_closer_than_window_bp(tmp_path):
    rng = np.random.default_rng(1)
    pos = [1_000, 5_000, 11_000, 11_001, 500, 5_000]
    chrom = [1, 1, 1, 1, 2, 2]
    d = rng.integers(0, 3, size=(40, 6)).astype(float)
    write_plink(tmp_path / "w", [f"s{i}" for i in range(40)], d, _variants(chrom, pos))
    ld = LDCalculator(tmp_path / "w", window_bp=10_000)
    (idx1, r2), (idx2, _), (idx3, _) = ld.window_r2([1, 0, 5])
    np.testing.assert_array_equal(idx1, [0, 1, 2, 3])  # |d| = 4,000 / 6,000 / 6,001 < 10,000
    np.testing.assert_array_equal(idx2, [0, 1])  # 11,000 - 1,000 = 10,000 is not < 10,000
    np.testing.assert_array_equal(idx3, [4, 5])  # chromosome 2 only
    np.testing.assert_allclose(r2, ld.r2_with(1, [0, 1, 2, 3]))


@pytest.mark.skipif(PLINK is None, reason="plink1.9 is not installed (Debian package plink1.9)")
@pytest.mark.parametrize(("method", "modifier"), [("genotype", ""), ("haplotype", " dprime")])
def test_r2_equals_plink_1_9(tmp_path, method, modifier):
    prefix, _ = _simulated(tmp_path, n_samples=400, length_bp=150_000, missing=0.03)
    subprocess.run(f"{PLINK} --bfile {prefix} --r2{modifier} --ld-window 99999 --ld-window-kb 1000 "
                   f"--ld-window-r2 0 --allow-no-sex --out {tmp_path / 'r'}",
                   shell=True, check=True, capture_output=True)
    ref = pd.read_csv(tmp_path / "r.ld", sep=r"\s+")
    ld = LDCalculator(prefix, method=method)
    snps = ld.variants["snp"].to_numpy()
    got = {}
    for i, (idx, r2) in enumerate(ld.window_r2(np.arange(len(snps)))):
        got.update({(snps[i], snps[j]): r for j, r in zip(idx, r2, strict=True)})
    mine = np.array([got[(a, b)] for a, b in zip(ref["SNP_A"], ref["SNP_B"], strict=True)])
    assert len(ref) > 1000
    np.testing.assert_allclose(mine, ref["R2"].to_numpy(), atol=1e-6)  # PLINK prints 6 digits


def test_invalid_arguments_are_refused(tmp_path):
    d = np.zeros((4, 2))
    d[0] = 1
    write_plink(tmp_path / "u", ["a", "b", "c", "d"], d, _variants([1, 1], [200, 100]))
    with pytest.raises(GenotypeError, match="not sorted by position"):
        LDCalculator(tmp_path / "u")
    write_plink(tmp_path / "s", ["a", "b", "c", "d"], d, _variants([1, 1], [100, 200]))
    with pytest.raises(UdipConfigError, match=r"method must be one of \('genotype', 'haplotype'\), got 'r'"):
        LDCalculator(tmp_path / "s", method="r")
    with pytest.raises(UdipConfigError, match="window_bp must be a positive integer"):
        LDCalculator(tmp_path / "s", window_bp=0)
    with pytest.raises(GenotypeError, match=r"index_snps: SNP\(s\) \['rs9'\] are not in .*s\.bim"):
        LDCalculator(tmp_path / "s").window_r2(["rs9"])
    assert np.isnan(LDCalculator(tmp_path / "s").r2_with(0, ["rs9"])[0])
