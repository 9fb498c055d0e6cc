"""`pinterest-platform validate`: check a lake's Delta tables against the data contract and say what is wrong.

For each table of docs/data-contract.md (the cleaned `pin`, `geo` and `user`, the nine analytics tables and,
given a streaming prefix, the three streaming tables) it checks that the table exists and is a Delta table,
that its columns have the contract's names, order and types (`contract.py`'s Spark types as Arrow sees
them), that columns the contract declares non-null hold no nulls, and that there is one row per key: per
`ind` in the cleaned tables, per group in the analytics tables. Of the values it checks only those that
define the analytics' groups (age-group labels, categories, year windows); the rest is the cleaning and
analytics rules' business, held by the asset checks and the tests.

Tables are read with delta-rs (no JVM), and only the columns a row check needs, so a lake of millions of
rows is checked in seconds. The lake root is a folder or an s3:// URI; an S3 lake is reached with the
storage options of the project's lake resource."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import types as T

from pinterest_platform import contract

# One row per these columns, as the "one row per" column of the contract's analytics table says.
# An empty key means the whole table is one group: at most one row.
ANALYTICS_KEYS: dict[str, tuple[str, ...]] = {
    "popular_category_by_country": ("country",),
    "popular_category_by_year": ("post_year",),
    "top_poster_by_country": ("country",),
    "top_country_by_followers": (),
    "popular_category_by_age_group": ("age_group",),
    "median_followers_by_age_group": ("age_group",),
    "users_joined_by_year": ("post_year",),
    "median_followers_by_join_year": ("post_year",),
    "median_followers_by_join_year_and_age_group": ("age_group", "post_year"),
}
# the year window of each analytics table whose year is restricted
YEAR_WINDOWS: dict[str, tuple[int, int]] = {
    "popular_category_by_year": contract.POST_YEAR_WINDOW,
    "users_joined_by_year": contract.JOIN_YEAR_WINDOW,
    "median_followers_by_join_year": contract.JOIN_YEAR_WINDOW,
    "median_followers_by_join_year_and_age_group": contract.JOIN_YEAR_WINDOW,
}
AGE_GROUP_LABELS: tuple[str, ...] = tuple(name for name, _, _ in contract.AGE_GROUPS)
SAMPLE = 3  # offending values quoted per problem


@dataclass(frozen=True)
class Finding:
    table: str
    problem: str


@dataclass(frozen=True)
class TableSpec:
    """One table the contract expects: its name under tables/, its schema and what a row is."""

    name: str
    schema: T.StructType
    keys: tuple[str, ...]  # one row per these columns
    cleaned: bool  # a cleaned table (key `ind`, never null) rather than an analytics one


class LakeUnreadable(Exception):
    """The lake root itself cannot be read: nothing about its tables can be said."""


def expected_tables(streaming_prefix: str | None = None, batch: bool = True) -> list[TableSpec]:
    specs: list[TableSpec] = []
    if batch:
        specs += [TableSpec(kind, contract.CLEANED_SCHEMAS[kind], ("ind",), True) for kind in contract.EVENT_KINDS]
        specs += [TableSpec(name, contract.ANALYTICS_SCHEMAS[name], ANALYTICS_KEYS[name], False)
                  for name in contract.ANALYTICS_TABLES]
    if streaming_prefix:
        # both paths clean with the same code, so a streaming table has its kind's cleaned schema
        specs += [TableSpec(contract.streaming_table_name(streaming_prefix, kind), contract.CLEANED_SCHEMAS[kind],
                            ("ind",), True) for kind in contract.EVENT_KINDS]
    return specs


# --- Spark types as Arrow sees them ----------------------------------------------------------------

_ARROW_OF_SPARK: dict[type, pa.DataType] = {
    T.BooleanType: pa.bool_(), T.ByteType: pa.int8(), T.ShortType: pa.int16(), T.IntegerType: pa.int32(),
    T.LongType: pa.int64(), T.FloatType: pa.float32(), T.DoubleType: pa.float64(), T.StringType: pa.string(),
    T.BinaryType: pa.binary(), T.DateType: pa.date32(),
    # Delta stores timestamps in microseconds; `timestamp` is an instant (UTC), `timestamp_ntz` a wall clock
    T.TimestampType: pa.timestamp("us", tz="UTC"), T.TimestampNTZType: pa.timestamp("us"),
}
# layouts of one logical type that readers may hand out; which one depends on the delta-rs version
_SAME_LOGICAL = [
    lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
    lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t),
]
_UTC = {"UTC", "Etc/UTC", "+00:00", "Z"}


def arrow_type(spark_type: T.DataType) -> pa.DataType:
    """The Arrow type a Delta table written with `spark_type` reads back as (its canonical layout)."""
    if isinstance(spark_type, T.ArrayType):
        return pa.list_(arrow_type(spark_type.elementType))
    if isinstance(spark_type, T.MapType):
        return pa.map_(arrow_type(spark_type.keyType), arrow_type(spark_type.valueType))
    if isinstance(spark_type, T.StructType):
        return pa.struct([pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in spark_type.fields])
    if isinstance(spark_type, T.DecimalType):
        return pa.decimal128(spark_type.precision, spark_type.scale)
    try:
        return _ARROW_OF_SPARK[type(spark_type)]
    except KeyError:
        raise TypeError(f"no Arrow type known for Spark's {spark_type.simpleString()}") from None


def type_matches(actual: pa.DataType, spark_type: T.DataType) -> bool:
    """True when a column of Arrow type `actual` holds the contract's `spark_type` (exact width and kind)."""
    if isinstance(spark_type, T.ArrayType):
        return ((pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_list_view(actual)
                 or pa.types.is_large_list_view(actual))
                and type_matches(actual.value_type, spark_type.elementType))
    if isinstance(spark_type, T.MapType):
        return (pa.types.is_map(actual) and type_matches(actual.key_type, spark_type.keyType)
                and type_matches(actual.item_type, spark_type.valueType))
    if isinstance(spark_type, T.StructType):
        return (pa.types.is_struct(actual) and [f.name for f in actual] == spark_type.fieldNames()
                and all(type_matches(f.type, s.dataType) for f, s in zip(actual, spark_type.fields)))
    if isinstance(spark_type, (T.TimestampType, T.TimestampNTZType)):
        # the unit is storage detail; the zone is meaning: an instant needs UTC, a wall clock has none
        if not pa.types.is_timestamp(actual):
            return False
        return actual.tz in _UTC if isinstance(spark_type, T.TimestampType) else actual.tz is None
    expected = arrow_type(spark_type)
    for same in _SAME_LOGICAL:
        if same(expected):
            return same(actual)
    return actual == expected


