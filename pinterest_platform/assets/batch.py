"""The batch lakehouse: Kafka topics -> raw topic files by day -> cleaned Delta tables -> nine analytics tables.

Raw and cleaned assets are partitioned by ingest day (partitions.DAILY_PARTITIONS); a range of days is one
run (single-run backfill policy). Every run is incremental: the raw sink consumes from committed offsets and
files records under their day, cleaning reads only the files of its days not cleaned yet (per-day
manifests, no listing of the lake), and analytics, which read every day, recompute only when a cleaned table
has a new Delta version. When an `ind` arrives more than once, its row holds the latest-posted record, by
(day, Kafka timestamp, partition, offset); a re-run of an older day never brings back older content."""


import datetime
import json
import time
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from pinterest_platform import contract, run_guard
from pinterest_platform.assets.metadata import (
    OWNERS,
    analytics_chart,
    column_lineage,
    column_schema,
    delta_row_count,
    delta_version,
    markdown_preview,
    table_metadata,
)
from pinterest_platform.descriptions import table_description
from pinterest_platform.ingestion.raw_days import (
    MANIFEST_DIR,
    add_pending_day,
    clear_pending_days,
    line_counts,
    processed_files,
    record_processed,
)
from pinterest_platform.jobs.batch import NOTHING_CLEANED, VERSIONS_DIR
from pinterest_platform.partitions import DAILY_PARTITIONS, days_of_keys, is_partition, partition_key
from pinterest_platform.resources.kafka import KafkaResource
from pinterest_platform.resources.lake import LakeFile, LakeResource
from pinterest_platform.resources.spark import SparkResource
from pinterest_platform.settings import load_settings

PREFIX = load_settings().topic_prefix
RAW_GROUP = "raw"
CLEANED_GROUP = "cleaned"
ANALYTICS_GROUP = "analytics"
SINK_CONSUMER_GROUP = f"{PREFIX}-raw-sink"
VERSIONS_ROOT = f"{MANIFEST_DIR}/{VERSIONS_DIR}"
ANALYTICS_INPUTS = f"{MANIFEST_DIR}/analytics_inputs.json"
# the tag of every batch run: the instance's run queue runs one at a time (dagster.yaml), the CLI refuses
# to start one while another runs
BATCH_LANE_TAG = dict([run_guard.BATCH_LANE_TAG])

# a day whose raw files changed is cleaned again, whichever day it is (late records, a replayed day); the
# analytics follow any cleaned change (a day without data stays unmaterialized and must not block them)
CLEANED_AUTOMATION = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
ANALYTICS_AUTOMATION = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


def raw_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", kind])


def cleaned_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["cleaned", kind])


def analytics_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["analytics", name])


QUARANTINE_KEY = dg.AssetKey(["cleaned", contract.QUARANTINE_TABLE])
KAFKA_KEYS = {kind: dg.AssetKey(["kafka", kind]) for kind in contract.EVENT_KINDS}

# --- raw sink -------------------------------------------------------------------------------------------


def _day_counts(lake: LakeResource, topic: str, days: list[datetime.date],
                flat: list[LakeFile]) -> dict[datetime.date, tuple[int, int]]:
    """(files, records) of each day of `topic`, counted on the files' bytes."""
    from pinterest_platform.ingestion.raw_sink import raw_files_of_day

    out = {}
    for day in days:
        files = raw_files_of_day(lake, topic, day, flat)
        out[day] = (len(files), sum(line_counts(lake, topic, day, files).values()))
    return out


