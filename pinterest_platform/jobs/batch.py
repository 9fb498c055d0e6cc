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


def driver_rows(spark, rows, schema):
    """A DataFrame of a few rows the driver holds (tuples or Rows in `schema`'s column order; no timestamps:
    a naive datetime would be read as UTC). They reach the JVM as one Arrow table: a Python list becomes a
    Python RDD instead, whose every job starts a Python worker to unpickle it, 0.3-0.5 s (2 s the first
    time) for a handful of rows."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    names = schema.fieldNames()
    table = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows], schema=to_arrow_schema(schema))
    return spark.createDataFrame(table, schema)


def ensure_table(spark, uri: str, schema, properties: dict[str, str] | None = None) -> None:
    """Create an empty Delta table with the contract schema (and table properties) unless one exists."""
    if not _table_exists(spark, uri):
        writer = driver_rows(spark, [], schema).write.format("delta")
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
# both index formats: the compact one (`o`, `n`, `runs`) and the earlier line per record (`t`, `o`)
INDEX_SCHEMA = "t long, o long, n long, runs array<array<bigint>>"


def order_key_sql(table: str = "") -> str:
    """The order columns (of `table`, an alias, when given) as one comparable struct, nulls as the lowest."""
    column = f"{table}." if table else ""
    return (f"struct(coalesce({column}_day, ''), coalesce({column}_posted_at, -1), "
            f"coalesce({column}_partition, -1), coalesce({column}_offset, -1))")


def _order_key():
    from pyspark.sql import functions as F

    return F.expr(order_key_sql())


# up to this many inds (16 MB of longs), a run's inds are broadcast to the table-side count rather than shuffled
# with the table
BROADCAST_KEYS = 2_000_000

# the analytics outputs written at the same time: each is mostly a small job's and a Delta commit's latency
ANALYTICS_WRITERS = 3

# what a kind without files to clean reports
NOTHING_CLEANED = {"files": 0, "read": 0, "clean": 0, "upserted": 0, "duplicates": 0, "older": 0,
                   "quarantined": 0, "table_rows": 0, "quarantine_rows": 0}


def _index_by_file(spark, index_uris: list[str]):
    """Per indexed raw file (`origin`): its first offset `_first`, its number of lines `_lines` and each
    line's Kafka timestamp in order (`_stamps`), from the compact index (runs of equal timestamps) or from
    the one-line-per-record index that earlier versions of the sink wrote."""
    from pyspark.sql import functions as F

    rows = (spark.read.schema(INDEX_SCHEMA).json(index_uris)
            .withColumn("origin", F.regexp_replace(F.col("_metadata.file_path"), f"/{contract.RAW_INDEX_DIR}/topics/",
                                                   "/topics/")))
    compact = (rows.where(F.col("runs").isNotNull())
               .select("origin", F.col("o").alias("_first"), F.col("n").alias("_lines"),
                       F.flatten(F.transform("runs", lambda run: F.array_repeat(run[0], run[1].cast("int"))))
                       .alias("_stamps")))
    # the earlier index has a line per record, offsets consecutive from the file's first
    per_record = (rows.where(F.col("runs").isNull()).groupBy("origin")
                  .agg(F.min("o").alias("_first"), F.count(F.lit(1)).alias("_lines"),
                       F.transform(F.array_sort(F.collect_list(F.struct("o", "t"))), lambda x: x["t"]).alias("_stamps")))
    return compact.unionByName(per_record)


def _indexed_lines(spark, files: list[dict]):
    """The lines of raw files that have an index, each with its Kafka timestamp and offset. A file is read
    whole and split into its lines, whose positions meet the index's per-file arrays (a broadcast of a few
    bytes per record): no per-record join, no shuffle. A file whose line count is not its index's gets no
    order keys, like a file without an index."""
    from pyspark.sql import functions as F

    index = _index_by_file(spark, [f["index_uri"] for f in files])
    whole = (spark.read.text([f["uri"] for f in files], wholetext=True)
             .select(F.col("value").alias("_text"), F.col("_metadata.file_path").alias("origin"))
             .join(F.broadcast(index), "origin", "left"))
    text = F.col("_text")
    # Splitting a string goes through Java's UTF-16, which would put replacement characters where the bytes
    # are not UTF-8 (such a line must reach the cleaning as it is, to be quarantined as invalid UTF-8): a
    # file that is not valid UTF-8 (rare) is split as Latin-1, where each byte is one character, and each
    # line taken back to its bytes
    as_bytes = F.transform(F.split(F.decode(text.cast("binary"), "ISO-8859-1"), "\n", -1),
                           lambda line: F.encode(line, "ISO-8859-1").cast("string"))
    split = F.when(F.is_valid_utf8(text), F.split(text, "\n", -1)).otherwise(as_bytes)
    # split once, in a projection of its own (a one-character pattern: Java splits on it without the regex
    # engine); the per-file columns are computed before the explode, so the rows it makes carry neither the
    # text nor anything that needs it again (else each line would split its whole file once more)
    pieces = whole.select("origin", "_first", "_lines", "_stamps", split.alias("_pieces"))
    # the sink ends every line with a newline, so the text's last piece is empty
    line_count = F.size("_pieces") - F.when(F.element_at("_pieces", -1) == "", 1).otherwise(0)
    aligned = F.coalesce(F.col("_lines") == line_count, F.lit(False))
    per_file = pieces.select("origin", "_first", "_stamps", aligned.alias("_aligned"), "_pieces")
    exploded = per_file.select("origin", "_first", "_stamps", "_aligned", F.posexplode("_pieces").alias("_at", "value"))
    # the line's timestamp is read where the explode makes the line, so the file's array is not copied per
    # line (try_: the empty piece after the last newline has none)
    stamp = F.when(F.col("_aligned"), F.try_element_at("_stamps", F.col("_at") + 1))
    return exploded.select("value", "origin", stamp.alias("_posted_at"),
                           F.when(F.col("_aligned"), F.col("_first") + F.col("_at")).alias("_offset"))


def read_raw_records(spark, files: list[dict]):
    """Raw lines of `files` as records (`value`, `source`, `origin`) with their order columns.

    files: [{"uri", "path", "day", "topic", "index_uri" (None for another writer's file)}]."""
    from functools import reduce

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    parts = []
    indexed = [f for f in files if f.get("index_uri")]
    if indexed:
        parts.append(_indexed_lines(spark, indexed))
    plain = [f for f in files if not f.get("index_uri")]
    if plain:
        parts.append(spark.read.text([f["uri"] for f in plain])
                     .select("value", F.col("_metadata.file_path").alias("origin"),
                             F.lit(None).cast("long").alias("_posted_at"), F.lit(None).cast("long").alias("_offset")))
    records = reduce(lambda a, b: a.unionByName(b), parts)
    # blank lines are framing, not records
    records = records.where(F.trim(F.col("value")) != "")
    topics = sorted({f["topic"] for f in files})
    records = records.withColumn("source", F.lit(",".join(topics)))
    # the lake-relative path ties a line to its file's day (a flat-layout file's day is not in its path)
    day_of_path = T.StructType([T.StructField("_path", T.StringType()), T.StructField("_day", T.StringType())])
    days = driver_rows(spark, [(f["path"], f["day"]) for f in files], day_of_path)
    return (records.withColumn("_path", F.regexp_extract("origin", r"^.*/(topics/[^/]+/.*)$", 1))
            .join(F.broadcast(days), "_path", "left")
            .withColumn("_partition", F.regexp_extract("origin", r"\+([0-9]+)\+[0-9]+\.json$", 1).cast("int"))
            .select("value", "source", "origin", "_day", "_posted_at", "_partition", "_offset"))


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
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key_and_rest, quarantine_rows

    is_clean = F.col("_reason").isNull() & F.col("ind").isNotNull()
    # The one pass over the raw files: cleaned, one row kept per clean ind (the latest, with `_copies`, how
    # many clean records it had) and every rejected record, checkpointed. Everything below reads these
    # rows, so no record is parsed twice, and the whole cleaned input is never cached beside them.
    records = read_raw_records(spark, files)
    # a clean row's raw text only served the choice of the latest: dropped before the checkpoint, which
    # then holds about half the bytes for wide records
    chosen = (latest_per_key_and_rest(clean(kind, records), is_clean, key="ind", order_by=[*ORDER_COLUMNS, "_raw"],
                                      copies="_copies")
              .withColumn("_raw", F.when(~is_clean, F.col("_raw"))))
    # the tally is observed while the checkpoint is written: no second pass over its rows
    observed = Observation(f"clean-{kind}")
    kept = chosen.observe(
        observed,
        F.sum(F.when(is_clean, F.col("_copies"))).alias("clean"),
        F.count(F.when(is_clean, 1)).alias("keys"),
        F.count(F.when(~is_clean, 1)).alias("rejected"),
        F.count(F.when(F.col("_reason").isNotNull(), 1)).alias("quarantined"),
        F.min(F.when(is_clean, F.col("ind"))).alias("lo"),
        F.max(F.when(is_clean, F.col("ind"))).alias("hi")).localCheckpoint(eager=True)
    tally = observed.get
    clean_count, keys = int(tally["clean"] or 0), int(tally["keys"])
    quarantined, read = int(tally["quarantined"]), clean_count + int(tally["rejected"])
    # every clean ind of the run lies in this range: reads and MERGEs of the stored tables are limited to it
    ind_range = None if tally["lo"] is None else (int(tally["lo"]), int(tally["hi"]))
    latest = kept.where(is_clean).drop("_copies")
    table_existed = _table_exists(spark, table_uri)
    judged = judge_against_stored(spark, latest, versions_uri, table_uri, ind_range)
    if _table_exists(spark, versions_uri):
        # checkpointed: the writes below change the versions table these rows were judged on, and a
        # recomputation would judge them again against the new keys
        judged = judged.localCheckpoint(eager=True)
        split = judged.agg(F.count(F.when(F.col("_newer"), 1)).alias("newer"),
                           F.count(F.when(F.col("_newer") & F.col("_known"), 1)).alias("known")).first()
        upserted, known = int(split["newer"]), int(split["known"])
    else:
        # nothing to judge against: every row is newer, and known exactly when the table already exists
        upserted, known = keys, keys if table_existed else 0
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
    # the inds the run saw clean: one per kept clean row. A table this run created holds only them, so its
    # row count is that number (Delta answers it from its log); otherwise the table's rows in the run's ind
    # range meet them, broadcast up to BROADCAST_KEYS (a shuffle of the table costs more)
    table = spark.read.format("delta").load(table_uri)
    if ind_range is None:
        table_rows = 0
    elif not table_existed:
        table_rows = table.count()
    else:
        seen = latest.select("ind")
        if keys <= BROADCAST_KEYS:
            seen = F.broadcast(seen)
        table_rows = table.where(within("ind", ind_range)).join(seen, "ind", "left_semi").count()
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
    a Delta commit. An output equal to its table's rows is not written again (`rewritten` false): each
    overwrite records a fingerprint of its rows in its commit (`userMetadata`), and a table whose latest
    commit carries the output's fingerprint holds exactly those rows (any later change, by anyone, is a
    later commit without it)."""
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
            loaded[kind] = driver_rows(spark, [], contract.CLEANED_SCHEMAS[kind])
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
        fingerprint = _fingerprint(schema, rows)
        # reading the table's rows back to compare cost as much as the overwrite (1-2 s a table); its
        # latest commit's metadata is read from the log alone
        rewrite = _latest_commit_metadata(spark, uri) != fingerprint
        if rewrite:
            with table_write_lock(spark, uri):
                (driver_rows(spark, rows, schema).write.format("delta").mode("overwrite")
                 .option("overwriteSchema", "true").option("userMetadata", fingerprint).save(uri))
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


# the prefix of the fingerprint an analytics overwrite records in its commit's userMetadata
FINGERPRINT_PREFIX = "pinterest_platform.rows:sha256:"


def _fingerprint(schema, rows) -> str:
    """The schema and the rows (as a multiset: their order does not matter) of an output, hashed."""
    import hashlib

    digest = hashlib.sha256(schema.json().encode())
    for line in sorted(repr(tuple(row)) for row in rows):
        digest.update(b"\n" + line.encode())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _latest_commit_metadata(spark, uri: str) -> str | None:
    """The userMetadata of the Delta table's latest commit (None without a table or metadata)."""
    from delta.tables import DeltaTable

    if not _table_exists(spark, uri):
        return None
    latest = DeltaTable.forPath(spark, uri).history(1).select("userMetadata").collect()
    return latest[0]["userMetadata"] if latest else None


def _jsonable(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out
