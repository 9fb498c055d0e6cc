"""Materialization metadata shared by every asset: row counts, column schemas, table paths, previews."""

from __future__ import annotations

from typing import Any

import dagster as dg

OWNERS = ["team:data-platform"]


def column_schema(struct_type) -> dg.TableSchema:
    """Contract StructType -> the TableSchema shown in the UI (dagster/column_schema)."""
    return dg.TableSchema(columns=[
        dg.TableColumn(name=f.name, type=f.dataType.simpleString(),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in struct_type.fields
    ])


def table_metadata(struct_type, uri: str, row_count: int | None = None, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "dagster/column_schema": column_schema(struct_type),
        "dagster/uri": dg.MetadataValue.path(uri),
    }
    if row_count is not None:
        metadata["dagster/row_count"] = dg.MetadataValue.int(int(row_count))
    metadata.update(extra)
    return metadata


def markdown_preview(rows: list[dict[str, Any]], columns: list[str], limit: int = 20) -> dg.MetadataValue:
    """A small markdown table (no pandas needed) for the asset's materialization page."""
    if not rows:
        return dg.MetadataValue.md("_no rows_")

    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows_")
    return dg.MetadataValue.md("\n".join(lines))


def delta_row_count(uri: str, storage_options: dict[str, str]) -> int | None:
    """Rows in a Delta table through delta-rs (no JVM); None when the table does not exist yet."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(uri, storage_options=storage_options):
        return None
    return DeltaTable(uri, storage_options=storage_options).to_pyarrow_dataset().count_rows()


def delta_version(uri: str, storage_options: dict[str, str]) -> int | None:
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(uri, storage_options=storage_options):
        return None
    return DeltaTable(uri, storage_options=storage_options).version()
