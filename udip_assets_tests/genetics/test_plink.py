"""PLINK 1 files: exact bytes, round trip through bed-reader, file checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from bed_reader import open_bed

from udip_assets.errors import GenotypeError
from udip_assets.genetics.plink import (
    check_plink_files,
    read_bim,
    read_dosage,
    read_fam,
    write_plink,
)


def _variants(n: int) -> pd.DataFrame:
    return pd.DataFrame({"snp": [f"rs{100 + k}" for k in range(n)], "chrom": [2] * n,
                         "pos_bp": np.arange(n) * 1000 + 5_000_001, "a1": ["A"] * n, "a2": ["G"] * n})


def _random_dosage(rng, n: int, m: int, missing: float = 0.05) -> np.ndarray:
    d = rng.integers(0, 3, size=(n, m)).astype(np.int8)
    d[rng.random((n, m)) < missing] = -1
    return d


def test_bed_bytes_follow_the_plink_spec(tmp_path):
    # samples: A1A1 (2), het (1), A2A2 (0), missing, A1A1 -> codes 00, 10, 11, 01 | 00
    write_plink(tmp_path / "t", ["a", "b", "c", "d", "e"], np.array([[2], [1], [0], [-1], [2]]), _variants(1))
    assert (tmp_path / "t.bed").read_bytes() == bytes([0x6C, 0x1B, 0x01, 0b01_11_10_00, 0x00])


@pytest.mark.parametrize("n_samples", [1, 4, 7, 13])
def test_round_trip_equals_dosage_with_missing(tmp_path, n_samples):
    rng = np.random.default_rng(n_samples)
    d = _random_dosage(rng, n_samples, 300)
    iids = [f"{1000000 + k}" for k in range(n_samples)]
    write_plink(tmp_path / "g", iids, d, _variants(300), sex=rng.integers(1, 3, n_samples))
    expected = np.where(d < 0, np.nan, d).astype(np.float32)
    np.testing.assert_array_equal(read_dosage(tmp_path / "g"), expected)
    with open_bed(tmp_path / "g.bed") as bed:  # bed-reader itself, reading .fam/.bim
        np.testing.assert_array_equal(bed.read(dtype="float32"), expected)
        assert list(bed.iid) == iids and list(bed.allele_1) == ["A"] * 300
    with open_bed(tmp_path / "g.bed", count_A1=False) as bed:  # counting A2 gives 2 - dosage
        np.testing.assert_array_equal(bed.read(dtype="float32"), 2 - expected)


def test_float_dosage_with_nan_writes_the_same_file(tmp_path):
    d = _random_dosage(np.random.default_rng(0), 9, 50)
    write_plink(tmp_path / "i", [str(k) for k in range(9)], d, _variants(50))
    write_plink(tmp_path / "f", [str(k) for k in range(9)], np.where(d < 0, np.nan, d), _variants(50))
    assert (tmp_path / "i.bed").read_bytes() == (tmp_path / "f.bed").read_bytes()


def test_read_subsets(tmp_path):
    d = _random_dosage(np.random.default_rng(1), 11, 40)
    write_plink(tmp_path / "g", [str(k) for k in range(11)], d, _variants(40))
    rows, cols = np.array([0, 3, 10]), np.array([39, 5, 7])
    got = read_dosage(tmp_path / "g", sample_idx=rows, variant_idx=cols)
    np.testing.assert_array_equal(got, np.where(d < 0, np.nan, d)[np.ix_(rows, cols)].astype(np.float32))


def test_bim_and_fam_round_trip(tmp_path):
    v = _variants(3)
    write_plink(tmp_path / "g", ["7", "8"], np.zeros((2, 3)), v, fids=["f1", "f2"], sex=[1, 2])
    bim = read_bim(tmp_path / "g.bim")
    assert list(bim.columns) == ["chrom", "snp", "cm", "pos_bp", "a1", "a2"]
    cols = ["chrom", "snp", "pos_bp", "a1", "a2"]
    pd.testing.assert_frame_equal(bim[cols], v[cols], check_dtype=False)
    fam = read_fam(tmp_path / "g.fam")
    parents = fam[["fid", "iid", "father", "mother"]].values.tolist()
    assert parents == [["f1", "7", "0", "0"], ["f2", "8", "0", "0"]]
    assert fam["sex"].tolist() == [1, 2] and fam["pheno"].tolist() == [-9.0, -9.0]
    assert check_plink_files(tmp_path / "g") == (2, 3)


def test_truncated_bed_names_the_file(tmp_path):
    write_plink(tmp_path / "g", [str(k) for k in range(10)], np.ones((10, 20)), _variants(20))
    bed = tmp_path / "g.bed"
    bed.write_bytes(bed.read_bytes()[:-5])
    expected = r"g\.bed has 58 bytes, expected 63 = 3 \+ 20 variants x ceil\(10 samples / 4\)"
    with pytest.raises(GenotypeError, match=expected):
        check_plink_files(tmp_path / "g")
    with pytest.raises(GenotypeError, match=r"g\.bed"):
        read_dosage(tmp_path / "g")


def test_wrong_magic_and_missing_files(tmp_path):
    write_plink(tmp_path / "g", ["a", "b"], np.ones((2, 2)), _variants(2))
    bed = tmp_path / "g.bed"
    bed.write_bytes(b"\x6c\x1b\x00" + bed.read_bytes()[3:])
    with pytest.raises(GenotypeError, match=r"g\.bed does not start with the PLINK 1 SNP-major magic bytes"):
        check_plink_files(tmp_path / "g")
    (tmp_path / "g.fam").unlink()
    with pytest.raises(GenotypeError, match=r"g\.fam does not exist"):
        check_plink_files(tmp_path / "g.bed")


@pytest.mark.parametrize(("dosage", "iids", "message"), [
    (np.full((2, 2), 3), ["a", "b"], r"0, 1, 2 or missing .* got 3"),
    (np.ones((2, 2)), ["a"], r"iids has 1 entries but dosage has 2 rows"),
    (np.ones((2, 2)), ["a", "a"], r"iids must be unique"),
    (np.ones((2, 2)), ["a", "b c"], r"no whitespace"),
    (np.ones((2, 3)), ["a", "b"], r"variants has 2 rows but dosage has 3 columns"),
])
def test_write_rejects_bad_input(tmp_path, dosage, iids, message):
    with pytest.raises(GenotypeError, match=message):
        write_plink(tmp_path / "g", iids, dosage, _variants(2))
