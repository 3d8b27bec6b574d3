"""PLINK 1 binary genotype files (.bed/.bim/.fam): write, check, read.

The .bed is SNP-major: 3 magic bytes (0x6c 0x1b 0x01), then for each variant ceil(n_samples / 4)
bytes, 2 bits per sample starting at the low bits: 00 = homozygous for the .bim's 5th-column allele
(A1), 01 = missing, 10 = heterozygous, 11 = homozygous for A2. Everywhere in udip a dosage is the
count of A1 (bed-reader's ``count_A1=True``), with missing calls as NaN (float) or -1 (int8).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.atomic import atomic_path, write_text_atomic
from udip_assets.errors import GenotypeError

BED_MAGIC = bytes([0x6C, 0x1B, 0x01])
BIM_COLUMNS = ["chrom", "snp", "cm", "pos_bp", "a1", "a2"]
FAM_COLUMNS = ["fid", "iid", "father", "mother", "sex", "pheno"]
# 2-bit .bed code of an A1 count: index 0, 1, 2 -> code; index 3 is "missing".
_CODE_OF_COUNT = np.array([0b11, 0b10, 0b00, 0b01], dtype=np.uint8)
_CHUNK_VARIANTS = 8192


def plink_paths(prefix: Path | str) -> dict[str, Path]:
    """The .bed, .bim and .fam paths of a PLINK prefix (``prefix`` may end in '.bed')."""
    prefix = Path(prefix)
    if prefix.suffix in (".bed", ".bim", ".fam"):
        prefix = prefix.with_suffix("")
    return {ext: prefix.with_name(prefix.name + "." + ext) for ext in ("bed", "bim", "fam")}


def to_float_dosage(dosage: np.ndarray, name: str = "dosage") -> np.ndarray:
    """A dosage matrix as float32 with NaN for missing calls.

    Parameters
    ----------
    dosage : np.ndarray
        (n_samples, n_variants) A1 counts 0/1/2; missing as a negative integer or NaN.
    name : str
        Parameter name used in the error message.

    Returns
    -------
    np.ndarray
        (n_samples, n_variants) float32 with values in {0, 1, 2, NaN}.
    """
    arr = np.asarray(dosage)
    if arr.ndim != 2:
        raise GenotypeError(f"{name} must be a 2-D (n_samples, n_variants) matrix, got shape {arr.shape}")
    out = arr.astype(np.float32)
    out[out < 0] = np.nan
    bad = ~np.isnan(out) & (out != 0) & (out != 1) & (out != 2)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GenotypeError(
            f"{name} must hold allele counts 0, 1, 2 or missing (-1 / NaN), got {arr[r, c].item()!r} at "
            f"sample {r}, variant {c}; round or hard-call dosages before writing PLINK 1 files"
        )
    return out


def _encode_bed_rows(block: np.ndarray) -> bytes:
    """(n_samples, n_chunk) float32 A1 counts (NaN missing) -> SNP-major .bed bytes of the chunk."""
    counts = np.where(np.isnan(block), 3, block).astype(np.uint8)  # (n, v)
    codes = _CODE_OF_COUNT[counts].T  # (v, n)
    n_pad = (-codes.shape[1]) % 4
    codes = np.pad(codes, ((0, 0), (0, n_pad)))  # padding bits are 00, as PLINK writes them
    q = codes.reshape(codes.shape[0], -1, 4)  # (v, n_bytes, 4)
    packed = q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)
    return packed.astype(np.uint8).tobytes()


def _check_write_inputs(iids, dosage, variants, fids, sex) -> None:
    n_samples, n_variants = dosage.shape
    if len(iids) != n_samples:
        raise GenotypeError(f"iids has {len(iids)} entries but dosage has {n_samples} rows (samples)")
    if len(set(map(str, iids))) != len(iids):
        raise GenotypeError("iids must be unique; deduplicate samples before writing PLINK files")
    if len(variants) != n_variants:
        raise GenotypeError(f"variants has {len(variants)} rows but dosage has {n_variants} columns")
    missing = [c for c in ("snp", "chrom", "pos_bp", "a1", "a2") if c not in variants.columns]
    if missing:
        raise GenotypeError(f"variants lacks columns {missing}; expected snp, chrom, pos_bp, a1, a2")
    for name, values in (("fids", fids), ("sex", sex)):
        if values is not None and len(values) != n_samples:
            raise GenotypeError(f"{name} has {len(values)} entries, expected one per sample ({n_samples})")
    if sex is not None and not np.isin(np.asarray(sex), [0, 1, 2]).all():
        raise GenotypeError("sex must be coded 1 (male), 2 (female) or 0 (unknown), as in a PLINK .fam")
    ids = [str(x) for x in iids] + ([str(x) for x in fids] if fids is not None else [])
    if any(not x or any(ch.isspace() for ch in x) for x in ids):
        raise GenotypeError("sample IDs (iids, fids) must be non-empty and contain no whitespace")


def write_plink(prefix: Path | str, iids: Sequence[str], dosage: np.ndarray, variants: pd.DataFrame,
                fids: Sequence[str] | None = None, sex: Sequence[int] | None = None) -> dict[str, Path]:
    """Write a PLINK 1 fileset ``prefix``.bed/.bim/.fam, each atomically (temp file, then rename).

    Parameters
    ----------
    prefix : Path
        Output prefix; its folder must exist.
    iids : sequence of str
        (n_samples,) individual IDs, unique, without whitespace.
    dosage : np.ndarray
        (n_samples, n_variants) count of ``variants.a1`` per sample; missing as -1 or NaN.
    variants : pd.DataFrame
        (n_variants rows) with ``snp``, ``chrom``, ``pos_bp``, ``a1``, ``a2`` and optionally ``cm``.
    fids : sequence of str, optional
        Family IDs; default the iids (UK Biobank style, FID = IID).
    sex : sequence of int, optional
        1 = male, 2 = female, 0 = unknown; default 0.

    Returns
    -------
    dict
        The written paths keyed by 'bed', 'bim', 'fam'.
    """
    values = to_float_dosage(dosage)
    _check_write_inputs(iids, values, variants, fids, sex)
    paths = plink_paths(prefix)
    n = values.shape[0]
    fam = pd.DataFrame({
        "fid": [str(x) for x in (fids if fids is not None else iids)], "iid": [str(x) for x in iids],
        "father": "0", "mother": "0", "sex": np.zeros(n, int) if sex is None else np.asarray(sex, int),
        "pheno": "-9"})
    cm = variants["cm"] if "cm" in variants.columns else 0
    bim = pd.DataFrame({"chrom": variants["chrom"].astype(str), "snp": variants["snp"].astype(str), "cm": cm,
                        "pos_bp": variants["pos_bp"].astype(np.int64), "a1": variants["a1"].astype(str),
                        "a2": variants["a2"].astype(str)})
    write_text_atomic(paths["fam"], fam.to_csv(sep=" ", header=False, index=False))
    write_text_atomic(paths["bim"], bim.to_csv(sep="\t", header=False, index=False))
    with atomic_path(paths["bed"]) as tmp, open(tmp, "wb") as fh:
        fh.write(BED_MAGIC)
        for start in range(0, values.shape[1], _CHUNK_VARIANTS):
            fh.write(_encode_bed_rows(values[:, start:start + _CHUNK_VARIANTS]))
    return paths


def _read_table(path: Path | str, columns: list[str], dtype: dict) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"PLINK file {path} does not exist; check the cohort's genotype prefix")
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame(columns=range(len(columns)))
    if df.shape[1] != len(columns):
        raise GenotypeError(f"{path} has {df.shape[1]} columns, expected {len(columns)} "
                            f"({' '.join(columns)})")
    df.columns = columns
    try:
        return df.astype(dtype)
    except ValueError as exc:
        raise GenotypeError(f"{path} holds a non-numeric value in a numeric column: {exc}") from exc


def read_bim(path: Path | str) -> pd.DataFrame:
    """Read a .bim: one row per variant, columns chrom, snp, cm, pos_bp, a1, a2.

    ``chrom`` is int when every chromosome code is numeric, else str (e.g. 'X').
    """
    df = _read_table(path, BIM_COLUMNS, {"cm": float, "pos_bp": np.int64})
    if df["chrom"].str.fullmatch(r"\d+").all():
        df["chrom"] = df["chrom"].astype(np.int64)
    return df


def read_fam(path: Path | str) -> pd.DataFrame:
    """Read a .fam: one row per sample, columns fid, iid, father, mother (str), sex (int), pheno (float)."""
    return _read_table(path, FAM_COLUMNS, {"sex": np.int64, "pheno": float})


def _count_lines(path: Path) -> int:
    if not path.is_file():
        raise GenotypeError(f"PLINK file {path} does not exist; check the cohort's genotype prefix")
    with open(path, "rb") as fh:
        data = fh.read()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def check_plink_files(prefix: Path | str) -> tuple[int, int]:
    """Check that a PLINK 1 fileset exists and that the .bed matches the .fam and .bim.

    Returns
    -------
    (n_samples, n_variants) : tuple of int

    Raises
    ------
    GenotypeError
        Naming the file, when a file is missing, the .bed lacks the SNP-major magic bytes, or its size
        is not 3 + n_variants * ceil(n_samples / 4) bytes (a truncated or mismatched file).
    """
    paths = plink_paths(prefix)
    n_samples, n_variants = _count_lines(paths["fam"]), _count_lines(paths["bim"])
    bed = paths["bed"]
    if not bed.is_file():
        raise GenotypeError(f"PLINK file {bed} does not exist; check the cohort's genotype prefix")
    with open(bed, "rb") as fh:
        magic = fh.read(3)
    if magic != BED_MAGIC:
        raise GenotypeError(f"{bed} does not start with the PLINK 1 SNP-major magic bytes 6c 1b 01 "
                            f"(got {magic.hex(' ') or 'an empty file'}); convert it with plink --make-bed")
    expected = 3 + n_variants * (-(-n_samples // 4))
    size = bed.stat().st_size
    if size != expected:
        raise GenotypeError(
            f"{bed} has {size:,} bytes, expected {expected:,} = 3 + {n_variants:,} variants x "
            f"ceil({n_samples:,} samples / 4); the file is truncated or does not match its .bim/.fam"
        )
    return n_samples, n_variants


def read_dosage(prefix: Path | str, sample_idx=None, variant_idx=None,
                num_threads: int | None = None) -> np.ndarray:
    """Read A1 counts from a PLINK 1 fileset.

    Parameters
    ----------
    prefix : Path
        Fileset prefix.
    sample_idx, variant_idx : int array, slice or None
        Rows (samples, .fam order) and columns (variants, .bim order) to read; None reads all.
    num_threads : int, optional
        Threads for bed-reader; default all cores.

    Returns
    -------
    np.ndarray
        (n_selected_samples, n_selected_variants) float32 count of the .bim's A1 allele, NaN where
        missing.
    """
    from bed_reader import open_bed  # only this reader needs it: the scan decodes the .bed itself

    n_samples, n_variants = check_plink_files(prefix)
    rows = slice(None) if sample_idx is None else sample_idx
    cols = slice(None) if variant_idx is None else variant_idx
    with open_bed(plink_paths(prefix)["bed"], iid_count=n_samples, sid_count=n_variants,
                  count_A1=True, num_threads=num_threads) as bed:
        return bed.read(index=np.s_[rows, cols], dtype="float32", order="C", num_threads=num_threads)
