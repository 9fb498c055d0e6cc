"""The streaming half in the asset graph: Kinesis -> Spark Structured Streaming -> streaming Delta tables.

- `stream_available_now`: one run of the `stream` Spark job with an availableNow trigger (drains what the
  streams hold, exactly-once through the per-stream checkpoints). Continuous streaming runs outside
  Dagster (`pinterest-platform run stream --continuous`, or a Databricks job); either way the tables change.
- The three streaming tables are external assets (`["streaming", "<prefix>_<kind>_table"]`): whoever
  writes them, `streaming_tables_sensor` notices each new Delta version (delta-rs, no JVM), records it as
  a materialization with the commit's metrics, and requests a run of the tables' checks.
- Checks read the tables with delta-rs: one row per ind, columns as the contract says."""

# no `from __future__ import annotations`: Dagster reads the resource annotations at runtime
import datetime as dt
import json
from typing import Any

import dagster as dg

from pinterest_platform import contract
from pinterest_platform.assets.metadata import OWNERS, column_schema
from pinterest_platform.resources.kinesis import KinesisResource
from pinterest_platform.resources.lake import LakeResource
from pinterest_platform.resources.spark import SparkResource
from pinterest_platform.settings import load_settings

PREFIX = load_settings().topic_prefix
STREAMING_GROUP = "streaming"
CHECKPOINTS_DIR = "checkpoints"
# a live stream commits every few seconds; an hour without a commit means the stream (or its producer) stopped
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=1), warn_window=dt.timedelta(minutes=15))
# a first tick over a long-lived table must not emit thousands of events at once; later ticks catch up
MAX_EVENTS_PER_TABLE_PER_TICK = 100


def streaming_table(kind: str) -> str:
    return contract.streaming_table_name(PREFIX, kind)


def streaming_table_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey([STREAMING_GROUP, streaming_table(kind)])


KINESIS_KEYS = {kind: dg.AssetKey(["kinesis", kind]) for kind in contract.EVENT_KINDS}
TABLE_KINDS = {streaming_table(kind): kind for kind in contract.EVENT_KINDS}

STREAMING_TABLE_SPECS: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key=streaming_table_key(kind),
        deps=[KINESIS_KEYS[kind]],
        group_name=STREAMING_GROUP,
        kinds={"delta"},
        owners=OWNERS,
        freshness_policy=FRESHNESS,
        description=f"Cleaned `{kind}` events from Kinesis stream `{contract.stream_name(PREFIX, kind)}`, one row "
                    "per ind, kept current by Structured Streaming (contract §3). Materializations are recorded "
                    "by `streaming_tables_sensor` from the table's Delta versions.",
        metadata={"dagster/column_schema": column_schema(contract.CLEANED_SCHEMAS[kind]),
                  "dagster/table_name": streaming_table(kind),
                  "stream": contract.stream_name(PREFIX, kind)},
    )
    for kind in contract.EVENT_KINDS
]


# --- the availableNow run ---------------------------------------------------------------------------------

def stream_job_params(lake: LakeResource, kinesis: KinesisResource, spark: SparkResource,
                      trigger: str = "available_now") -> dict[str, Any]:
    return {
        "prefix": PREFIX,
        "lake_tables_root": lake.uri(contract.TABLES_DIR),
        "checkpoint_root": lake.uri(CHECKPOINTS_DIR),
        "kinds": list(contract.EVENT_KINDS),
        "region": kinesis.region,
        "endpoint": kinesis.endpoint_url(),
        "source_format": spark.kinesis_source_format(),
        "trigger": trigger,
    }


@dg.asset(
    key=[STREAMING_GROUP, "available_now_run"],
    group_name=STREAMING_GROUP,
    kinds={"spark", "kinesis", "delta"},
    owners=OWNERS,
    deps=list(KINESIS_KEYS.values()),
)
def stream_available_now(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource,
                         kinesis: KinesisResource) -> dg.MaterializeResult:
    """Drains the Kinesis streams into the streaming Delta tables once (Structured Streaming, availableNow)."""
    lake.check_access(write=True)
    result = spark.run_job(context, "stream", stream_job_params(lake, kinesis, spark))
    streams = result.get("streams", {})
    for kind, entry in streams.items():
        context.log.info(f"{kind}: {json.dumps(entry)}")

    def total(field: str) -> int:
        return sum(int(e.get(field, 0)) for e in streams.values())

    return dg.MaterializeResult(metadata={
        "records": dg.MetadataValue.int(total("records")),
        "batches": dg.MetadataValue.int(total("batches")),
        "rows_upserted": dg.MetadataValue.int(total("upserted")),
        "quarantined": dg.MetadataValue.int(total("quarantined")),
        "seconds": dg.MetadataValue.float(float(result.get("seconds", 0.0))),
        "streams": dg.MetadataValue.json(streams),
    })


# --- checks (delta-rs, no JVM) ----------------------------------------------------------------------------

def _open_table(lake: LakeResource, kind: str):
    from deltalake import DeltaTable

    uri, options = lake.table_uri(streaming_table(kind)), lake.storage_options()
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def _one_row_per_ind_check(kind: str):
    @dg.asset_check(asset=streaming_table_key(kind), name="unique_non_null_ind",
                    description="one row per ind, none null", blocking=False)
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        from pinterest_platform.assets.checks import unique_non_null_ind

        table = _open_table(lake, kind)
        if table is None:
            return dg.AssetCheckResult(passed=False, metadata={"error": f"no Delta table {streaming_table(kind)} yet"})
        passed, metadata = unique_non_null_ind(table.to_pyarrow_table(columns=["ind"]))
        return dg.AssetCheckResult(passed=passed, metadata={**metadata, "delta_version": table.version()})

    return check


