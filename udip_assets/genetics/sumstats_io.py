"""Full summary statistics (every SNP x dim, ``SUMSTATS_COLUMNS``) streamed to Parquet.

One row per SNP x dim, SNP-major; zstd, dictionary-encoded text, byte-stream-split floats. Rows
are written on a thread while the scan goes on, to a temporary file renamed into place only when
the scan completes (:func:`udip_assets.atomic.atomic_path`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.atomic import atomic_path
from udip_assets.errors import SummaryStatsError
from udip_assets.genetics.gwas_tables import FLOAT_COLUMNS, SUMSTATS_COLUMNS
from udip_assets.genetics.ols_kernel import Stats


class SumstatsWriter:
    """Streams every SNP x dim row to ``path`` (Parquet, zstd) on a thread; atomic on success.

    Rows go to a temporary file next to ``path`` (:func:`~udip_assets.atomic.atomic_path`),
    renamed to ``path`` only when the scan completes, so a failed run leaves nothing half-written
    (an older complete file at ``path`` stays until replaced). ``path=None`` writes nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._atomic: contextlib.AbstractContextManager[Path] | None = None

    @property
    def active(self) -> bool:
        return self.path is not None

    def __enter__(self) -> SumstatsWriter:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._atomic = atomic_path(self.path, suffix=".parquet")
            self._tmp = self._atomic.__enter__()
            self._thread = threading.Thread(target=self._run, name="sumstats-writer", daemon=True)
            self._thread.start()
        return self

    def put(self, variants: pd.DataFrame, st: Stats) -> None:
        """Queue one chunk (its ``st.full`` must be filled)."""
        if self._thread is None:
            return
        if self._error is not None:
            raise self._failure() from self._error
        self._queue.put((variants, st))

    def _run(self) -> None:
        import pyarrow.parquet as pq

        writer = None
        try:
            writer = pq.ParquetWriter(
                self._tmp, _sumstats_schema(), compression="zstd", compression_level=1,
                use_dictionary=["snp", "chrom", "a1", "a2"],
                write_statistics=["snp", "chrom", "pos_bp", "dim"],
                column_encoding={c: "BYTE_STREAM_SPLIT" for c in FLOAT_COLUMNS})
            while (item := self._queue.get()) is not None:
                writer.write_table(_sumstats_table(*item))
        except BaseException as exc:  # noqa: BLE001 - reported by put() / __exit__
            self._error = exc
            while self._queue.get() is not None:
                pass
        finally:
            if writer is not None:
                writer.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:  # the scan ran, the writer failed
            failure = self._failure()
            self._atomic.__exit__(SummaryStatsError, failure, None)  # removes the temporary
            raise failure from self._error
        self._atomic.__exit__(exc_type, exc, tb)  # renames on success, else removes the temporary

    def _failure(self) -> SummaryStatsError:
        return SummaryStatsError(f"writing the summary statistics {self.path} (temporary {self._tmp.name}) "
                                 f"failed: {self._error}; check the disk and the folder's permissions")


def _sumstats_schema():
    import pyarrow as pa

    text = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([("snp", text), ("chrom", text), ("pos_bp", pa.int64()), ("a1", text), ("a2", text),
                      ("dim", pa.int32()), *((c, pa.float64()) for c in FLOAT_COLUMNS)])


def _sumstats_table(variants: pd.DataFrame, st: Stats):
    """SNP-major rows (SNP 0 dims 0..P-1, SNP 1 ...) of one chunk as an Arrow table."""
    import pyarrow as pa

    v, n_dims = st.t.shape
    snp_index = pa.array(np.repeat(np.arange(v, dtype=np.int32), n_dims))

    def text(col: str):
        return pa.DictionaryArray.from_arrays(snp_index, pa.array(variants[col].astype(str).to_numpy()))

    columns = {"snp": text("snp"), "chrom": text("chrom"),
               "pos_bp": pa.array(np.repeat(variants["pos_bp"].to_numpy(np.int64), n_dims)),
               "a1": text("a1"), "a2": text("a2"),
               "dim": pa.array(np.tile(np.arange(n_dims, dtype=np.int32), v)),
               "t": pa.array(st.t.ravel())}
    columns.update({name: pa.array(values.ravel()) for name, values in st.full.items()})
    return pa.table({name: columns[name] for name in SUMSTATS_COLUMNS}, schema=_sumstats_schema())
