"""Spark job `stream`: the three Kinesis streams -> cleaned streaming Delta tables, exactly-once.

One Structured Streaming query reads the three streams `streaming-<prefix>-pin|geo|user` (format
`kinesis-local` locally, Databricks' `kinesis` there), and each micro-batch, in `foreachBatch`, reads its
records once (cached), splits them by stream and, per kind (pin first):

- cleans the records with `transforms.cleaning.clean` (the same code as the batch job);
- writes the clean rows, one per `ind`, to `<tables_root>/<prefix>_<kind>_table` (`upsert_rows`): an ind
  the table does not hold and the batch holds once is appended; the others are MERGEd, the batch's latest
  record (by arrival, then sequence number) updating a matched row only when it differs;

then appends the quarantined records of all kinds to `<tables_root>/quarantine` in one commit, with Delta's
`txnAppId` (the query's id, stable across restarts from the same checkpoint) and `txnVersion` (the batch id).
One query instead of one per stream: one trigger, one source plan and one offset-log commit per interval,
and the micro-batches of the three streams no longer compete for the cores.

Exactly-once: the query checkpoints to `<checkpoint_root>/<prefix>_streams` (never deleted here; a lake
written by earlier versions, with one checkpoint per stream `<prefix>_<kind>`, starts where those
committed); Spark logs a batch's offsets before running it and replays an unfinished batch with the same
offsets, hence the same records (see streaming/kinesis_source.py). A replayed batch finds its inds in the
tables, so it is MERGEd and changes nothing, and Delta skips a replayed quarantine append, so a crash at any
point neither loses nor duplicates a row.

Triggers: `available_now` drains what the streams hold now and returns; `processing_time` runs every
`interval` until `timeout_s` passes or SIGINT/SIGTERM arrives, then stops the queries between batches.
`stream_command` is the CLI entry point (`pinterest-platform run stream`): `--available-now` materializes the
`stream_available_now` asset through the Dagster instance (assets/streaming.py), `--continuous` calls
`stream` in its own process, outside any Dagster run."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pinterest_platform import contract
from pinterest_platform.jobs import batch as batch_jobs
from pinterest_platform.jobs.commit_lock import table_write_lock
from pinterest_platform.streaming.kinesis_source import FORMAT_NAME as LOCAL_FORMAT

log = logging.getLogger(__name__)

TRIGGERS = ("available_now", "processing_time")
# how long a stop waits for the running micro-batch to finish before interrupting it
GRACEFUL_STOP_S = 60.0


@dataclass
class StreamParams:
    prefix: str
    tables_root: str
    checkpoint_root: str
    kinds: list[str]
    region: str | None = None
    endpoint: str | None = None
    source_format: str = LOCAL_FORMAT
    trigger: str = "available_now"
    interval: str = "5 seconds"
    timeout_s: float | None = None
    initial_position: str = "trim_horizon"
    source_options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> StreamParams:
        try:
            prefix = params["prefix"]
            tables_root = str(params["lake_tables_root"]).rstrip("/")
        except KeyError as exc:
            raise ValueError(f"stream job: missing parameter {exc.args[0]!r}") from None
        # the lake's layout is <root>/tables and <root>/checkpoints: default to the tables folder's sibling
        lake_root = tables_root.rsplit("/", 1)[0] if "/" in tables_root else "."
        kinds = list(params.get("kinds") or contract.EVENT_KINDS)
        unknown = [k for k in kinds if k not in contract.EVENT_KINDS]
        if unknown:
            raise ValueError(f"stream job: unknown kind(s) {unknown}; known: {list(contract.EVENT_KINDS)}")
        trigger = params.get("trigger") or "available_now"
        if trigger not in TRIGGERS:
            raise ValueError(f"stream job: trigger {trigger!r}; expected one of {TRIGGERS}")
        timeout = params.get("timeout_s")
        return cls(
            prefix=prefix,
            tables_root=tables_root,
            checkpoint_root=str(params.get("checkpoint_root") or f"{lake_root}/checkpoints").rstrip("/"),
            kinds=kinds,
            region=params.get("region"),
            endpoint=params.get("endpoint"),
            source_format=params.get("source_format") or LOCAL_FORMAT,
            trigger=trigger,
            interval=normalize_interval(params.get("interval") or "5 seconds"),
            timeout_s=float(timeout) if timeout not in (None, "") else None,
            initial_position=params.get("initial_position") or "trim_horizon",
            source_options={str(k): str(v) for k, v in (params.get("source_options") or {}).items()},
        )

    def table_uri(self, kind: str) -> str:
        return f"{self.tables_root}/{contract.streaming_table_name(self.prefix, kind)}"

    def checkpoint(self, kind: str) -> str:
        """The checkpoint of one stream's query in versions before the one query (read to migrate from)."""
        return f"{self.checkpoint_root}/{self.prefix}_{kind}"

    @property
    def checkpoint_all(self) -> str:
        """The one query's checkpoint, whichever of the streams it reads."""
        return f"{self.checkpoint_root}/{self.prefix}_streams"

    @property
    def quarantine_uri(self) -> str:
        return f"{self.tables_root}/{contract.QUARANTINE_TABLE}"


