"""Batch Spark jobs: clean raw topic files into the `pin`, `geo`, `user` Delta tables, and compute the
nine analytics tables. Each job is `job(spark, params) -> dict` with a JSON-serializable result, so it runs
in-process locally and under Pipes on Databricks alike. All paths arrive as URIs (local path or s3://)."""

from __future__ import annotations

import time
from typing import Any

from pinterest_platform import contract
from pinterest_platform.jobs.commit_lock import table_write_lock

MANIFEST_DIR = "_manifests"


def _table_exists(spark, uri: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, uri)


def ensure_table(spark, uri: str, schema, properties: dict[str, str] | None = None) -> None:
    """Create an empty Delta table with the contract schema (and table properties) unless one exists."""
    if not _table_exists(spark, uri):
        writer = spark.createDataFrame([], schema).write.format("delta")
        for key, value in (properties or {}).items():
            writer = writer.option(key, value)  # `delta.*` writer options become table properties on creation
        # mode ignore: another writer creating the table at the same moment is not an error
        with table_write_lock(spark, uri):
            writer.mode("ignore").save(uri)


def _rows_differ(columns: list[str]) -> str:
    # update a matched row only when something changed, so a redelivered event rewrites nothing
    return " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in columns)


def upsert_by_ind(spark, uri: str, rows, schema) -> None:
    """MERGE rows (one per ind) into the Delta table at uri, creating it with the contract schema."""
    from delta.tables import DeltaTable

    with table_write_lock(spark, uri):
        if not _table_exists(spark, uri):
            # first load: nothing to match against, so a plain write skips MERGE's join
            rows.write.format("delta").mode("errorifexists").save(uri)
            return
        columns = schema.fieldNames()
        (DeltaTable.forPath(spark, uri).alias("t")
            .merge(rows.alias("s"), "t.ind = s.ind")
            .whenMatchedUpdateAll(condition=_rows_differ([c for c in columns if c != "ind"]))
            .whenNotMatchedInsertAll()
            .execute())


def append_quarantine(spark, uri: str, rows) -> None:
    """Insert quarantine rows not already there: a re-run of the same raw file adds nothing."""
    from delta.tables import DeltaTable

    ensure_table(spark, uri, contract.QUARANTINE_SCHEMA)
    with table_write_lock(spark, uri):
        (DeltaTable.forPath(spark, uri).alias("t")
            .merge(rows.alias("s"), "t.source = s.source AND t.origin <=> s.origin AND t.raw <=> s.raw")
            .whenNotMatchedInsertAll()
            .execute())


def clean_batch(spark, params: dict[str, Any]) -> dict[str, Any]:
    """Clean newly arrived raw files per kind and upsert them.

    params: tables_root (URI of `<lake>/tables`), manifest_uri (Delta table of processed files),
    files: {kind: [{"uri", "path", "size", "topic"}]}. Returns counts per kind."""
    from pyspark.sql import functions as F

    from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key, quarantine_rows

    tables_root = params["tables_root"].rstrip("/")
    quarantine_uri = f"{tables_root}/{contract.QUARANTINE_TABLE}"
    results: dict[str, Any] = {}
    manifest_rows = []
    # an empty quarantine is a statement too ("nothing was rejected"), so the table always exists
    ensure_table(spark, quarantine_uri, contract.QUARANTINE_SCHEMA)
    for kind in contract.EVENT_KINDS:
        files = params["files"].get(kind) or []
        table_uri = f"{tables_root}/{kind}"
        started = time.monotonic()
        if not files:
            results[kind] = {"files": 0, "read": 0, "clean": 0, "upserted": 0, "duplicates": 0,
                             "quarantined": 0, "seconds": 0.0}
            continue
        topic_of = {f["uri"]: f["topic"] for f in files}
        records = (spark.read.text([f["uri"] for f in files])
                   .select(F.col("value"), F.col("_metadata.file_path").alias("origin")))
        # blank lines are framing, not records
        records = records.where(F.trim(F.col("value")) != "")
        topics = sorted(set(topic_of.values()))
        records = records.withColumn("source", F.lit(topics[0]) if len(topics) == 1 else F.lit(",".join(topics)))
        # counted on the raw lines, independently of cleaning, so the conservation check can catch a
        # record that cleaning lost or multiplied
        read = records.count()
        cleaned = clean(kind, records).persist()
        good = cleaned.where(F.col("_reason").isNull() & F.col("ind").isNotNull())
        tally = cleaned.agg(F.count(F.when(F.col("_reason").isNull() & F.col("ind").isNotNull(), 1)).alias("clean"),
                            F.count(F.when(F.col("_reason").isNotNull(), 1)).alias("quarantined")).first()
        clean_count, quarantined = int(tally["clean"]), int(tally["quarantined"])
        deduplicated = cleaned_rows(kind, latest_per_key(good, key="ind", order_by=["_origin", "_raw"]))
        deduplicated = deduplicated.persist()
        upserted = deduplicated.count()
        quarantined_df = quarantine_rows(kind, cleaned)
        upsert_by_ind(spark, table_uri, deduplicated, contract.CLEANED_SCHEMAS[kind])
        if quarantined:
            append_quarantine(spark, quarantine_uri, quarantined_df)
        for df in (cleaned, deduplicated):
            df.unpersist()
        results[kind] = {"files": len(files), "read": read, "clean": clean_count, "upserted": upserted,
                         "duplicates": clean_count - upserted, "quarantined": quarantined,
                         "seconds": round(time.monotonic() - started, 3)}
        manifest_rows += [(f["path"], int(f["size"]), kind) for f in files]
    # the manifest is written last: a crash before it only means the same files are merged again,
    # which changes nothing (upsert by ind, quarantine insert-if-absent)
    if manifest_rows:
        from pyspark.sql import types as T

        schema = T.StructType([T.StructField("path", T.StringType()), T.StructField("size", T.LongType()),
                               T.StructField("kind", T.StringType())])
        with table_write_lock(spark, params["manifest_uri"]):
            (spark.createDataFrame(manifest_rows, schema).withColumn("processed_at", F.current_timestamp())
             .write.format("delta").mode("append").save(params["manifest_uri"]))
    return results


def analytics(spark, params: dict[str, Any]) -> dict[str, Any]:
    """Recompute the nine analytics tables from the cleaned tables (full overwrite each run).

    params: tables_root, preview_rows. Returns per table: rows and a preview (list of row dicts)."""
    from pinterest_platform.transforms.analytics import compute_all

    tables_root = params["tables_root"].rstrip("/")
    preview_rows = int(params.get("preview_rows", 20))
    loaded = {}
    for kind in contract.EVENT_KINDS:
        uri = f"{tables_root}/{kind}"
        if _table_exists(spark, uri):
            loaded[kind] = spark.read.format("delta").load(uri)
        else:
            loaded[kind] = spark.createDataFrame([], contract.CLEANED_SCHEMAS[kind])
    outputs = compute_all(loaded["pin"], loaded["geo"], loaded["user"])
    results = {}
    for name in contract.ANALYTICS_TABLES:
        df = outputs[name].persist()
        uri = f"{tables_root}/{name}"
        with table_write_lock(spark, uri):
            df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(uri)
        rows = [r.asDict() for r in df.collect()] if preview_rows else []
        count = len(rows) if preview_rows else df.count()
        df.unpersist()
        results[name] = {"rows": count, "preview": [_jsonable(r) for r in rows[:preview_rows]]}
    return results


def _jsonable(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out
