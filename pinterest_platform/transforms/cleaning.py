"""Cleaning of posting events (DATA_CONTRACT.md §3): raw JSON records in, typed contract rows out.

Pure PySpark, shared by the batch job and the streaming query: DataFrame in, DataFrame out, no I/O, only
native Spark functions. `clean` types every record and gives each a `_reason` (null when it is clean);
`cleaned_rows` and `quarantine_rows` split the result into the contract table and the quarantine, and
`latest_per_key` keeps one row per `ind` (`latest_per_key_and_rest` also passes the other rows through).

Records are `value` (the JSON text of one source row: a string, as the batch job's text reader gives it,
or binary, as Kinesis `data` is), `source` (topic or stream) and `origin` (raw file path or
shard/sequence). Any further input columns are passed through untouched after `_origin`, so a
caller can order by them in `latest_per_key` (e.g. a Kafka offset).

Cleaning rules decided beyond the contract's words (pinterest_platform_tests/reference.py implements the
same rules in plain Python):
- whitespace means ASCII whitespace (Java's and ASCII Python's `\\s`); placeholders and blanks are found
  after trimming it, but a kept value is never trimmed (poster names may end in a space);
- the placeholder/blank rule applies to every field before typing, so a placeholder `age` is a null age;
- a value that is not valid UTF-8 is quarantined as `invalid UTF-8` before any parsing (never cleaned
  with replacement characters); its `_raw` is the bytes in lowercase hex, as a string cannot hold them.
  Spark's text reader and its binary-to-string cast both keep the bytes as they are, so batch lines and
  Kinesis data (binary, or cast to string) are judged on the same bytes;
- malformed JSON means not strict JSON: single quotes, duplicate keys (at any depth) or text after the
  object included;
- integers (`ind`, `age`) are optionally signed digit strings or JSON integers, nothing else (`7.0` is not);
- follower counts are digits with an optional fraction and an optional k/K/m/M suffix, rounded half up;
- a negative `ind` is quarantined (`ind '-1' is negative`);
- latitude and longitude are finite decimal numbers (exponent allowed), as JSON numbers or strings,
  within [-90, 90] and [-180, 180] (bounds included); an age is within [0, 150]. Out of range is
  quarantined (`latitude '95' is outside [-90, 90]`), never clamped;
- datetimes are `yyyy-MM-dd` + `T` or space + `HH:mm:ss` + up to 9 fractional digits (kept to the
  microsecond), no zone (they are UTC);
- a record with several problems gets all of them in `_reason`, joined by `; `.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pinterest_platform import contract

RECORD_COLUMNS = ("value", "source", "origin")
META_COLUMNS = ("_reason", "_raw", "_source", "_origin")
# the typed values of a record, beside its fields until the contract columns are cut from both
TYPED_PREFIX = "_typed_"

# Java regex `\s`; the reference strips exactly these characters too
WHITESPACE = " \t\n\r\x0b\x0c"
# what JSON (RFC 8259) allows around a value
JSON_WHITESPACE = " \t\n\r"
ALLOW_DUPLICATE_KEYS = "spark.sql.variant.allowDuplicateKeys"

INTEGER_PATTERN = r"^[+-]?[0-9]+$"
COUNT_PATTERN = r"^([0-9]+)(\.([0-9]+))?([kKmM]?)$"
NUMBER_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# year 0000 parses in Spark but is no date (and none in Python)
DATETIME_PATTERN = r"^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?$"

MALFORMED_JSON = "malformed JSON"
NOT_AN_OBJECT = "not a JSON object"
INVALID_UTF8 = "invalid UTF-8"

# values outside these bounds (inclusive) are impossible, so quarantined (docs/data-contract.md)
LATITUDE_RANGE = (-90, 90)
LONGITUDE_RANGE = (-180, 180)
AGE_RANGE = (0, 150)


def _trimmed(c: Column) -> Column:
    return F.btrim(c, F.lit(WHITESPACE))


def _text(c: Column) -> Column:
    """The value as received, or null for a placeholder or a blank string."""
    return F.when(_trimmed(c).isin("", *contract.ALL_PLACEHOLDERS), F.lit(None)).otherwise(c)


def _problem(name: str, received: Column, valid: Column, what: str) -> Column:
    """`<name> '<received>' is not <what>` where a value was received but is not valid, else null."""
    message = F.concat(F.lit(f"{name} '"), received, F.lit(f"' is not {what}"))
    return F.when(received.isNotNull() & ~F.coalesce(valid, F.lit(False)), message)


def _out_of_range(name: str, received: Column, value: Column, bounds: tuple[int, int]) -> Column:
    """`<name> '<received>' is outside [low, high]` where a typed value lies outside `bounds`, else null."""
    low, high = bounds
    message = F.concat(F.lit(f"{name} '"), received, F.lit(f"' is outside [{low}, {high}]"))
    return F.when((value < F.lit(low)) | (value > F.lit(high)), message)


def _integer(text: Column) -> Column:
    trimmed = _trimmed(text)
    return F.when(trimmed.rlike(INTEGER_PATTERN), trimmed.try_cast(T.IntegerType()))


def _follower_count(text: Column) -> Column:
    """`437`, `26k`, `1.5k`, `6M` -> long, in decimal arithmetic, rounded half up; null when not a count.

    Rounding half up to an integer depends only on the first digit after the shifted point, so keeping
    7 fractional digits (enough for the x1,000,000 shift) gives the exact answer; decimal(30,7) times
    decimal(7,0) then stays within Spark's 38 digits, so no intermediate rounding happens."""
    trimmed = _trimmed(text)
    matched = trimmed.rlike(COUNT_PATTERN)
    whole = F.regexp_extract(trimmed, COUNT_PATTERN, 1)
    fraction = F.rpad(F.substring(F.regexp_extract(trimmed, COUNT_PATTERN, 3), 1, 7), 7, "0")
    suffix = F.lower(F.regexp_extract(trimmed, COUNT_PATTERN, 4))
    number = F.concat(whole, F.lit("."), fraction).try_cast(T.DecimalType(30, 7))
    factor = F.when(suffix == "k", 1000).when(suffix == "m", 1_000_000).otherwise(1).cast(T.DecimalType(7, 0))
    return F.when(matched, F.round(number * factor, 0).try_cast(T.LongType()))


