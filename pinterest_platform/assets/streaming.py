"""The streaming half in the asset graph: Kinesis -> Spark Structured Streaming -> streaming Delta tables.

- `stream_available_now`: a multi-asset, one run of the `stream` Spark job with an availableNow trigger
  (drains what the streams hold, exactly-once through the per-stream checkpoints). It owns
  `streaming/available_now_run` (the run itself: records, batches, seconds) and the three streaming tables
  (`["streaming", "<prefix>_<kind>_table"]`), so the graph reads kinesis/<kind> -> available_now_run ->
  streaming tables and a table's materializations name the run that wrote them. `run stream --available-now`
  (the CLI) and the UI's "Materialize" both run it through the Dagster instance, with the tables' checks.
- Continuous streaming runs outside Dagster runs (`pinterest-platform run stream --continuous`, or a
  Databricks job): a long-running process is not a run. Its commits are recorded by `streaming_tables_sensor`,
  which reads the tables' new Delta versions (delta-rs, no JVM) and reports them as runtime (runless)
  materializations of the same keys, with the commits' metrics. Dagster accepts reported events for keys a
  multi-asset owns as it does for external `AssetSpec`s, so one key per table carries both: the runs'
  materializations (linked to their run) and the sensor's between runs. A version a run already recorded is
  not reported again: the sensor starts after the newest version a run materialized (see `_run_versions`),
  and requests at most one run of the checks of every table that changed otherwise, no sooner than
  `MIN_SECONDS_BETWEEN_RUNS` after the previous one.
- Checks read the tables with delta-rs: one row per ind (only the rows written since the version the check
  last passed at, see `_one_row_per_ind_check`), columns as the contract says (the schema only)."""

# no `from __future__ import annotations`: Dagster reads the resource annotations at runtime
import bisect
import datetime as dt
import json
import time
from typing import Any
from urllib.parse import unquote

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
# a tick over a table that took thousands of commits since the last one (a first tick, a sensor that was off)
# must not read thousands of commit files nor emit thousands of events: it records the newest ones only
MAX_EVENTS_PER_TABLE_PER_TICK = 100
# a live stream commits every few seconds; checking each commit would run the checks all the time, so the
# sensor batches every table's new versions into one run at most this often (also the tick interval)
MIN_SECONDS_BETWEEN_RUNS = 60
# how many past evaluations a check looks through for the last one that passed (its incremental start)
CHECK_HISTORY_LOOKBACK = 25


def streaming_table(kind: str) -> str:
    return contract.streaming_table_name(PREFIX, kind)


def streaming_table_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey([STREAMING_GROUP, streaming_table(kind)])


KINESIS_KEYS = {kind: dg.AssetKey(["kinesis", kind]) for kind in contract.EVENT_KINDS}
TABLE_KINDS = {streaming_table(kind): kind for kind in contract.EVENT_KINDS}
AVAILABLE_NOW_KEY = dg.AssetKey([STREAMING_GROUP, "available_now_run"])

AVAILABLE_NOW_SPEC = dg.AssetSpec(
    key=AVAILABLE_NOW_KEY,
    deps=list(KINESIS_KEYS.values()),
    group_name=STREAMING_GROUP,
    kinds={"spark", "kinesis"},
    owners=OWNERS,
    description="One availableNow run of the `stream` Spark job: drains the Kinesis streams into the streaming "
                "tables (exactly-once through the checkpoints). Its metadata: records, batches, rows upserted, "
                "quarantined and seconds of the run.",
)

STREAMING_TABLE_SPECS: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key=streaming_table_key(kind),
        # written by the availableNow run (or a continuous stream), from its kind's stream
        deps=[KINESIS_KEYS[kind], AVAILABLE_NOW_KEY],
        group_name=STREAMING_GROUP,
        kinds={"delta"},
        owners=OWNERS,
        freshness_policy=FRESHNESS,
        # a stream that does not exist yet leaves its table unwritten: the run does not materialize it
        skippable=True,
        description=f"Cleaned `{kind}` events from Kinesis stream `{contract.stream_name(PREFIX, kind)}`, one row "
                    "per ind, kept current by Structured Streaming (contract §3). Written by "
                    "`stream_available_now` (which materializes it) or a continuous stream, whose Delta "
                    "versions `streaming_tables_sensor` records as materializations.",
        metadata={"dagster/column_schema": column_schema(contract.CLEANED_FIELDS[kind]),
                  "dagster/table_name": streaming_table(kind),
                  "stream": contract.stream_name(PREFIX, kind),
                  "written_by": "stream_available_now (run stream --available-now), or run stream --continuous"},
    )
    for kind in contract.EVENT_KINDS
]
# the keys this module's definitions own (fixed when it is loaded, as the specs' are)
TABLE_KEYS = {kind: spec.key for kind, spec in zip(contract.EVENT_KINDS, STREAMING_TABLE_SPECS, strict=True)}


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


