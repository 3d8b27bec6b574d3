"""Genotype sources that stream chunks of consecutive variants, decoded one chunk ahead.

A :class:`GenotypeSource` is a sample list (IIDs, in the order the caller asked for), a variant
table (``snp``, ``chrom``, ``pos_bp``, ``a1``, ``a2``) and a way to decode a block of variants into
a dosage matrix: the count of ``a1`` per sample, float32, NaN for a missing call. ``chunks()``
yields those blocks; the next block is decoded on a background thread while the caller works on
the current one (decoding is numpy and file I/O, which release the GIL, so it overlaps the GWAS
matrix products).

Three sources:

* :class:`PlinkSource`: PLINK 1 .bed/.bim/.fam, decoded by a 256-entry lookup table that turns
  each packed byte (4 samples) into four float32 dosages in one gather.
* :class:`BgenSource`: BGEN v1.2-1.3 (cbgen's variant index; zlib and uncompressed blocks decoded
  in batches on threads by :mod:`~udip_assets.genetics.bgen_decode`, zstd through cbgen), dosage =
  expected count of ``a1``, the second allele by default (REF-first files such as UK Biobank's)
  or the first (``a1_allele='first'``, files written by ``plink2 --export bgen-1.2`` without
  'ref-first').
* :class:`ArraySource`: an in-memory (n_samples, n_variants) dosage matrix.

Plain Python (numpy, pandas, cbgen, zlib): no Dagster.
"""

from __future__ import annotations

import copy
import queue
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from udip_assets.errors import GenotypeError, UdipConfigError
from udip_assets.genetics.bgen_decode import BgenBlockReader, read_bgen_header
from udip_assets.genetics.plink import check_plink_files, plink_paths, read_bim, read_fam

VARIANT_COLUMNS = ("snp", "chrom", "pos_bp", "a1", "a2")
_SHOW_IDS = 5  # mismatching IDs quoted in an error message
_T = TypeVar("_T")


def _bed_lookup_table() -> np.ndarray:
    """(256,) complex128 = 4 float32 dosages per packed .bed byte, viewed as one 16-byte item.

    2-bit codes from the low bits: 00 -> 2 (A1/A1), 01 -> NaN (missing), 10 -> 1, 11 -> 0.
    """
    value_of_code = np.array([2.0, np.nan, 1.0, 0.0], dtype=np.float32)
    byte = np.arange(256)
    codes = (byte[:, None] >> (2 * np.arange(4))[None, :]) & 3  # (256, 4)
    return np.ascontiguousarray(value_of_code[codes]).view(np.complex128).ravel()


_BED_LUT = _bed_lookup_table()


@dataclass(frozen=True)
class GenotypeChunk:
    """A block of consecutive variants of a source.

    Attributes
    ----------
    start : int
        Index of the block's first variant in ``source.variants``.
    variants : pd.DataFrame
        (n_chunk rows) ``snp``, ``chrom`` (str), ``pos_bp``, ``a1``, ``a2``.
    dosage : np.ndarray
        (n_samples, n_chunk) float32 count of ``a1``, NaN where the call is missing. Fortran
        order: each variant's column is contiguous (``dosage.T`` is a C-contiguous
        (n_chunk, n_samples) array).
    """

    start: int
    variants: pd.DataFrame
    dosage: np.ndarray


def prefetch(items: Iterable[_T], depth: int = 1) -> Iterator[_T]:
    """Iterate over ``items``, producing up to ``depth`` items ahead on a background thread.

    Parameters
    ----------
    items : iterable
        Produced lazily in the background thread (a generator's body runs there).
    depth : int
        Items produced ahead of the consumer (>= 1).

    Yields
    ------
    The items of ``items`` in order. An exception raised while producing an item is re-raised
    here, at that item; closing the iterator early stops the producer.
    """
    if depth < 1:
        raise UdipConfigError(f"prefetch depth must be >= 1, got {depth}")
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            box.put(("error", exc))

    worker = threading.Thread(target=produce, name="genotype-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = box.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()
        while worker.is_alive():
            try:
                box.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def _quote_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(str(x)) for x in ids[:_SHOW_IDS])
    return f"[{shown}{', ...' if len(ids) > _SHOW_IDS else ''}]"