def _double(text: Column) -> Column:
    trimmed = _trimmed(text)
    value = trimmed.try_cast(T.DoubleType())
    # Spark's cast also takes `NaN`, `Infinity` and `1.5d`; the pattern and the bound keep plain finite numbers
    return F.when(trimmed.rlike(NUMBER_PATTERN) & (F.abs(value) <= F.lit(sys.float_info.max)), value)


def _timestamp(text: Column) -> Column:
    trimmed = _trimmed(text)
    # the `Z` makes the instant UTC whatever the session time zone is
    return F.when(trimmed.rlike(DATETIME_PATTERN), F.concat(trimmed, F.lit("Z")).try_cast(T.TimestampType()))


def _save_location(text: Column) -> Column:
    prefix = contract.SAVE_LOCATION_PREFIX
    path = F.ltrim(F.substring(text, len(prefix) + 1, 1 << 30), F.lit(WHITESPACE))
    return F.nullif(F.when(text.startswith(prefix), path).otherwise(text), F.lit(""))


def _duplicate_keys_allowed(records: DataFrame) -> bool:
    """Whether the session lets the variant parser accept duplicate keys (read when the plan is built)."""
    return records.sparkSession.conf.get(ALLOW_DUPLICATE_KEYS, "false").strip().lower() == "true"


