"""The bounded cost of watching the streaming tables: one run per tick for every changed table, no run
within `MIN_SECONDS_BETWEEN_RUNS` of the last, and a one-row-per-ind check that reads only what the new
Delta versions added. Tables are real Delta tables written with delta-rs; the interval is driven through
the cursor, never by waiting."""

from __future__ import annotations

import json
import shutil
import time

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pinterest_platform import contract
from pinterest_platform.assets import streaming
from pinterest_platform.resources.lake import LocalLakeResource

INTERVAL = streaming.MIN_SECONDS_BETWEEN_RUNS


def ind_only(inds) -> pa.Table:
    return pa.table({"ind": pa.array(list(inds), pa.int32())})


def uri(lake: LocalLakeResource, kind: str) -> str:
    return lake.table_uri(streaming.streaming_table(kind))


def name(kind: str) -> str:
    return streaming.streaming_table(kind)


@pytest.fixture
def lake(tmp_path) -> LocalLakeResource:
    return LocalLakeResource(root=str(tmp_path / "lake"))


def tick(lake, cursor: str | None):
    context = dg.build_sensor_context(cursor=cursor, resources={"lake": lake})
    return streaming.streaming_tables_sensor(context)


def cursor_of(versions: dict[str, int], seconds_since_last_run: float | None) -> str:
    last_run_at = None if seconds_since_last_run is None else time.time() - seconds_since_last_run
    return json.dumps({"versions": versions, "last_run_at": last_run_at})


# --- the sensor ------------------------------------------------------------------------------------------

def test_two_tables_changing_in_one_tick_make_one_run(lake):
    for kind in contract.EVENT_KINDS:
        write_deltalake(uri(lake, kind), ind_only([1]))
    write_deltalake(uri(lake, "pin"), ind_only([2]), mode="append")
    write_deltalake(uri(lake, "geo"), ind_only([3]), mode="append")
    start = {name(k): 0 for k in contract.EVENT_KINDS}
    result = tick(lake, cursor_of(start, seconds_since_last_run=10 * INTERVAL))
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert {k.asset_key for k in request.asset_check_keys} == {streaming.streaming_table_key("pin"),
                                                               streaming.streaming_table_key("geo")}
    assert len(request.asset_check_keys) == 4  # both checks of each changed table, none of the unchanged one
    assert request.run_key == f"streaming_checks:{name('geo')}@1,{name('pin')}@1"
    assert {e.asset_key for e in result.asset_events} == {streaming.streaming_table_key("pin"),
                                                          streaming.streaming_table_key("geo")}
    state = json.loads(result.cursor)
    assert state["versions"] == {**start, name("pin"): 1, name("geo"): 1}
    assert time.time() - INTERVAL < state["last_run_at"] <= time.time()


def test_no_run_within_the_interval_then_one_after_it(lake):
    write_deltalake(uri(lake, "user"), ind_only([1]))
    first = tick(lake, None)
    assert len(first.run_requests) == 1
    write_deltalake(uri(lake, "user"), ind_only([2]), mode="append")
    # the cursor the first tick left says a run was just requested: however soon the next tick comes, no run
    within = tick(lake, first.cursor)
    assert isinstance(within, dg.SkipReason)
    assert "requested" in within.skip_message
    # the same versions with a last run longer ago than the interval: the new version gets its run
    after = tick(lake, cursor_of(json.loads(first.cursor)["versions"], seconds_since_last_run=INTERVAL + 1))
    assert isinstance(after, dg.SensorResult)
    (request,) = after.run_requests
    assert request.run_key == f"streaming_checks:{name('user')}@1"


def test_unchanged_tables_skip(lake):
    for kind in contract.EVENT_KINDS:
        write_deltalake(uri(lake, kind), ind_only([1]))
    result = tick(lake, cursor_of({name(k): 0 for k in contract.EVENT_KINDS}, seconds_since_last_run=10 * INTERVAL))
    assert isinstance(result, dg.SkipReason)
    assert all(f"{name(k)} v0" in result.skip_message for k in contract.EVENT_KINDS)


def test_old_cursor_format_still_reads(lake):
    """Before the interval the cursor was the bare {table: version} map; it reads, with no last run."""
    for kind in ("user", "pin"):
        write_deltalake(uri(lake, kind), ind_only([1]))
    write_deltalake(uri(lake, "pin"), ind_only([2]), mode="append")
    result = tick(lake, json.dumps({name("user"): 0, name("pin"): 0}))
    (request,) = result.run_requests
    assert request.run_key == f"streaming_checks:{name('pin')}@1"
    assert json.loads(result.cursor)["versions"] == {name("user"): 0, name("pin"): 1}
    assert isinstance(tick(lake, json.dumps({name("user"): 0, name("pin"): 1})), dg.SkipReason)


def test_events_per_table_are_bounded(lake, monkeypatch):
    monkeypatch.setattr(streaming, "MAX_EVENTS_PER_TABLE_PER_TICK", 2)
    for i in range(5):
        write_deltalake(uri(lake, "geo"), ind_only([i]), mode="append")
    result = tick(lake, None)
    # only the newest commits are recorded, and the run covers up to the current version
    assert [e.metadata["delta_version"].value for e in result.asset_events] == [3, 4]
    assert json.loads(result.cursor)["versions"] == {name("geo"): 4}
    assert result.run_requests[0].run_key == f"streaming_checks:{name('geo')}@4"


# --- the one-row-per-ind check, incremental through the instance's evaluations ---------------------------

