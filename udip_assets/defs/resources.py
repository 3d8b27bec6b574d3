"""Dagster resources: where runtime state lives, and the warehouse."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from udip_assets import paths
from udip_assets.store.schema import Table
from udip_assets.store.warehouse import connect, write_partition, write_partitions


class UdipHome(dg.ConfigurableResource):
    """The platform's home folder (``$UDIP_HOME`` or ``./.udip`` when ``home`` is not set).

    ``home`` is resolved when a path is asked for, never at import, so one Definitions object
    serves every environment.
    """

    home: str | None = None

    def root(self) -> Path:
        root = Path(self.home).expanduser().resolve() if self.home else paths.udip_home()
        return paths.ensure_private_dir(root)

    def cohort_dir(self, cohort: str) -> Path:
        return self.root() / "cohorts" / cohort

    def artifacts(self, *parts: str) -> Path:
        out = self.root().joinpath("artifacts", *parts)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def warehouse_path(self) -> Path:
        return self.root() / "warehouse.duckdb"

    def write(self, table: Table, rows: pd.DataFrame, **partition) -> int:
        """Replace one partition of ``table`` (delete + insert in one transaction)."""
        return write_partition(self.warehouse_path(), table, rows, partition)

    def write_many(self, writes: list[tuple[Table, pd.DataFrame]], **partition) -> list[int]:
        """Replace the same partition of several tables in one transaction (all or none)."""
        return write_partitions(self.warehouse_path(), writes, partition)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """A read query; opens read-write so it also works while the file does not exist yet."""
        with connect(self.warehouse_path()) as con:
            return con.execute(sql, params or []).df()

    def has_table(self, name: str) -> bool:
        """Whether the warehouse has table ``name`` yet (tables are created by their first write)."""
        return not self.query("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [name]).empty
