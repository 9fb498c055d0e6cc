"""Materialization metadata shared by every asset: row counts, column schemas, table paths, previews."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from pinterest_platform import descriptions as _descriptions

OWNERS = ["team:data-platform"]


def _columns(schema) -> tuple[tuple[str, str, bool], ...]:
    """(name, Spark SQL type, nullable) of each column of a contract `Column` tuple or a pyspark StructType."""
    if hasattr(schema, "fields"):  # a StructType: read it without importing pyspark here
        return tuple((f.name, f.dataType.simpleString(), f.nullable) for f in schema.fields)
    return tuple((c.name, c.type, c.nullable) for c in schema)


def _known_table(schema) -> str | None:
    """The contract table whose schema `schema` is (a streaming table: its cleaned table), if any."""
    from pinterest_platform import contract

    known = [*((f"cleaned/{k}", s) for k, s in contract.CLEANED_FIELDS.items()),
             (_descriptions.QUARANTINE, contract.QUARANTINE_FIELDS),
             *((f"analytics/{n}", s) for n, s in contract.ANALYTICS_FIELDS.items()),
             *((f"raw/{k}", s) for k, s in contract.WIRE_FIELDS.items())]
    columns = _columns(schema)
    return next((table for table, fields in known if _columns(fields) == columns), None)


def column_schema(struct_type, table: str | dg.AssetKey | None = None,
                  descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """Contract columns (`contract.CLEANED_FIELDS[...]` etc., or a pyspark StructType) -> the TableSchema
    shown in the UI (dagster/column_schema), each column with its plain-words description: `descriptions` if
    given, else those of `table` (an asset key or table name, see descriptions.table_key), else those of the
    contract table with this very schema."""
    if descriptions is None:
        name = table.to_user_string() if isinstance(table, dg.AssetKey) else table
        name = name if name is not None else _known_table(struct_type)
        descriptions = _descriptions.column_descriptions(name) if name else {}
    return dg.TableSchema(columns=[
        dg.TableColumn(name=column, type=type_, description=descriptions.get(column),
                       constraints=dg.TableColumnConstraints(nullable=nullable))
        for column, type_, nullable in _columns(struct_type)
    ])


def column_lineage(table: str | dg.AssetKey) -> dg.TableColumnLineage | None:
    """The dagster/column_lineage of a table (descriptions.COLUMN_LINEAGE), None where it is not known."""
    name = table.to_user_string() if isinstance(table, dg.AssetKey) else table
    key = _descriptions.table_key(name)
    deps = _descriptions.COLUMN_LINEAGE.get(key) if key else None
    if not deps:
        return None
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=dg.AssetKey.from_user_string(asset), column_name=upstream)
                 for asset, upstream in upstreams]
        for column, upstreams in deps.items()
    })


def table_metadata(struct_type, uri: str, row_count: int | None = None, table: str | dg.AssetKey | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Column schema (with descriptions), uri, row count and, when known for `table`, column lineage."""
    metadata: dict[str, Any] = {
        "dagster/column_schema": column_schema(struct_type, table),
        "dagster/uri": dg.MetadataValue.path(uri),
    }
    if row_count is not None:
        metadata["dagster/row_count"] = dg.MetadataValue.int(int(row_count))
    lineage = column_lineage(table) if table is not None else None
    if lineage is not None:
        metadata["dagster/column_lineage"] = lineage
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


BAR_BLOCKS = " ▏▎▍▌▋▊▉█"  # eighths of a full block


def _bar(value: float, top: float, width: int) -> str:
    eighths = round(max(value, 0) / top * width * 8) if top > 0 else 0
    full, part = divmod(eighths, 8)
    return "█" * full + (BAR_BLOCKS[part] if part else "")


def bar_chart_markdown(rows: list[dict[str, Any]], label_columns: list[str], value_column: str,
                       width: int = 24) -> dg.MetadataValue:
    """A text bar chart the UI renders (markdown has no charts): one table row per input row, its labels,
    its value and a bar of block characters, the greatest value `width` blocks long, the others in proportion
    (to an eighth of a block). Rows keep their order; a null value has no bar."""
    if not rows:
        return dg.MetadataValue.md("_no rows_")

    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = str(int(value)) if value.is_integer() else f"{value:.1f}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    values = [r.get(value_column) for r in rows]
    top = max((float(v) for v in values if v is not None), default=0.0)
    columns = [*label_columns, value_column, ""]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(label_columns) + "--:|:---|"]
    for row, value in zip(rows, values):
        bar = "" if value is None else _bar(float(value), top, width)
        lines.append("| " + " | ".join([*(cell(row.get(c)) for c in label_columns), cell(value), bar]) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def analytics_chart(name: str, rows: list[dict[str, Any]]) -> dg.MetadataValue | None:
    """The chart of an analytics table that reads better as bars (descriptions.CHARTS), its rows sorted by
    their labels (age groups youngest first); None for the other tables."""
    from pinterest_platform import contract

    if name not in _descriptions.CHARTS:
        return None
    labels, value = _descriptions.CHARTS[name]
    age_order = {group: i for i, (group, _, _) in enumerate(contract.AGE_GROUPS)}

    def key(row: dict[str, Any]) -> tuple:
        # age groups in contract order; any other label in its natural order, nulls last
        return tuple((age_order.get(row.get(c), len(age_order)),) if c == "age_group"
                     else (row.get(c) is None, "" if row.get(c) is None else row.get(c)) for c in labels)

    return bar_chart_markdown(sorted(rows, key=key), labels, value)


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