def normalize_interval(text: str) -> str:
    """'5s', '5 sec', '500ms', '1m', '5 seconds' -> Spark's '<n> seconds|milliseconds|minutes'."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match:
        raise ValueError(f"interval {text!r}: expected e.g. '5s', '500ms' or '1 minute'")
    number, unit = match.group(1), match.group(2).lower()
    units = {"": "seconds", "s": "seconds", "sec": "seconds", "secs": "seconds", "second": "seconds",
             "seconds": "seconds", "ms": "milliseconds", "millisecond": "milliseconds",
             "milliseconds": "milliseconds", "m": "minutes", "min": "minutes", "mins": "minutes",
             "minute": "minutes", "minutes": "minutes"}
    if unit not in units:
        raise ValueError(f"interval {text!r}: unknown unit {unit!r}")
    return f"{number} {units[unit]}"


@dataclass
class StreamStats:
    """What this run's micro-batches did for one stream (a replayed batch counts again)."""

    batches: int = 0
    records: int = 0
    clean: int = 0
    upserted: int = 0
    quarantined: int = 0
    appended: int = 0  # of upserted: new inds appended (the fast path)
    merged: int = 0  # of upserted: inds that went through MERGE (in the table already, or repeated in a batch)
    last_batch_id: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# --- per micro-batch --------------------------------------------------------------------------------

# A continuous query commits every second or so, each write adding a small file; Delta's auto compaction
# rewrites them once 50 accumulate, so the per-batch scans of the table do not grow with the stream's age.
# A log checkpoint (every 10 commits by default) costs a writer about a second, and the three tables, committed
# in step, checkpoint in the same batch: every 100 commits, that batch's delay is rarer than a reader's replay
# of up to 99 small commit files is costly
STREAMING_TABLE_PROPERTIES = {"delta.autoOptimize.autoCompact": "true", "delta.checkpointInterval": "100"}
# the latest of one ind's records in a batch: the latest arrival, then the higher sequence number (same length
# first: sequence numbers are decimal strings of varying length)
LATEST_ORDER = ["_arrival", "_seq_len", "_seq"]


# what a kind's micro-batch without clean records writes
NOTHING_UPSERTED = {"clean": 0, "upserted": 0, "appended": 0, "merged": 0}

# a table whose inds the query's driver keeps (`HeldInds`) holds at most this many rows (8 bytes each)
HELD_INDS_MAX = 10_000_000


def _changes_data(commit_text: str) -> tuple[str | None, bool]:
    """(operation, whether any action adds or removes data) of one Delta commit file's text."""
    operation, changes = None, False
    for line in commit_text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            operation = action["commitInfo"].get("operation")
        for kind in ("add", "remove", "cdc"):
            if kind in action and action[kind].get("dataChange", True):
                changes = True
    return operation, changes