def land(kafka: KafkaResource, lake: LakeResource, topics: list[str], group_id: str = SINK_CONSUMER_GROUP,
         **sink_options) -> dict[str, dict]:
    """The raw sink, marking each day it writes a file to as pending (for cleaning) before the file's
    offsets are committed, so a day with files is never missing from the pending days."""
    from pinterest_platform.ingestion.raw_sink import day_of_raw_path, sink_topics

    marked: set[tuple[str, str]] = set()
    topic_of_path = {f"{contract.TOPICS_DIR}/{t}/": t for t in topics}

    def mark_day(path: str, _records: int) -> None:
        topic = next(t for prefix, t in topic_of_path.items() if path.startswith(prefix))
        add_pending_day(lake, topic, day_of_raw_path(path), marked)

    return sink_topics(kafka, lake, topics, group_id=group_id, on_file_written=mark_day, **sink_options)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            raw_key(kind), deps=[KAFKA_KEYS[kind]], group_name=RAW_GROUP, kinds={"kafka", "s3", "json"},
            owners=OWNERS,
            description=(f"Raw `{contract.topic_name(PREFIX, kind)}` records landed as topic files, one folder per "
                         "ingest day (the UTC day of the Kafka record timestamp), in the Confluent layout."),
            metadata={"dagster/column_schema": column_schema(contract.WIRE_FIELDS[kind], raw_key(kind))},
        )
        for kind in contract.EVENT_KINDS
    ],
    partitions_def=DAILY_PARTITIONS,
    # a range is one run: the sink reads Kafka once, whatever the number of days
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def raw_topic_files(context: dg.AssetExecutionContext, kafka: KafkaResource, lake: LakeResource):
    """Sink new Kafka records to topic files under their day's folder (file first, then offsets)."""
    from pinterest_platform.ingestion.raw_sink import day_of_raw_path, flat_raw_files

    topics = {kind: contract.topic_name(PREFIX, kind) for kind in contract.EVENT_KINDS}
    lake.check_access(write=True)  # a missing bucket or permission fails here, before a record is consumed
    started = time.monotonic()
    report = land(kafka, lake, list(topics.values()), max_records_per_file=load_settings().raw_flush_size,
                  log=context.log.info,
                  # on the terminal of `run batch` (compute logs in the UI) whatever the log level
                  progress=lambda line: print(line, flush=True))
    run_days = days_of_keys(context.partition_keys)
    for kind, topic in topics.items():
        sunk = report.get(topic, {})
        written = sorted({day_of_raw_path(p) for p in sunk.get("paths", [])})
        flat = flat_raw_files(lake, topic)
        counts = _day_counts(lake, topic, sorted(set(run_days) | set(written)), flat)
        outside = [d for d in written if d not in run_days]
        for day in outside:
            if not is_partition(day):
                context.log.warning(f"{topic}: records of {day} landed, but {day} is not a partition (they start "
                                    f"{DAILY_PARTITIONS.start:%Y-%m-%d}; PINTEREST_PARTITIONS_START): they are "
                                    "kept and not cleaned")
                continue
            # the sink lands every day it reads; the days outside this run's range are materialized too
            files, records = counts[day]
            context.log_event(dg.AssetMaterialization(
                asset_key=raw_key(kind), partition=partition_key(day),
                metadata={"dagster/row_count": dg.MetadataValue.int(records), "files": files,
                          "dagster/uri": dg.MetadataValue.path(lake.uri(contract.raw_day_prefix(topic, day)))}))
        in_run = {d: counts[d] for d in run_days}
        yield dg.MaterializeResult(
            asset_key=raw_key(kind),
            metadata={
                # a range's materializations share these figures: the records of all its days
                "dagster/row_count": dg.MetadataValue.int(sum(r for _, r in in_run.values())),
                "dagster/column_schema": column_schema(contract.WIRE_FIELDS[kind], raw_key(kind)),
                "dagster/uri": dg.MetadataValue.path(lake.uri(f"{contract.TOPICS_DIR}/{topic}")),
                "records_by_day": dg.MetadataValue.json({d.isoformat(): r for d, (_, r) in in_run.items()}),
                "days_landed_this_run": dg.MetadataValue.json([d.isoformat() for d in written]),
                "records_this_run": int(sunk.get("records", 0)),
                "files_this_run": int(sunk.get("files", 0)),
                "end_offsets": dg.MetadataValue.json({str(p): o for p, o in sunk.get("end_offsets", {}).items()}),
                "seconds": round(time.monotonic() - started, 2),
            },
        )


# --- cleaning ---------------------------------------------------------------------------------------------

