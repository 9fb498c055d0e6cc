"""Daily partitions end to end through the CLI: events posted on three days (`emulate --posted-at`) and one
`run batch` give the same tables as everything posted on one day; re-processing the range changes nothing;
changed re-posts from a plain Kafka client keep the latest-posted content, and a backfill of an older day
never brings older content back. (Ordering details and conservation are tested on the job itself in
pinterest_platform_tests/jobs/test_clean_batch.py.)"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg
import pytest
from confluent_kafka import Producer

from pinterest_platform import contract
from pinterest_platform_tests import reference
from pinterest_platform_tests.compare import normalize
from pinterest_platform_tests.e2e.test_batch_pipeline import cli, cli_env, sort_key, source_rows, table_rows

EVENTS = 90
TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [TODAY - dt.timedelta(days=n) for n in (3, 2, 1)]
TABLES = (*contract.EVENT_KINDS, *contract.ANALYTICS_TABLES)


def make_env(local_stack, home, db) -> dict:
    return cli_env(local_stack, home, db, prefix="days")


def tables(env) -> dict[str, list[dict]]:
    lake = env["PINTEREST_LAKE_ROOT"]
    return {name: sorted(table_rows(Path(lake), name), key=sort_key) for name in TABLES}


@pytest.fixture(scope="module")
def source_db(tmp_path_factory):
    home = tmp_path_factory.mktemp("partitions_source")
    db = home / "source.db"
    env = {**os.environ, "PINTEREST_SOURCE_DB_URL": f"sqlite:///{db}", "PINTEREST_STATE_DIR": str(home / "state")}
    cli(env, "seed", "--events", str(EVENTS), "--seed", "5", "--no-progress")
    return db


@pytest.fixture(scope="module")
def three_days(local_stack, source_db, tmp_path_factory):
    env = make_env(local_stack, tmp_path_factory.mktemp("three_days"), source_db)
    third = EVENTS // 3
    cli(env, "emulate", "--mode", "batch", "--limit", str(third), "--posted-at", DAYS[0].isoformat(), "--no-progress")
    cli(env, "emulate", "--mode", "batch", "--resume", "--limit", str(third), "--posted-at", DAYS[1].isoformat(),
        "--no-progress")
    cli(env, "emulate", "--mode", "batch", "--resume", "--limit", str(EVENTS), "--posted-at", DAYS[2].isoformat(),
        "--no-progress")
    first = cli(env, "run", "batch")
    return {"env": env, "first": first}


@pytest.fixture(scope="module")
def one_day(local_stack, source_db, tmp_path_factory):
    env = make_env(local_stack, tmp_path_factory.mktemp("one_day"), source_db)
    cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    cli(env, "run", "batch")
    return {"env": env}


def test_raw_files_land_under_their_posted_day(three_days):
    lake = Path(three_days["env"]["PINTEREST_LAKE_ROOT"])
    prefix = three_days["env"]["PINTEREST_TOPIC_PREFIX"]
    for kind in contract.EVENT_KINDS:
        topic = contract.topic_name(prefix, kind)
        lines = {}
        for day in DAYS:
            folder = lake / contract.raw_day_prefix(topic, day)
            lines[day] = sum(len(p.read_bytes().splitlines()) for p in folder.rglob("*.json"))
        assert lines == {DAYS[0]: EVENTS // 3, DAYS[1]: EVENTS // 3, DAYS[2]: EVENTS - 2 * (EVENTS // 3)}, kind
        assert not (lake / contract.raw_day_prefix(topic, TODAY)).exists(), kind


def test_three_days_give_the_tables_of_one_day(three_days, one_day, source_db):
    assert "succeeded" in three_days["first"].stdout
    got, want = tables(three_days["env"]), tables(one_day["env"])
    assert got == want
    # and both are the contract's answer for the source
    source = source_rows(f"sqlite:///{source_db}")
    for kind in contract.EVENT_KINDS:
        expected, _ = reference.clean_source_rows(kind, source[kind])
        assert got[kind] == sorted([{k: normalize(v) for k, v in r.items()} for r in expected], key=sort_key), kind


def test_the_days_are_partitions_in_dagster(three_days):
    env = three_days["env"]
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    for kind in contract.EVENT_KINDS:
        for layer in ("raw", "cleaned"):
            materialized = instance.get_materialized_partitions(dg.AssetKey([layer, kind]))
            assert {d.isoformat() for d in DAYS} <= materialized, (layer, kind, materialized)


def test_reprocessing_the_range_changes_nothing(three_days):
    env = three_days["env"]
    before = tables(env)
    again = cli(env, "run", "batch", "--from", DAYS[0].isoformat(), "--to", DAYS[2].isoformat())
    assert "every file of these days again" in again.stdout and "succeeded" in again.stdout
    assert tables(env) == before


def produce(env, kind: str, rows: list[dict], timestamp: dt.datetime) -> None:
    """A plain Kafka client, no key: records spread over the partitions."""
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    topic = contract.topic_name(env["PINTEREST_TOPIC_PREFIX"], kind)
    ms = int(timestamp.timestamp() * 1000)
    for i, row in enumerate(rows):
        producer.produce(topic, json.dumps(row).encode(), timestamp=ms + i)
    assert producer.flush(60) == 0


def test_changed_reposts_keep_the_latest_posted_and_an_older_day_never_wins(one_day, source_db):
    env = one_day["env"]
    source = source_rows(f"sqlite:///{source_db}")
    now = dt.datetime.now(dt.UTC)
    pins = source["pin"][:30]
    users = source["user"][:30]
    # re-posted later today with changed content, from a client that does not key by ind
    produce(env, "pin", [{**r, "title": f"changed {r['index']}"} for r in pins], now + dt.timedelta(seconds=1))
    produce(env, "user", [{**r, "first_name": f"Changed{r['ind']}"} for r in users], now + dt.timedelta(seconds=1))
    # the same inds stamped on an older day, posted after: older content that must not win
    yesterday = dt.datetime.combine(TODAY - dt.timedelta(days=1), dt.time(12), dt.UTC)
    produce(env, "pin", [{**r, "title": f"stale {r['index']}"} for r in pins[:10]], yesterday)
    produce(env, "user", [{**r, "first_name": f"Stale{r['ind']}"} for r in users[:10]], yesterday)
    cli(env, "run", "batch")

    def expect(kind: str, rows: list[dict]) -> list[dict]:
        expected, _ = reference.clean_source_rows(kind, rows)
        return sorted([{k: normalize(v) for k, v in r.items()} for r in expected], key=sort_key)

    changed_pins = {r["index"]: {**r, "title": f"changed {r['index']}"} for r in pins}
    changed_users = {r["ind"]: {**r, "first_name": f"Changed{r['ind']}"} for r in users}
    want_pin = expect("pin", [changed_pins.get(r["index"], r) for r in source["pin"]])
    want_user = expect("user", [changed_users.get(r["ind"], r) for r in source["user"]])
    assert tables(env)["pin"] == want_pin
    assert tables(env)["user"] == want_user

    # a backfill of the older day re-reads its stale records and still keeps the newer content
    day = (TODAY - dt.timedelta(days=1)).isoformat()
    cli(env, "run", "batch", "--from", day, "--to", day)
    assert tables(env)["pin"] == want_pin
    assert tables(env)["user"] == want_user