@dg.multi_asset(
    name="stream_available_now",
    specs=[AVAILABLE_NOW_SPEC, *STREAMING_TABLE_SPECS],
    can_subset=False,  # one Spark job writes every table
    description="Drains the Kinesis streams into the streaming Delta tables once (Structured Streaming, "
                "availableNow).",
)
def stream_available_now(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource,
                         kinesis: KinesisResource):
    """Drains the Kinesis streams into the streaming Delta tables once (Structured Streaming, availableNow).

    Materializes `streaming/available_now_run` with the run's totals, and each table it wrote (a stream that
    does not exist yet is skipped) at the Delta version the run left it at."""
    lake.check_access(write=True)
    result = spark.run_job(context, "stream", stream_job_params(lake, kinesis, spark))
    streams = result.get("streams", {})
    for kind, entry in streams.items():
        context.log.info(f"{kind}: {json.dumps(entry)}")

    def total(field: str) -> int:
        return sum(int(e.get(field, 0)) for e in streams.values())

    yield dg.MaterializeResult(asset_key=AVAILABLE_NOW_KEY, metadata={
        "records": dg.MetadataValue.int(total("records")),
        "batches": dg.MetadataValue.int(total("batches")),
        "rows_upserted": dg.MetadataValue.int(total("upserted")),
        "quarantined": dg.MetadataValue.int(total("quarantined")),
        "seconds": dg.MetadataValue.float(float(result.get("seconds", 0.0))),
        "stopped_by": dg.MetadataValue.text(str(result.get("stopped_by", "completed"))),
        "streams": dg.MetadataValue.json(streams),
    })
    for kind, entry in streams.items():
        if "skipped" in entry or entry.get("table_version") is None:
            continue
        yield dg.MaterializeResult(asset_key=TABLE_KEYS[kind], metadata={
            # the sensor reads this back: versions up to it are this run's, not to be reported again
            "delta_version": dg.MetadataValue.int(int(entry["table_version"])),
            "dagster/row_count": dg.MetadataValue.int(int(entry.get("rows_in_table", 0))),
            "dagster/uri": dg.MetadataValue.path(str(entry.get("table_uri", lake.table_uri(streaming_table(kind))))),
            "records_this_run": dg.MetadataValue.int(int(entry.get("records", 0))),
            "batches_this_run": dg.MetadataValue.int(int(entry.get("batches", 0))),
            "rows_upserted_this_run": dg.MetadataValue.int(int(entry.get("upserted", 0))),
            "quarantined_this_run": dg.MetadataValue.int(int(entry.get("quarantined", 0))),
        })


# --- checks (delta-rs, no JVM) ----------------------------------------------------------------------------

def _open_table(lake: LakeResource, kind: str):
    from deltalake import DeltaTable

    uri, options = lake.table_uri(streaming_table(kind)), lake.storage_options()
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def _last_passing_version(check_key: dg.AssetCheckKey) -> tuple[int, str] | None:
    """(Delta version, table id) at which this check last passed in this instance, or None if unknown."""
    try:
        context = dg.AssetCheckExecutionContext.get()
    except dg.DagsterInvariantViolationError:  # invoked directly, outside a run: no history to start from
        return None
    records = context.instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=CHECK_HISTORY_LOOKBACK)
    for record in records:  # newest first; the current run's own record is only planned, not evaluated
        evaluation = record.evaluation
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or not evaluation.passed:
            continue
        version, table_id = evaluation.metadata.get("delta_version"), evaluation.metadata.get("table_id")
        if version is not None and table_id is not None:
            return int(version.value), str(table_id.value)
    return None


