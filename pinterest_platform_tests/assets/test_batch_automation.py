"""The daily partitions as Dagster sees them: one partitions definition for raw and cleaned, a schedule
built from the partitioned job, and declarative automation that cleans any day whose raw files changed and
then refreshes the (unpartitioned) analytics."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from pinterest_platform import contract
from pinterest_platform.assets import batch
from pinterest_platform.definitions import defs
from pinterest_platform.partitions import DAILY_PARTITIONS, is_partition

DAY = "2026-11-20"
CLEANED = [*[batch.cleaned_key(k) for k in contract.EVENT_KINDS], batch.QUARANTINE_KEY]
ANALYTICS = [batch.analytics_key(n) for n in contract.ANALYTICS_TABLES]


def requested(result, keys) -> dict[str, set]:
    return {k.to_user_string(): result.get_requested_partitions(k) for k in keys if result.get_num_requested(k)}


def test_raw_and_cleaned_share_the_daily_partitions_analytics_are_not_partitioned():
    graph = defs.resolve_asset_graph()
    for kind in contract.EVENT_KINDS:
        assert graph.get(batch.raw_key(kind)).partitions_def == DAILY_PARTITIONS
        assert graph.get(batch.cleaned_key(kind)).partitions_def == DAILY_PARTITIONS
    assert all(graph.get(k).partitions_def is None for k in ANALYTICS)
    today = dt.datetime.now(dt.UTC).date()
    assert is_partition(today) and not is_partition(today + dt.timedelta(days=1))
    assert not is_partition(dt.date(2019, 12, 31))


def test_the_schedule_runs_the_current_day_with_the_batch_lane_tag():
    schedule = defs.get_repository_def().get_schedule_def("daily_batch")
    tick = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC))
    (request,) = schedule.evaluate_tick(tick).run_requests
    assert request.partition_key == "2026-12-01"
    assert defs.resolve_job_def("batch_job").tags["pinterest/lane"] == "batch"


def test_a_changed_raw_day_is_cleaned_then_the_analytics_refresh():
    instance = dg.DagsterInstance.ephemeral()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing landed: nothing to clean

    # records of an older day landed (a late or replayed day): only that day is cleaned
    for kind in contract.EVENT_KINDS:
        instance.report_runless_asset_event(dg.AssetMaterialization(batch.raw_key(kind), partition=DAY))
    after_raw = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(after_raw, CLEANED) == {k.to_user_string(): {DAY} for k in CLEANED}
    assert requested(after_raw, ANALYTICS) == {}

    for key in CLEANED:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=DAY))
    after_cleaned = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_raw.cursor)
    # every other day has no data and stays unmaterialized: that must not hold the analytics back
    assert requested(after_cleaned, ANALYTICS) == {k.to_user_string(): {None} for k in ANALYTICS}
    assert requested(after_cleaned, CLEANED) == {}

    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_cleaned.cursor)
    assert settled.total_requested == 0


def test_the_automation_sensor_runs_in_the_batch_lane():
    sensor = defs.get_repository_def().get_sensor_def("batch_automation")
    assert sensor.run_tags == {"pinterest/lane": "batch"}
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
