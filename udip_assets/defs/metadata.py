"""Materialization metadata a user can look at in the UI: figures inline, tables with their schema
and row count, a preview of the rows.

- :func:`figure` embeds a PNG as a markdown image (a base64 ``data:`` URI, which the asset page
  renders); a figure over :data:`MAX_INLINE_BYTES` is linked by path instead, so that the event log
  does not swell.
- :func:`table_metadata` gives ``dagster/row_count`` (the rows the partition holds now) and
  ``dagster/column_schema`` (the warehouse schema, with the table's grain as description).
- :func:`preview` renders the first rows as a markdown table.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from udip_assets.defs.resources import UdipHome
from udip_assets.store.schema import Table

MAX_INLINE_BYTES = 1_500_000


def figure(path: str | Path, title: str = "") -> dg.MetadataValue:
    """A PNG as an inline markdown image (or its path when larger than :data:`MAX_INLINE_BYTES`)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) > MAX_INLINE_BYTES:
        return dg.MetadataValue.path(str(path))
    alt = title or path.stem
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{path}`")


def column_schema(table: Table) -> dg.TableSchema:
    """The warehouse table's columns (name, DuckDB type, NOT NULL as a constraint)."""
    columns = []
    for name, sql_type in table.columns:
        required = "NOT NULL" in sql_type.upper()
        columns.append(dg.TableColumn(name=name, type=sql_type.replace(" NOT NULL", "").lower(),
                                      constraints=dg.TableColumnConstraints(nullable=not required)))
    return dg.TableSchema(columns=columns)


def table_metadata(home: UdipHome, table: Table, **partition) -> dict:
    """``dagster/row_count`` of the partition's rows in ``table`` and its ``dagster/column_schema``."""
    where = " AND ".join(f"{k} = ?" for k in partition) or "TRUE"
    n = int(home.query(f"SELECT count(*) AS n FROM {table.name} WHERE {where}", list(partition.values()))["n"].item())
    return {"dagster/row_count": n, "dagster/column_schema": column_schema(table), "table": table.name,
            "grain": table.grain}


def preview(rows: pd.DataFrame, n: int = 10) -> dg.MetadataValue:
    """The first ``n`` rows as a markdown table (floats to 4 significant digits)."""
    if rows.empty:
        return dg.MetadataValue.md("*no rows*")
    head = rows.head(n).copy()
    for col in head.select_dtypes("float").columns:
        head[col] = head[col].map(lambda v: f"{v:.4g}")
    return dg.MetadataValue.md(head.to_markdown(index=False))
