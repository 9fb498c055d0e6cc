"""Names and schemas of DATA_CONTRACT.md, written once and imported everywhere.

Pure Python plus pyspark type objects (importing pyspark.sql.types starts no JVM)."""

from __future__ import annotations

import datetime

from pyspark.sql import types as T

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
# of its records (one JSON line each: md5 of the line, Kafka timestamp in ms, offset), which the raw file
# itself cannot hold: it is the ordering of "latest posted wins". Files of other writers have none.
RAW_INDEX_DIR = "_raw_index"


def raw_index_name(raw_path: str) -> str:
    return f"{RAW_INDEX_DIR}/{raw_path}"


# Wire schemas: every field read as a string so that a malformed value is seen (and quarantined with
# its reason) rather than turned into null by the JSON reader. Spark renders JSON numbers as their text.
WIRE_SCHEMAS: dict[str, T.StructType] = {
    kind: T.StructType([T.StructField(c, T.StringType()) for c in SOURCE_COLUMNS[SOURCE_TABLE_OF[kind]]])
    for kind in EVENT_KINDS
}

# Databricks' kinesis source schema; the local Python data source produces exactly this
KINESIS_SOURCE_SCHEMA = T.StructType([
    T.StructField("partitionKey", T.StringType()),
    T.StructField("data", T.BinaryType()),
    T.StructField("stream", T.StringType()),
    T.StructField("shardId", T.StringType()),
    T.StructField("sequenceNumber", T.StringType()),
    T.StructField("approximateArrivalTimestamp", T.TimestampType()),
])

# --- §3 cleaned tables ----------------------------------------------------------------------------

CLEANED_SCHEMAS: dict[str, T.StructType] = {
    "pin": T.StructType([
        T.StructField("ind", T.IntegerType(), False),
        T.StructField("unique_id", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("description", T.StringType()),
        T.StructField("follower_count", T.LongType()),
        T.StructField("poster_name", T.StringType()),
        T.StructField("tag_list", T.StringType()),
        T.StructField("is_image_or_video", T.StringType()),
        T.StructField("image_src", T.StringType()),
        T.StructField("save_location", T.StringType()),
        T.StructField("category", T.StringType()),
    ]),
    "geo": T.StructType([
        T.StructField("ind", T.IntegerType(), False),
        T.StructField("country", T.StringType()),
        T.StructField("coordinates", T.ArrayType(T.DoubleType())),
        T.StructField("timestamp", T.TimestampType()),
    ]),
    "user": T.StructType([
        T.StructField("ind", T.IntegerType(), False),
        T.StructField("user_name", T.StringType()),
        T.StructField("age", T.IntegerType()),
        T.StructField("date_joined", T.TimestampType()),
    ]),
}
CLEANED_COLUMNS: dict[str, list[str]] = {k: s.fieldNames() for k, s in CLEANED_SCHEMAS.items()}

QUARANTINE_TABLE = "quarantine"
QUARANTINE_SCHEMA = T.StructType([
    T.StructField("source", T.StringType(), False),   # topic or stream name
    T.StructField("kind", T.StringType(), False),     # pin | geo | user
    T.StructField("reason", T.StringType(), False),
    T.StructField("raw", T.StringType()),             # the record's text as received
    T.StructField("origin", T.StringType()),          # raw file path, or shard/sequence number
    T.StructField("quarantined_at", T.TimestampType()),
])

# --- §4 analytics ---------------------------------------------------------------------------------

AGE_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("18-24", 18, 24), ("25-35", 25, 35), ("36-50", 36, 50), ("+50", 51, None),
)
POST_YEAR_WINDOW = (2018, 2022)   # popular_category_by_year
JOIN_YEAR_WINDOW = (2015, 2020)   # users_joined_by_year and the join-year medians

ANALYTICS_SCHEMAS: dict[str, T.StructType] = {
    "popular_category_by_country": T.StructType([
        T.StructField("country", T.StringType()), T.StructField("category", T.StringType()),
        T.StructField("category_count", T.LongType())]),
    "popular_category_by_year": T.StructType([
        T.StructField("post_year", T.IntegerType()), T.StructField("category", T.StringType()),
        T.StructField("category_count", T.LongType())]),
    "top_poster_by_country": T.StructType([
        T.StructField("country", T.StringType()), T.StructField("poster_name", T.StringType()),
        T.StructField("follower_count", T.LongType())]),
    "top_country_by_followers": T.StructType([
        T.StructField("country", T.StringType()), T.StructField("follower_count", T.LongType())]),
    "popular_category_by_age_group": T.StructType([
        T.StructField("age_group", T.StringType()), T.StructField("category", T.StringType()),
        T.StructField("category_count", T.LongType())]),
    "median_followers_by_age_group": T.StructType([
        T.StructField("age_group", T.StringType()), T.StructField("median_follower_count", T.DoubleType())]),
    "users_joined_by_year": T.StructType([
        T.StructField("post_year", T.IntegerType()), T.StructField("number_users_joined", T.LongType())]),
    "median_followers_by_join_year": T.StructType([
        T.StructField("post_year", T.IntegerType()), T.StructField("median_follower_count", T.DoubleType())]),
    "median_followers_by_join_year_and_age_group": T.StructType([
        T.StructField("age_group", T.StringType()), T.StructField("post_year", T.IntegerType()),
        T.StructField("median_follower_count", T.DoubleType())]),
}
ANALYTICS_TABLES: tuple[str, ...] = tuple(ANALYTICS_SCHEMAS)

TABLES_DIR = "tables"
TOPICS_DIR = "topics"
