"""Names and schemas of DATA_CONTRACT.md, written once and imported everywhere.

Pure Python: each table's columns are `Column`s (name, Spark SQL type name, nullable), so importing the
contract imports no pyspark and the code location loads fast. The pyspark `StructType`s (`WIRE_SCHEMAS`,
`KINESIS_SOURCE_SCHEMA`, `CLEANED_SCHEMAS`, `QUARANTINE_SCHEMA`, `ANALYTICS_SCHEMAS`) are built from them on
first access (PEP 562 module `__getattr__`) and then kept, so every access returns the same objects."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pyspark.sql import types as T


class Column(NamedTuple):
    """One column of a contract table: its Spark SQL type as `DataType.simpleString()` writes it."""

    name: str
    type: str  # string | int | bigint | double | timestamp | binary | array<...>
    nullable: bool = True

# --- §1 source database -------------------------------------------------------------------------

SOURCE_PIN_TABLE = "pinterest_data"
SOURCE_GEO_TABLE = "geolocation_data"
SOURCE_USER_TABLE = "user_data"

SOURCE_COLUMNS: dict[str, list[str]] = {
    SOURCE_PIN_TABLE: [
        "index", "unique_id", "title", "description", "poster_name", "follower_count", "tag_list",
        "is_image_or_video", "image_src", "downloaded", "save_location", "category",
    ],
    SOURCE_GEO_TABLE: ["ind", "timestamp", "latitude", "longitude", "country"],
    SOURCE_USER_TABLE: ["ind", "first_name", "last_name", "age", "date_joined"],
}
# the column linking the three source tables (pinterest_data calls it `index`)
SOURCE_KEY = {SOURCE_PIN_TABLE: "index", SOURCE_GEO_TABLE: "ind", SOURCE_USER_TABLE: "ind"}

CATEGORIES: tuple[str, ...] = (
    "art", "beauty", "christmas", "diy-and-crafts", "education", "event-planning", "finance",
    "home-decor", "mens-fashion", "quotes", "tattoos", "travel", "vehicles",
)
MEDIA_TYPES: tuple[str, ...] = ("image", "video", "multi-video(story page format)")

# every placeholder of §1, by the column it appears in; cleaning nulls any of them in any column
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "title": ("No Title Data Available",),
    "description": ("No description available Story format", "No description available", "Untitled"),
    "poster_name": ("User Info Error",),
    "follower_count": ("User Info Error",),
    "tag_list": ("N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e",),
    "image_src": ("Image src error.",),
}
ALL_PLACEHOLDERS: tuple[str, ...] = tuple(sorted({p for ps in PLACEHOLDERS.values() for p in ps}))
SAVE_LOCATION_PREFIX = "Local save in "

# --- §2 wire formats ------------------------------------------------------------------------------

# the three event kinds; each names a topic suffix, a stream suffix and a cleaned table
EVENT_KINDS: tuple[str, ...] = ("pin", "geo", "user")
SOURCE_TABLE_OF = {"pin": SOURCE_PIN_TABLE, "geo": SOURCE_GEO_TABLE, "user": SOURCE_USER_TABLE}


def topic_name(prefix: str, kind: str) -> str:
    return f"{prefix}.{kind}"


def stream_name(prefix: str, kind: str) -> str:
    return f"streaming-{prefix}-{kind}"


def streaming_table_name(prefix: str, kind: str) -> str:
    return f"{prefix}_{kind}_table"


def raw_day_prefix(topic: str, day: datetime.date) -> str:
    """The folder of one ingest day (UTC day of the Kafka record timestamp), TimeBasedPartitioner style."""
    return f"{TOPICS_DIR}/{topic}/year={day:%Y}/month={day:%m}/day={day:%d}/"


def raw_file_name(topic: str, partition: int, first_offset: int, day: datetime.date | None = None) -> str:
    """Confluent S3 sink layout, relative to the lake root; with `day`, below that day's folder."""
    folder = raw_day_prefix(topic, day) if day is not None else f"{TOPICS_DIR}/{topic}/"
    return f"{folder}partition={partition}/{topic}+{partition}+{first_offset:010d}.json"


# Beside every raw file the platform's sink writes, at the same relative path below `_raw_index/`, an index
# of its records, which the raw file itself cannot hold: it is the ordering of "latest posted wins". One JSON
# line, `{"o": first offset, "n": line count, "runs": [[Kafka timestamp in ms, consecutive lines with it], ...]}`;
# line i has offset o + i. Earlier versions wrote a line per record (`{"h", "t", "o"}`), still read. Files
# of other writers have none.
RAW_INDEX_DIR = "_raw_index"


def raw_index_name(raw_path: str) -> str:
    return f"{RAW_INDEX_DIR}/{raw_path}"


# Wire schemas: every field read as a string so that a malformed value is seen (and quarantined with
# its reason) rather than turned into null by the JSON reader. Spark renders JSON numbers as their text.
WIRE_FIELDS: dict[str, tuple[Column, ...]] = {
    kind: tuple(Column(c, "string") for c in SOURCE_COLUMNS[SOURCE_TABLE_OF[kind]]) for kind in EVENT_KINDS
}

# Databricks' kinesis source schema; the local Python data source produces exactly this
KINESIS_SOURCE_FIELDS: tuple[Column, ...] = (
    Column("partitionKey", "string"),
    Column("data", "binary"),
    Column("stream", "string"),
    Column("shardId", "string"),
    Column("sequenceNumber", "string"),
    Column("approximateArrivalTimestamp", "timestamp"),
)

