"""The peer baseline of bench/batch.py: the raw topic files cleaned the way the original Databricks notebooks
clean them, on the same SparkSession. Kept in bench/ only; it is not the platform's cleaning.

What the notebooks do, per table: `spark.read.json` with the schema inferred from the data, a replacement of
each placeholder by null column by column, `regexp_replace` and casts for follower_count and save_location,
the renames and column order of the cleaned tables, `dropDuplicates()` over whole rows, and an overwrite of
a Delta table. What they do not do, and the platform does: quarantine bad records with their reason, keep
the latest-posted record per ind, hold exact types on malformed values, count what they read."""

from __future__ import annotations

from pinterest_platform import contract


def _nulls_for(df, placeholders: dict[str, tuple[str, ...]]):
    from pyspark.sql import functions as F

    types = dict(df.dtypes)
    for column in df.columns:
        values = placeholders.get(column, ())
        if types[column] != "string":
            continue
        is_placeholder = F.trim(F.col(column)) == ""
        for value in values:
            is_placeholder = is_placeholder | (F.col(column) == value)
        df = df.withColumn(column, F.when(is_placeholder, None).otherwise(F.col(column)))
    return df


def clean_pin(spark, paths: list[str]):
    from pyspark.sql import functions as F

    df = _nulls_for(spark.read.json(paths), contract.PLACEHOLDERS)
    count = F.regexp_replace(F.col("follower_count"), "[kK]", "000")
    count = F.regexp_replace(count, "[mM]", "000000")
    # the notebooks ran with ANSI mode off, where a cast of "8.6000" gives null; try_cast is that cast here
    df = (df.withColumn("follower_count", count.try_cast("int"))
          .withColumn("save_location", F.regexp_replace("save_location", contract.SAVE_LOCATION_PREFIX, ""))
          .withColumnRenamed("index", "ind")
          .withColumn("ind", F.col("ind").try_cast("int")))
    return df.select(*contract.CLEANED_COLUMNS["pin"]).dropDuplicates()


def clean_geo(spark, paths: list[str]):
    from pyspark.sql import functions as F

    df = _nulls_for(spark.read.json(paths), {})
    df = (df.withColumn("coordinates", F.array(F.col("latitude").cast("double"), F.col("longitude").cast("double")))
          .drop("latitude", "longitude")
          .withColumn("timestamp", F.try_to_timestamp("timestamp"))
          .withColumn("ind", F.col("ind").try_cast("int")))
    return df.select(*contract.CLEANED_COLUMNS["geo"]).dropDuplicates()


def clean_user(spark, paths: list[str]):
    from pyspark.sql import functions as F

    df = _nulls_for(spark.read.json(paths), {})
    df = (df.withColumn("user_name", F.concat_ws(" ", "first_name", "last_name"))
          .drop("first_name", "last_name")
          .withColumn("date_joined", F.try_to_timestamp("date_joined"))
          .withColumn("ind", F.col("ind").try_cast("int"))
          .withColumn("age", F.col("age").try_cast("int")))
    return df.select(*contract.CLEANED_COLUMNS["user"]).dropDuplicates()


CLEANERS = {"pin": clean_pin, "geo": clean_geo, "user": clean_user}


def clean_like_the_notebooks(spark, paths_by_kind: dict[str, list[str]], out_root: str) -> None:
    """Clean each kind's raw files as the notebooks do and overwrite the Delta table `<out_root>/<kind>`."""
    for kind, paths in paths_by_kind.items():
        CLEANERS[kind](spark, paths).write.format("delta").mode("overwrite").save(f"{out_root.rstrip('/')}/{kind}")