class CleaningConfig(dg.Config):
    reprocess: bool = Field(
        default=False,
        description="Re-read every raw file of the selected days, not only the files not cleaned yet. The result "
                    "is the same tables (the latest-posted record of each ind wins); use it after a table was "
                    "damaged or the cleaning rules changed.")


def files_to_clean(lake: LakeResource, days: list[datetime.date], reprocess: bool = False,
                   prefix: str = PREFIX) -> dict[str, list[dict]]:
    """Per kind, the raw files of `days` to clean (all of them with `reprocess`, else those not cleaned yet),
    found by listing only those days' folders (and the topic's flat-layout files, another sink's)."""
    from pinterest_platform.ingestion.raw_sink import flat_raw_files, raw_files_of_day

    files: dict[str, list[dict]] = {}
    for kind in contract.EVENT_KINDS:
        topic = contract.topic_name(prefix, kind)
        flat = flat_raw_files(lake, topic)
        files[kind] = []
        for day in days:
            done = set() if reprocess else processed_files(lake, kind, day)
            indexed = {f.path for f in lake.list_files(contract.raw_index_name(contract.raw_day_prefix(topic, day)))}
            for f in raw_files_of_day(lake, topic, day, flat):
                if (f.path, f.size) in done:
                    continue
                index = contract.raw_index_name(f.path)
                files[kind].append({"uri": lake.uri(f.path), "path": f.path, "size": f.size, "topic": topic,
                                    "day": day.isoformat(), "modified": f.modified,
                                    "index_uri": lake.uri(index) if index in indexed else None})
    return files


def clean_days(lake: LakeResource, run_job: Callable[[str, dict], dict], days: list[datetime.date],
               reprocess: bool = False, prefix: str = PREFIX, log: Callable[[str], None] = print,
               ) -> tuple[dict[str, dict], dict[str, int]]:
    """Clean the raw files of `days` (`run_job(name, params)` runs a Spark job of jobs/batch.py), then record
    them as processed and the days as no longer pending. Returns the job's counts per kind and the records
    of the cleaned files per kind, counted on their bytes."""
    files = files_to_clean(lake, days, reprocess=reprocess, prefix=prefix)
    new = sum(len(v) for v in files.values())
    log(f"{new} raw files to clean in {len(days)} day(s) {days[0]}..{days[-1]}: "
        + ", ".join(f"{k}={len(v)}" for k, v in files.items()))
    by_day: dict[tuple[str, datetime.date], list[LakeFile]] = {}
    for kind, kind_files in files.items():
        for f in kind_files:
            by_day.setdefault((kind, datetime.date.fromisoformat(f["day"])), []).append(
                LakeFile(f["path"], f["size"], f["modified"]))
    raw_lines = dict.fromkeys(contract.EVENT_KINDS, 0)
    for (kind, day), of_day in by_day.items():
        raw_lines[kind] += sum(line_counts(lake, contract.topic_name(prefix, kind), day, of_day).values())
    if new:
        counts = run_job("clean_batch", {"tables_root": lake.uri(contract.TABLES_DIR),
                                         "versions_root": lake.uri(VERSIONS_ROOT), "files": files})
    else:
        counts = {kind: dict(NOTHING_CLEANED) for kind in contract.EVENT_KINDS}
    # after the tables: a crash before this only means the same files are cleaned again, which changes nothing
    for (kind, day), of_day in by_day.items():
        record_processed(lake, kind, day, of_day)
    clear_pending_days(lake, [contract.topic_name(prefix, k) for k in contract.EVENT_KINDS], days)
    return counts, raw_lines