def parse_records(kind: str, records: DataFrame) -> DataFrame:
    """Records -> the source row's fields as received (strings, source column names), `_reason`
    (`invalid UTF-8`, `malformed JSON`, `not a JSON object` or null), `_raw` (the text, or the bytes in
    lowercase hex when they are not UTF-8), `_source`, `_origin`, then any extra columns."""
    wire = contract.WIRE_SCHEMAS[kind]
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; they need {list(RECORD_COLUMNS)}")
    extra = [c for c in records.columns if c not in RECORD_COLUMNS]
    clashes = sorted({c for c in extra if c in {*wire.fieldNames(), *META_COLUMNS, "_row"} or c.startswith(TYPED_PREFIX)})
    if clashes:
        raise ValueError(f"records carry column(s) {clashes} that cleaning produces itself")
    value_type = records.schema["value"].dataType
    if not isinstance(value_type, T.StringType | T.BinaryType):
        raise TypeError(f"records' value is {value_type.simpleString()}; it must be string or binary")
    # casting binary to string copies the bytes unchecked, so the test below sees them as they arrived
    received = F.col("value").cast(T.StringType())
    # a null value has no bytes to judge; it is malformed JSON below
    valid_utf8 = F.coalesce(F.is_valid_utf8(received), F.lit(True))
    # invalid text is never parsed, so no field is ever read with replacement characters
    value = F.when(valid_utf8, received)
    # One variant parse judges the JSON. try_parse_json ignores text after the first JSON value
    # ("{...} junk"), so the value is parsed wrapped as `[value]`: trailing text then breaks the array, or
    # makes it longer than one element. Only a `]` in the value can close the wrapper early
    # (`{...}] junk`); such a value (rare) is parsed once more as `[value,0]`, whose length trailing
    # text breaks. The fields themselves are read by from_json, the one parse with the wire schema.
    elements = F.try_variant_get(F.try_parse_json(F.concat(F.lit("["), value, F.lit("]"))), "$", "array<variant>")
    closed_early = F.when(value.contains("]"),
                          ~F.coalesce(F.json_array_length(F.concat(F.lit("["), value, F.lit(",0]"))) == 2, F.lit(False)))
    well_formed = F.coalesce(F.size(elements) == 1, F.lit(False)) & ~F.coalesce(closed_early, F.lit(False))
    # a well-formed value is an object exactly when it starts with `{` after JSON's whitespace
    is_object = F.ltrim(value, F.lit(JSON_WHITESPACE)).startswith("{")
    malformed = ~well_formed
    if _duplicate_keys_allowed(records):
        # the variant parser rejects duplicate keys (at any depth) unless the session allows them, and
        # from_json would silently take a duplicated field's last value: counting the top-level keys
        # quarantines such a record whatever a cluster sets, so batch and streaming cannot disagree on it
        keys = F.json_object_keys(value)
        malformed = malformed | F.coalesce(F.size(keys) != F.size(F.array_distinct(keys)), F.lit(False))
    reason = (F.when(~valid_utf8, F.lit(INVALID_UTF8))
              .when(malformed, F.lit(MALFORMED_JSON))
              .when(~is_object, F.lit(NOT_AN_OBJECT)))
    # the quarantine's raw is a string: invalid UTF-8 goes there as hex, losslessly (base64 would
    # depend on spark.sql.chunkBase64String.enabled)
    raw = F.when(valid_utf8, received).otherwise(F.lower(F.hex(received)))
    return records.select(
        F.from_json(value, wire).alias("_row"),
        reason.alias("_reason"), raw.alias("_raw"), F.col("source").alias("_source"),
        F.col("origin").alias("_origin"), *extra,
    ).select(*[F.col("_row")[c].alias(c) for c in wire.fieldNames()], *META_COLUMNS, *extra)


def _typed_values(kind: str) -> dict[str, Column]:
    """The fields of `kind` that need typing, typed from their nulled text (null when not valid): computed
    once, in a projection of their own, so the columns and the problems below read them instead of
    repeating their patterns (a follower count's regex would otherwise run eight times per record)."""
    text = {c: F.col(c) for c in contract.WIRE_SCHEMAS[kind].fieldNames()}
    values = {"ind": _integer(text[_key_field(kind)])}
    if kind == "pin":
        values.update(follower_count=_follower_count(text["follower_count"]),
                      save_location=_save_location(text["save_location"]))
    elif kind == "geo":
        values.update(latitude=_double(text["latitude"]), longitude=_double(text["longitude"]),
                      timestamp=_timestamp(text["timestamp"]))
    elif kind == "user":
        values.update(age=_integer(text["age"]), date_joined=_timestamp(text["date_joined"]))
    else:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(contract.EVENT_KINDS)}")
    return values


