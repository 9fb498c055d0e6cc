"""The streaming assets: the sensor over the tables' Delta versions (small tables written with delta-rs, no
JVM), the delta-rs checks, the definitions, and one materialization of `stream_available_now`."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pinterest_platform import contract
from pinterest_platform.assets import streaming
from pinterest_platform.resources.lake import LocalLakeResource

KINDS = contract.EVENT_KINDS


def user_rows(inds) -> pa.Table:
    import datetime as dt

    inds = list(inds)
    return pa.table({
        "ind": pa.array(inds, pa.int32()),
        "user_name": pa.array([f"user {i}" for i in inds]),
        "age": pa.array([30] * len(inds), pa.int32()),
        "date_joined": pa.array([dt.datetime(2016, 1, 1)] * len(inds), pa.timestamp("us", tz="UTC")),
    })


def ind_only(inds) -> pa.Table:
    return pa.table({"ind": pa.array(list(inds), pa.int32())})


def uri(lake: LocalLakeResource, kind: str) -> str:
    return lake.table_uri(streaming.streaming_table(kind))


@pytest.fixture
def lake(tmp_path) -> LocalLakeResource:
    return LocalLakeResource(root=str(tmp_path / "lake"))


def aged(cursor: str | None) -> str | None:
    """The cursor as if its run had been requested long enough ago for the next tick to request another."""
    try:
        state = json.loads(cursor or "")
    except ValueError:  # no cursor, or an unreadable one: nothing to age
        return cursor
    state["last_run_at"] -= 10 * streaming.MIN_SECONDS_BETWEEN_RUNS
    return json.dumps(state)


def tick(lake, cursor=None):
    """One evaluation; the interval between runs is tested in test_streaming_sensor.py, so it is aged here."""
    context = dg.build_sensor_context(cursor=aged(cursor), resources={"lake": lake})
    return streaming.streaming_tables_sensor(context)


def versions(result) -> dict[str, int]:
    return json.loads(result.cursor)["versions"]


def events_by_table(result) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for event in result.asset_events:
        out.setdefault(event.asset_key.path[-1], []).append(event.metadata["delta_version"].value)
    return out


def test_first_tick_without_tables_skips(lake):
    result = tick(lake)
    assert isinstance(result, dg.SkipReason)
    assert "not created yet" in result.skip_message
    assert all(streaming.streaming_table(k) in result.skip_message for k in KINDS)


def test_first_tick_reports_every_existing_version(lake):
    write_deltalake(uri(lake, "user"), user_rows(range(3)))
    write_deltalake(uri(lake, "user"), user_rows(range(3, 5)), mode="append")
    write_deltalake(uri(lake, "pin"), ind_only([1]))
    result = tick(lake)
    assert isinstance(result, dg.SensorResult)
    assert events_by_table(result) == {streaming.streaming_table("user"): [0, 1],
                                       streaming.streaming_table("pin"): [0]}
    assert versions(result) == {streaming.streaming_table("user"): 1, streaming.streaming_table("pin"): 0}
    user_events = [e for e in result.asset_events if e.asset_key == streaming.streaming_table_key("user")]
    assert user_events[0].metadata["rows_added"].value == 3
    assert user_events[1].metadata["rows_added"].value == 2
    assert user_events[1].metadata["dagster/row_count"].value == 5  # the current version carries the count
    assert "dagster/row_count" not in user_events[0].metadata
    assert user_events[1].metadata["commit_time"].value > 0
    (request,) = result.run_requests  # one run for both tables
    assert request.run_key == (f"streaming_checks:{streaming.streaming_table('pin')}@0,"
                               f"{streaming.streaming_table('user')}@1")
    assert {k.asset_key for k in request.asset_check_keys} == {streaming.streaming_table_key("user"),
                                                               streaming.streaming_table_key("pin")}
    assert {k.name for k in request.asset_check_keys} == {"unique_non_null_ind", "columns_match_contract"}


def test_nothing_new_skips_with_the_versions(lake):
    write_deltalake(uri(lake, "geo"), ind_only([1, 2]))
    cursor = tick(lake).cursor
    result = tick(lake, cursor)
    assert isinstance(result, dg.SkipReason)
    assert f"{streaming.streaming_table('geo')} v0" in result.skip_message


def test_new_version_on_one_table_only(lake):
    for kind in KINDS:
        write_deltalake(uri(lake, kind), ind_only([1]))
    cursor = tick(lake).cursor
    write_deltalake(uri(lake, "geo"), ind_only([2]), mode="append")
    result = tick(lake, cursor)
    assert events_by_table(result) == {streaming.streaming_table("geo"): [1]}
    assert [r.run_key for r in result.run_requests] == [f"streaming_checks:{streaming.streaming_table('geo')}@1"]
    assert versions(result) == {**json.loads(cursor)["versions"], streaming.streaming_table("geo"): 1}


def test_several_versions_at_once_and_deterministic_run_keys(lake):
    write_deltalake(uri(lake, "pin"), ind_only([0]))
    cursor = tick(lake).cursor
    for i in range(1, 4):
        write_deltalake(uri(lake, "pin"), ind_only([i]), mode="append")
    first = tick(lake, cursor)
    again = tick(lake, cursor)  # a tick evaluated twice from the same cursor asks for the same run
    assert events_by_table(first) == {streaming.streaming_table("pin"): [1, 2, 3]}
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in again.run_requests] \
        == [f"streaming_checks:{streaming.streaming_table('pin')}@3"]
    assert isinstance(tick(lake, first.cursor), dg.SkipReason)


def test_merge_commit_metrics_become_metadata(lake, spark):
    """A MERGE written by Spark (as the stream job does) reports inserted and updated rows."""
    from pinterest_platform.jobs.batch import upsert_by_ind

    schema = contract.CLEANED_SCHEMAS["user"]
    import datetime as dt

    rows = [(i, f"u{i}", 30, dt.datetime(2016, 1, 1)) for i in range(4)]
    upsert_by_ind(spark, uri(lake, "user"), spark.createDataFrame(rows, schema), schema)
    cursor = tick(lake).cursor
    changed = [(0, "renamed", 30, dt.datetime(2016, 1, 1)), (9, "u9", 40, dt.datetime(2017, 1, 1))]
    upsert_by_ind(spark, uri(lake, "user"), spark.createDataFrame(changed, schema), schema)
    (event,) = tick(lake, cursor).asset_events
    assert event.metadata["operation"].value == "MERGE"
    assert event.metadata["rows_added"].value == 1 and event.metadata["rows_updated"].value == 1
    assert event.metadata["dagster/row_count"].value == 5


def test_recreated_table_is_reported_from_its_first_version(lake):
    import shutil

    for i in range(3):
        write_deltalake(uri(lake, "geo"), ind_only([i]), mode="append")
    cursor = tick(lake).cursor
    shutil.rmtree(uri(lake, "geo"))
    write_deltalake(uri(lake, "geo"), ind_only([7]))
    result = tick(lake, cursor)
    assert events_by_table(result) == {streaming.streaming_table("geo"): [0]}


def test_unreadable_cursor_starts_over(lake):
    write_deltalake(uri(lake, "user"), user_rows([1]))
    result = tick(lake, "not json")
    assert events_by_table(result) == {streaming.streaming_table("user"): [0]}


def test_sensor_definition():
    sensor = streaming.streaming_tables_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == streaming.MIN_SECONDS_BETWEEN_RUNS == 60
    assert sensor.job_name == "streaming_table_checks"


# --- checks ----------------------------------------------------------------------------------------------

def run_check(check, lake) -> dg.AssetCheckResult:
    return check(lake=lake)


def check_named(kind: str, name: str):
    return next(c for c in streaming.STREAMING_CHECKS
                if c.check_key.asset_key == streaming.streaming_table_key(kind) and c.check_key.name == name)


def test_one_row_per_ind_check(lake):
    check = check_named("user", "unique_non_null_ind")
    assert not run_check(check, lake).passed  # no table yet
    write_deltalake(uri(lake, "user"), user_rows([1, 2, 3]))
    assert run_check(check, lake).passed
    write_deltalake(uri(lake, "user"), user_rows([3]), mode="append")
    evaluation = run_check(check, lake)
    assert not evaluation.passed and evaluation.metadata["duplicate_ind"].value == 1


def test_columns_check(lake):
    check = check_named("user", "columns_match_contract")
    write_deltalake(uri(lake, "user"), user_rows([1]))
    assert run_check(check, lake).passed
    other = LocalLakeResource(root=lake.root + "-other")
    write_deltalake(uri(other, "user"), user_rows([1]).select(["user_name", "ind", "age", "date_joined"]))
    assert not run_check(check, other).passed


def test_checks_job_runs_every_streaming_check(lake):
    for kind in KINDS:
        write_deltalake(uri(lake, kind), ind_only([1, 2]))
    defs = dg.Definitions(assets=streaming.STREAMING_TABLE_SPECS, asset_checks=streaming.STREAMING_CHECKS,
                          jobs=streaming.STREAMING_JOBS, resources={"lake": lake})
    result = defs.resolve_job_def("streaming_table_checks").execute_in_process(
        instance=dg.DagsterInstance.ephemeral())
    evaluations = {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 6
    # one row per ind holds; the columns (ind only) do not match the contract
    assert all(passed == (name == "unique_non_null_ind") for (_, name), passed in evaluations.items())


# --- definitions and the availableNow asset -----------------------------------------------------------------

def test_specs_keys_groups_and_freshness():
    specs = {s.key: s for s in streaming.STREAMING_TABLE_SPECS}
    for kind in KINDS:
        spec = specs[dg.AssetKey(["streaming", f"{streaming.PREFIX}_{kind}_table"])]
        assert spec.group_name == "streaming" and spec.kinds == {"delta"}
        assert {d.asset_key for d in spec.deps} == {dg.AssetKey(["kinesis", kind]), streaming.AVAILABLE_NOW_KEY}
        assert spec.freshness_policy is not None
    assert len(streaming.STREAMING_CHECKS) == 6
    assert streaming.STREAMING_JOBS[0].name == "streaming_table_checks"


def test_lineage_kinesis_to_the_writer_to_the_tables():
    """kinesis/<kind> -> streaming/available_now_run -> the streaming tables, all of one multi-asset (the
    writer): the graph of the code location, as the UI shows it."""
    from pinterest_platform.definitions import defs

    graph = defs.resolve_asset_graph()
    writer = graph.get(streaming.AVAILABLE_NOW_KEY)
    assert writer.parent_keys == {dg.AssetKey(["kinesis", kind]) for kind in KINDS}
    assert all(graph.get(dg.AssetKey(["kinesis", kind])).is_external for kind in KINDS)
    tables = {streaming.streaming_table_key(kind) for kind in KINDS}
    assert tables <= writer.child_keys
    for kind in KINDS:
        table = graph.get(streaming.streaming_table_key(kind))
        assert table.parent_keys == {streaming.AVAILABLE_NOW_KEY, dg.AssetKey(["kinesis", kind])}
        assert table.is_materializable  # owned by the writer, not an external asset
    assert set(streaming.stream_available_now.keys) == {streaming.AVAILABLE_NOW_KEY, *tables}


def test_a_version_a_run_materialized_is_not_reported_again(lake):
    """A run's materialization of a table (what stream_available_now reports) moves the sensor past that
    version: no second materialization, no checks run for it; the versions after it are reported."""
    kind = "user"
    write_deltalake(uri(lake, kind), ind_only([1]))
    write_deltalake(uri(lake, kind), ind_only([2]), mode="append")  # version 1

    @dg.asset(key=streaming.streaming_table_key(kind))
    def written_by_a_run() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"delta_version": 1})

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([written_by_a_run], instance=instance).success

    def tick_on(cursor):
        # no run was requested yet (no last_run_at): the interval between runs does not hold this one
        context = dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance)
        return streaming.streaming_tables_sensor(context)

    first = tick_on(None)
    assert isinstance(first, dg.SensorResult) and not first.run_requests and not first.asset_events
    assert versions(first)[streaming.streaming_table(kind)] == 1
    write_deltalake(uri(lake, kind), ind_only([3]), mode="append")  # version 2: a continuous stream, say
    second = tick_on(first.cursor)
    assert events_by_table(second) == {streaming.streaming_table(kind): [2]}
    assert len(second.run_requests) == 1


def test_available_now_asset_drains_the_streams(spark, kinesis_client, kinesis_endpoint, make_stream, tmp_path,
                                                monkeypatch):
    from pinterest_platform.resources.kinesis import LocalKinesisResource
    from pinterest_platform.resources.spark import LocalSparkResource
    from pinterest_platform_tests.streaming.conftest import put_records

    prefix = f"a{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(streaming, "PREFIX", prefix)
    for kind in KINDS:
        make_stream(shards=1, name=contract.stream_name(prefix, kind))
    put_records(kinesis_client, contract.stream_name(prefix, "user"),
                [json.dumps({"ind": i, "first_name": "A", "last_name": f"B{i}", "age": 20 + i,
                             "date_joined": "2016-05-06T07:08:09"}).encode() for i in range(7)] + [b"oops"])
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    result = dg.materialize([streaming.stream_available_now], resources={
        "spark": LocalSparkResource(), "lake": lake,
        "kinesis": LocalKinesisResource(endpoint=kinesis_endpoint)})
    assert result.success
    materializations = {m.asset_key: m for m in result.asset_materializations_for_node("stream_available_now")}
    materialization = materializations[streaming.AVAILABLE_NOW_KEY]
    assert materialization.metadata["records"].value == 8
    assert materialization.metadata["quarantined"].value == 1
    # every table written is materialized by the run, at the version it left it at (the keys the module owns)
    user = materializations[streaming.TABLE_KEYS["user"]].metadata
    assert user["dagster/row_count"].value == 7 and user["records_this_run"].value == 8
    assert user["delta_version"].value == DeltaTable(lake.table_uri(f"{prefix}_user_table")).version()
    assert len(materializations) == 1 + len(KINDS)
    assert DeltaTable(lake.table_uri(f"{prefix}_user_table")).to_pyarrow_dataset().count_rows() == 7
    # one query over the streams, one checkpoint
    assert (tmp_path / "lake" / "checkpoints" / f"{prefix}_streams").is_dir()