def conservation_check(kind: str, counts: dict, raw_lines: int) -> dg.AssetCheckResult:
    """Records in the run's raw files (counted on their bytes) = rows of the table holding an ind they carry
    + their rows in the quarantine + duplicates collapsed among them (the tables counted after the writes)."""
    table_rows, quarantine_rows = int(counts.get("table_rows", 0)), int(counts.get("quarantine_rows", 0))
    duplicates = int(counts.get("duplicates", 0))
    accounted = table_rows + quarantine_rows + duplicates
    return dg.AssetCheckResult(
        asset_key=cleaned_key(kind), check_name="conservation", passed=raw_lines == accounted,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"raw_records": raw_lines, "table_rows": table_rows, "quarantine_rows": quarantine_rows,
                  "duplicates_collapsed": duplicates, "older_than_table": int(counts.get("older", 0)),
                  "read_by_spark": int(counts.get("read", 0)), "unaccounted": raw_lines - accounted},
        description=(f"{raw_lines} raw records = {table_rows} table rows + {quarantine_rows} quarantined + "
                     f"{duplicates} duplicates"),
    )


@dg.multi_asset(
    specs=[
        *[
            dg.AssetSpec(
                cleaned_key(kind), deps=[raw_key(kind)], group_name=CLEANED_GROUP,
                kinds={"spark", "delta"}, owners=OWNERS, automation_condition=CLEANED_AUTOMATION,
                description=table_description(cleaned_key(kind).to_user_string()),
                metadata={"dagster/column_schema": column_schema(contract.CLEANED_FIELDS[kind], cleaned_key(kind)),
                          "dagster/column_lineage": column_lineage(cleaned_key(kind))},
            )
            for kind in contract.EVENT_KINDS
        ],
        dg.AssetSpec(
            QUARANTINE_KEY, deps=[raw_key(kind) for kind in contract.EVENT_KINDS], group_name=CLEANED_GROUP,
            kinds={"spark", "delta"}, owners=OWNERS, automation_condition=CLEANED_AUTOMATION,
            description=table_description(QUARANTINE_KEY.to_user_string()),
            metadata={"dagster/column_schema": column_schema(contract.QUARANTINE_FIELDS, QUARANTINE_KEY)},
        ),
    ],
    check_specs=[dg.AssetCheckSpec("conservation", asset=cleaned_key(kind),
                                   description="raw records = table rows + quarantined + duplicates")
                 for kind in contract.EVENT_KINDS],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=False,
)
def cleaned_tables(context: dg.AssetExecutionContext, config: CleaningConfig, spark: SparkResource,
                   lake: LakeResource):
    """Clean the raw files of the run's days and upsert them by ind (latest posted wins; bad records to quarantine)."""
    lake.check_access(write=True)
    days = days_of_keys(context.partition_keys)
    counts, raw_lines = clean_days(lake, lambda job, params: spark.run_job(context, job, params), days,
                                   reprocess=config.reprocess, log=context.log.info)
    options = lake.storage_options()
    for kind in contract.EVENT_KINDS:
        uri = lake.table_uri(kind)
        run = counts[kind]
        yield dg.MaterializeResult(
            asset_key=cleaned_key(kind),
            metadata=table_metadata(
                contract.CLEANED_FIELDS[kind], uri, delta_row_count(uri, options) or 0, table=cleaned_key(kind),
                days=dg.MetadataValue.json([d.isoformat() for d in days]),
                new_files=run["files"], records_read=run["read"], rows_upserted=run["upserted"],
                duplicates_collapsed=run["duplicates"], older_than_table=run.get("older", 0),
                quarantined=run["quarantined"], delta_version=delta_version(uri, options),
            ),
        )
        yield conservation_check(kind, run, raw_lines[kind])
    uri = lake.table_uri(contract.QUARANTINE_TABLE)
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata=table_metadata(contract.QUARANTINE_FIELDS, uri, delta_row_count(uri, options) or 0,
                                table=QUARANTINE_KEY,
                                quarantined_this_run=sum(counts[k]["quarantined"] for k in contract.EVENT_KINDS)),
    )


