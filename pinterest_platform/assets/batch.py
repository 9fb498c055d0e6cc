"""The batch lakehouse: Kafka topics -> raw topic files -> cleaned Delta tables -> nine analytics tables.

Every run is incremental: the raw sink consumes from committed offsets, cleaning reads only raw files not
yet in its manifest, and analytics recompute only when a cleaned table has a new Delta version."""


import json
import time

import dagster as dg

from pinterest_platform import contract
from pinterest_platform.assets.metadata import (
    OWNERS,
    column_schema,
    delta_row_count,
    delta_version,
    markdown_preview,
    table_metadata,
)
from pinterest_platform.jobs.batch import MANIFEST_DIR
from pinterest_platform.resources.kafka import KafkaResource
from pinterest_platform.resources.lake import LakeResource
from pinterest_platform.resources.spark import SparkResource
from pinterest_platform.settings import load_settings

PREFIX = load_settings().topic_prefix
RAW_GROUP = "raw"
CLEANED_GROUP = "cleaned"
ANALYTICS_GROUP = "analytics"
SINK_CONSUMER_GROUP = f"{PREFIX}-raw-sink"
RAW_MANIFEST = f"{MANIFEST_DIR}/raw_files"
ANALYTICS_INPUTS = f"{MANIFEST_DIR}/analytics_inputs.json"
RAW_LINE_COUNTS = f"{MANIFEST_DIR}/raw_line_counts.json"


def raw_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", kind])


def cleaned_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["cleaned", kind])


def analytics_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["analytics", name])


QUARANTINE_KEY = dg.AssetKey(["cleaned", contract.QUARANTINE_TABLE])
KAFKA_KEYS = {kind: dg.AssetKey(["kafka", kind]) for kind in contract.EVENT_KINDS}

# --- raw sink -------------------------------------------------------------------------------------------


def raw_line_counts(lake: LakeResource, topics: list[str]) -> dict[str, int]:
    """Records (lines) in every raw file of each topic, whoever wrote the file. Each file is read once: its
    count is kept in the lake by (path, size), so a run reads only files that are new or have grown."""
    from pinterest_platform.ingestion.raw_sink import read_raw_files

    try:
        cache = {tuple(k.split("\t", 1)): v for k, v in json.loads(lake.read_bytes(RAW_LINE_COUNTS)).items()}
    except Exception:  # noqa: BLE001 - first run, or the cache was removed: count again
        cache = {}
    fresh: dict[tuple[str, str], int] = {}
    totals = {}
    for topic in topics:
        total = 0
        for f in read_raw_files(lake, topic):
            key = (f.path, str(f.size))
            if key not in cache:
                data = lake.read_bytes(f.path)
                cache[key] = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            fresh[key] = cache[key]
            total += cache[key]
        totals[topic] = total
    lake.write_bytes(RAW_LINE_COUNTS, json.dumps({"\t".join(k): v for k, v in fresh.items()}).encode())
    return totals


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            raw_key(kind), deps=[KAFKA_KEYS[kind]], group_name=RAW_GROUP, kinds={"kafka", "s3", "json"},
            owners=OWNERS,
            description=f"Raw `{contract.topic_name(PREFIX, kind)}` records landed as Confluent-layout topic files.",
        )
        for kind in contract.EVENT_KINDS
    ],
    can_subset=False,
)
def raw_topic_files(context: dg.AssetExecutionContext, kafka: KafkaResource, lake: LakeResource):
    """Sink new Kafka records to newline-delimited JSON topic files on the lake (file first, then offsets)."""
    from pinterest_platform.ingestion.raw_sink import sink_topics

    topics = {kind: contract.topic_name(PREFIX, kind) for kind in contract.EVENT_KINDS}
    lake.check_access(write=True)  # a missing bucket or permission fails here, before a record is consumed
    started = time.monotonic()
    report = sink_topics(kafka, lake, list(topics.values()), group_id=SINK_CONSUMER_GROUP,
                         max_records_per_file=load_settings().raw_flush_size, log=context.log.info,
                         # on the terminal of `run batch` (compute logs in the UI) whatever the log level
                         progress=lambda line: print(line, flush=True))
    lines = raw_line_counts(lake, list(topics.values()))
    for kind, topic in topics.items():
        sunk = report.get(topic, {})
        records = int(sunk.get("records", 0))
        total = lines[topic]
        yield dg.MaterializeResult(
            asset_key=raw_key(kind),
            metadata={
                "dagster/row_count": dg.MetadataValue.int(total),
                "dagster/column_schema": column_schema(contract.WIRE_SCHEMAS[kind]),
                "dagster/uri": dg.MetadataValue.path(lake.uri(f"{contract.TOPICS_DIR}/{topic}")),
                "records_this_run": records,
                "files_this_run": int(sunk.get("files", 0)),
                "end_offsets": dg.MetadataValue.json({str(p): o for p, o in sunk.get("end_offsets", {}).items()}),
                "seconds": round(time.monotonic() - started, 2),
            },
        )


# --- cleaning ---------------------------------------------------------------------------------------------

def processed_files(lake: LakeResource) -> set[tuple[str, int]]:
    """(path, size) of every raw file already cleaned; a file rewritten with more records is new again."""
    from deltalake import DeltaTable

    uri = lake.uri(RAW_MANIFEST)
    options = lake.storage_options()
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return set()
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["path", "size"])
    return set(zip(table.column("path").to_pylist(), table.column("size").to_pylist()))