class HeldInds:
    """The inds one streaming table holds, kept by the query's driver between micro-batches, so that a batch
    of new inds (the common case: events arrive once) is appended without reading the table: that read costs
    a Spark job and a Delta snapshot per kind per batch, most of a small batch's time.

    The set is valid as of `version` of the table. Before it is used, the commits after that version are
    read (`_delta_log/<version>.json`, a few hundred bytes each): commits that add or remove no data (auto
    compaction, a property change) keep it; any other (another writer, a user's DELETE) makes it read again
    from the table. After the query's own writes of a batch the set takes the batch's inds if the commits
    that changed data since are exactly the ones it made (each of its writes changes data, so another
    writer's commit in between is one too many); otherwise it is read again. A table with more than
    `max_rows` rows is not kept (`holds` answers None: the caller looks the inds up in the table)."""

    def __init__(self, uri: str, max_rows: int = HELD_INDS_MAX):
        self.uri = uri
        self.max_rows = max_rows
        self.version: int | None = None
        self.too_large = False
        self.reads = 0  # how often the set was read from the table (tests and logs)
        self._sorted = None  # numpy int64, sorted and unique
        self._recent: list = []  # inds added since the last merge into `_sorted`

    def _commit_path(self, version: int) -> str:
        return f"{self.uri}/_delta_log/{version:020d}.json"

    def _commits_after(self, spark) -> list[tuple[str | None, bool]]:
        found = []
        version = self.version + 1
        while True:
            fs, path = _hadoop_fs(spark, self._commit_path(version))
            if not fs.exists(path):
                return found
            found.append(_changes_data(_read_text(spark, self._commit_path(version))))
            version += 1

    def _read(self, spark) -> None:
        import numpy as np
        from delta.tables import DeltaTable

        self.reads += 1
        self._recent = []
        if not batch_jobs._table_exists(spark, self.uri):
            self.version, self._sorted = -1, np.empty(0, dtype=np.int64)
            return
        version = int(DeltaTable.forPath(spark, self.uri).history(1).select("version").first()[0])
        table = spark.read.format("delta").option("versionAsOf", version).load(self.uri)
        if table.count() > self.max_rows:  # answered from the Delta log
            self.too_large, self.version, self._sorted = True, None, None
            log.info("%s: more than %d rows; each micro-batch looks its inds up in the table", self.uri, self.max_rows)
            return
        self.version = version
        self._sorted = np.unique(_inds(table))

    def holds(self, spark, inds):
        """A boolean mask over `inds` (a unique numpy array): whether the table holds each, now; None when the
        table is too large to keep."""
        import numpy as np

        if self.too_large:
            return None
        if self.version is not None:
            commits = self._commits_after(spark)
            if any(changes for _, changes in commits):
                self.version = None
            else:
                self.version += len(commits)
        if self.version is None:
            self._read(spark)
            if self.too_large:
                return None
        keys = self._sorted
        at = np.minimum(np.searchsorted(keys, inds), max(len(keys) - 1, 0))
        mask = (keys[at] == inds) if len(keys) else np.zeros(len(inds), dtype=bool)
        if self._recent:
            mask |= np.isin(inds, np.concatenate(self._recent))
        return mask

    def wrote(self, spark, inds, operations: list[str]) -> None:
        """After the batch's writes of `inds` (unique) to the table, whose commits' operations were
        `operations` (Delta's names: "WRITE", "MERGE"): the set takes them, or is read again at the next
        batch when the commits since are not exactly those."""
        import numpy as np

        if self.version is None:
            return
        commits = self._commits_after(spark)
        if sorted(op or "" for op, changes in commits if changes) != sorted(operations):
            self.version = None  # someone else changed data too
            return
        self.version += len(commits)
        self._recent.append(np.asarray(inds, dtype=np.int64))
        recent = sum(len(a) for a in self._recent)
        if len(self._sorted) + recent > self.max_rows:
            self.too_large, self.version, self._sorted, self._recent = True, None, None, []
        elif recent > max(100_000, len(self._sorted) // 4):
            self._sorted = np.union1d(self._sorted, np.concatenate(self._recent))
            self._recent = []


def _inds(rows):
    """The `ind` column of `rows` (a micro-batch's clean records, or a table) as numpy int64, one per row, in
    one Spark job."""
    import numpy as np

    column = rows.select("ind").toArrow().column(0)
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def upsert_rows(spark, kind: str, good, table_uri: str, held: HeldInds | None = None) -> dict[str, int]:
    """Write one micro-batch's clean records of `kind` (`good`: `clean`'s output, clean rows only) to its
    table, one row per ind; returns {"clean": records, "upserted": distinct inds, "appended", "merged"}.

    Insert-only fast path: an ind the table does not hold yet and that comes once in the batch is appended
    (a plain write: no join with the table's files, no rewrite). When every ind of the batch is such and the
    query keeps the table's inds (`held`), the batch is appended without reading the table. Otherwise the
    others go through MERGE (`_upsert_looked_up`), with the rule of every version before: the batch's latest
    record of the ind (`LATEST_ORDER`) replaces the table's row when it differs, or is inserted."""
    import numpy as np

    from pinterest_platform.transforms.cleaning import cleaned_rows

    if held is None:
        with table_write_lock(spark, table_uri):
            return _upsert_looked_up(spark, kind, good, table_uri)[0]
    inds = _inds(good)
    if not len(inds):
        return dict(NOTHING_UPSERTED)
    unique, copies = np.unique(inds, return_counts=True)
    with table_write_lock(spark, table_uri):
        stored = held.holds(spark, unique)
        if stored is not None and not stored.any() and bool((copies == 1).all()):
            cleaned_rows(kind, good).write.format("delta").mode("append").save(table_uri)
            counts, operations = {"clean": len(inds), "upserted": len(unique), "appended": len(unique),
                                  "merged": 0}, ["WRITE"]
        else:
            counts, operations = _upsert_looked_up(spark, kind, good, table_uri, (int(unique[0]), int(unique[-1])))
        held.wrote(spark, unique, operations)
        return counts


def _upsert_looked_up(spark, kind: str, good, table_uri: str,
                      ind_range: tuple[int, int] | None = None) -> tuple[dict[str, int], list[str]]:
    """`upsert_rows` by looking the batch's inds up in the table (inside the caller's write lock); returns its
    counts and the operations of the commits it made. An ind the table does not hold and the batch holds once
    is appended; the others are MERGEd. MERGE runs first: it touches only those inds, so the appended set
    (computed once, cached) is the same whether or not a replay finds the MERGE done, and a replayed batch (its
    inds now all in the table) is MERGEd with nothing to change."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pinterest_platform.transforms.cleaning import cleaned_rows, latest_per_key

    schema = contract.CLEANED_SCHEMAS[kind]
    if ind_range is None:
        lo, hi = good.agg(F.min("ind"), F.max("ind")).first()
        if lo is None:
            return dict(NOTHING_UPSERTED), []
        # the batch's inds lie in this range: the table's files whose ind min/max lie outside are skipped, so
        # a batch reads what it may match, not the whole table's ind column (which grows with the stream's age)
        ind_range = (int(lo), int(hi))
    exists = batch_jobs._table_exists(spark, table_uri)
    per_ind = good.groupBy("ind").agg(F.count(F.lit(1)).alias("_n"))
    if exists:
        stored = (spark.read.format("delta").load(table_uri).where(batch_jobs.within("ind", ind_range))
                  .select("ind", F.lit(True).alias("_stored")))
        per_ind = per_ind.join(stored, "ind", "left")
    else:
        per_ind = per_ind.withColumn("_stored", F.lit(None).cast("boolean"))
    flags = per_ind.select("ind", "_n", ((F.col("_n") == 1) & F.col("_stored").isNull()).alias("_fresh")).persist()
    try:
        clean_count, upserted, fresh = flags.agg(
            F.coalesce(F.sum("_n"), F.lit(0)), F.count(F.lit(1)), F.count(F.when(F.col("_fresh"), 1))).first()
        merged = upserted - fresh
        if not upserted:
            return dict(NOTHING_UPSERTED), []
        operations = []
        if merged:
            tagged = good.join(flags.select("ind", "_fresh"), "ind")
            latest = latest_per_key(tagged.where(~F.col("_fresh")).drop("_fresh"), key="ind", order_by=LATEST_ORDER)
            source = cleaned_rows(kind, latest)
            if exists:
                columns = [c for c in schema.fieldNames() if c != "ind"]
                (DeltaTable.forPath(spark, table_uri).alias("t")
                 .merge(source.alias("s"), (F.col("t.ind") == F.col("s.ind"))
                        & batch_jobs.within("t.ind", ind_range))
                 .whenMatchedUpdateAll(condition=batch_jobs._rows_differ(columns))
                 .whenNotMatchedInsertAll()
                 .execute())
                operations.append("MERGE")
            else:  # only repeated inds, in a table not created yet: nothing to match
                source.write.format("delta").mode("append").save(table_uri)
                operations.append("WRITE")
            fresh_rows = tagged.where(F.col("_fresh")).drop("_fresh") if fresh else None
        else:
            fresh_rows = good  # every ind is new and single: the batch is appended as it is
        if fresh_rows is not None:
            cleaned_rows(kind, fresh_rows).write.format("delta").mode("append").save(table_uri)
            operations.append("WRITE")
        return ({"clean": int(clean_count), "upserted": int(upserted), "appended": int(fresh), "merged": int(merged)},
                operations)
    finally:
        flags.unpersist()


def write_batches(spark, batch_df, batch_id: int, *, targets: list[tuple[str, str | None, str]],
                  quarantine_uri: str, app_id: str, stats: dict[str, StreamStats],
                  held: dict[str, HeldInds] | None = None) -> None:
    """Clean one micro-batch of the query and commit it to each kind's table and to the quarantine.

    `targets`: (kind, stream, table_uri) per kind the batch may hold; `stream` selects its records by the
    `source` column (None: the whole batch is that kind's). The batch is read from the source once
    (cached); the kinds' tables are written at the same time, one thread each (their tables are distinct,
    and a micro-batch's time is mostly the latency of small Spark jobs and Delta commits, which overlap),
    then the quarantined records of all kinds in one append, idempotent by Delta's `txnAppId` (the query's
    id) and `txnVersion` (the batch id). `held`: the inds each kind's table holds, kept by the query between
    batches (`HeldInds`); without it each batch looks its inds up in the tables."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import reduce

    from pyspark.sql import functions as F

    from pinterest_platform.transforms.cleaning import clean, quarantine_rows

    batch = batch_df.persist()
    cached = []
    try:
        if len(targets) == 1 and targets[0][1] is None:
            by_stream = {None: batch.count()}
        else:
            by_stream = {r[0]: r[1] for r in batch.groupBy("source").count().collect()}
        def write_kind(kind: str, stream: str | None, table_uri: str, records: int):
            rows = batch if stream is None else batch.where(F.col("source") == stream)
            cleaned = clean(kind, rows).persist()
            cached.append(cleaned)
            good = cleaned.where(F.col("_reason").isNull() & F.col("ind").isNotNull())
            counts = upsert_rows(spark, kind, good, table_uri, held=(held or {}).get(kind))
            counts.update(records=records, quarantined=records - counts["clean"])
            return counts, (quarantine_rows(kind, cleaned) if counts["quarantined"] else None)

        todo = [(kind, stream, uri, by_stream.get(stream, 0)) for kind, stream, uri in targets
                if by_stream.get(stream, 0)]
        with ThreadPoolExecutor(max_workers=max(len(todo), 1), thread_name_prefix="stream-kind") as pool:
            futures = [(kind, pool.submit(write_kind, kind, stream, uri, n)) for kind, stream, uri, n in todo]
            results = [(kind, future.result()) for kind, future in futures]
        done = {kind: counts for kind, (counts, _) in results}
        quarantine_parts = [part for _, (_, part) in results if part is not None]
        if quarantine_parts:
            # Delta records (txnAppId, txnVersion) in the commit and skips a write it has already seen
            with table_write_lock(spark, quarantine_uri):
                (reduce(lambda a, b: a.unionByName(b), quarantine_parts).write.format("delta").mode("append")
                 .option("txnAppId", app_id).option("txnVersion", batch_id).save(quarantine_uri))
        for kind, counts in done.items():
            s = stats[kind]
            with s.lock:
                s.batches += 1
                s.records += counts["records"]
                s.clean += counts["clean"]
                s.upserted += counts["upserted"]
                s.quarantined += counts["quarantined"]
                s.appended += counts["appended"]
                s.merged += counts["merged"]
                s.last_batch_id = batch_id
    finally:
        for df in cached:
            df.unpersist()
        batch.unpersist()


def write_batch(spark, kind: str, batch_df, batch_id: int, *, table_uri: str, quarantine_uri: str,
                app_id: str, stats: StreamStats) -> None:
    """One kind's micro-batch (every record of `batch_df` is of `kind`): `write_batches` with one target."""
    write_batches(spark, batch_df, batch_id, targets=[(kind, None, table_uri)], quarantine_uri=quarantine_uri,
                  app_id=app_id, stats={kind: stats})


class _QueryId:
    """The query's id, known only once start() returns; the first batch may already be waiting for it."""

    def __init__(self):
        self._value: str | None = None
        self._ready = threading.Event()

    def set(self, value: str) -> None:
        self._value = value
        self._ready.set()

    def get(self, timeout: float = 60.0) -> str:
        if not self._ready.wait(timeout):
            raise RuntimeError("streaming query id not available")
        return self._value  # type: ignore[return-value]


def _hadoop_fs(spark, path: str):
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()), hpath