# --- analytics ---------------------------------------------------------------------------------------------


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            analytics_key(name),
            deps=[cleaned_key(k) for k in contract.EVENT_KINDS], group_name=ANALYTICS_GROUP,
            kinds={"spark", "delta"}, owners=OWNERS, automation_condition=ANALYTICS_AUTOMATION,
            description=table_description(analytics_key(name).to_user_string()),
            metadata={"dagster/column_schema": column_schema(contract.ANALYTICS_FIELDS[name], analytics_key(name)),
                      "dagster/column_lineage": column_lineage(analytics_key(name))},
        )
        for name in contract.ANALYTICS_TABLES
    ],
    can_subset=False,
)
def analytics_tables(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource):
    """Compute the nine analytics tables in one Spark job, skipped when no cleaned table changed."""
    lake.check_access(write=True)
    options = lake.storage_options()
    inputs = {kind: delta_version(lake.table_uri(kind), options) for kind in contract.EVENT_KINDS}
    try:
        previous = json.loads(lake.read_bytes(ANALYTICS_INPUTS))
    except Exception:  # first run, or the file was removed: recompute
        previous = None
    up_to_date = (previous is not None and previous.get("inputs") == inputs
                  and all(delta_version(lake.table_uri(n), options) is not None for n in contract.ANALYTICS_TABLES))
    if all(version is None for version in inputs.values()):
        # nothing was ever cleaned: no Spark job to start, no table to write
        context.log.info("no cleaned table yet: nothing to compute")
        for name in contract.ANALYTICS_TABLES:
            yield dg.MaterializeResult(asset_key=analytics_key(name), metadata={
                "dagster/row_count": dg.MetadataValue.int(0),
                "dagster/column_schema": column_schema(contract.ANALYTICS_FIELDS[name], analytics_key(name)),
                "note": "no cleaned table yet: nothing to compute"})
        return
    if up_to_date:
        context.log.info(f"cleaned tables unchanged since the last run ({inputs}); analytics kept as they are")
        results = previous["results"]
    else:
        results = spark.run_job(context, "analytics", {"tables_root": lake.uri(contract.TABLES_DIR),
                                                         "preview_rows": 20})
        lake.write_bytes(ANALYTICS_INPUTS, json.dumps({"inputs": inputs, "results": results}).encode())
    for name in contract.ANALYTICS_TABLES:
        schema = contract.ANALYTICS_FIELDS[name]
        yield dg.MaterializeResult(
            asset_key=analytics_key(name),
            metadata=table_metadata(
                schema, lake.table_uri(name), results[name]["rows"], table=analytics_key(name),
                preview=markdown_preview(results[name]["preview"], [c.name for c in schema]),
                **({"chart": chart} if (chart := analytics_chart(name, results[name]["preview"])) is not None else {}),
                recomputed=not up_to_date,
                # false when the recomputed rows equal the table's: it was left as it was (no new Delta version)
                table_rewritten=bool(results[name].get("rewritten", True)) and not up_to_date,
                input_versions=dg.MetadataValue.json(inputs),
            ),
        )


BATCH_ASSETS = [raw_topic_files, cleaned_tables, analytics_tables]
BATCH_SELECTION = dg.AssetSelection.assets(raw_topic_files, cleaned_tables, analytics_tables)
batch_job = dg.define_asset_job(
    "batch_job", selection=BATCH_SELECTION, tags=BATCH_LANE_TAG,
    description="Raw sink, cleaning and analytics for the selected days (a backfill of a range is one run).",
    # one process for the run's steps (they run one after the other anyway): cleaning and analytics share
    # one SparkSession, where a process per step would start a JVM (7-15 s, and its memory) for each
    executor_def=dg.in_process_executor,
)
# 02:00 UTC: the original pipeline ran daily. Each tick runs the current day's partition: the sink lands
# everything new (yesterday's late records included, materializing their days), and batch_automation then
# cleans any other day whose raw files changed.
daily_batch_schedule = dg.build_schedule_from_partitioned_job(
    batch_job, name="daily_batch", hour_of_day=2, minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 02:00 UTC: sink, clean and recompute analytics for the current day.",
)
batch_automation_sensor = dg.AutomationConditionSensorDefinition(
    "batch_automation", target=dg.AssetSelection.assets(cleaned_tables, analytics_tables),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60, run_tags=BATCH_LANE_TAG,
    description="Cleans again any day whose raw files changed, then the analytics; one batch at a time.",
)