def type_name(arrow: pa.DataType) -> str:
    """Arrow's name for a type, without the list's child-field name (`list<double>`, not `list<item: double>`)."""
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_list_view(arrow):
        return f"list<{type_name(arrow.value_type)}>"
    return str(arrow)


# --- one table ---------------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _columns(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]"


def schema_problems(schema: pa.Schema, spec: TableSpec) -> list[str]:
    expected = spec.schema.fieldNames()
    have = schema.names
    problems = []
    missing = [c for c in expected if c not in have]
    extra = [c for c in have if c not in expected]
    if missing:
        problems.append(f"missing {'column' if len(missing) == 1 else 'columns'} {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected {'column' if len(extra) == 1 else 'columns'} {', '.join(extra)}")
    if not missing and not extra and have != expected:
        problems.append(f"columns out of order: {_columns(have)}, the contract has {_columns(expected)}")
    for field in spec.schema.fields:
        if field.name in have:
            actual = schema.field(field.name).type
            if not type_matches(actual, field.dataType):
                problems.append(f"{field.name} is {type_name(actual)}, the contract says "
                                f"{type_name(arrow_type(field.dataType))}")
    return problems


def _sample(values: pa.Array | pa.ChunkedArray) -> str:
    distinct = sorted(v for v in pc.unique(values).to_pylist() if v is not None)
    shown = ", ".join(repr(v) for v in distinct[:SAMPLE])
    return shown + (f" and {len(distinct) - SAMPLE} more" if len(distinct) > SAMPLE else "")


