"""Genotype streaming: the .bed lookup-table decoder against bed-reader, sample alignment, chunking
with prefetch, and BGEN v1.2 (written here by a minimal writer) against the .bed it encodes."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import GenotypeError, UdipConfigError
from udip_assets.genetics.genotype_stream import (
    ArraySource,
    BgenSource,
    PlinkSource,
    check_bgen_blocks,
    prefetch,
    read_oxford_sample,
)
from udip_assets.genetics.gwas import GwasConfig, scan_associations
from udip_assets.genetics.plink import read_dosage, write_plink


def _variants(m: int, chroms=(1,)) -> pd.DataFrame:
    chrom = np.repeat(chroms, -(-m // len(chroms)))[:m]
    return pd.DataFrame({"snp": [f"rs{100 + k}" for k in range(m)], "chrom": chrom,
                         "pos_bp": np.arange(m) * 1000 + 1_000_001, "a1": ["A"] * m, "a2": ["G"] * m})


def _dosage(rng, n: int, m: int, missing: float = 0.05) -> np.ndarray:
    d = rng.binomial(2, rng.uniform(0.05, 0.5, m), size=(n, m)).astype(np.float32)
    d[rng.random((n, m)) < missing] = np.nan
    return d


def write_bgen(path: Path, iids: list[str], dosage: np.ndarray, variants: pd.DataFrame,
               with_samples: bool = True, **layout) -> Path:
    """Minimal BGEN v1.2 writer: layout 2, zlib, 8-bit unphased probabilities of hard calls.

    The first allele is ``a2`` and the second ``a1`` (PLINK 2's REF-first order), so the expected
    count of the second allele equals ``dosage``; NaN is written as missing (ploidy byte | 0x80).
    ``layout`` goes to :func:`write_bgen_values` (bits, phased, compression).
    """
    n, m = dosage.shape
    values = np.zeros((m, n, 2), dtype=np.int64)  # P(first/first), P(het); P(second/second) implied
    top = (1 << layout.get("bits", 8)) - 1
    if layout.get("phased"):  # each haplotype's P(first allele): het as first|second
        values[..., 0] = np.where(dosage.T == 0, top, np.where(dosage.T == 1, top, 0))
        values[..., 1] = np.where(dosage.T == 0, top, 0)
    else:
        values[..., 0] = np.where(dosage.T == 0, top, 0)
        values[..., 1] = np.where(dosage.T == 1, top, 0)
    return write_bgen_values(path, iids, values, np.isnan(dosage.T), variants, with_samples, **layout)


def write_bgen_values(path: Path, iids: list[str], values: np.ndarray, missing: np.ndarray,
                      variants: pd.DataFrame, with_samples: bool = True, bits: int = 8, phased: bool = False,
                      compression: str = "zlib", ploidy: np.ndarray | None = None) -> Path:
    """BGEN v1.2 layout 2 with given stored probabilities: ``values`` (m, n, 2) integers < 2^bits.

    Unphased: P(first/first), P(first/second) per sample; phased: P(first allele) of each
    haplotype. ``missing`` (m, n) sets bit 7 of the ploidy byte; ``ploidy`` (m, n) overrides the
    ploidy (default 2). Values are packed ``bits`` bits each, little-endian, as the spec says.
    """
    m, n, _ = values.shape
    flags = {"none": 0, "zlib": 1}[compression] | (2 << 2) | ((1 << 31) if with_samples else 0)
    header = struct.pack("<III", 20, m, n) + b"bgen" + struct.pack("<I", flags)  # L_H = 20: no free data
    samples = b""
    if with_samples:
        ids = b"".join(struct.pack("<H", len(s)) + s.encode() for s in iids)
        samples = struct.pack("<II", 8 + len(ids), n) + ids
    out = [struct.pack("<I", len(header) + len(samples)), header, samples]
    for j in range(m):
        v = variants.iloc[j]
        ident = b"".join(struct.pack("<H", len(x)) + x for x in (
            f"v{j}".encode(), str(v["snp"]).encode(), str(v["chrom"]).encode()))
        alleles = b"".join(struct.pack("<I", len(a)) + a.encode() for a in (v["a2"], v["a1"]))
        pl = np.full(n, 2, dtype=np.int64) if ploidy is None else ploidy[j]
        pbytes = (pl | np.where(missing[j], 0x80, 0)).astype(np.uint8)
        bitarray = (values[j].reshape(-1, 1) >> np.arange(bits)) & 1  # (2n, bits), least significant first
        probs = np.packbits(bitarray.astype(np.uint8).ravel(), bitorder="little")
        raw = (struct.pack("<IHBB", n, 2, int(pl.min()), int(pl.max())) + pbytes.tobytes()
               + struct.pack("<BB", int(phased), bits) + probs.tobytes())
        block = (struct.pack("<II", len(zlib.compress(raw)) + 4, len(raw)) + zlib.compress(raw)
                 if compression == "zlib" else struct.pack("<I", len(raw)) + raw)
        out += [ident, struct.pack("<IH", int(v["pos_bp"]), 2), alleles, block]
    path.write_bytes(b"".join(out))
    return path


def write_oxford_sample(path: Path, iids: list[str]) -> Path:
    lines = ["ID_1 ID_2 missing", "0 0 0", *(f"{i} {i} 0" for i in iids)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fileset(tmp_path):
    rng = np.random.default_rng(3)
    n, m = 37, 90  # n not a multiple of 4: the last byte of each variant is padded
    d = _dosage(rng, n, m)
    iids = [f"id{k}" for k in range(n)]
    write_plink(tmp_path / "g", iids, d, _variants(m, chroms=(1, 2, 3)))
    return tmp_path / "g", iids, d


def test_lut_decoder_equals_bed_reader(fileset):
    prefix, iids, d = fileset
    source = PlinkSource(prefix)
    got = np.concatenate([c.dosage for c in source.chunks(16)], axis=1)
    np.testing.assert_array_equal(got, read_dosage(prefix))
    np.testing.assert_array_equal(got, d)
    assert source.iids == iids and source.n_variants == 90


def test_chunks_cover_the_variants_in_order_with_column_layout(fileset):
    prefix, _, d = fileset
    chunks = list(PlinkSource(prefix).chunks(25))
    assert [c.start for c in chunks] == [0, 25, 50, 75]
    assert [c.dosage.shape for c in chunks] == [(37, 25), (37, 25), (37, 25), (37, 15)]
    assert all(c.dosage.flags["F_CONTIGUOUS"] for c in chunks)
    assert pd.concat([c.variants for c in chunks])["snp"].tolist() == [f"rs{100 + k}" for k in range(90)]


def test_sample_selection_order_and_chromosome(fileset):
    prefix, iids, d = fileset
    source = PlinkSource(prefix, sample_iids=["id30", "id2", "id11"], chrom="chr2")
    assert source.iids == ["id30", "id2", "id11"]
    assert set(source.variants["chrom"]) == {"2"}
    cols = np.flatnonzero(_variants(90, chroms=(1, 2, 3))["chrom"].to_numpy() == 2)
    np.testing.assert_array_equal(source.read(), d[np.ix_([30, 2, 11], cols)])
    sub = PlinkSource(prefix).select_samples(["id5", "id0"])
    np.testing.assert_array_equal(sub.read(0, 3), d[[5, 0], :3])


def test_unknown_iids_are_listed_with_their_count(fileset):
    prefix, _, _ = fileset
    wanted = ["id1", *(f"ghost{k}" for k in range(7))]
    with pytest.raises(GenotypeError, match=r"7 of 8 sample IIDs are not in .*g\.fam: "
                                            r"\['ghost0', 'ghost1', 'ghost2', 'ghost3', 'ghost4', \.\.\.\]"):
        PlinkSource(prefix, sample_iids=wanted)
    with pytest.raises(GenotypeError, match=r"sample_iids repeats IID\(s\) \['id1'\]"):
        PlinkSource(prefix).select_samples(["id1", "id1"])


def test_bed_size_mismatch_names_the_file(fileset):
    prefix, _, _ = fileset
    bed = prefix.with_suffix(".bed")
    bed.write_bytes(bed.read_bytes()[:-3])
    with pytest.raises(GenotypeError, match=r"g\.bed has 900 bytes, expected 903 = 3 \+ 90 variants x "
                                            r"ceil\(37 samples / 4\); the file is truncated"):
        PlinkSource(prefix)


def test_unknown_chromosome_lists_those_present(fileset):
    expected = r"no variants on chromosome '7'; chromosomes present: \['1', '2', '3'\]"
    with pytest.raises(GenotypeError, match=expected):
        PlinkSource(fileset[0], chrom=7)


def test_prefetch_decodes_ahead_and_reraises_errors():
    produced, consumed = [], []

    def items():
        for k in range(4):
            produced.append((k, threading.current_thread().name))
            if k == 3:
                raise GenotypeError("bad chunk 3")
            yield k

    with pytest.raises(GenotypeError, match="bad chunk 3"):
        for k in prefetch(items(), depth=1):
            consumed.append(k)
    assert consumed == [0, 1, 2]
    assert all(name == "genotype-prefetch" for _, name in produced)
    with pytest.raises(UdipConfigError, match="depth must be >= 1"):
        next(prefetch([1], depth=0))


def test_prefetch_stops_the_producer_when_closed_early():
    seen = []

    def items():
        for k in range(1000):
            seen.append(k)
            yield k

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    it.close()
    assert len(seen) <= 5


def test_array_source_treats_negative_as_missing():
    d = np.array([[0, 1, -1], [2, -9, 1]])
    source = ArraySource(d, ["a", "b"], _variants(3))
    np.testing.assert_array_equal(source.read(), np.array([[0, 1, np.nan], [2, np.nan, 1]], np.float32))
    expected = r"dosage has shape \(2, 3\), expected \(n_samples, n_variants\) = \(3, 3\)"
    with pytest.raises(GenotypeError, match=expected):
        ArraySource(d, ["a", "b", "c"], _variants(3))


@pytest.mark.parametrize("with_samples", [True, False])
def test_bgen_dosage_equals_the_bed(tmp_path, fileset, with_samples):
    prefix, iids, d = fileset
    variants = _variants(90, chroms=(1, 2, 3))
    bgen = write_bgen(tmp_path / "g.bgen", iids, d, variants, with_samples=with_samples)
    sample = write_oxford_sample(tmp_path / "g.sample", iids) if not with_samples else None
    source = BgenSource(bgen, sample_path=sample)
    np.testing.assert_array_equal(np.concatenate([c.dosage for c in source.chunks(32)], axis=1), d)
    pd.testing.assert_frame_equal(source.variants, PlinkSource(prefix).variants)
    sub = BgenSource(bgen, sample_path=sample, sample_iids=["id9", "id4"], chrom=3)
    cols = np.flatnonzero(variants["chrom"].to_numpy() == 3)
    np.testing.assert_array_equal(sub.read(), d[np.ix_([9, 4], cols)])


def _soft_values(rng, m: int, n: int, bits: int, phased: bool) -> np.ndarray:
    """(m, n, 2) stored probabilities: any haplotype values when phased, on the simplex otherwise."""
    top = (1 << bits) - 1
    v0 = rng.integers(0, top + 1, (m, n))
    v1 = rng.integers(0, top + 1, (m, n)) if phased else (rng.random((m, n)) * (top - v0 + 1)).astype(np.int64)
    return np.stack([v0, np.minimum(v1, top if phased else top - v0)], axis=-1)


@pytest.mark.parametrize(("bits", "phased", "compression"), [
    (8, False, "zlib"), (8, True, "zlib"), (8, False, "none"), (16, False, "zlib"), (3, False, "zlib"),
    (10, True, "none"), (23, False, "zlib"), (32, False, "zlib")])
@pytest.mark.parametrize("a1_allele", ["second", "first"])
def test_block_reader_equals_cbgen(tmp_path, bits, phased, compression, a1_allele):
    """udip's batched decoder against cbgen's one-variant reader on soft probabilities of any bit
    depth, phased or not, with missing calls and a sample subset in another order."""
    rng = np.random.default_rng(bits)
    n, m = 41, 150
    iids = [f"id{k}" for k in range(n)]
    values = _soft_values(rng, m, n, bits, phased)
    bgen = write_bgen_values(tmp_path / "s.bgen", iids, values, rng.random((m, n)) < 0.05,
                             _variants(m, chroms=(1, 2)), bits=bits, phased=phased, compression=compression)
    for subset in (None, [f"id{k}" for k in rng.permutation(n)[:17]]):
        source = BgenSource(bgen, a1_allele=a1_allele, sample_iids=subset, decode_threads=3)
        fast = source.read()
        if compression == "zlib":  # cbgen (limix bgen < 4.12) misreads uncompressed layout-2 blocks
            reference = np.empty((m, source.n_samples), dtype=np.float32)
            source._decode_with_cbgen(np.arange(m), np.arange(m), reference)
            np.testing.assert_array_equal(np.isnan(fast), np.isnan(reference.T))
            np.testing.assert_allclose(fast, reference.T, rtol=0, atol=2.5e-7)  # one float32 ulp at 2
        assert np.isnan(fast).any() and not np.isnan(fast).all()
        top = (1 << bits) - 1  # and against the spec's formula, independently of either decoder
        second = (2 * top - (1 if phased else 2) * values[..., 0] - values[..., 1]) / top
        expected = (2 - second if a1_allele == "first" else second).T[source._sample_rows]
        np.testing.assert_allclose(np.nan_to_num(fast, nan=-1), np.where(np.isnan(fast), -1, expected), atol=2.5e-7)


def test_blocks_the_reader_leaves_go_to_cbgen(tmp_path):
    """A haploid call (chromosome X in males) is outside the batched layout: cbgen reads that
    block and the dosage check names the variant; the other variants decode as before."""
    rng = np.random.default_rng(9)
    n, m = 20, 6
    iids = [f"id{k}" for k in range(n)]
    ploidy = np.full((m, n), 2)
    ploidy[3, 5] = 1
    values = _soft_values(rng, m, n, 8, False)
    bgen = write_bgen_values(tmp_path / "h.bgen", iids, values, np.zeros((m, n), bool), _variants(m),
                             ploidy=ploidy)
    source = BgenSource(bgen)
    np.testing.assert_allclose(source.read(0, 3).T, (510 - 2 * values[:3, :, 0] - values[:3, :, 1]) / 255, atol=2.5e-7)
    with pytest.raises(GenotypeError, match=r"variant rs103 of .*h\.bgen is not biallelic diploid \(ploidy \[1, 2\]"):
        source.read()


def test_a_damaged_probability_block_names_the_variant(tmp_path, fileset):
    _, iids, d = fileset
    whole = bytearray(write_bgen(tmp_path / "g.bgen", iids, d, _variants(90)).read_bytes())
    whole[-40:-30] = b"\xff" * 10  # inside the last variant's compressed block
    (tmp_path / "bad.bgen").write_bytes(bytes(whole))
    source = BgenSource(tmp_path / "bad.bgen")
    source.read(0, 89)
    with pytest.raises(GenotypeError, match=r"variant rs189 of .*bad\.bgen cannot be decoded .*the file is damaged"):
        source.read(80, 90)


def test_bgen_without_sample_ids_needs_a_sample_file(tmp_path, fileset):
    _, iids, d = fileset
    bgen = write_bgen(tmp_path / "g.bgen", iids, d, _variants(90), with_samples=False)
    with pytest.raises(GenotypeError, match=r"g\.bgen stores no sample IDs; pass its Oxford \.sample file"):
        BgenSource(bgen)
    short = write_oxford_sample(tmp_path / "short.sample", iids[:-1])
    with pytest.raises(GenotypeError, match=r"short\.sample lists 36 samples but .*g\.bgen holds 37"):
        BgenSource(bgen, sample_path=short)
    assert read_oxford_sample(write_oxford_sample(tmp_path / "s.sample", ["x", "y"])) == ["x", "y"]


@pytest.mark.parametrize("keep", ["header", "half", "all_but_10_bytes"])
def test_a_truncated_bgen_is_named_not_a_crash(tmp_path, fileset, keep):
    """An interrupted copy: cbgen alone crashed the process (segmentation fault) or failed on the last
    variant with "Could not open genotype"; now the file, the variant and the byte counts are named."""
    _, iids, d = fileset
    whole = write_bgen(tmp_path / "g.bgen", iids, d, _variants(90)).read_bytes()
    cut = {"header": 30, "half": len(whole) // 2, "all_but_10_bytes": len(whole) - 10}[keep]
    (tmp_path / "t.bgen").write_bytes(whole[:cut])
    pattern = (r"t\.bgen is truncated: its variants start at byte" if keep == "header" else
               r"t\.bgen is truncated: variant \d+ of 90 \(rs\d+\) needs its \w[\w ']* up to byte [\d,]+ "
               rf"but the file ends at byte {cut:,}; copy or export it again")
    with pytest.raises(GenotypeError, match=pattern):
        BgenSource(tmp_path / "t.bgen")
    if keep == "all_but_10_bytes":
        assert "variant 90 of 90" in str(pytest.raises(GenotypeError, BgenSource, tmp_path / "t.bgen").value)
    assert check_bgen_blocks(tmp_path / "g.bgen") == 90


def test_a_bgen_of_layout_1_is_refused_naming_the_conversion(tmp_path, fileset):
    """cbgen cannot read BGEN v1.1 (layout 1): say so, and how to convert, instead of 'cannot read'."""
    prefix, _, _ = fileset
    plink2 = shutil.which("plink2")
    if plink2 is None:
        pytest.skip("plink2 is not on PATH (Debian package plink2)")
    subprocess.run([plink2, "--bfile", str(prefix), "--export", "bgen-1.1", "--out", str(tmp_path / "v11")],
                   check=True, capture_output=True)
    with pytest.raises(GenotypeError, match=r"v11\.bgen is BGEN layout 1 .* udip reads layout 2, BGEN v1\.2 and "
                                            r"v1\.3: convert it, e\.g\. plink2 --bgen \.\.\. --export bgen-1\.2"):
        BgenSource(tmp_path / "v11.bgen", sample_path=tmp_path / "v11.sample")
    subprocess.run([plink2, "--bfile", str(prefix), "--export", "bgen-1.2", "bits=8", "--out", str(tmp_path / "v12")],
                   check=True, capture_output=True)
    assert check_bgen_blocks(tmp_path / "v12.bgen") == 90  # what UK Biobank ships: 8-bit, zlib, layout 2


def test_gwas_on_bgen_equals_gwas_on_bed(tmp_path, fileset):
    prefix, iids, d = fileset
    rng = np.random.default_rng(5)
    pheno = pd.DataFrame(rng.standard_normal((37, 2)), index=iids, columns=["u0", "u1"])
    pheno["u0"] += np.nan_to_num(d[:, 4], nan=1.0)
    covar = pd.DataFrame(rng.standard_normal((37, 2)), index=iids, columns=["c1", "c2"])
    cfg = GwasConfig(maf_min=0, call_rate_min=0, keep_p=1.0, chunk_variants=20)
    bgen = write_bgen(tmp_path / "g.bgen", iids, d, _variants(90, chroms=(1, 2, 3)))
    from_bed = scan_associations(PlinkSource(prefix), pheno, covar, cfg)
    from_bgen = scan_associations(BgenSource(bgen), pheno, covar, cfg)
    pd.testing.assert_frame_equal(from_bgen.hits, from_bed.hits, rtol=1e-10)
    pd.testing.assert_frame_equal(from_bgen.minp, from_bed.minp, rtol=1e-10)