def _sample_rows(file_iids: Sequence[str], wanted: Sequence[str] | None, where: str) -> np.ndarray:
    """Rows of ``file_iids`` holding the ``wanted`` IIDs, in the order asked (all rows when None)."""
    row_of: dict[str, int] = {}
    repeated: set[str] = set()
    for row, iid in enumerate(file_iids):
        if iid in row_of:
            repeated.add(iid)
        row_of.setdefault(iid, row)
    if wanted is None:
        if repeated:
            raise GenotypeError(f"{where} repeats sample IID(s) {_quote_ids(sorted(repeated))}; "
                                "IIDs must be unique")
        return np.arange(len(file_iids), dtype=np.int64)
    wanted = [str(x) for x in wanted]
    if len(set(wanted)) != len(wanted):
        seen: set[str] = set()
        dup = [w for w in wanted if w in seen or seen.add(w)]
        raise GenotypeError(f"sample_iids repeats IID(s) {_quote_ids(dup)}; pass each sample once")
    ambiguous = [w for w in wanted if w in repeated]
    if ambiguous:
        raise GenotypeError(f"{where} repeats sample IID(s) {_quote_ids(ambiguous)}; IIDs must be unique")
    absent = [w for w in wanted if w not in row_of]
    if absent:
        raise GenotypeError(
            f"{len(absent)} of {len(wanted)} sample IIDs are not in {where}: {_quote_ids(absent)}; "
            "subset the phenotypes to genotyped samples or fix the IDs")
    return np.fromiter((row_of[w] for w in wanted), dtype=np.int64, count=len(wanted))