def _duplicates(data: pa.Table, keys: tuple[str, ...]) -> int:
    """Rows beyond the first of each key among rows whose key has no null (a null key is its own problem)."""
    if len(keys) == 1:
        column = data.column(keys[0])
        return len(column) - column.null_count - pc.count_distinct(column, mode="only_valid").as_py()
    valid = pc.is_valid(data.column(keys[0]))
    for key in keys[1:]:
        valid = pc.and_(valid, pc.is_valid(data.column(key)))
    keyed = data.select(list(keys)).filter(valid)
    return keyed.num_rows - keyed.group_by(list(keys)).aggregate([]).num_rows


def row_problems(data: pa.Table, spec: TableSpec, usable: set[str], num_rows: int) -> list[str]:
    """Row checks on `data` (only the columns they need; `num_rows` rows); `usable` are the columns that
    exist with the contract's type."""
    problems = []
    # a column the contract declares non-null must hold none; in an analytics table neither may a key, as a
    # row without its group's key belongs to no group. Spark's Delta writer declares every column nullable,
    # so it is the data, not the table's declared schema, that must keep this promise
    not_null = [f.name for f in spec.schema.fields if not f.nullable or (not spec.cleaned and f.name in spec.keys)]
    for name in not_null:
        if name in usable and (nulls := data.column(name).null_count):
            problems.append(f"{_plural(nulls, 'row')} with null {name}")
    if not spec.keys:
        if num_rows > 1:
            problems.append(f"{num_rows} rows, the contract says one row at most")
    elif all(k in usable for k in spec.keys) and (duplicates := _duplicates(data, spec.keys)):
        label = spec.keys[0] if len(spec.keys) == 1 else "(" + ", ".join(spec.keys) + ")"
        what = f"{label} not unique" if spec.cleaned else f"not one row per {label}"
        problems.append(f"{what}: {_plural(duplicates, 'duplicate row')}")
    if spec.cleaned:
        return problems
    # the analytics' labels and years are the contract's
    if "age_group" in usable:
        column = data.column("age_group")
        unknown = pc.drop_null(pc.filter(column, pc.invert(pc.is_in(column, value_set=pa.array(AGE_GROUP_LABELS)))))
        if len(unknown):
            problems.append(f"age_group {_sample(unknown)} not one of {', '.join(AGE_GROUP_LABELS)}")
    if "category" in usable:
        column = data.column("category")
        unknown = pc.drop_null(pc.filter(column, pc.invert(pc.is_in(column, value_set=pa.array(contract.CATEGORIES)))))
        if len(unknown):
            problems.append(f"category {_sample(unknown)} not one of the contract's {len(contract.CATEGORIES)}")
        if nulls := column.null_count:
            problems.append(f"{_plural(nulls, 'row')} with null category")
    if spec.name in YEAR_WINDOWS and "post_year" in usable:
        low, high = YEAR_WINDOWS[spec.name]
        column = data.column("post_year")
        outside = pc.drop_null(pc.filter(column, pc.or_(pc.less(column, low), pc.greater(column, high))))
        if len(outside):
            problems.append(f"post_year {_sample(outside)} outside {low}-{high}")
    return problems


def _row_columns(spec: TableSpec) -> list[str]:
    """The columns the row checks read (the contract's order, each once)."""
    wanted = set(spec.keys) | {f.name for f in spec.schema.fields if not f.nullable}
    if not spec.cleaned:
        wanted |= {"age_group", "category"} | ({"post_year"} if spec.name in YEAR_WINDOWS else set())
    return [c for c in spec.schema.fieldNames() if c in wanted]