@pytest.fixture
def run_checks(lake):
    """Runs the checks job on one instance, as the sensor's runs would; returns the user table's evaluation."""
    defs = dg.Definitions(assets=streaming.STREAMING_TABLE_SPECS, asset_checks=streaming.STREAMING_CHECKS,
                          jobs=streaming.STREAMING_JOBS, resources={"lake": lake})
    job = defs.resolve_job_def("streaming_table_checks")
    instance = dg.DagsterInstance.ephemeral()

    def run() -> dg.AssetCheckEvaluation:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        (evaluation,) = [e for e in result.get_asset_check_evaluations()
                         if e.asset_key == streaming.streaming_table_key("user") and e.check_name == "unique_non_null_ind"]
        return evaluation

    return run


def meta(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_first_run_checks_the_whole_table_then_only_what_was_added(lake, run_checks):
    write_deltalake(uri(lake, "user"), ind_only(range(100)))
    first = run_checks()
    assert first.passed and meta(first)["mode"] == "full" and meta(first)["rows"] == 100
    write_deltalake(uri(lake, "user"), ind_only([1000, 1001]), mode="append")
    second = run_checks()
    assert second.passed
    m = meta(second)
    assert m["mode"] == "incremental" and m["base_version"] == 0 and m["delta_version"] == 1
    assert m["rows"] == 2 and m["files_added"] == 1
    # the old file's inds are 0..99: its log stats say it cannot hold 1000 or 1001, so it is not read
    assert m["old_files_read"] == 0 and m["old_files_skipped_by_stats"] == 1


def test_a_duplicate_of_an_existing_ind_fails(lake, run_checks):
    write_deltalake(uri(lake, "user"), ind_only(range(100)))
    assert run_checks().passed
    write_deltalake(uri(lake, "user"), ind_only([50, 500]), mode="append")
    evaluation = run_checks()
    m = meta(evaluation)
    assert not evaluation.passed
    assert m["mode"] == "incremental" and m["duplicate_ind"] == 1 and m["old_files_read"] == 1
    # the next run starts again from the last version that passed, so it keeps failing until it is fixed
    write_deltalake(uri(lake, "user"), ind_only([600]), mode="append")
    again = run_checks()
    assert not again.passed and meta(again)["base_version"] == 0 and meta(again)["duplicate_ind"] == 1


def test_a_duplicate_or_null_within_the_new_version_fails(lake, run_checks):
    write_deltalake(uri(lake, "user"), ind_only([1, 2]))
    assert run_checks().passed
    write_deltalake(uri(lake, "user"), ind_only([7, 7]), mode="append")
    evaluation = run_checks()
    assert not evaluation.passed and meta(evaluation)["duplicate_ind"] == 1
    assert meta(evaluation)["old_files_read"] == 0  # 7 is outside the old file's 1..2

    other = LocalLakeResource(root=lake.root + "-nulls")
    write_deltalake(uri(other, "user"), ind_only([1, 2]))
    defs = dg.Definitions(asset_checks=streaming.STREAMING_CHECKS, resources={"lake": other})
    job = dg.define_asset_job("user_ind", selection=dg.AssetSelection.checks(
        dg.AssetCheckKey(streaming.streaming_table_key("user"), "unique_non_null_ind")))
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("user_ind")
    instance = dg.DagsterInstance.ephemeral()
    assert job.execute_in_process(instance=instance).get_asset_check_evaluations()[0].passed
    write_deltalake(uri(other, "user"), pa.table({"ind": pa.array([None, 3], pa.int32())}), mode="append")
    (evaluation,) = job.execute_in_process(instance=instance, raise_on_error=False).get_asset_check_evaluations()
    assert not evaluation.passed and meta(evaluation)["null_ind"] == 1 and meta(evaluation)["mode"] == "incremental"


def test_a_merge_that_updates_and_inserts_passes(lake, run_checks):
    write_deltalake(uri(lake, "user"), pa.table({"ind": pa.array([1, 2, 3], pa.int32()), "v": ["a", "b", "c"]}))
    assert run_checks().passed
    (DeltaTable(uri(lake, "user"))
        .merge(pa.table({"ind": pa.array([2, 9], pa.int32()), "v": ["B", "z"]}), "t.ind = s.ind",
               source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute())
    evaluation = run_checks()
    m = meta(evaluation)
    # MERGE rewrote the file holding ind 2: the new file holds 1, 2 (updated), 3 and 9, the old one is gone
    assert evaluation.passed and m["mode"] == "incremental" and m["rows"] == 4 and m["duplicate_ind"] == 0


def test_a_recreated_table_is_checked_whole(lake, run_checks):
    write_deltalake(uri(lake, "user"), ind_only([1, 2]))
    write_deltalake(uri(lake, "user"), ind_only([3]), mode="append")
    assert run_checks().passed
    shutil.rmtree(uri(lake, "user"))
    write_deltalake(uri(lake, "user"), ind_only([5, 6]))
    write_deltalake(uri(lake, "user"), ind_only([5]), mode="append")
    evaluation = run_checks()  # version 1 again, but of another table: its history is not the old one's
    assert not evaluation.passed and meta(evaluation)["mode"] == "full" and meta(evaluation)["duplicate_ind"] == 1


def test_called_outside_a_run_checks_the_whole_table(lake):
    check = next(c for c in streaming.STREAMING_CHECKS
                 if c.check_key == dg.AssetCheckKey(streaming.streaming_table_key("user"), "unique_non_null_ind"))
    write_deltalake(uri(lake, "user"), ind_only([1, 2]))
    write_deltalake(uri(lake, "user"), ind_only([2]), mode="append")
    evaluation = check(lake=lake)
    assert not evaluation.passed and meta(evaluation)["mode"] == "full"