def _full_ind_check(table) -> tuple[bool, dict[str, Any]]:
    from pinterest_platform.assets.checks import unique_non_null_ind

    passed, metadata = unique_non_null_ind(table.to_pyarrow_table(columns=["ind"]))
    return passed, {**metadata, "mode": "full"}


def _incremental_ind_check(table, base) -> tuple[bool, dict[str, Any]] | None:
    """Checks the rows of the files `table` holds that `base` (an older version) did not; None if it cannot.

    Delta rewrites whole files (MERGE, OPTIMIZE) and never edits one in place, so every row inserted or
    updated since `base` is in such a file. A duplicate in the current table is then either two new rows
    (seen among the new files), or a new row and an old one (looked up by ind in the old files whose ind
    min/max, from the Delta log, can hold it), or two old rows, impossible since the check passed at `base`
    over the same old files. Deletion vectors only remove rows, so they cannot make a duplicate."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    from pinterest_platform.assets.checks import unique_non_null_ind

    base_paths = {unquote(p) for p in pa.table(base.get_add_actions()).column("path").to_pylist()}
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    dataset = table.to_pyarrow_dataset()
    fragments = {unquote(f.path): f for f in dataset.get_fragments()}
    if any(unquote(a["path"]) not in fragments for a in actions):
        return None  # the dataset names files differently from the log: cannot tell new from old

    def read(paths: list[str], **kwargs) -> pa.Table:
        subset = pds.FileSystemDataset([fragments[p] for p in paths], dataset.schema, dataset.format,
                                       dataset.filesystem)
        return subset.to_table(columns=["ind"], **kwargs)

    new = [unquote(a["path"]) for a in actions if unquote(a["path"]) not in base_paths]
    old = [a for a in actions if unquote(a["path"]) in base_paths]
    new_rows = read(new) if new else pa.table({"ind": pa.array([], dataset.schema.field("ind").type)})
    passed, metadata = unique_non_null_ind(new_rows)
    keys = sorted(pc.unique(pc.drop_null(new_rows.column("ind"))).to_pylist())

    def may_hold(action: dict) -> bool:  # no stats for a file: it may hold anything
        low, high = action.get("min.ind"), action.get("max.ind")
        if low is None or high is None:
            return True
        i = bisect.bisect_left(keys, low)
        return i < len(keys) and keys[i] <= high

    candidates = [unquote(a["path"]) for a in old if may_hold(a)] if keys else []
    clashes = read(candidates, filter=pds.field("ind").isin(keys)).num_rows if candidates else 0
    return passed and clashes == 0, {
        **metadata, "duplicate_ind": metadata["duplicate_ind"] + clashes, "mode": "incremental",
        "files_added": len(new), "old_files_read": len(candidates),
        "old_files_skipped_by_stats": len(old) - len(candidates)}


def _one_row_per_ind_check(kind: str):
    @dg.asset_check(asset=streaming_table_key(kind), name="unique_non_null_ind", blocking=False,
                    description="one row per ind, none null; reads only the rows written since the version "
                                "the check last passed at (the whole ind column the first time)")
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        """One row per ind, none null, checked on what changed since the check last passed.

        Starting point: the Delta version (and table id) of this check's newest passing evaluation among its
        last `CHECK_HISTORY_LOOKBACK` in the Dagster instance. From there it reads the `ind` column of the
        files added since that version and still live: none may be null, none may repeat among them, and
        none may be in an older live file (only old files whose ind min/max in the Delta log spans one of
        the new inds are read, filtered to those inds). `rows` is the number of new rows read. Exact, not a
        sample; its cost follows the new rows, except that new inds falling within every old file's ind
        range (random keys, files never clustered by ind) make it read every old file's `ind`, filtered.

        The whole `ind` column is read instead when there is no starting point (first run, direct call, no
        pass in the lookback), the table was recreated (another table id), or the starting version can no
        longer be loaded. A failing table is re-checked from its last passing version, so the check keeps
        failing until the duplicate or null is gone."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        table = _open_table(lake, kind)
        if table is None:
            return dg.AssetCheckResult(passed=False, metadata={"error": f"no Delta table {streaming_table(kind)} yet"})
        version, table_id = table.version(), table.metadata().id
        start = _last_passing_version(dg.AssetCheckKey(streaming_table_key(kind), "unique_non_null_ind"))
        outcome = None
        if start is not None and start[1] == table_id and start[0] <= version:
            try:
                base = DeltaTable(lake.table_uri(streaming_table(kind)), version=start[0],
                                  storage_options=lake.storage_options())
            except DeltaError:  # its log entries were cleaned up: no longer a base to diff against
                base = None
            if base is not None:
                outcome = _incremental_ind_check(table, base)
                if outcome is not None:
                    outcome[1]["base_version"] = start[0]
        passed, metadata = outcome if outcome is not None else _full_ind_check(table)
        return dg.AssetCheckResult(passed=passed,
                                   metadata={**metadata, "delta_version": version, "table_id": table_id})

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
        # the schema is in the Delta log: no data file is read, however large the table
        passed, metadata = columns_match_contract(kind)(pa.schema(table.schema().to_arrow()))
        return dg.AssetCheckResult(passed=passed, metadata={**metadata, "delta_version": table.version()})

    return check


