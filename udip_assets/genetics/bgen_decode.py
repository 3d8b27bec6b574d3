"""Decode BGEN v1.2/v1.3 probability blocks straight from the file, many variants at a time.

cbgen decodes one variant per call into float64 probabilities, ~100 us per variant of 5,000 samples
(10 s per 100,000 variants on one core, more than the GWAS products). UK Biobank's imputed files
are one layout: v1.2, zlib, unphased, biallelic, diploid, 8 bits per probability. For such blocks
this module decompresses (zlib releases the GIL, so threads decompress in parallel), lays the
blocks of a batch of variants side by side as one byte matrix and computes every dosage of the
batch at once from the two probability bytes of each sample used (strided views when all samples
are used, one gather otherwise). Other bit depths are unpacked with shifts. Blocks it does not read
(zstd, a ploidy other than 2, more than two alleles) are left to the caller (``None`` rows).

The block layout (BGEN spec, layout 2): N (uint32), K (uint16), Pmin, Pmax (uint8), N ploidy
bytes (bit 7: missing), phased (uint8), B (uint8), then the probabilities, B bits each, packed
little-endian. Unphased diploid biallelic: per sample P(first/first), P(first/second) (the third
is implied); phased: per sample each haplotype's P(first allele).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udip_assets.errors import GenotypeError

COMPRESSION = {0: "none", 1: "zlib", 2: "zstd"}
_BATCH_BYTES = 4 << 20  # decompressed bytes laid side by side per batch (cache-sized; bounds memory)


@dataclass(frozen=True)
class BgenHeader:
    """What the header of a BGEN file says about its blocks."""

    n_variants: int
    n_samples: int
    compression: str
    layout: int


def read_bgen_header(path: Path | str) -> BgenHeader:
    """The variant and sample counts, compression and layout of a BGEN file's header."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise GenotypeError(f"{path} holds {len(head)} bytes, too few for a BGEN header; is it truncated?")
        _, header_len, n_variants, n_samples = struct.unpack_from("<IIII", head, 0)
        fh.seek(4 + header_len - 4)
        (flags,) = struct.unpack("<I", fh.read(4))
    return BgenHeader(n_variants, n_samples, COMPRESSION.get(flags & 3, f"unknown ({flags & 3})"),
                      (flags >> 2) & 15)