def _batch_ids(spark, checkpoint: str, folder: str) -> list[int]:
    fs, path = _hadoop_fs(spark, f"{checkpoint.rstrip('/')}/{folder}")
    if not fs.exists(path):
        return []
    return [int(s.getPath().getName()) for s in fs.listStatus(path) if s.getPath().getName().isdigit()]


def _has_uncommitted_batch(spark, checkpoint: str) -> bool:
    """Whether the checkpoint logged a batch's offsets without its commit (a run that died mid-batch)."""
    offsets = _batch_ids(spark, checkpoint, "offsets")
    return bool(offsets) and max(offsets) > max(_batch_ids(spark, checkpoint, "commits"), default=-1)


def _read_text(spark, path: str) -> str:
    fs, hpath = _hadoop_fs(spark, path)
    stream = fs.open(hpath)
    try:
        jvm = spark._jvm
        return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
    finally:
        stream.close()


def _legacy_offsets(spark, p: StreamParams, kinds: list[str]) -> dict | None:
    """Where the one query starts when its checkpoint is new but the per-stream queries of earlier versions
    left theirs (`<prefix>_<kind>`): the end offset of each one's last committed batch, merged.

    A batch those queries logged but did not commit is read again by the new query: its table rows are
    written again unchanged, its quarantine append (if it was committed) once more."""
    if _batch_ids(spark, p.checkpoint_all, "offsets"):
        return None
    merged: dict = {}
    for kind in kinds:
        committed = _batch_ids(spark, p.checkpoint(kind), "commits")
        if not committed:
            continue
        lines = [ln for ln in _read_text(spark, f"{p.checkpoint(kind)}/offsets/{max(committed)}").splitlines() if ln]
        try:
            offset = json.loads(lines[-1])
        except (ValueError, IndexError):
            log.warning("checkpoint %s: last committed offset unreadable; %s starts at %s",
                        p.checkpoint(kind), kind, p.initial_position)
            continue
        name = contract.stream_name(p.prefix, kind)
        if isinstance(offset, dict) and isinstance(offset.get(name), dict):
            merged[name] = offset[name]
    return merged or None