def new_raw_files(lake: LakeResource) -> dict[str, list[dict]]:
    from pinterest_platform.ingestion.raw_sink import read_raw_files

    done = processed_files(lake)
    files: dict[str, list[dict]] = {}
    for kind in contract.EVENT_KINDS:
        topic = contract.topic_name(PREFIX, kind)
        files[kind] = [
            {"uri": lake.uri(f.path), "path": f.path, "size": f.size, "topic": topic}
            for f in read_raw_files(lake, topic) if (f.path, f.size) not in done
        ]
    return files


def conservation_check(kind: str, counts: dict) -> dg.AssetCheckResult:
    """raw records read = rows upserted + duplicates collapsed + quarantined, for this run."""
    read, upserted = int(counts.get("read", 0)), int(counts.get("upserted", 0))
    duplicates, quarantined = int(counts.get("duplicates", 0)), int(counts.get("quarantined", 0))
    accounted = upserted + duplicates + quarantined
    return dg.AssetCheckResult(
        asset_key=cleaned_key(kind), check_name="conservation", passed=read == accounted,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"read": read, "upserted": upserted, "duplicates_collapsed": duplicates,
                  "quarantined": quarantined, "unaccounted": read - accounted},
        description=f"{read} read = {upserted} upserted + {duplicates} duplicates + {quarantined} quarantined",
    )


@dg.multi_asset(
    specs=[
        *[
            dg.AssetSpec(
                cleaned_key(kind), deps=[raw_key(kind)], group_name=CLEANED_GROUP,
                kinds={"spark", "delta"}, owners=OWNERS,
                description=f"Cleaned `{kind}` events, one row per ind (contract §3).",
            )
            for kind in contract.EVENT_KINDS
        ],
        dg.AssetSpec(
            QUARANTINE_KEY, deps=[raw_key(kind) for kind in contract.EVENT_KINDS], group_name=CLEANED_GROUP,
            kinds={"spark", "delta"}, owners=OWNERS,
            description="Records that could not be cleaned, with their source, reason and raw text.",
        ),
    ],
    check_specs=[dg.AssetCheckSpec("conservation", asset=cleaned_key(kind),
                                   description="raw = upserted + duplicates + quarantined")
                 for kind in contract.EVENT_KINDS],
    can_subset=False,
)
def cleaned_tables(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource):
    """Clean raw files not yet processed and upsert them by ind into Delta (bad records to quarantine)."""
    lake.check_access(write=True)
    files = new_raw_files(lake)
    new = sum(len(v) for v in files.values())
    context.log.info(f"{new} new raw files: " + ", ".join(f"{k}={len(v)}" for k, v in files.items()))
    if new:
        counts = spark.run_job(context, "clean_batch", {
            "tables_root": lake.uri(contract.TABLES_DIR), "manifest_uri": lake.uri(RAW_MANIFEST),
            "files": files,
        })
    else:
        counts = {kind: {"files": 0, "read": 0, "clean": 0, "upserted": 0, "duplicates": 0, "quarantined": 0}
                  for kind in contract.EVENT_KINDS}
    options = lake.storage_options()
    for kind in contract.EVENT_KINDS:
        uri = lake.table_uri(kind)
        run = counts[kind]
        yield dg.MaterializeResult(
            asset_key=cleaned_key(kind),
            metadata=table_metadata(
                contract.CLEANED_SCHEMAS[kind], uri, delta_row_count(uri, options) or 0,
                new_files=run["files"], records_read=run["read"], rows_upserted=run["upserted"],
                duplicates_collapsed=run["duplicates"], quarantined=run["quarantined"],
                delta_version=delta_version(uri, options),
            ),
        )
        yield conservation_check(kind, run)
    uri = lake.table_uri(contract.QUARANTINE_TABLE)
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata=table_metadata(contract.QUARANTINE_SCHEMA, uri, delta_row_count(uri, options) or 0,
                                quarantined_this_run=sum(counts[k]["quarantined"] for k in contract.EVENT_KINDS)),
    )


# --- analytics ---------------------------------------------------------------------------------------------


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            analytics_key(name),
            deps=[cleaned_key(k) for k in contract.EVENT_KINDS], group_name=ANALYTICS_GROUP,
            kinds={"spark", "delta"}, owners=OWNERS,
            description=f"`{name}` (contract §4).",
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
                "dagster/column_schema": column_schema(contract.ANALYTICS_SCHEMAS[name]),
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
        schema = contract.ANALYTICS_SCHEMAS[name]
        yield dg.MaterializeResult(
            asset_key=analytics_key(name),
            metadata=table_metadata(
                schema, lake.table_uri(name), results[name]["rows"],
                preview=markdown_preview(results[name]["preview"], schema.fieldNames()),
                recomputed=not up_to_date,
                input_versions=dg.MetadataValue.json(inputs),
            ),
        )


BATCH_ASSETS = [raw_topic_files, cleaned_tables, analytics_tables]
BATCH_SELECTION = dg.AssetSelection.assets(raw_topic_files, cleaned_tables, analytics_tables)
batch_job = dg.define_asset_job(
    "batch_job", selection=BATCH_SELECTION,
    description="Raw sink, cleaning and analytics for everything that has arrived since the last run.",
)
daily_batch_schedule = dg.ScheduleDefinition(
    name="daily_batch", job=batch_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The original pipeline ran daily: sink, clean and recompute analytics at 02:00 UTC.",
)