def _typed_name(name: str) -> str:
    return f"{TYPED_PREFIX}{name}"


def _typed(name: str) -> Column:
    return F.col(_typed_name(name))


def _key_field(kind: str) -> str:
    """The wire field that holds `kind`'s ind."""
    return contract.SOURCE_KEY[contract.SOURCE_TABLE_OF[kind]]


def _typed_columns(kind: str) -> tuple[list[Column], list[Column]]:
    """The contract columns of `kind` and the problems that send a record to quarantine, from the wire
    fields with placeholders and blanks already nulled and the `_typed_values` beside them."""
    text = {c: F.col(c) for c in contract.WIRE_SCHEMAS[kind].fieldNames()}
    key = text[_key_field(kind)]
    ind = _typed("ind")
    problems = [F.when(key.isNull(), F.lit("missing ind")), _problem("ind", key, ind.isNotNull(), "an integer"),
                F.when(ind < 0, F.concat(F.lit("ind '"), key, F.lit("' is negative")))]
    if kind == "pin":
        follower_count = _typed("follower_count")
        problems.append(_problem("follower_count", text["follower_count"], follower_count.isNotNull(), "a count"))
        columns = {c: text[c] for c in contract.CLEANED_COLUMNS["pin"] if c in text}
        columns.update(follower_count=follower_count, save_location=_typed("save_location"))
    elif kind == "geo":
        latitude, longitude, timestamp = _typed("latitude"), _typed("longitude"), _typed("timestamp")
        problems += [_problem("latitude", text["latitude"], latitude.isNotNull(), "a number"),
                     _out_of_range("latitude", text["latitude"], latitude, LATITUDE_RANGE),
                     _problem("longitude", text["longitude"], longitude.isNotNull(), "a number"),
                     _out_of_range("longitude", text["longitude"], longitude, LONGITUDE_RANGE),
                     _problem("timestamp", text["timestamp"], timestamp.isNotNull(), "a datetime")]
        coordinates = F.when(latitude.isNotNull() & longitude.isNotNull(), F.array(latitude, longitude))
        columns = {"country": text["country"], "coordinates": coordinates, "timestamp": timestamp}
    else:
        age, date_joined = _typed("age"), _typed("date_joined")
        problems += [_problem("age", text["age"], age.isNotNull(), "an integer"),
                     _out_of_range("age", text["age"], age, AGE_RANGE),
                     _problem("date_joined", text["date_joined"], date_joined.isNotNull(), "a datetime")]
        user_name = F.concat(text["first_name"], F.lit(" "), text["last_name"])
        columns = {"user_name": user_name, "age": age, "date_joined": date_joined}
    columns["ind"] = ind
    schema = contract.CLEANED_SCHEMAS[kind]
    return [columns[f.name].cast(f.dataType).alias(f.name) for f in schema], problems


def clean(kind: str, records: DataFrame) -> DataFrame:
    """Records (`value`, `source`, `origin`, extras) -> the contract columns of `kind`, typed, then
    `_reason` (null when clean), `_raw`, `_source`, `_origin` and the extra input columns."""
    wire = contract.WIRE_SCHEMAS[kind].fieldNames()
    parsed = parse_records(kind, records)
    rest = [c for c in parsed.columns if c not in wire]
    # projections of their own, so the typing reads each nulled field instead of repeating its test, and
    # the problems read each typed value instead of repeating its parse
    texts = parsed.select(*[_text(F.col(c)).alias(c) for c in wire], *rest)
    values = _typed_values(kind)
    typed = texts.select(*wire, *[v.alias(_typed_name(n)) for n, v in values.items()], *rest)
    columns, problems = _typed_columns(kind)
    # a record that is no JSON object has no fields to complain about
    reason = F.coalesce(F.col("_reason"), F.nullif(F.concat_ws("; ", *problems), F.lit("")))
    return typed.select(*columns, reason.alias("_reason"), *[c for c in rest if c != "_reason"])


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """`schema`'s columns, in its order, with its types and nullability.

    Types must already match (a mismatch is a bug, not something to cast away). Spark marks aggregates
    such as count() non-nullable; the identity `when(c is not null, c)` lets them match a nullable field.
    A non-nullable field must hold no nulls already: `coalesce` with a typed zero only declares that."""
    have = {f.name: f for f in df.schema}
    columns = []
    for field in schema:
        if field.name not in have:
            raise ValueError(f"column {field.name!r} missing; have {df.columns}")
        got = have[field.name]
        if got.dataType != field.dataType:
            raise TypeError(f"column {field.name!r} is {got.dataType.simpleString()}, "
                            f"the contract says {field.dataType.simpleString()}")
        c = F.col(field.name)
        if field.nullable and not got.nullable:
            c = F.when(c.isNotNull(), c)
        elif not field.nullable and got.nullable:
            c = F.coalesce(c, F.lit("" if isinstance(field.dataType, T.StringType) else 0).cast(field.dataType))
        columns.append(c.alias(field.name))
    return df.select(*columns)