def _source_options(p: StreamParams, kinds: list[str]) -> dict[str, str]:
    options = {"streamName": ",".join(contract.stream_name(p.prefix, k) for k in kinds),
               "initialPosition": p.initial_position}
    if p.region:
        options["region"] = p.region
    if p.endpoint:
        options["endpoint"] = p.endpoint
        if p.source_format == LOCAL_FORMAT:
            # Spark's Python workers keep the environment Spark started with, so an emulator's dummy
            # credentials set later in this process would not reach them
            options["awsAccessKey"] = os.environ.get("AWS_ACCESS_KEY_ID", "testing")
            options["awsSecretKey"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")
    if p.source_format == LOCAL_FORMAT and p.trigger == "available_now":
        # Spark 4.0 tells a Python source nothing of the trigger: the source needs it to read up to now
        options["availableNow"] = "true"
    options.update(p.source_options)
    return options


def _start_query(spark, p: StreamParams, kinds: list[str], stats: dict[str, StreamStats],
                 starting_offsets: dict | None = None):
    """One query over the streams of `kinds`; each micro-batch writes every kind's table (`write_batches`)."""
    from pyspark.sql import functions as F

    reader = spark.readStream.format(p.source_format)
    options = _source_options(p, kinds)
    if starting_offsets and p.source_format == LOCAL_FORMAT:
        options.setdefault("startingOffsets", json.dumps(starting_offsets, sort_keys=True))
    for key, value in options.items():
        reader = reader.option(key, value)
    seq = F.col("sequenceNumber")
    records = reader.load().select(
        F.col("data").cast("string").alias("value"),
        F.col("stream").alias("source"),
        F.concat_ws(":", F.col("shardId"), seq).alias("origin"),
        F.col("approximateArrivalTimestamp").alias("_arrival"),
        F.length(seq).alias("_seq_len"),
        seq.alias("_seq"),
    )
    targets = [(kind, contract.stream_name(p.prefix, kind), p.table_uri(kind)) for kind in kinds]
    quarantine_uri = p.quarantine_uri
    query_id = _QueryId()
    # per query: a restart (a new process, or the second round after a replay) reads the tables' inds again
    held = {kind: HeldInds(p.table_uri(kind)) for kind in kinds}

    def on_batch(batch_df, batch_id: int) -> None:
        # looked up at call time so that tests can wrap it (e.g. to crash after the commit)
        write_batches(batch_df.sparkSession, batch_df, batch_id, targets=targets, quarantine_uri=quarantine_uri,
                      app_id=f"stream:{query_id.get()}", stats=stats, held=held)

    writer = (records.writeStream.queryName(f"stream_{p.prefix}")
              .option("checkpointLocation", p.checkpoint_all).foreachBatch(on_batch))
    writer = (writer.trigger(availableNow=True) if p.trigger == "available_now"
              else writer.trigger(processingTime=p.interval))
    query = writer.start()
    query_id.set(query.id)
    return query


def _missing_streams(p: StreamParams) -> list[str]:
    """Streams that do not exist (checked only for the local source: it is the one that can ask)."""
    if p.source_format != LOCAL_FORMAT:
        return []
    from pinterest_platform.streaming.kinesis_source import SourceOptions, make_client

    client = make_client(SourceOptions.parse(_source_options(p, p.kinds)))
    missing = []
    for kind in p.kinds:
        name = contract.stream_name(p.prefix, kind)
        try:
            client.describe_stream_summary(StreamName=name)
        except client.exceptions.ResourceNotFoundException:
            missing.append(name)
    return missing


class _StopSignal:
    """SIGINT/SIGTERM set an event instead of killing the process, so queries stop between batches."""

    def __init__(self):
        self.event = threading.Event()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signum
        self.event.set()

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _stop_gracefully(queries: dict[str, Any], wait_s: float = GRACEFUL_STOP_S) -> None:
    deadline = time.monotonic() + wait_s
    for query in queries.values():
        # stop() interrupts a running batch; that is safe (it is replayed) but waiting avoids the redo
        while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.2)
        query.stop()


