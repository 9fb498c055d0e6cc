"""Tests of the pure PySpark transforms, and the two helpers they share to build and read DataFrames."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

RECORDS_SCHEMA = T.StructType([T.StructField("value", T.StringType()), T.StructField("source", T.StringType()),
                               T.StructField("origin", T.StringType()), T.StructField("_seq", T.LongType())])
EPOCH = dt.datetime(1970, 1, 1)


def records(spark, values: list[tuple[str, str | None]], source: str = "test.topic") -> DataFrame:
    """Records from (origin, value) pairs; `_seq` numbers them in the order given."""
    return spark.createDataFrame([(value, source, origin, seq) for seq, (origin, value) in enumerate(values)],
                                 RECORDS_SCHEMA)


def collect(df: DataFrame) -> list[dict]:
    """Rows as dicts, timestamps as naive UTC datetimes whatever the machine's time zone.

    (PySpark turns timestamps into the local time of the Python process, not the session's UTC.)"""
    timestamps = {f.name for f in df.schema if isinstance(f.dataType, T.TimestampType)}
    selected = df.select(*[F.unix_micros(c).alias(c) if c in timestamps else F.col(c) for c in df.columns])
    rows = []
    for row in selected.collect():
        d = row.asDict()
        for c in timestamps:
            if d[c] is not None:
                d[c] = EPOCH + dt.timedelta(microseconds=d[c])
        rows.append(d)
    return rows