def cleaned_rows(kind: str, cleaned_df: DataFrame) -> DataFrame:
    """The clean records of `clean`'s output: exactly the contract columns, order and types of `kind`."""
    # a clean record always has its ind; testing it too backs conform's non-null declaration of ind
    clean_rows = cleaned_df.where(F.col("_reason").isNull() & F.col("ind").isNotNull())
    return conform(clean_rows, contract.CLEANED_SCHEMAS[kind])


def quarantine_rows(kind: str, cleaned_df: DataFrame) -> DataFrame:
    """The records of `clean`'s output that have a reason, shaped as `contract.QUARANTINE_SCHEMA`."""
    rows = cleaned_df.where(F.col("_reason").isNotNull()).select(
        F.coalesce(F.col("_source"), F.lit("unknown")).alias("source"),
        F.lit(kind).alias("kind"),
        F.col("_reason").alias("reason"),
        F.col("_raw").alias("raw"),
        F.col("_origin").cast(T.StringType()).alias("origin"),
        F.current_timestamp().alias("quarantined_at"),
    )
    return conform(rows, contract.QUARANTINE_SCHEMA)


def latest_per_key(df: DataFrame, key: str = "ind", order_by: Sequence[str | Column] = (),
                   copies: str | None = None) -> DataFrame:
    """One row per `key`: the greatest by `order_by` (each descending, nulls last), then by the whole row,
    so the choice never depends on partitioning or arrival order within a batch. With `copies`, a column
    of that name holds how many rows the key had. Row-number windows do not run on a streaming DataFrame:
    apply it per micro-batch (foreachBatch).

    Give it clean rows only (`_reason` null): a quarantined re-post must not hide an earlier good one."""
    return _rank_within(df, [F.col(key)], key, order_by, copies, keep=None)


def latest_per_key_and_rest(df: DataFrame, chosen: Column, key: str = "ind",
                            order_by: Sequence[str | Column] = (), copies: str = "_copies") -> DataFrame:
    """`latest_per_key` of the rows where `chosen` holds, with their `copies`, and every other row as it is
    (`copies` 1), in one shuffle: a caller needs both from one pass over its input."""
    # the other rows are spread by their whole content, not gathered under one null key
    other_group = F.xxhash64(*[F.col(c) for c in df.columns])
    group = F.when(chosen, F.col(key).cast(T.LongType())).otherwise(other_group)
    return _rank_within(df, [chosen, group], key, order_by, copies, keep=~chosen)


def _rank_within(df: DataFrame, partition_by: list[Column], key: str, order_by: Sequence[str | Column],
                 copies: str | None, keep: Column | None) -> DataFrame:
    tie_break = [F.col(c).asc_nulls_first() for c in df.columns if c != key]
    ordering = [(F.col(c) if isinstance(c, str) else c).desc_nulls_last() for c in order_by]
    window = Window.partitionBy(*partition_by)
    rank = "__latest_rank"
    ranked = df.withColumn(rank, F.row_number().over(window.orderBy(*ordering, *tie_break)))
    if copies:
        count = F.count(F.lit(1)).over(window)
        ranked = ranked.withColumn(copies, count if keep is None else F.when(keep, F.lit(1)).otherwise(count))
    first = F.col(rank) == 1
    return ranked.where(first if keep is None else first | keep).drop(rank)