def check_table(uri: str, spec: TableSpec, storage_options: dict[str, str] | None = None) -> list[str]:
    """The problems of the table at `uri` against `spec`; [] when it has the contract's shape."""
    from deltalake import DeltaTable

    where = f"{contract.TABLES_DIR}/{spec.name}"
    options = storage_options or {}
    try:
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            if "://" not in uri and Path(uri).exists():
                return [f"not a Delta table ({where} holds no Delta log)"]
            return [f"missing (no Delta table at {where})"]
        table = DeltaTable(uri, storage_options=options)
        schema = pa.schema(table.schema().to_arrow())
    except Exception as exc:  # noqa: BLE001 - any reason a table cannot be opened is this table's problem
        return [f"unreadable: {_one_line(exc)}"]
    problems = schema_problems(schema, spec)
    # a column missing or of another type cannot be checked row by row; its schema problem says enough
    usable = {f.name for f in spec.schema.fields
              if f.name in schema.names and type_matches(schema.field(f.name).type, f.dataType)}
    columns = [c for c in _row_columns(spec) if c in usable]
    try:
        dataset = table.to_pyarrow_dataset()
        # only the needed columns: a cleaned table is read as one int column however wide it is
        data = dataset.to_table(columns=columns)
        # a scan of no columns still counts the rows (from the files' metadata)
        num_rows = data.num_rows if columns else dataset.count_rows()
    except Exception as exc:  # noqa: BLE001 - unreadable data files are this table's problem too
        return [*problems, f"unreadable data: {_one_line(exc)}"]
    return problems + row_problems(data, spec, usable, num_rows)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- the lake ----------------------------------------------------------------------------------------


def _open_lake(root: str) -> tuple[str, Callable[[str], str], dict[str, str]]:
    """(root URI, table name -> URI, delta-rs storage options) of the lake at `root`; LakeUnreadable if
    the root cannot be read at all."""
    if root.startswith(("s3://", "s3a://")):
        # the lake resource of the current profile (PINTEREST_ENV): moto and dummy credentials locally, the
        # default AWS chain on aws, and the delta-rs options the platform's own readers use
        from pinterest_platform.definitions import lake_resource
        from pinterest_platform.resources.lake import LakeAccessError
        from pinterest_platform.settings import load_settings

        lake = lake_resource(dataclasses.replace(load_settings(), lake_root=root))
        try:
            lake.check_access(write=False)
            options = lake.storage_options()
        except LakeAccessError as exc:
            raise LakeUnreadable(str(exc)) from None
        return lake.root_uri(), lake.table_uri, options
    # a folder: like LocalLakeResource, without importing Dagster for it
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise LakeUnreadable(f"lake {path}: no such folder")
    if not path.is_dir():
        raise LakeUnreadable(f"lake {path}: not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise LakeUnreadable(f"lake {path}: permission denied")
    return str(path), lambda name: str(path / contract.TABLES_DIR / name), {}


def validate_lake(root: str, streaming_prefix: str | None = None, *, batch: bool = True,
                  echo: Callable[[str], None] | None = print) -> list[Finding]:
    """Check every expected table of the lake at `root`; print one line per table and a summary (unless
    `echo` is None) and return the findings, [] when the lake keeps the contract. Raises LakeUnreadable."""
    root_uri, table_uri, options = _open_lake(root)
    findings: list[Finding] = []
    specs = expected_tables(streaming_prefix, batch=batch)
    for spec in specs:
        problems = check_table(table_uri(spec.name), spec, options)
        findings += [Finding(spec.name, p) for p in problems]
        if echo:
            echo(f"{spec.name}: {'; '.join(problems) if problems else 'ok'}")
    if echo:
        bad = len({f.table for f in findings})
        echo(f"lake {root_uri}: " + (f"{_plural(len(findings), 'problem')} in {_plural(bad, 'table')}" if findings
                                     else f"{_plural(len(specs), 'table')} ok"))
    return findings


def validate_command(args: argparse.Namespace) -> int:
    """0: the lake keeps the contract; 1: it does not (the lines say where); 2: the lake cannot be read."""
    streaming_only = getattr(args, "streaming_only", False)
    if streaming_only and not args.streaming_prefix:
        print("error: --streaming-only needs --streaming-prefix", file=sys.stderr)
        return 2
    if args.lake:
        root = args.lake
    else:
        from pinterest_platform.settings import load_settings

        root = load_settings().lake_root
    try:
        findings = validate_lake(root, args.streaming_prefix, batch=not streaming_only,
                                 echo=lambda line: print(line, flush=True))
    except LakeUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if findings else 0