STREAMING_CHECKS = [
    *[_one_row_per_ind_check(kind) for kind in contract.EVENT_KINDS],
    *[_columns_check(kind) for kind in contract.EVENT_KINDS],
]

streaming_checks_job = dg.define_asset_job(
    "streaming_table_checks",
    selection=dg.AssetSelection.checks_for_assets(*[streaming_table_key(k) for k in contract.EVENT_KINDS]),
    description="The streaming tables' checks; streaming_tables_sensor requests the changed tables' checks "
                "in one run, at most every MIN_SECONDS_BETWEEN_RUNS.",
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


def _parse_cursor(cursor: str | None) -> tuple[dict[str, int], float | None]:
    """(last Delta version seen per table, when the last run was requested) from the sensor's JSON cursor.

    The cursor is `{"versions": {table: version}, "last_run_at": epoch seconds}`; the older form, the bare
    `{table: version}` map, still reads (with no last run)."""
    if not cursor:
        return {}, None
    try:
        state = json.loads(cursor)
        if isinstance(state.get("versions"), dict):
            last_run = state.get("last_run_at")
            return ({str(k): int(v) for k, v in state["versions"].items()},
                    float(last_run) if last_run is not None else None)
        return {str(k): int(v) for k, v in state.items()}, None
    except (ValueError, AttributeError, TypeError):  # an unreadable cursor restarts rather than failing forever
        return {}, None


def _run_versions(context: dg.SensorEvaluationContext, kinds: list[str]) -> dict[str, int]:
    """Table -> the Delta version of its newest materialization by a run (`stream_available_now`), if any.

    A run reports the version it left its tables at, and ran their checks: the sensor reports only the
    versions after it. Its own (runless) materializations are in its cursor already. Without an instance (a
    context built in a test) there is no run to know of."""
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:
        return {}
    out: dict[str, int] = {}
    for kind in kinds:
        event = instance.get_latest_materialization_event(streaming_table_key(kind))
        if event is None or not event.run_id or event.asset_materialization is None:
            continue
        version = event.asset_materialization.metadata.get("delta_version")
        if version is not None:
            out[streaming_table(kind)] = int(version.value)
    return out


def _checks_of(kind: str) -> list[dg.AssetCheckKey]:
    return [check.check_key for check in STREAMING_CHECKS if check.check_key.asset_key == streaming_table_key(kind)]


@dg.sensor(
    name="streaming_tables_sensor",
    minimum_interval_seconds=MIN_SECONDS_BETWEEN_RUNS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job=streaming_checks_job,
    description="Records the streaming tables' new Delta versions as materializations and runs the changed "
                f"tables' checks in one run, at most every {MIN_SECONDS_BETWEEN_RUNS} s.",
)
def streaming_tables_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """One tick: at most one run, for every streaming table whose Delta version moved since the cursor.

    Within `MIN_SECONDS_BETWEEN_RUNS` of the last requested run (the cursor remembers when) the tick skips
    without opening a table, however often it is evaluated. Otherwise it reads each table's current version
    from its log; for each that moved it records up to `MAX_EVENTS_PER_TABLE_PER_TICK` of the newest new
    commits as materializations (older ones are passed over, not queued), and requests one run of the checks
    of all those tables. The checks work out themselves what changed since they last passed. Versions up to
    the one a run (`stream_available_now`) materialized are that run's, checked in it: the sensor moves its
    cursor past them without reporting them again."""
    from deltalake import DeltaTable

    seen, last_run_at = _parse_cursor(context.cursor)
    now = time.time()
    # a last run "in the future" (the clock went back) must not hold the runs off for that long
    if last_run_at is not None and 0 <= now - last_run_at < MIN_SECONDS_BETWEEN_RUNS:
        return dg.SkipReason(f"a run was requested {now - last_run_at:.0f} s ago; the next waits until "
                             f"{MIN_SECONDS_BETWEEN_RUNS} s have passed")
    options = lake.storage_options()
    events: list[dg.AssetMaterialization] = []
    changed: dict[str, int] = {}
    check_keys: list[dg.AssetCheckKey] = []
    missing: list[str] = []
    unchanged: list[str] = []
    tables: dict[str, Any] = {}
    for kind in contract.EVENT_KINDS:
        name = streaming_table(kind)
        uri = lake.table_uri(name)
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            missing.append(name)
            continue
        tables[kind] = DeltaTable(uri, storage_options=options)
    recorded = _run_versions(context, [k for k, t in tables.items() if t.version() > seen.get(streaming_table(k), -1)])
    absorbed: dict[str, int] = {}
    for kind, table in tables.items():
        name = streaming_table(kind)
        uri = lake.table_uri(name)
        current = table.version()
        last = seen.get(name, -1)
        if current < last:  # the table was dropped and written anew: its versions start again
            last = -1
        if last < recorded.get(name, -1) <= current:  # a run materialized (and checked) these versions
            last = recorded[name]
            absorbed[name] = last
        if current <= last:
            unchanged.append(f"{name} v{current}" + (" (recorded by a run)" if name in absorbed else ""))
            continue
        # history() is newest first and holds only commits whose log entries still exist
        limit = min(current - last, MAX_EVENTS_PER_TABLE_PER_TICK)
        commits = sorted((c for c in table.history(limit=limit) if last < int(c["version"]) <= current),
                         key=lambda c: int(c["version"]))
        if not commits or int(commits[-1]["version"]) != current:  # the newest commit's entry is gone
            commits.append({"version": current})
        for commit in commits:
            metadata = _commit_metadata(uri, commit)
            if int(commit["version"]) == current:
                metadata["dagster/row_count"] = dg.MetadataValue.int(table.to_pyarrow_dataset().count_rows())
            events.append(dg.AssetMaterialization(asset_key=streaming_table_key(kind), metadata=metadata))
        changed[name] = current
        check_keys.extend(_checks_of(kind))
    if not changed:
        parts = []
        if unchanged:
            parts.append("no new Delta version: " + ", ".join(unchanged))
        if missing:
            parts.append("not created yet (run the stream job): " + ", ".join(missing))
        if absorbed:  # the cursor moves past the runs' versions (last_run_at stays: no run was requested)
            return dg.SensorResult(skip_reason="; ".join(parts), cursor=json.dumps(
                {"versions": {**seen, **absorbed}, "last_run_at": last_run_at}, sort_keys=True))
        return dg.SkipReason("; ".join(parts) or "nothing to report")
    versions = ",".join(f"{name}@{version}" for name, version in sorted(changed.items()))
    run = dg.RunRequest(
        # the versions name the run: a tick evaluated twice from the same cursor asks for the same run
        run_key=f"streaming_checks:{versions}",
        asset_check_keys=check_keys,
        tags={"streaming_tables": versions},
    )
    cursor = {"versions": {**seen, **absorbed, **changed}, "last_run_at": now}
    return dg.SensorResult(asset_events=events, run_requests=[run], cursor=json.dumps(cursor, sort_keys=True))


STREAMING_ASSETS = [stream_available_now]
STREAMING_SENSORS = [streaming_tables_sensor]
STREAMING_JOBS = [streaming_checks_job]

__all__ = ["AVAILABLE_NOW_KEY", "STREAMING_ASSETS", "STREAMING_CHECKS", "STREAMING_JOBS", "STREAMING_SENSORS", "streaming_table_key",
           "streaming_tables_sensor", "stream_available_now"]