# --- §3 cleaned tables ----------------------------------------------------------------------------

CLEANED_FIELDS: dict[str, tuple[Column, ...]] = {
    "pin": (
        Column("ind", "int", False),
        Column("unique_id", "string"),
        Column("title", "string"),
        Column("description", "string"),
        Column("follower_count", "bigint"),
        Column("poster_name", "string"),
        Column("tag_list", "string"),
        Column("is_image_or_video", "string"),
        Column("image_src", "string"),
        Column("save_location", "string"),
        Column("category", "string"),
    ),
    "geo": (
        Column("ind", "int", False),
        Column("country", "string"),
        Column("coordinates", "array<double>"),
        Column("timestamp", "timestamp"),
    ),
    "user": (
        Column("ind", "int", False),
        Column("user_name", "string"),
        Column("age", "int"),
        Column("date_joined", "timestamp"),
    ),
}
CLEANED_COLUMNS: dict[str, list[str]] = {k: [c.name for c in fields] for k, fields in CLEANED_FIELDS.items()}

QUARANTINE_TABLE = "quarantine"
QUARANTINE_FIELDS: tuple[Column, ...] = (
    Column("source", "string", False),   # topic or stream name
    Column("kind", "string", False),     # pin | geo | user
    Column("reason", "string", False),
    Column("raw", "string"),             # the record's text as received
    Column("origin", "string"),          # raw file path, or shard/sequence number
    Column("quarantined_at", "timestamp"),
)

# --- §4 analytics ---------------------------------------------------------------------------------

AGE_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("18-24", 18, 24), ("25-35", 25, 35), ("36-50", 36, 50), ("+50", 51, None),
)
POST_YEAR_WINDOW = (2018, 2022)   # popular_category_by_year
JOIN_YEAR_WINDOW = (2015, 2020)   # users_joined_by_year and the join-year medians

ANALYTICS_FIELDS: dict[str, tuple[Column, ...]] = {
    "popular_category_by_country": (
        Column("country", "string"), Column("category", "string"),
        Column("category_count", "bigint")),
    "popular_category_by_year": (
        Column("post_year", "int"), Column("category", "string"),
        Column("category_count", "bigint")),
    "top_poster_by_country": (
        Column("country", "string"), Column("poster_name", "string"),
        Column("follower_count", "bigint")),
    "top_country_by_followers": (
        Column("country", "string"), Column("follower_count", "bigint")),
    "popular_category_by_age_group": (
        Column("age_group", "string"), Column("category", "string"),
        Column("category_count", "bigint")),
    "median_followers_by_age_group": (
        Column("age_group", "string"), Column("median_follower_count", "double")),
    "users_joined_by_year": (
        Column("post_year", "int"), Column("number_users_joined", "bigint")),
    "median_followers_by_join_year": (
        Column("post_year", "int"), Column("median_follower_count", "double")),
    "median_followers_by_join_year_and_age_group": (
        Column("age_group", "string"), Column("post_year", "int"),
        Column("median_follower_count", "double")),
}
ANALYTICS_TABLES: tuple[str, ...] = tuple(ANALYTICS_FIELDS)

TABLES_DIR = "tables"
TOPICS_DIR = "topics"


# --- the pyspark schemas, built on first access -----------------------------------------------------

def spark_type(name: str) -> T.DataType:
    """The pyspark DataType of a `Column.type` (imports pyspark.sql.types; starts no JVM)."""
    from pyspark.sql import types as T

    if name.startswith("array<") and name.endswith(">"):
        return T.ArrayType(spark_type(name[len("array<"):-1]))
    simple = {"string": T.StringType, "int": T.IntegerType, "bigint": T.LongType, "double": T.DoubleType,
              "timestamp": T.TimestampType, "binary": T.BinaryType}
    return simple[name]()


def struct_type(fields: tuple[Column, ...]) -> T.StructType:
    """The pyspark StructType of a contract table's columns."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c.name, spark_type(c.type), c.nullable) for c in fields])


_SPARK_SCHEMAS: dict[str, Any] = {
    "WIRE_SCHEMAS": lambda: {kind: struct_type(f) for kind, f in WIRE_FIELDS.items()},
    "KINESIS_SOURCE_SCHEMA": lambda: struct_type(KINESIS_SOURCE_FIELDS),
    "CLEANED_SCHEMAS": lambda: {kind: struct_type(f) for kind, f in CLEANED_FIELDS.items()},
    "QUARANTINE_SCHEMA": lambda: struct_type(QUARANTINE_FIELDS),
    "ANALYTICS_SCHEMAS": lambda: {name: struct_type(f) for name, f in ANALYTICS_FIELDS.items()},
}

if TYPE_CHECKING:
    WIRE_SCHEMAS: dict[str, T.StructType]
    KINESIS_SOURCE_SCHEMA: T.StructType
    CLEANED_SCHEMAS: dict[str, T.StructType]
    QUARANTINE_SCHEMA: T.StructType
    ANALYTICS_SCHEMAS: dict[str, T.StructType]


def __getattr__(name: str) -> Any:
    build = _SPARK_SCHEMAS.get(name)
    if build is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = build()  # cached: later lookups find the module global, never come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SPARK_SCHEMAS})