def _table_summary(spark, uri: str) -> dict[str, Any]:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, uri):
        return {"rows_in_table": 0, "table_version": None}
    table = DeltaTable.forPath(spark, uri)
    version = table.history(1).select("version").collect()[0][0]
    return {"rows_in_table": table.toDF().count(), "table_version": int(version)}


def stream(spark, params: dict) -> dict:
    """Run the streaming queries; returns per-stream counts (JSON-serializable).

    params: prefix, lake_tables_root, checkpoint_root (default <lake root>/checkpoints), kinds, region,
    endpoint, source_format ("kinesis-local" | "kinesis"), trigger ("available_now" | "processing_time"),
    interval ("5 seconds"), timeout_s (processing_time: stop after this long; None = until a signal),
    initial_position ("trim_horizon" | "latest"), source_options (extra reader options)."""
    p = StreamParams.from_dict(params)
    if p.source_format == LOCAL_FORMAT:
        from pinterest_platform.streaming.kinesis_source import register

        register(spark)
    started = time.monotonic()
    missing = set(_missing_streams(p))
    kinds = [k for k in p.kinds if contract.stream_name(p.prefix, k) not in missing]
    if not kinds:
        raise RuntimeError(f"no Kinesis stream to read: {', '.join(sorted(missing))} do not exist yet "
                           "(post events first: `pinterest-platform emulate --mode stream`)")
    for kind in kinds:
        batch_jobs.ensure_table(spark, p.table_uri(kind), contract.CLEANED_SCHEMAS[kind], STREAMING_TABLE_PROPERTIES)
    # created before the queries start: three first batches must not race to create it
    batch_jobs.ensure_table(spark, p.quarantine_uri, contract.QUARANTINE_SCHEMA)

    stats = {kind: StreamStats() for kind in kinds}
    query = None
    stopped_by = "completed"
    starting = _legacy_offsets(spark, p, kinds) if p.source_format == LOCAL_FORMAT else None
    # Spark 4.0 runs availableNow over a Python source as one batch; after a crash that batch is the replay
    # of the logged, uncommitted one, so the query needs a second run to reach what has arrived since
    rounds = 1
    if p.trigger == "available_now" and p.source_format == LOCAL_FORMAT and _has_uncommitted_batch(spark, p.checkpoint_all):
        rounds = 2
    deadline = (started + p.timeout_s) if (p.trigger == "processing_time" and p.timeout_s) else None
    with _StopSignal() as stop:
        for _ in range(rounds):
            running: dict[str, Any] = {}
            try:
                query = running["streams"] = _start_query(spark, p, kinds, stats, starting)
                while True:
                    if not query.isActive:
                        if query.exception() is not None:
                            stopped_by = "failure"
                        break
                    if stop.event.wait(0.5):
                        stopped_by = "signal"
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        stopped_by = "timeout"
                        break
            finally:
                _stop_gracefully(running)
            if stopped_by != "completed":
                break
    if query is not None and query.exception() is not None:
        raise RuntimeError(f"streaming query failed: {query.exception()}")

    result: dict[str, Any] = {"trigger": p.trigger, "stopped_by": stopped_by,
                              "seconds": round(time.monotonic() - started, 3), "checkpoint": p.checkpoint_all,
                              "query_id": str(query.id) if query is not None else None, "streams": {}}
    for kind in p.kinds:
        name = contract.stream_name(p.prefix, kind)
        entry: dict[str, Any] = {"stream": name, "table": contract.streaming_table_name(p.prefix, kind),
                                 "table_uri": p.table_uri(kind), "checkpoint": p.checkpoint_all}
        if kind in stats:
            s = stats[kind]
            entry.update(batches=s.batches, records=s.records, clean=s.clean, upserted=s.upserted,
                         appended=s.appended, merged=s.merged, quarantined=s.quarantined,
                         query_id=result["query_id"])
            entry.update(_table_summary(spark, p.table_uri(kind)))
        else:
            entry["skipped"] = f"stream {name} does not exist"
        result["streams"][kind] = entry
    if stop.received is not None and p.trigger == "available_now":
        # an interrupted drain is not a finished one: let the caller (a Dagster run, a shell) see the signal
        raise KeyboardInterrupt(f"stream job stopped by signal {stop.received} after {result['streams']}")
    return result