def _columns_check(kind: str):
    @dg.asset_check(asset=streaming_table_key(kind), name="columns_match_contract",
                    description="column names and order exactly as DATA_CONTRACT.md §3")
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        import pyarrow as pa

        from pinterest_platform.assets.checks import columns_match_contract

        table = _open_table(lake, kind)
        if table is None:
            return dg.AssetCheckResult(passed=False, metadata={"error": f"no Delta table {streaming_table(kind)} yet"})
        passed, metadata = columns_match_contract(kind)(pa.schema(table.schema().to_arrow()))
        return dg.AssetCheckResult(passed=passed, metadata=metadata)

    return check


STREAMING_CHECKS = [
    *[_one_row_per_ind_check(kind) for kind in contract.EVENT_KINDS],
    *[_columns_check(kind) for kind in contract.EVENT_KINDS],
]

streaming_checks_job = dg.define_asset_job(
    "streaming_table_checks",
    selection=dg.AssetSelection.checks_for_assets(*[streaming_table_key(k) for k in contract.EVENT_KINDS]),
    description="The streaming tables' checks; requested by streaming_tables_sensor for each new Delta version.",
)


# --- the sensor -------------------------------------------------------------------------------------------

def _commit_metadata(table_uri: str, commit: dict[str, Any]) -> dict[str, Any]:
    metrics = commit.get("operationMetrics") or {}

    def metric(*names: str) -> int | None:
        for name in names:
            if metrics.get(name) not in (None, ""):
                return int(metrics[name])
        return None

    metadata: dict[str, Any] = {
        "delta_version": dg.MetadataValue.int(int(commit["version"])),
        "operation": dg.MetadataValue.text(str(commit.get("operation", ""))),
        "dagster/uri": dg.MetadataValue.path(table_uri),
    }
    # Spark's MERGE reports inserted/updated target rows and its WRITE output rows; delta-rs writers use
    # snake_case names
    added = metric("numTargetRowsInserted", "numOutputRows", "num_target_rows_inserted", "num_added_rows")
    if added is not None:
        metadata["rows_added"] = dg.MetadataValue.int(added)
    updated = metric("numTargetRowsUpdated", "num_target_rows_updated")
    if updated is not None:
        metadata["rows_updated"] = dg.MetadataValue.int(updated)
    if commit.get("timestamp") is not None:
        committed = dt.datetime.fromtimestamp(int(commit["timestamp"]) / 1000, tz=dt.timezone.utc)
        metadata["commit_time"] = dg.MetadataValue.timestamp(committed)
    return metadata


def _parse_cursor(cursor: str | None) -> dict[str, int]:
    if not cursor:
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(cursor).items()}
    except (ValueError, AttributeError):  # an unreadable cursor restarts from scratch rather than failing forever
        return {}


@dg.sensor(
    name="streaming_tables_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job=streaming_checks_job,
    description="Records each new Delta version of the streaming tables as a materialization and runs their checks.",
)
def streaming_tables_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    from deltalake import DeltaTable

    seen = _parse_cursor(context.cursor)
    options = lake.storage_options()
    events: list[dg.AssetMaterialization] = []
    run_requests: list[dg.RunRequest] = []
    missing: list[str] = []
    unchanged: list[str] = []
    for kind in contract.EVENT_KINDS:
        name = streaming_table(kind)
        uri = lake.table_uri(name)
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            missing.append(name)
            continue
        table = DeltaTable(uri, storage_options=options)
        current = table.version()
        last = seen.get(name, -1)
        if current < last:  # the table was dropped and written anew: its versions start again
            last = -1
        if current <= last:
            unchanged.append(f"{name} v{current}")
            continue
        # history() is newest first and holds only commits whose log entries still exist
        commits = sorted((c for c in table.history(limit=current - last) if last < int(c["version"]) <= current),
                         key=lambda c: int(c["version"]))[:MAX_EVENTS_PER_TABLE_PER_TICK]
        if not commits:
            continue
        newest = int(commits[-1]["version"])
        for commit in commits:
            metadata = _commit_metadata(uri, commit)
            if int(commit["version"]) == current:
                metadata["dagster/row_count"] = dg.MetadataValue.int(table.to_pyarrow_dataset().count_rows())
            events.append(dg.AssetMaterialization(asset_key=streaming_table_key(kind), metadata=metadata))
        seen[name] = newest
        run_requests.append(dg.RunRequest(
            run_key=f"{name}:{newest}",
            asset_check_keys=[check.check_key for check in STREAMING_CHECKS
                              if check.check_key.asset_key == streaming_table_key(kind)],
            tags={"streaming_table": name, "delta_version": str(newest)},
        ))
    if not events:
        parts = []
        if unchanged:
            parts.append("no new Delta version: " + ", ".join(unchanged))
        if missing:
            parts.append("not created yet (run the stream job): " + ", ".join(missing))
        return dg.SkipReason("; ".join(parts) or "nothing to report")
    return dg.SensorResult(asset_events=events, run_requests=run_requests,
                           cursor=json.dumps(seen, sort_keys=True))


STREAMING_ASSETS = [*STREAMING_TABLE_SPECS, stream_available_now]
STREAMING_SENSORS = [streaming_tables_sensor]
STREAMING_JOBS = [streaming_checks_job]

__all__ = ["STREAMING_ASSETS", "STREAMING_CHECKS", "STREAMING_JOBS", "STREAMING_SENSORS", "streaming_table_key",
           "streaming_tables_sensor", "stream_available_now"]