class GenotypeSource(ABC):
    """Samples x variants dosages of one genotype file, read in chunks of consecutive variants.

    Subclasses provide ``_decode(variant_rows)``; this base class owns sample selection, the
    variant subset (e.g. one chromosome) and chunked, prefetched iteration.

    Attributes
    ----------
    path : Path
        The file read (for messages).
    """

    def __init__(self, path: Path, file_iids: Sequence[str], variants: pd.DataFrame,
                 sample_iids: Sequence[str] | None = None, chrom: str | int | None = None,
                 sample_file: Path | None = None) -> None:
        self.path = Path(path)
        self._sample_file = str(sample_file or path)
        self._file_iids = [str(x) for x in file_iids]
        self._sample_rows = _sample_rows(self._file_iids, sample_iids, self._sample_file)
        table = variants.loc[:, list(VARIANT_COLUMNS)].reset_index(drop=True)
        table["chrom"] = table["chrom"].astype(str)
        self._file_variants = table
        self._variant_rows = np.arange(len(table), dtype=np.int64)
        self._variants = table
        if chrom is not None:
            self._variant_rows, self._variants = self._rows_on(chrom)

    def _rows_on(self, chrom: str | int) -> tuple[np.ndarray, pd.DataFrame]:
        table = self._file_variants
        wanted = str(chrom).removeprefix("chr")
        rows = np.flatnonzero(table["chrom"].str.removeprefix("chr").to_numpy() == wanted)
        if rows.size == 0:
            present = sorted(table["chrom"].unique().tolist())[:30]
            raise GenotypeError(f"{self.path} has no variants on chromosome {wanted!r}; "
                                f"chromosomes present: {present}")
        return rows, table.iloc[rows].reset_index(drop=True)

    @property
    def chromosomes(self) -> list[str]:
        """Chromosomes of the variants read, in file order."""
        return self._variants["chrom"].unique().tolist()

    def select_chrom(self, chrom: str | int) -> GenotypeSource:
        """A copy of this source that reads only the file's variants on ``chrom`` ('chr' ignored)."""
        other = copy.copy(self)
        other._variant_rows, other._variants = self._rows_on(chrom)
        return other

    @property
    def iids(self) -> list[str]:
        """(n_samples,) IIDs of the samples read, in output order."""
        return [self._file_iids[r] for r in self._sample_rows]

    @property
    def variants(self) -> pd.DataFrame:
        """(n_variants rows) ``snp``, ``chrom`` (str), ``pos_bp``, ``a1``, ``a2`` of the variants read."""
        return self._variants

    @property
    def n_samples(self) -> int:
        """Samples read."""
        return int(self._sample_rows.size)

    @property
    def n_variants(self) -> int:
        """Variants read."""
        return int(self._variant_rows.size)

    def select_samples(self, iids: Sequence[str]) -> GenotypeSource:
        """A copy of this source that reads only ``iids``, in that order.

        Raises
        ------
        GenotypeError
            Listing the first few IIDs that the genotype file lacks, and their count.
        """
        other = copy.copy(self)
        other._sample_rows = _sample_rows(self._file_iids, iids, self._sample_file)
        return other

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n_samples, stop - start) float32 dosage of variants ``start:stop`` (NaN = missing)."""
        stop = self.n_variants if stop is None else min(stop, self.n_variants)
        if not 0 <= start <= stop:
            raise UdipConfigError(f"read(start={start}, stop={stop}) is outside 0..{self.n_variants}")
        return self._decode(self._variant_rows[start:stop]).T

    def chunks(self, chunk_variants: int, prefetch_depth: int = 1) -> Iterator[GenotypeChunk]:
        """Yield consecutive blocks of ``chunk_variants`` variants, decoding ahead on a thread.

        Parameters
        ----------
        chunk_variants : int
            Variants per block (the last block may be shorter).
        prefetch_depth : int
            Blocks decoded ahead; 0 decodes in the calling thread.
        """
        if chunk_variants < 1:
            raise UdipConfigError(f"chunk_variants must be >= 1, got {chunk_variants}")
        blocks = (self.read_chunk(s, min(s + chunk_variants, self.n_variants))
                  for s in range(0, self.n_variants, chunk_variants))
        return prefetch(blocks, prefetch_depth) if prefetch_depth > 0 else blocks

    def read_chunk(self, start: int, stop: int) -> GenotypeChunk:
        """Variants ``start:stop`` as a :class:`GenotypeChunk`; safe to call from several threads."""
        if not 0 <= start <= stop <= self.n_variants:
            raise UdipConfigError(f"read_chunk(start={start}, stop={stop}) is outside 0..{self.n_variants}")
        dosage = self._decode(self._variant_rows[start:stop])  # (v, n)
        return GenotypeChunk(start=start, variants=self._variants.iloc[start:stop].reset_index(drop=True),
                             dosage=dosage.T)

    @abstractmethod
    def _decode(self, variant_rows: np.ndarray) -> np.ndarray:
        """(len(variant_rows), n_samples) C-contiguous float32 dosage of file variants ``variant_rows``."""


class PlinkSource(GenotypeSource):
    """A PLINK 1 fileset (.bed/.bim/.fam), dosage = count of the .bim's A1 (column 5).

    Parameters
    ----------
    prefix : Path
        Fileset prefix (may end in .bed).
    sample_iids : sequence of str, optional
        IIDs (.fam column 2) to read, in this order; default every sample in .fam order.
    chrom : str or int, optional
        Read only this chromosome's variants ('chr' prefixes ignored).

    Raises
    ------
    GenotypeError
        A file is missing, the .bed's size does not match the .bim and .fam (naming the .bed),
        an IID is absent from the .fam, or no variant lies on ``chrom``.

    Notes
    -----
    The .bed is memory-mapped; a block of variants is a (v, ceil(n / 4)) byte matrix, and one
    gather through a 256-entry table of 16-byte items (4 float32 dosages per byte) decodes it.
    """

    def __init__(self, prefix: Path | str, sample_iids: Sequence[str] | None = None,
                 chrom: str | int | None = None) -> None:
        paths = plink_paths(prefix)
        n_file_samples, n_file_variants = check_plink_files(prefix)
        fam, bim = read_fam(paths["fam"]), read_bim(paths["bim"])
        self._bed = paths["bed"]
        self._n_file_samples = n_file_samples
        self._bytes_per_variant = -(-n_file_samples // 4)
        super().__init__(self._bed, fam["iid"].tolist(), bim, sample_iids, chrom, sample_file=paths["fam"])
        self._mmap = np.memmap(self._bed, dtype=np.uint8, mode="r", offset=3,
                               shape=(n_file_variants, self._bytes_per_variant))

    def _decode(self, variant_rows: np.ndarray) -> np.ndarray:
        if variant_rows.size == 0:
            return np.empty((0, self.n_samples), dtype=np.float32)
        lo, hi = int(variant_rows[0]), int(variant_rows[-1]) + 1
        packed = self._mmap[lo:hi] if hi - lo == variant_rows.size else self._mmap[variant_rows]
        decoded = np.take(_BED_LUT, packed).view(np.float32)  # (v, 4 * bytes_per_variant)
        rows = self._sample_rows
        if rows.size == self._n_file_samples and np.array_equal(rows, np.arange(rows.size)):
            return np.ascontiguousarray(decoded[:, :rows.size])
        return np.ascontiguousarray(decoded[:, rows])


class ArraySource(GenotypeSource):
    """An in-memory dosage matrix as a genotype source (tests, small cohorts).

    Parameters
    ----------
    dosage : np.ndarray
        (n_samples, n_variants) count of ``variants.a1``; missing as NaN or a negative number.
    iids : sequence of str
        (n_samples,) sample IDs.
    variants : pd.DataFrame
        (n_variants rows) with ``snp``, ``chrom``, ``pos_bp``, ``a1``, ``a2``.
    sample_iids, chrom
        As for :class:`PlinkSource`.
    """

    def __init__(self, dosage: np.ndarray, iids: Sequence[str], variants: pd.DataFrame,
                 sample_iids: Sequence[str] | None = None, chrom: str | int | None = None) -> None:
        values = np.asarray(dosage, dtype=np.float32)
        if values.ndim != 2 or values.shape != (len(iids), len(variants)):
            raise GenotypeError(f"dosage has shape {values.shape}, expected (n_samples, n_variants) = "
                                f"({len(iids)}, {len(variants)}) from iids and variants")
        missing = [c for c in VARIANT_COLUMNS if c not in variants.columns]
        if missing:
            raise GenotypeError(f"variants lacks columns {missing}; expected {list(VARIANT_COLUMNS)}")
        self._by_variant = np.where(values < 0, np.nan, values).T.copy()  # (m, n)
        super().__init__(Path("<array>"), iids, variants, sample_iids, chrom)

    def _decode(self, variant_rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._by_variant[np.ix_(variant_rows, self._sample_rows)])


def read_oxford_sample(path: Path | str) -> list[str]:
    """IIDs of an Oxford .sample file (column ``ID_2``, PLINK 2's IID; ``ID_1`` is the FID).

    Raises
    ------
    GenotypeError
        The file is missing, lacks the two header lines or an ``ID_2`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"BGEN sample file {path} does not exist; "
                            "pass the .sample that goes with the .bgen")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2 or "ID_2" not in lines[0] or lines[1][0] != "0":
        raise GenotypeError(f"{path} is not an Oxford .sample file: expected a header "
                            "'ID_1 ID_2 missing ...' and a type line '0 0 0 ...'")
    col = lines[0].index("ID_2")
    return [row[col] for row in lines[2:]]


def check_bgen_blocks(path: Path | str) -> int:
    """Walk a BGEN file's header and every variant block; the number of variants.

    cbgen trusts the file: a truncated .bgen (an interrupted copy or download) makes it build a
    broken index and crash the process (a segmentation fault, no message), or fail later on the
    first variant past the end. This reads only each block's lengths (never the probabilities)
    and stops at the first block that does not fit, naming the variant, where it ends and the
    file's size.

    Raises
    ------
    GenotypeError
        Not a BGEN file, an unknown layout, or a block that runs past the end of the file.
    """
    import mmap
    import struct

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise GenotypeError(f"{path} holds {size} bytes, too few for a BGEN header; is it truncated?")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        first, header_len, n_variants = struct.unpack_from("<III", buf, 0)
        magic = bytes(buf[16:20])
        if first + 4 > size and magic in (b"bgen", b"\0\0\0\0"):
            raise GenotypeError(f"{path} is truncated: its variants start at byte {first + 4:,} but the file ends "
                                f"at byte {size:,}; copy or export it again")
        if magic not in (b"bgen", b"\0\0\0\0") or header_len < 20 or first + 4 > size:
            raise GenotypeError(f"{path} is not a BGEN file (its header: offset {first}, length {header_len}, "
                                f"magic {magic!r}); check --bgen")
        (flags,) = struct.unpack_from("<I", buf, 4 + header_len - 4)
        layout = (flags >> 2) & 15
        if layout != 2:
            raise GenotypeError(f"{path} is BGEN layout {layout} (v1.1 is layout 1); udip reads layout 2, "
                                "BGEN v1.2 and v1.3: convert it, e.g. plink2 --bgen ... --export bgen-1.2")
        at, name, index = first + 4, "", 0

        def need(n: int, what: str) -> None:
            if at + n > size:
                raise GenotypeError(
                    f"{path} is truncated: variant {index + 1} of {n_variants}{f' ({name})' if name else ''} needs "
                    f"{what} up to byte {at + n:,} but the file ends at byte {size:,}; copy or export it again")

        for index in range(n_variants):  # noqa: B007 (need() names the variant by it)
            name = ""
            lengths = []
            for _ in range(3):  # variant id, rsid, chromosome
                need(2, "its identifiers")
                (n,) = struct.unpack_from("<H", buf, at)
                need(2 + n, "its identifiers")
                lengths.append((at + 2, n))
                at += 2 + n
            name = bytes(buf[lengths[1][0]:lengths[1][0] + lengths[1][1]]).decode(errors="replace")
            need(4, "its position")
            at += 4
            need(2, "its allele count")
            (n_alleles,) = struct.unpack_from("<H", buf, at)
            at += 2
            for _ in range(n_alleles):
                need(4, "its alleles")
                (n,) = struct.unpack_from("<I", buf, at)
                need(4 + n, "its alleles")
                at += 4 + n
            need(4, "its probability block's length")
            (n,) = struct.unpack_from("<I", buf, at)
            need(4 + n, "its probabilities")
            at += 4 + n
    return n_variants


class BgenSource(GenotypeSource):
    """A BGEN file read through cbgen; dosage = expected count of the allele chosen as ``a1``.

    Parameters
    ----------
    path : Path
        The .bgen file (biallelic diploid variants; layout 2, i.e. v1.2/v1.3, any bit depth, zlib or
        zstd).
    sample_path : Path, optional
        Oxford .sample file (IID = ``ID_2``); default the sample IDs stored in the .bgen.
    sample_iids, chrom
        As for :class:`PlinkSource`.
    a1_allele : {'second', 'first'}
        Which BGEN allele is ``a1``, the counted (effect) allele; the other is ``a2``.
    metafile_dir : Path, optional
        Folder in which to keep cbgen's variant index (metafile) for later runs; default a
        temporary folder, removed once the variant table is read.
    decode_threads : int, optional
        Threads that decompress and decode probability blocks (default: the CPUs, at most 4).

    Raises
    ------
    GenotypeError
        The file cannot be opened, has no sample IDs and no .sample file was given, the sample
        counts differ, or a variant is not biallelic diploid.

    Notes
    -----
    BGEN does not say which allele is REF. The default ``a1_allele='second'`` reads the first
    allele as REF and counts the second (ALT), as PLINK 2 does with ``--bgen ... ref-first``
    (UK Biobank's files); ``'first'`` counts the first allele, PLINK 1.9's order, which is what
    ``plink2 --export bgen-1.2`` writes unless given 'ref-first' (then a1 is the .bim's A1 either
    way). Samples flagged missing in the ploidy byte are NaN. For unphased data the dosage of the
    second allele is P(het) + 2 P(hom second); for phased data it is the sum of the two
    haplotypes' probabilities of that allele; the first allele's dosage is 2 minus it.

    Blocks of biallelic diploid variants in zlib or uncompressed files (UK Biobank's layout among
    them) are decoded by :class:`~udip_assets.genetics.bgen_decode.BgenBlockReader`, many at a time
    on several threads; zstd files and other blocks go through cbgen one variant at a time.
    """

    def __init__(self, path: Path | str, sample_path: Path | str | None = None,
                 sample_iids: Sequence[str] | None = None, chrom: str | int | None = None,
                 a1_allele: str = "second", metafile_dir: Path | str | None = None,
                 decode_threads: int | None = None) -> None:
        import cbgen

        if a1_allele not in ("first", "second"):
            raise UdipConfigError(f"a1_allele must be 'first' or 'second' (the BGEN allele counted as a1), "
                                  f"got {a1_allele!r}")
        self._count_first = a1_allele == "first"
        path = Path(path)
        if not path.is_file():
            raise GenotypeError(f"BGEN file {path} does not exist; check --bgen")
        check_bgen_blocks(path)  # before cbgen, which crashes on a truncated file
        self._header = read_bgen_header(path)
        self.decode_threads = decode_threads
        own_dir = None if metafile_dir is not None else Path(tempfile.mkdtemp(prefix="udip_bgen_"))
        metafile = Path(metafile_dir or own_dir) / (path.name + ".metafile")
        try:
            with cbgen.bgen_file(path) as bgen:
                file_iids = self._file_samples(bgen, path, sample_path)
                if not metafile.exists():
                    bgen.create_metafile(metafile)
            variants, self._offsets = self._read_variants(metafile, self._count_first)
        except GenotypeError:
            raise
        except RuntimeError as exc:
            raise GenotypeError(f"cannot read BGEN file {path}: {exc}; "
                                "check that it is BGEN v1.2/v1.3") from exc
        finally:
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
        self._file_snps = variants["snp"].to_numpy()
        super().__init__(path, file_iids, variants, sample_iids, chrom,
                         sample_file=Path(sample_path) if sample_path is not None else None)

    @staticmethod
    def _file_samples(bgen, path: Path, sample_path: Path | str | None) -> list[str]:
        if sample_path is not None:
            iids = read_oxford_sample(sample_path)
        elif bgen.contain_samples:
            iids = [s.decode() for s in bgen.read_samples()]
        else:
            raise GenotypeError(f"{path} stores no sample IDs; pass its Oxford .sample file (--sample)")
        if len(iids) != bgen.nsamples:
            raise GenotypeError(f"{sample_path or path} lists {len(iids)} samples but {path} holds "
                                f"{bgen.nsamples}; use the .sample written with this .bgen")
        return iids

    @staticmethod
    def _read_variants(metafile: Path, count_first: bool) -> tuple[pd.DataFrame, np.ndarray]:
        import cbgen

        parts = []
        with cbgen.bgen_metafile(metafile) as mf:
            for k in range(mf.npartitions):
                parts.append(mf.read_partition(k).variants)
        ids = np.concatenate([p.id for p in parts]).astype(str)
        rsids = np.concatenate([p.rsid for p in parts]).astype(str)
        alleles = [a.split(",") for a in np.concatenate([p.allele_ids for p in parts]).astype(str)]
        if any(len(a) != 2 for a in alleles):
            bad = next(i for i, a in enumerate(alleles) if len(a) != 2)
            raise GenotypeError(f"variant {rsids[bad] or ids[bad]} of the BGEN file has alleles "
                                f"{alleles[bad]}; only biallelic variants are supported "
                                "(split multiallelics with plink2)")
        variants = pd.DataFrame({
            "snp": np.where(rsids != "", rsids, ids),
            "chrom": np.concatenate([p.chromosome for p in parts]).astype(str),
            "pos_bp": np.concatenate([p.position for p in parts]).astype(np.int64),
            "a1": [a[1 - count_first] for a in alleles], "a2": [a[int(count_first)] for a in alleles]})
        return variants, np.concatenate([p.offset for p in parts]).astype(np.uint64)

    def _decode(self, variant_rows: np.ndarray) -> np.ndarray:
        out = np.empty((variant_rows.size, self.n_samples), dtype=np.float32)
        reader = BgenBlockReader(self.path, self._header, self._sample_rows, self._count_first,
                                 threads=self.decode_threads)
        left = (reader.decode(self._offsets[variant_rows], self._file_snps[variant_rows], out) if reader.readable
                else np.arange(variant_rows.size))
        if left.size:
            self._decode_with_cbgen(variant_rows, left, out)
        return out

    def _decode_with_cbgen(self, variant_rows: np.ndarray, which: np.ndarray, out: np.ndarray) -> None:
        """Rows ``which`` of ``out`` through cbgen: zstd files and blocks the fast reader leaves."""
        import cbgen

        with cbgen.bgen_file(self.path) as bgen:
            for k in which:
                row = variant_rows[k]
                try:
                    gt = bgen.read_genotype(int(self._offsets[row]), precision=64)
                except RuntimeError as exc:  # e.g. a probability block that does not decompress
                    raise GenotypeError(f"variant {self._file_snps[row]} of {self.path} cannot be decoded "
                                        f"({exc}); the file is damaged: copy or export it again") from exc
                out[k] = self._dosage(gt, row)[self._sample_rows]

    def _dosage(self, gt, row: int) -> np.ndarray:
        probs = gt.probability
        if np.any(gt.ploidy[~gt.missing] != 2) or probs.shape[1] not in (3, 4):
            raise GenotypeError(f"variant {self._file_snps[row]} of {self.path} is not biallelic diploid "
                                f"(ploidy {sorted(set(gt.ploidy.tolist()))}, {probs.shape[1]} probabilities)")
        second = probs[:, 1] + probs[:, 3] if gt.phased else probs[:, 1] + 2.0 * probs[:, 2]
        return np.where(gt.missing, np.nan, 2.0 - second if self._count_first else second)