class BgenBlockReader:
    """Reads the probability blocks of variants of one BGEN file (layout 2) by byte offset.

    Parameters
    ----------
    path : Path
        The .bgen file.
    header : BgenHeader
        Its header (:func:`read_bgen_header`).
    sample_rows : np.ndarray
        (n_used,) int64 rows of the file's samples to return, in output order.
    count_first : bool
        Count the first allele (default the second).
    threads : int, optional
        Decompression threads (default: the CPUs, at most 4).
    """

    def __init__(self, path: Path | str, header: BgenHeader, sample_rows: np.ndarray, count_first: bool,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.header = header
        self.sample_rows = np.asarray(sample_rows, dtype=np.int64)
        self.count_first = count_first
        self.threads = max(1, threads if threads is not None else min(4, os.cpu_count() or 1))
        self._fast_header = struct.pack("<IHBB", header.n_samples, 2, 2, 2)  # N, K = 2, ploidy 2..2
        self._all_samples = bool(np.array_equal(self.sample_rows, np.arange(header.n_samples)))

    @property
    def readable(self) -> bool:
        """Whether this reader decodes the file's blocks (layout 2, none or zlib; zstd is left to cbgen)."""
        return self.header.layout == 2 and self.header.compression in ("none", "zlib")

    def decode(self, offsets: np.ndarray, names: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out[k]`` with the dosages of the variant at ``offsets[k]``; the rows it left alone.

        Parameters
        ----------
        offsets : np.ndarray
            (v,) byte offsets of the variants' probability blocks (cbgen's metafile offsets: the
            block's length field).
        names : np.ndarray
            (v,) variant names, for messages.
        out : np.ndarray
            (v, n_used) float32, written in place; NaN for a missing call.

        Returns
        -------
        np.ndarray
            Indices into ``offsets`` of the blocks not decoded here (not biallelic diploid, or
            another layout), for the caller to read otherwise.
        """
        v = len(offsets)
        if v == 0:
            return np.empty(0, dtype=np.int64)
        pieces = np.array_split(np.arange(v), min(self.threads, max(1, v // 64)))
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if len(pieces) == 1:
                return self._decode_piece(buf, offsets, names, out, pieces[0])
            with ThreadPoolExecutor(len(pieces), thread_name_prefix="bgen-decode") as pool:
                left = list(pool.map(lambda rows: self._decode_piece(buf, offsets, names, out, rows), pieces))
        return np.concatenate(left)

    def _decode_piece(self, buf, offsets, names, out, rows: np.ndarray) -> np.ndarray:
        left: list[np.ndarray] = []
        start = 0
        while start < rows.size:
            first = self._block(buf, int(offsets[rows[start]]), names[rows[start]])
            batch = rows[start:start + max(1, _BATCH_BYTES // max(1, len(first)))]
            blocks = [first] + [self._block(buf, int(offsets[k]), names[k]) for k in batch[1:]]
            left.append(self._decode_batch(blocks, out, batch, names))
            start += batch.size
        return np.concatenate(left) if left else np.empty(0, dtype=np.int64)

    def _block(self, buf, at: int, name) -> bytes:
        """The decompressed probability block whose length field starts at byte ``at``."""
        try:
            (length,) = struct.unpack_from("<I", buf, at)
            if self.header.compression == "none":
                size, block = length, buf[at + 4:at + 4 + length]
            else:
                (size,) = struct.unpack_from("<I", buf, at + 4)
                block = zlib.decompress(buf[at + 8:at + 4 + length], bufsize=max(size, 1))
        except (struct.error, zlib.error) as exc:
            raise GenotypeError(f"variant {name} of {self.path} cannot be decoded ({exc}); the file is "
                                "damaged: copy or export it again") from exc
        if len(block) != size:
            raise GenotypeError(f"variant {name} of {self.path} holds a {len(block)}-byte probability block, "
                                f"its length field says {size}; the file is damaged: copy or export it again")
        return block

    def _decode_batch(self, blocks: list[bytes], out: np.ndarray, batch: np.ndarray, names) -> np.ndarray:
        """Decode the biallelic diploid ``blocks`` (grouped by length) into ``out[batch]``; the rest."""
        n = self.header.n_samples
        groups: dict[int, list[int]] = {}
        left = []
        for i, block in enumerate(blocks):
            if block[:8] == self._fast_header:
                groups.setdefault(len(block), []).append(i)
            elif len(block) < 4 or struct.unpack_from("<I", block)[0] != n:
                raise GenotypeError(f"variant {names[batch[i]]} of {self.path} holds a block of "
                                    f"{struct.unpack_from('<I', block)[0] if len(block) >= 4 else 0} samples, "
                                    f"the file's header {n}; the file is damaged: copy or export it again")
            else:
                left.append(i)
        for length, idx in groups.items():
            matrix = np.frombuffer(b"".join(blocks[i] for i in idx), dtype=np.uint8).reshape(len(idx), length)
            self._dosages(matrix, out, batch[idx], names)
        return batch[left]

    def _dosages(self, matrix: np.ndarray, out: np.ndarray, rows: np.ndarray, names) -> None:
        """Dosages of blocks of one length and layout (2 alleles, ploidy 2); ``matrix`` is (v, bytes)."""
        n = self.header.n_samples
        if matrix.shape[1] < 10 + n:
            raise GenotypeError(f"variant {names[rows[0]]} of {self.path} holds a {matrix.shape[1]}-byte block, "
                                f"too short for {n} samples; the file is damaged")
        phased_col, bits_col = matrix[:, 8 + n], matrix[:, 9 + n]
        if (phased_col > 1).any():
            bad = int(np.flatnonzero(phased_col > 1)[0])
            raise GenotypeError(f"variant {names[rows[bad]]} of {self.path} has phased flag {int(phased_col[bad])}; "
                                "the file is damaged: copy or export it again")
        kinds = {(int(p), int(b)) for p, b in zip(phased_col, bits_col, strict=True)}
        for phased, bits in kinds:
            sel = None if len(kinds) == 1 else np.flatnonzero((phased_col == phased) & (bits_col == bits))
            sub = matrix if sel is None else matrix[sel]
            values = self._counted(sub, bool(phased), bits, names[rows[0 if sel is None else sel[0]]])
            missing = self._columns(sub, 8) >= 0x80  # ploidy byte bit 7: missing
            if missing.any():
                values[missing] = np.nan
            out[rows if sel is None else rows[sel]] = values

    def _columns(self, matrix: np.ndarray, offset: int, stride: int = 1) -> np.ndarray:
        """(v, n_used) bytes ``offset + stride * sample`` of each row, for the samples used in order."""
        n = self.header.n_samples
        if self._all_samples:
            return matrix[:, offset:offset + stride * n:stride]
        return matrix[:, offset + stride * self.sample_rows]

    def _counted(self, matrix: np.ndarray, phased: bool, bits: int, name) -> np.ndarray:
        """(v, n_used) float32 count of the counted allele from the probability bytes of ``matrix``.

        With the stored values v0, v1 and top = 2^bits - 1, the second allele's count is
        (2 top - v0 - v1) / top when phased and (2 top - 2 v0 - v1) / top when not; the numerator
        is exact in integers and divided once, so the float32 result is correctly rounded.
        """
        n = self.header.n_samples
        start = 10 + n
        if not 1 <= bits <= 32 or matrix.shape[1] < start + -(-2 * n * bits // 8):
            raise GenotypeError(f"variant {name} of {self.path} stores {bits}-bit probabilities in a block of "
                                f"{matrix.shape[1]} bytes; the file is damaged: copy or export it again")
        top = (1 << bits) - 1
        if bits == 8:  # float32 holds these small integers exactly
            v0, v1 = (self._columns(matrix, start + j, 2).astype(np.float32) for j in (0, 1))
        else:
            v0, v1 = (_unpack(matrix[:, start:], 2 * self.sample_rows + j, bits) for j in (0, 1))
        second = 2 * top - (1 if phased else 2) * v0 - v1
        counted = 2 * top - second if self.count_first else second
        if bits <= 16:  # numerators below 2^18: exact in float32
            return counted.astype(np.float32) / np.float32(top)
        return (counted / float(top)).astype(np.float32)


def _unpack(packed: np.ndarray, index: np.ndarray, bits: int) -> np.ndarray:
    """(v, len(index)) int64 of the ``index``-th ``bits``-bit little-endian values of each row."""
    bit = index.astype(np.int64) * bits
    byte, shift = bit // 8, (bit % 8).astype(np.uint64)
    span = -(-(7 + bits) // 8)
    padded = np.concatenate([packed, np.zeros((packed.shape[0], span), np.uint8)], axis=1)
    word = np.zeros((packed.shape[0], index.size), dtype=np.uint64)
    for t in range(span):
        word |= padded[:, byte + t].astype(np.uint64) << np.uint64(8 * t)
    return ((word >> shift) & np.uint64((1 << bits) - 1)).astype(np.int64)
