"""Batch Spark jobs: clean raw topic files into the `pin`, `geo`, `user` Delta tables, and compute the
nine analytics tables. Each job is `job(spark, params) -> dict` with a JSON-serializable result, so it runs
in-process locally and under Pipes on Databricks alike. All paths arrive as URIs (local path or s3://)."""

from __future__ import annotations

import time
from typing import Any

from pinterest_platform import contract
from pinterest_platform.jobs.commit_lock import table_write_lock


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


def within(column: str, ind_range: tuple[int, int] | None):
    """`column` (a qualified name) inside `ind_range`, or true without one: a condition on the target alone,
    which lets Delta skip the files whose ind min/max lie outside (new events only touch new files)."""
    from pyspark.sql import functions as F

    return F.lit(True) if ind_range is None else F.col(column).between(*ind_range)


def upsert_by_ind(spark, uri: str, rows, schema, ind_range: tuple[int, int] | None = None) -> None:
    """MERGE rows (one per ind, inside `ind_range` when given) into the Delta table at uri, creating it with
    the contract schema."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    with table_write_lock(spark, uri):
        if not _table_exists(spark, uri):
            # first load: nothing to match against, so a plain write skips MERGE's join
            rows.write.format("delta").mode("errorifexists").save(uri)
            return
        columns = schema.fieldNames()
        (DeltaTable.forPath(spark, uri).alias("t")
            .merge(rows.alias("s"), (F.col("t.ind") == F.col("s.ind")) & within("t.ind", ind_range))
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


# the order of "latest posted wins" in batch: ingest day, Kafka record timestamp, partition, offset (from the
# raw file's path and its index); a file without an index (another sink's) has no timestamp or offset
ORDER_COLUMNS = ("_day", "_posted_at", "_partition", "_offset")
VERSIONS_DIR = "latest"
INDEX_SCHEMA = "h string, t long, o long"


def order_key_sql(table: str = "") -> str:
    """The order columns (of `table`, an alias, when given) as one comparable struct, nulls as the lowest."""
    column = f"{table}." if table else ""
    return (f"struct(coalesce({column}_day, ''), coalesce({column}_posted_at, -1), "
            f"coalesce({column}_partition, -1), coalesce({column}_offset, -1))")


def _order_key():
    from pyspark.sql import functions as F

    return F.expr(order_key_sql())


# up to this many inds, a run's inds are broadcast to the table-side counts rather than shuffled with the table
BROADCAST_KEYS = 200_000

# the analytics outputs written at the same time: each is mostly a small job's and a Delta commit's latency
ANALYTICS_WRITERS = 3

# what a kind without files to clean reports
NOTHING_CLEANED = {"files": 0, "read": 0, "clean": 0, "upserted": 0, "duplicates": 0, "older": 0,
                   "quarantined": 0, "table_rows": 0, "quarantine_rows": 0}


def read_raw_records(spark, files: list[dict]):
    """Raw lines of `files` as records (`value`, `source`, `origin`) with their order columns.

    files: [{"uri", "path", "day", "topic", "index_uri" (None for another writer's file)}]."""
    from pyspark.sql import functions as F

    records = (spark.read.text([f["uri"] for f in files])
               .select(F.col("value"), F.col("_metadata.file_path").alias("origin")))
    # blank lines are framing, not records
    records = records.where(F.trim(F.col("value")) != "")
    topics = sorted({f["topic"] for f in files})
    records = records.withColumn("source", F.lit(",".join(topics)))
    # the lake-relative path ties a line to its file's day (a flat-layout file's day is not in its path)
    days = spark.createDataFrame([(f["path"], f["day"]) for f in files], "_path string, _day string")
    records = (records.withColumn("_path", F.regexp_extract("origin", r"^.*/(topics/[^/]+/.*)$", 1))
               .join(F.broadcast(days), "_path", "left")
               .withColumn("_partition", F.regexp_extract("origin", r"\+([0-9]+)\+[0-9]+\.json$", 1).cast("int")))
    index_uris = [f["index_uri"] for f in files if f.get("index_uri")]
    if index_uris:
        # a line's md5 finds its timestamp and offset; identical lines of one file have the same content,
        # so taking the latest of them is exact
        index = (spark.read.schema(INDEX_SCHEMA).json(index_uris)
                 .select(F.regexp_replace(F.col("_metadata.file_path"), "/_raw_index/topics/", "/topics/").alias("origin"),
                         "h", "t", "o")
                 .groupBy("origin", "h").agg(F.max(F.struct("t", "o")).alias("_k")))
        records = (records.withColumn("h", F.md5(F.col("value").cast("binary")))
                   .join(index, ["origin", "h"], "left")
                   .select("value", "source", "origin", "_day", F.col("_k.t").alias("_posted_at"), "_partition",
                           F.col("_k.o").alias("_offset")))
    else:
        records = records.select("value", "source", "origin", "_day", F.lit(None).cast("long").alias("_posted_at"),
                                 "_partition", F.lit(None).cast("long").alias("_offset"))
    return records


def judge_against_stored(spark, winners, versions_uri: str, table_uri: str,
                         ind_range: tuple[int, int] | None = None):
    """`winners` with `_newer`: whether the row's order key is not older than the one the table's row came
    from (a backfill of an older day never brings back older content; an equal key is the same record, and
    merging it again changes nothing), and `_known`: whether the table may already hold the ind (it must be
    merged) or surely does not (it is appended, which skips MERGE's scan of the table: new events cost what
    they are, not what the table is). Without a versions table, a table that exists (written before
    versions were kept) is all `_known`."""
    from pyspark.sql import functions as F

    if not _table_exists(spark, versions_uri):
        return winners.withColumn("_newer", F.lit(True)).withColumn("_known", F.lit(_table_exists(spark, table_uri)))
    stored = (spark.read.format("delta").load(versions_uri).where(within("ind", ind_range))
              .select("ind", _order_key().alias("_stored")))
    return (winners.join(stored, "ind", "left")
            .withColumn("_newer", F.col("_stored").isNull() | (_order_key() >= F.col("_stored")))
            .withColumn("_known", F.col("_stored").isNotNull()).drop("_stored"))


def append_new_rows(spark, uri: str, rows) -> None:
    """Append rows whose ind the table does not hold (creating the table on the first write)."""
    with table_write_lock(spark, uri):
        rows.write.format("delta").mode("append").save(uri)


def record_versions(spark, versions_uri: str, winners, new: int, known: int,
                    ind_range: tuple[int, int] | None = None) -> None:
    """Remember, per ind, the order key of the record its row holds now: `new` inds (`_known` false)
    appended, `known` ones merged where the key is newer."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    def keys(where):
        return winners.where(where).select("ind", *ORDER_COLUMNS)

    with table_write_lock(spark, versions_uri):
        if not _table_exists(spark, versions_uri):
            # the first keys (of a new table, or of one written before versions were kept)
            keys(F.lit(True)).write.format("delta").mode("append").save(versions_uri)
            return
        if new:
            keys(~F.col("_known")).write.format("delta").mode("append").save(versions_uri)
        if known:
            matches = (F.col("t.ind") == F.col("s.ind")) & within("t.ind", ind_range)
            (DeltaTable.forPath(spark, versions_uri).alias("t").merge(keys(F.col("_known")).alias("s"), matches)
             .whenMatchedUpdateAll(condition=f"{order_key_sql('s')} > {order_key_sql('t')}").whenNotMatchedInsertAll()
             .execute())


def _clean_kind(spark, kind: str, files: list[dict], table_uri: str, versions_uri: str):
    """Clean one kind's files into its table. Returns (counts, quarantine rows or None, the records' origins);
    the quarantine, shared by the kinds, is written once by the caller."""
    from pyspark.sql import functions as F

    from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key_and_rest, quarantine_rows

    is_clean = F.col("_reason").isNull() & F.col("ind").isNotNull()
    # The one pass over the raw files: cleaned, one row kept per clean ind (the latest, with `_copies`, how
    # many clean records it had) and every rejected record, checkpointed. Everything below reads these
    # rows, so no record is parsed twice, and the whole cleaned input is never cached beside them.
    records = read_raw_records(spark, files)
    kept = latest_per_key_and_rest(clean(kind, records), is_clean, key="ind", order_by=[*ORDER_COLUMNS, "_raw"],
                                   copies="_copies").localCheckpoint(eager=True)
    tally = kept.agg(F.sum(F.when(is_clean, F.col("_copies"))).alias("clean"),
                     F.count(F.when(is_clean, 1)).alias("keys"),
                     F.count(F.when(~is_clean, 1)).alias("rejected"),
                     F.count(F.when(F.col("_reason").isNotNull(), 1)).alias("quarantined"),
                     F.min(F.when(is_clean, F.col("ind"))).alias("lo"),
                     F.max(F.when(is_clean, F.col("ind"))).alias("hi")).first()
    clean_count, keys = int(tally["clean"] or 0), int(tally["keys"])
    quarantined, read = int(tally["quarantined"]), clean_count + int(tally["rejected"])
    # every clean ind of the run lies in this range: reads and MERGEs of the stored tables are limited to it
    ind_range = None if tally["lo"] is None else (int(tally["lo"]), int(tally["hi"]))
    latest = kept.where(is_clean).drop("_copies")
    judged = judge_against_stored(spark, latest, versions_uri, table_uri, ind_range)
    if _table_exists(spark, versions_uri):
        # checkpointed: the writes below change the versions table these rows were judged on, and a
        # recomputation would judge them again against the new keys
        judged = judged.localCheckpoint(eager=True)
    split = judged.agg(F.count(F.when(F.col("_newer"), 1)).alias("newer"),
                       F.count(F.when(F.col("_newer") & F.col("_known"), 1)).alias("known")).first()
    upserted, known = int(split["newer"]), int(split["known"])
    winners = judged.where(F.col("_newer"))
    if upserted:
        # before the table: a crash in between leaves keys the rows do not hold yet, and the next run's
        # records of those inds (the same keys) pass again and are merged, so no ind is appended twice
        record_versions(spark, versions_uri, winners, upserted - known, known, ind_range)
    if upserted > known:
        append_new_rows(spark, table_uri, cleaned_rows(kind, winners.where(~F.col("_known"))))
    if known:
        upsert_by_ind(spark, table_uri, cleaned_rows(kind, winners.where(F.col("_known"))),
                      contract.CLEANED_SCHEMAS[kind], ind_range)
    ensure_table(spark, table_uri, contract.CLEANED_SCHEMAS[kind])
    # counted on the table as it is now, independently of the counts above: a row that a write lost (or a
    # user deleted) shows as a conservation failure
    # the inds the run saw clean: one per kept clean row; an incremental run's few are broadcast, which
    # spares a shuffle of the table
    seen = latest.select("ind")
    if keys <= BROADCAST_KEYS:
        seen = F.broadcast(seen)
    table_rows = 0 if ind_range is None else (spark.read.format("delta").load(table_uri)
                                               .where(within("ind", ind_range)).join(seen, "ind", "left_semi").count())
    # both read the checkpointed rows, which outlive this function with them
    rejected = quarantine_rows(kind, kept) if quarantined else None
    origins = kept.select(F.col("_origin").alias("origin")).distinct()
    counts = {"files": len(files), "read": read, "clean": clean_count, "upserted": upserted,
              "duplicates": clean_count - keys, "older": keys - upserted, "quarantined": quarantined,
              "table_rows": table_rows}
    return counts, rejected, origins


def clean_batch(spark, params: dict[str, Any]) -> dict[str, Any]:
    """Clean the given raw files per kind and upsert them by ind, the latest-posted record winning.

    params: tables_root (URI of `<lake>/tables`), versions_root (URI of the per-kind order keys of the rows),
    files: {kind: [{"uri", "path", "size", "topic", "day", "index_uri"}]}. Returns counts per kind, the
    table-side ones (`table_rows`: rows of the table whose ind this run saw clean; `quarantine_rows`: rows of
    the quarantine from these files) counted from the tables after the writes.

    The kinds are cleaned at the same time (one thread each, on the same session): their tables are
    distinct, and most of a small run's time is the latency of Spark jobs and Delta commits, which overlap.
    The quarantine they share is written once, after them."""
    from concurrent.futures import ThreadPoolExecutor

    from pyspark.sql import functions as F

    tables_root = params["tables_root"].rstrip("/")
    versions_root = params["versions_root"].rstrip("/")
    quarantine_uri = f"{tables_root}/{contract.QUARANTINE_TABLE}"
    results: dict[str, Any] = {}
    # an empty quarantine is a statement too ("nothing was rejected"), so the table always exists
    ensure_table(spark, quarantine_uri, contract.QUARANTINE_SCHEMA)
    started = time.monotonic()
    work = {kind: params["files"].get(kind) or [] for kind in contract.EVENT_KINDS}
    todo = [kind for kind, files in work.items() if files]
    with ThreadPoolExecutor(max_workers=max(len(todo), 1), thread_name_prefix="clean") as pool:
        futures = {kind: pool.submit(_clean_kind, spark, kind, work[kind], f"{tables_root}/{kind}",
                                     f"{versions_root}/{kind}") for kind in todo}
        done = {kind: future.result() for kind, future in futures.items()}
    rejected = [r for _, r, _ in done.values() if r is not None]
    if rejected:
        union = rejected[0]
        for more in rejected[1:]:
            union = union.unionByName(more)
        append_quarantine(spark, quarantine_uri, union)
    quarantine = spark.read.format("delta").load(quarantine_uri)
    for kind in contract.EVENT_KINDS:
        if kind not in done:
            results[kind] = {**NOTHING_CLEANED, "seconds": 0.0}
            continue
        counts, _, origins = done[kind]
        counts["quarantine_rows"] = (quarantine.where(F.col("kind") == kind).join(origins, "origin", "left_semi")
                                     .count())
        counts["seconds"] = round(time.monotonic() - started, 3)
        results[kind] = counts
    return results


def analytics(spark, params: dict[str, Any]) -> dict[str, Any]:
    """Recompute the nine analytics tables from the cleaned tables (a table is overwritten when its rows changed).

    params: tables_root, preview_rows. Returns per table: rows and a preview (list of row dicts).

    The posts are joined and aggregated once (`compute_all`'s summary, kept for the run); the nine outputs
    are then cut from it and written three at a time, since each is mostly the latency of a small job and
    a Delta commit. An output equal to its table's rows is not written again (`rewritten` false)."""
    from concurrent.futures import ThreadPoolExecutor

    from pinterest_platform.transforms.analytics import READ_ALONE, compute_all

    tables_root = params["tables_root"].rstrip("/")
    preview_rows = int(params.get("preview_rows", 20))
    loaded = {}
    for kind in contract.EVENT_KINDS:
        uri = f"{tables_root}/{kind}"
        if _table_exists(spark, uri):
            loaded[kind] = spark.read.format("delta").load(uri)
        else:
            loaded[kind] = spark.createDataFrame([], contract.CLEANED_SCHEMAS[kind])
    kept = []

    def share(df):
        kept.append(df.persist())
        return kept[-1]

    outputs = compute_all(loaded["pin"], loaded["geo"], loaded["user"], share=share)

    def write(name: str) -> dict[str, Any]:
        # an output is small (one row per country, year or age group), so it is computed once, here, and
        # written from these rows; a table that already holds exactly them is not rewritten (a Delta
        # overwrite costs a second or more, and a few new events leave most outputs as they were)
        rows = outputs[name].collect()
        uri = f"{tables_root}/{name}"
        schema = contract.ANALYTICS_SCHEMAS[name]
        rewrite = not _holds_exactly(spark, uri, schema, rows)
        if rewrite:
            with table_write_lock(spark, uri):
                (spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite")
                 .option("overwriteSchema", "true").save(uri))
        return {"rows": len(rows), "rewritten": rewrite,
                "preview": [_jsonable(r.asDict()) for r in rows[:preview_rows]]}

    try:
        with ThreadPoolExecutor(max_workers=ANALYTICS_WRITERS, thread_name_prefix="analytics") as pool:
            # the outputs that do not read the shared summary start first, beside its one big job
            futures = {name: pool.submit(write, name) for name in READ_ALONE}
            for df in kept:
                df.count()  # filled here, once: concurrent writers of an unfilled cache would each compute it
            futures.update({name: pool.submit(write, name) for name in contract.ANALYTICS_TABLES
                            if name not in futures})
            return {name: futures[name].result() for name in contract.ANALYTICS_TABLES}
    finally:
        for df in kept:
            df.unpersist()


def _holds_exactly(spark, uri: str, schema, rows) -> bool:
    """Whether the Delta table at uri has `schema` and holds exactly `rows` (as a multiset)."""
    from collections import Counter

    if not _table_exists(spark, uri):
        return False
    stored = spark.read.format("delta").load(uri)
    return stored.schema == schema and Counter(map(tuple, stored.collect())) == Counter(map(tuple, rows))


def _jsonable(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out
