"""The batch's one partitions definition: a partition is an ingest day, the UTC day of the Kafka record
timestamps of the raw files below `topics/<topic>/year=YYYY/month=MM/day=DD/`.

Raw and cleaned assets share it; the analytics read every day and are not partitioned. The current day is a
partition too (`end_offset=1`): events posted today can be cleaned today, and a later run of the same day
adds what arrived since. The first day is PINTEREST_PARTITIONS_START (default 2020-01-01); records stamped
earlier are still landed and kept, and a run says which days it cannot show as partitions."""

from __future__ import annotations

import datetime

import dagster as dg

from pinterest_platform.settings import load_settings

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=load_settings().partitions_start, end_offset=1, timezone="UTC", fmt="%Y-%m-%d")


def partition_key(day: datetime.date) -> str:
    return day.isoformat()


def is_partition(day: datetime.date) -> bool:
    """Whether `day` is one of the partitions (not before the start, not after today)."""
    return DAILY_PARTITIONS.has_partition_key(partition_key(day))


def days_of_keys(keys: list[str]) -> list[datetime.date]:
    return [datetime.date.fromisoformat(k) for k in keys]