# --- CLI --------------------------------------------------------------------------------------------

def _print_streams(streams: dict) -> None:
    for entry in streams.values():
        if "skipped" in entry:
            print(f"  {entry['table']}: skipped ({entry['skipped']})", flush=True)
            continue
        print(f"  {entry['table']}: {entry.get('rows_in_table')} rows (version {entry.get('table_version')}); "
              f"this run: {entry['batches']} batches, {entry['records']} records, "
              f"{entry['quarantined']} quarantined", flush=True)


INTERRUPTS = ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


def _interrupted(error) -> bool:
    """Whether a step's error (Dagster's SerializableErrorInfo) is, or was caused by, an interrupt."""
    while error is not None:
        if error.cls_name in INTERRUPTS:
            return True
        error = error.cause
    return False


def _error_text(error) -> str:
    """The innermost cause's message without its class name, as the exception printed before (`error: ...`)."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    return message.removeprefix(f"{error.cls_name}: ") if error.cls_name else message


def _available_now_run(settings, where: str) -> int:
    """`run stream --available-now`: the `stream_available_now` asset, run through the Dagster instance.

    The run is one of the code location's implicit asset job (`__ASSET_JOB`), as the UI's "Materialize"
    launches it, with the streaming tables' checks: it and its materializations (`streaming/available_now_run`
    and each table written) show in the UI. Exit codes: 0, 1 when the run failed (a query, the lake, a
    check of the inputs), 130 when it was interrupted (SIGINT/SIGTERM; the running micro-batch finishes)."""
    from pinterest_platform.assets.streaming import AVAILABLE_NOW_KEY, stream_available_now
    from pinterest_platform.cli import _dagster_instance
    from pinterest_platform.definitions import build_definitions
    from pinterest_platform.run_guard import CLI_PID_TAG

    print(f"streaming {', '.join(contract.stream_name(settings.topic_prefix, k) for k in contract.EVENT_KINDS)} "
          f"(available-now) {where}", flush=True)
    # the resources of these settings (not of the settings the module-level `defs` was loaded with)
    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    instance = _dagster_instance()
    try:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=list(stream_available_now.keys),
            tags={CLI_PID_TAG: str(os.getpid())},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    except KeyboardInterrupt:  # outside the step (Dagster's own start or end)
        print("interrupted", flush=True)
        return 130
    failures = result.get_step_failure_events()
    if any(_interrupted(event.step_failure_data.error) for event in failures):
        print(f"interrupted: run {result.run_id} in the Dagster instance", flush=True)
        return 130
    if not result.success:
        for event in failures:
            error = event.step_failure_data.error
            print(f"error: {_error_text(error) if error else event.message}", flush=True)
        if not failures:
            print(f"error: run {result.run_id} failed (see it in the Dagster UI)", flush=True)
        return 1
    [materialization] = [m for m in result.asset_materializations_for_node(stream_available_now.node_def.name)
                         if m.asset_key == AVAILABLE_NOW_KEY]
    metadata = materialization.metadata
    _print_streams(metadata["streams"].value)
    failed = [f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.get_asset_check_evaluations()
              if not e.passed]
    if failed:
        print(f"  warnings (non-blocking checks failed): {', '.join(failed)}", flush=True)
    stopped_by = metadata["stopped_by"].value if "stopped_by" in metadata else "completed"
    print(f"done in {metadata['seconds'].value}s ({stopped_by}): run {result.run_id} in the Dagster instance at "
          f"{os.environ.get('DAGSTER_HOME')}", flush=True)
    return 0


def _remote_stream_command(settings, continuous: bool) -> int:
    """`run stream` where Spark is Databricks: the availableNow asset, run through the Dagster instance."""
    if continuous:
        print("error: --continuous runs Spark in this process; on Databricks run `run stream --available-now` "
              "on a schedule (or the streaming/available_now_run asset), or a continuous Databricks job of "
              "your own", flush=True)
        return 2
    return _available_now_run(settings, "on Databricks")


def stream_command(args) -> int:
    """`pinterest-platform run stream --available-now | --continuous [--interval 5s] [--timeout S]`.

    --available-now materializes the `stream_available_now` asset through the Dagster instance (a run the
    UI shows); --continuous runs the queries in this process until stopped, outside any Dagster run (its
    commits are recorded by `streaming_tables_sensor`)."""
    from pinterest_platform.settings import load_settings

    settings = load_settings()
    continuous = bool(getattr(args, "continuous", False))
    endpoint = settings.aws_endpoint_url
    if settings.env == "local" and not endpoint:
        endpoint = settings.stack_endpoints().get("aws_endpoint_url")
        if not endpoint:
            print("error: no Kinesis endpoint: run `pinterest-platform stack up` or set AWS_ENDPOINT_URL",
                  flush=True)
            return 2
    from pinterest_platform.definitions import lake_resource, spark_resource
    from pinterest_platform.resources.lake import LakeAccessError
    from pinterest_platform.resources.spark import LocalSparkResource

    try:
        lake_resource(settings).check_access(write=True)
    except LakeAccessError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    spark = spark_resource(settings)
    if not isinstance(spark, LocalSparkResource):
        return _remote_stream_command(settings, continuous)
    if not continuous:
        return _available_now_run(settings, f"into {settings.lake_root.rstrip('/')}/{contract.TABLES_DIR}")
    lake_root = settings.lake_root.rstrip("/")
    params = {
        "prefix": settings.topic_prefix,
        "lake_tables_root": f"{lake_root}/{contract.TABLES_DIR}",
        "checkpoint_root": f"{lake_root}/checkpoints",
        "kinds": getattr(args, "kinds", None) or list(contract.EVENT_KINDS),
        "region": settings.aws_region,
        "endpoint": endpoint,
        "source_format": LOCAL_FORMAT,
        "trigger": "processing_time",
        "interval": getattr(args, "interval", None) or "5s",
        "timeout_s": getattr(args, "timeout", None),
    }
    mode = f"continuous, every {normalize_interval(params['interval'])}"
    print(f"streaming {', '.join(contract.stream_name(settings.topic_prefix, k) for k in params['kinds'])} "
          f"({mode}) into {params['lake_tables_root']}", flush=True)
    print("  stop with Ctrl-C (the running micro-batch finishes first); this process is not a Dagster run, "
          "streaming_tables_sensor records its commits", flush=True)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result = stream(LocalSparkResource().session(), params)
    except (ValueError, RuntimeError, BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    _print_streams(result["streams"])
    print(f"done in {result['seconds']}s ({result['stopped_by']})", flush=True)
    return 0
