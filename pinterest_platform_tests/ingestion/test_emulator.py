"""The posting emulator against the real local stack (Kafka broker + moto): exact counts per topic and stream,
content equal to the source rows, redelivery, limit + resume, a broker restart mid-run, retried partial
Kinesis failures and reported (never silent) permanent failures."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pinterest_platform.contract import EVENT_KINDS, SOURCE_COLUMNS, SOURCE_TABLE_OF, stream_name, topic_name
from pinterest_platform.datagen import seed_source_database
from pinterest_platform.ingestion import emulator
from pinterest_platform.ingestion.emulator import emulate, read_cursor

EVENTS = 1200
PAGE = 400          # several pages per run, so paging, cursor and resume are exercised
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
DATETIME_COLUMNS = {"geo": "timestamp", "user": "date_joined"}


# --- helpers (also used by test_gateway) ----------------------------------------------------------


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _read_topic(consumer, topic: str, row, timeout: float = 60) -> list:
    """`row(msg)` of every message of every partition of `topic`, read by `consumer` (closed after)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        highs = {p: _high_watermark(consumer, TopicPartition(topic, p)) for p in partitions}
        remaining = {p for p in partitions if highs[p] > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        out = []
        deadline = time.monotonic() + timeout
        while remaining:
            assert time.monotonic() < deadline, f"timed out reading {topic}; partitions left {remaining}"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= highs[msg.partition()]:
                        remaining.discard(msg.partition())
                    continue
                raise AssertionError(f"consumer error on {topic}: {msg.error()}")
            out.append(row(msg))
            if msg.offset() >= highs[msg.partition()] - 1:
                remaining.discard(msg.partition())
        return out
    finally:
        consumer.close()


def kafka_messages(kafka, topic: str, timeout: float = 60) -> list[tuple[bytes | None, bytes, int]]:
    """Every message of every partition of `topic`, as (key, value, partition)."""
    return _read_topic(kafka.consumer(group_id=f"test-reader-{uuid.uuid4().hex}"), topic,
                       lambda msg: (msg.key(), msg.value(), msg.partition()), timeout)


def _high_watermark(consumer, partition, timeout: float = 30) -> int:
    """High watermark, waiting out a just-created topic whose leader is not elected yet."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)[1]
        except KafkaException as exc:
            if not exc.args[0].retriable() and "leader" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def kinesis_records(kinesis, stream: str) -> list[tuple[str, bytes, str]]:
    """Every record of every shard of `stream`, as (partition key, data, shard id)."""
    client = kinesis.client()
    out = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            answer = client.get_records(ShardIterator=iterator, Limit=10000)
            out.extend((r["PartitionKey"], r["Data"], shard["ShardId"]) for r in answer["Records"])
            if not answer["Records"]:
                break
            iterator = answer.get("NextShardIterator")
    return out


def expected_rows(sqlite_path: Path) -> dict[str, dict[int, dict]]:
    """The source rows as the wire format should carry them, read independently with sqlite3."""
    conn = sqlite3.connect(sqlite_path)
    out: dict[str, dict[int, dict]] = {}
    try:
        for kind in EVENT_KINDS:
            table = SOURCE_TABLE_OF[kind]
            columns = SOURCE_COLUMNS[table]
            quoted = ", ".join(f'"{c}"' for c in columns)
            rows = {}
            for values in conn.execute(f"SELECT {quoted} FROM {table}"):  # noqa: S608 - test-only, fixed names
                row = dict(zip(columns, values, strict=True))
                if kind in DATETIME_COLUMNS and row[DATETIME_COLUMNS[kind]] is not None:
                    row[DATETIME_COLUMNS[kind]] = row[DATETIME_COLUMNS[kind]].replace(" ", "T")
                rows[row["index" if kind == "pin" else "ind"]] = row
            out[kind] = rows
    finally:
        conn.close()
    return out


def assert_exactly_once(kafka, kinesis, prefix: str, expected: dict[str, dict[int, dict]],
                        kafka_modes: bool = True, kinesis_modes: bool = True, copies: int = 1) -> None:
    """Each topic and stream holds every source row `copies` times, equal to the source, keyed by ind."""
    for kind in EVENT_KINDS:
        want = expected[kind]
        if kafka_modes:
            messages = kafka_messages(kafka, topic_name(prefix, kind))
            assert len(messages) == copies * len(want), f"{topic_name(prefix, kind)}: {len(messages)} messages"
            keys = Counter(int(k) for k, _, _ in messages)
            assert set(keys) == set(want) and set(keys.values()) == {copies}
            for key, value, _ in messages:
                row = json.loads(value)
                assert row == want[int(key)]
                if kind in DATETIME_COLUMNS:
                    assert ISO.match(row[DATETIME_COLUMNS[kind]]), row
            assert len({p for _, _, p in messages}) > 1, "keys should spread over partitions"
        if kinesis_modes:
            records = kinesis_records(kinesis, stream_name(prefix, kind))
            assert len(records) == copies * len(want), f"{stream_name(prefix, kind)}: {len(records)} records"
            keys = Counter(int(k) for k, _, _ in records)
            assert set(keys) == set(want) and set(keys.values()) == {copies}
            for key, data, _ in records:
                assert json.loads(data.decode("utf-8")) == want[int(key)]
            assert len({s for _, _, s in records}) > 1, "partition keys should spread over shards"


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[str, Path, dict]:
    path = tmp_path_factory.mktemp("emulator-source") / "source.db"
    url = f"sqlite:///{path}"
    counts = seed_source_database(url, EVENTS, seed=7, progress=False)
    assert set(counts.values()) == {EVENTS}
    return url, path, expected_rows(path)


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(emulator, "_backoff", lambda attempt, base=0.1, cap=5.0: 0.01)


# --- tests ----------------------------------------------------------------------------------------


def test_both_delivers_exactly_n_and_redelivery_doubles(source, kafka, kinesis):
    url, _, expected = source
    prefix = unique_prefix()
    report = emulate(url, "both", kafka, kinesis, prefix, progress=False, page_size=PAGE)
    assert report.ok and report.events_read == EVENTS
    assert report.sent == {**{topic_name(prefix, k): EVENTS for k in EVENT_KINDS},
                           **{stream_name(prefix, k): EVENTS for k in EVENT_KINDS}}
    assert report.total_failed == 0
    assert report.last_key == max(expected["pin"])
    assert_exactly_once(kafka, kinesis, prefix, expected)

    # a second run without resume posts everything again: that is how redelivery is simulated
    again = emulate(url, "both", kafka, kinesis, prefix, progress=False, page_size=PAGE)
    assert again.ok and again.total_sent == 6 * EVENTS
    assert_exactly_once(kafka, kinesis, prefix, expected, copies=2)


def test_limit_then_resume_posts_every_event_once(source, kafka, kinesis, tmp_path):
    url, _, expected = source
    prefix = unique_prefix()
    cursor = tmp_path / "cursor.json"
    first = emulate(url, "both", kafka, kinesis, prefix, limit=500, cursor_path=cursor, progress=False,
                    page_size=PAGE)
    assert first.ok and first.events_read == 500
    keys = sorted(expected["pin"])
    assert read_cursor(cursor) == keys[499] == first.last_key
    for kind in EVENT_KINDS:
        assert len(kafka_messages(kafka, topic_name(prefix, kind))) == 500
        assert len(kinesis_records(kinesis, stream_name(prefix, kind))) == 500

    rest = emulate(url, "both", kafka, kinesis, prefix, cursor_path=cursor, resume=True, progress=False,
                   page_size=PAGE)
    assert rest.ok and rest.events_read == EVENTS - 500 and rest.first_key == keys[500]
    assert read_cursor(cursor) == keys[-1]
    assert_exactly_once(kafka, kinesis, prefix, expected)

    # nothing left: a further resume posts nothing
    nothing = emulate(url, "both", kafka, kinesis, prefix, cursor_path=cursor, resume=True, progress=False)
    assert nothing.ok and nothing.events_read == 0 and nothing.total_sent == 0
    assert_exactly_once(kafka, kinesis, prefix, expected)


def test_rate_cap_is_respected(source, kafka):
    url, _, _ = source
    started = time.monotonic()
    report = emulate(url, "batch", kafka, None, unique_prefix(), limit=60, rate=40, progress=False)
    assert report.ok and report.events_read == 60
    assert time.monotonic() - started >= 60 / 40 - 0.1


def test_cursor_file_is_replaced_atomically(tmp_path):
    cursor = tmp_path / "deep" / "cursor.json"
    emulator.write_cursor(cursor, 41, mode="both")
    emulator.write_cursor(cursor, 42, mode="both")
    assert read_cursor(cursor) == 42
    assert json.loads(cursor.read_text())["mode"] == "both"
    assert [p.name for p in cursor.parent.iterdir()] == ["cursor.json"]  # no temp files left behind
    assert read_cursor(tmp_path / "missing.json") is None


class ThrottlingKinesisClient:
    """A real moto Kinesis client whose PutRecords rejects some entries the way Kinesis does when throttled:
    the rejected entries are not stored, and come back with ErrorCode/ErrorMessage (moto cannot throttle)."""

    def __init__(self, client, reject_every: int = 3, failing_calls: int = 4, always_reject_key: str | None = None):
        self._client = client
        self.reject_every = reject_every
        self.failing_calls = failing_calls
        self.always_reject_key = always_reject_key
        self.calls = 0
        self.rejected = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's argument names
        self.calls += 1
        reject = set()
        for i, entry in enumerate(Records):
            if entry["PartitionKey"] == self.always_reject_key:
                reject.add(i)
            elif self.calls <= self.failing_calls and i % self.reject_every == 0:
                reject.add(i)
        kept = [e for i, e in enumerate(Records) if i not in reject]
        stored = iter(self._client.put_records(StreamName=StreamName, Records=kept)["Records"] if kept else [])
        answers = []
        for i in range(len(Records)):
            if i in reject:
                answers.append({"ErrorCode": "ProvisionedThroughputExceededException",
                                "ErrorMessage": "Rate exceeded for shard (injected by the test)"})
            else:
                answers.append(next(stored))
        self.rejected += len(reject)
        return {"FailedRecordCount": len(reject), "Records": answers}


class KinesisWithClient:
    """Duck-typed KinesisResource handing out the throttling client."""

    def __init__(self, kinesis, client):
        self.kinesis, self._client = kinesis, client

    def ensure_platform_streams(self, prefix):
        return self.kinesis.ensure_platform_streams(prefix)

    def client(self):
        return self._client


def test_kinesis_partial_failures_are_retried_alone(source, kinesis, fast_backoff):
    url, _, expected = source
    prefix = unique_prefix()
    flaky = ThrottlingKinesisClient(kinesis.client())
    report = emulate(url, "stream", None, KinesisWithClient(kinesis, flaky), prefix, progress=False,
                     page_size=PAGE)
    assert flaky.rejected > 0 and sum(report.retried.values()) == flaky.rejected
    assert report.ok and report.total_sent == 3 * EVENTS
    # only the rejected entries were re-sent: nothing is missing and nothing is stored twice
    assert_exactly_once(None, kinesis, prefix, expected, kafka_modes=False)


def test_permanent_kinesis_failure_is_reported_not_lost(source, kinesis, fast_backoff, tmp_path):
    url, _, expected = source
    prefix = unique_prefix()
    keys = sorted(expected["pin"])
    poison = str(keys[PAGE + 10])  # in the second page
    flaky = ThrottlingKinesisClient(kinesis.client(), failing_calls=0, always_reject_key=poison)
    cursor = tmp_path / "cursor.json"
    report = emulate(url, "stream", None, KinesisWithClient(kinesis, flaky), prefix, cursor_path=cursor,
                     progress=False, page_size=PAGE)
    assert not report.ok and report.stopped_early
    assert report.failed == {stream_name(prefix, k): 1 for k in EVENT_KINDS}
    assert any("ProvisionedThroughputExceededException" in e for e in report.errors)
    assert "FAILED: 3 records were not delivered" in report.summary()
    # the cursor stays at the last fully acknowledged page, so a resume re-posts the failed page
    assert read_cursor(cursor) == keys[PAGE - 1] == report.last_key
    assert report.events_read == 2 * PAGE

    healed = emulate(url, "stream", None, kinesis, prefix, cursor_path=cursor, resume=True, progress=False,
                     page_size=PAGE)
    assert healed.ok and healed.first_key == keys[PAGE]
    for kind in EVENT_KINDS:
        stored = Counter(int(k) for k, _, _ in kinesis_records(kinesis, stream_name(prefix, kind)))
        assert set(stored) == set(expected[kind])  # nothing lost ...
        assert int(poison) in stored


class _DroppedMessage:
    """What librdkafka hands a delivery callback along with the error: the message (topic, key, value)."""

    def __init__(self, topic, key, value):
        self._topic, self._key, self._value = topic, key, value

    def topic(self):
        return self._topic

    def key(self):
        return self._key

    def value(self):
        return self._value


class DroppingProducer:
    """Wraps a real producer: the first `drop` messages are not sent and their delivery reports say
    the message timed out, as librdkafka reports a delivery that never got acknowledged."""

    def __init__(self, producer, drop_every: int = 5, drop: int = 200):
        self._producer = producer
        self.drop_every, self.drop = drop_every, drop
        self.seen = 0
        self.dropped: list = []
        self._due: list = []

    def produce(self, topic, value=None, key=None, on_delivery=None, **kwargs):
        self.seen += 1
        if len(self.dropped) < self.drop and self.seen % self.drop_every == 0:
            from confluent_kafka import KafkaError

            self.dropped.append(key)
            self._due.append((on_delivery, KafkaError(KafkaError._MSG_TIMED_OUT, "injected: not acknowledged"),
                              _DroppedMessage(topic, key, value)))
            return
        self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **kwargs)

    def _fire(self):
        due, self._due = self._due, []
        for callback, err, msg in due:
            callback(err, msg)

    def poll(self, timeout=None):
        self._fire()
        return self._producer.poll(timeout)

    def flush(self, timeout=None):
        self._fire()
        return self._producer.flush(timeout)

    def __getattr__(self, name):
        return getattr(self._producer, name)


def test_failed_kafka_deliveries_are_reproduced(source, kafka, fast_backoff):
    url, _, expected = source
    prefix = unique_prefix()
    wrappers = []

    class Flaky(type(kafka)):
        def producer(self, **overrides):
            wrappers.append(DroppingProducer(super().producer(**overrides)))
            return wrappers[-1]

    report = emulate(url, "batch", Flaky(**kafka.model_dump()), None, prefix, progress=False, page_size=PAGE)
    assert len(wrappers[0].dropped) == 200
    assert sum(report.retried.values()) == 200 and report.ok
    assert_exactly_once(kafka, None, prefix, expected, kinesis_modes=False)


def test_broker_restart_mid_run_loses_nothing(source, tmp_path, monkeypatch):
    """Stop the Kafka broker of a private stack while emulating, start it again: every event arrives."""
    from pinterest_platform.local_stack import LocalStack, procs
    from pinterest_platform.resources.kafka import LocalKafkaResource

    url, _, expected = source
    for env in ("KAFKA_BOOTSTRAP_SERVERS", "AWS_ENDPOINT_URL", "PINTEREST_KAFKA_PORT",
                "PINTEREST_KAFKA_CONTROLLER_PORT", "PINTEREST_MOTO_PORT"):
        monkeypatch.delenv(env, raising=False)
    stack = LocalStack(tmp_path / "private-state")
    try:
        endpoints = stack.up(timeout=120)
        kafka = LocalKafkaResource(bootstrap_servers=endpoints["kafka_bootstrap_servers"])
        prefix = unique_prefix()
        result: dict = {}

        def run():
            try:
                result["report"] = emulate(url, "batch", kafka, None, prefix, rate=300, progress=False,
                                           page_size=50)
            except BaseException as exc:  # surfaced by the assertion below
                result["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.5)  # mid-run: roughly 450 of the 1,200 events posted
        state = json.loads((stack.state_path).read_text())
        kafka_pid = state["components"]["kafka"]["pid"]
        assert procs.stop(kafka_pid) in ("terminated", "killed")
        time.sleep(2.0)
        assert stack.up(timeout=120)["kafka_bootstrap_servers"] == endpoints["kafka_bootstrap_servers"]
        worker.join(timeout=600)  # each re-send waits out a 60 s delivery timeout; a loaded machine needs several
        assert not worker.is_alive(), "emulator did not finish after the broker came back"
        assert "error" not in result, result.get("error")
        report = result["report"]
        print(report.summary())
        assert report.ok, report.summary()
        assert report.events_read == EVENTS
        for kind in EVENT_KINDS:
            messages = kafka_messages(kafka, topic_name(prefix, kind))
            keys = Counter(int(k) for k, _, _ in messages)
            assert set(keys) == set(expected[kind])   # nothing lost
            if not report.retried:                    # idempotent producer: no duplicates either
                assert len(messages) == EVENTS
    finally:
        stack.down()


def test_emulate_command_prints_summary_and_exit_code(source, kafka, kinesis, monkeypatch, capsys):
    url, _, _ = source
    prefix = unique_prefix()
    monkeypatch.setenv("PINTEREST_SOURCE_DB_URL", url)
    monkeypatch.setenv("PINTEREST_TOPIC_PREFIX", prefix)
    args = argparse.Namespace(mode="both", all=False, limit=25, rate=None, via="direct", invoke_url=None,
                              api_key=None, resume=False, no_progress=True)
    assert emulator.emulate_command(args) == 0
    out = capsys.readouterr().out
    assert f"{topic_name(prefix, 'pin')}" in out and "sent        25" in out
    args.all, args.resume = True, True
    assert emulator.emulate_command(args) == 0
    assert f"{stream_name(prefix, 'geo')}" in capsys.readouterr().out
    for kind in EVENT_KINDS:
        assert len(kafka_messages(kafka, topic_name(prefix, kind))) == EVENTS
        assert len(kinesis_records(kinesis, stream_name(prefix, kind))) == EVENTS


def test_post_events_asset_reports_counts(source, kafka, kinesis, monkeypatch):
    import dagster as dg

    from pinterest_platform.assets.ingestion import KAFKA_TOPIC_SPECS, KINESIS_STREAM_SPECS, post_events
    from pinterest_platform.resources.source_db import SqliteSourceDatabase

    url, _, _ = source
    prefix = unique_prefix()
    monkeypatch.setenv("PINTEREST_TOPIC_PREFIX", prefix)
    result = dg.materialize(
        [post_events], resources={"kafka": kafka, "kinesis": kinesis, "source_db": SqliteSourceDatabase(url=url)},
        run_config={"ops": {"ingestion__posted_events": {"config": {"mode": "both", "limit": 30}}}})
    assert result.success
    metadata = result.asset_materializations_for_node("ingestion__posted_events")[0].metadata
    assert metadata["events_read"].value == 30
    assert metadata["records_sent"].value == 180 and metadata["records_failed"].value == 0
    assert len(kafka_messages(kafka, topic_name(prefix, "user"))) == 30

    assert [s.key.path for s in KAFKA_TOPIC_SPECS] == [["kafka", k] for k in EVENT_KINDS]
    assert [s.key.path for s in KINESIS_STREAM_SPECS] == [["kinesis", k] for k in EVENT_KINDS]
    sources = [[["source", "pinterest_data"]], [["source", "geolocation_data"]], [["source", "user_data"]]]
    assert [[d.asset_key.path for d in s.deps] for s in KAFKA_TOPIC_SPECS] == sources
    assert [[d.asset_key.path for d in s.deps] for s in KINESIS_STREAM_SPECS] == sources
    assert all(s.group_name == "kafka" and s.kinds == {"kafka"} for s in KAFKA_TOPIC_SPECS)
    assert all(s.group_name == "kinesis" and s.kinds == {"kinesis"} for s in KINESIS_STREAM_SPECS)


@pytest.mark.mysql
def test_mariadb_source_delivers_exactly_n(mariadb_url, kafka, kinesis, tmp_path):
    """The same exactly-N check with the source in MariaDB (quoted `index`, server-side streaming)."""
    import sqlalchemy as sa

    from pinterest_platform.datagen import source_engine

    n = 300
    assert set(seed_source_database(mariadb_url, n, seed=11, progress=False, replace=True).values()) == {n}
    # the expected rows, read back through SQLite so the same independent reader compares them
    copy = tmp_path / "copy.db"
    seed_source_database(f"sqlite:///{copy}", n, seed=11, progress=False)
    expected = expected_rows(copy)
    engine = source_engine(mariadb_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM pinterest_data")).scalar_one() == n
    engine.dispose()
    prefix = unique_prefix()
    report = emulate(mariadb_url, "both", kafka, kinesis, prefix, progress=False, page_size=120)
    assert report.ok and report.events_read == n
    assert_exactly_once(kafka, kinesis, prefix, expected)


def test_foreign_sqlite_source_with_text_datetimes(kafka, tmp_path):
    """A source database we did not create: datetimes stored as text with a `T` or a space, REAL floats,
    an extra column. Every value is posted as stored, datetimes normalized to ISO-8601 with their time."""
    import sqlite3

    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE pinterest_data ("index" INTEGER, unique_id TEXT, title TEXT, description TEXT,
            poster_name TEXT, follower_count TEXT, tag_list TEXT, is_image_or_video TEXT, image_src TEXT,
            downloaded INTEGER, save_location TEXT, category TEXT, extra TEXT);
        CREATE TABLE geolocation_data (ind INTEGER, timestamp TEXT, latitude REAL, longitude REAL, country TEXT);
        CREATE TABLE user_data (ind INTEGER, first_name TEXT, last_name TEXT, age INTEGER, date_joined DATETIME);
    """)
    conn.executemany('INSERT INTO pinterest_data VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)', [
        (7, "u7", "T", "D", "P ", "26k", "a,b", "image", "http://x/y.jpg", 1, "Local save in /data/art", "art", "x"),
        (3, "u3", "T", "D", "Q", "6M", "c", "video", "http://x/z.jpg", 1, "Local save in /data/travel", "travel", "y"),
    ])
    conn.executemany("INSERT INTO geolocation_data VALUES (?,?,?,?,?)", [
        (7, "2020-08-28T03:52:47", -5.34445, -177.924, "Cote d'Ivoire"),
        (3, "2019-01-02 10:11:12", 12.123456789012345, 99.5, "Chile"),
    ])
    conn.executemany("INSERT INTO user_data VALUES (?,?,?,?,?)", [
        (7, "Ann", "Lee", 20, "2016-03-04T05:06:07"), (3, "Bo", "Ng", 59, "2015-10-01 00:00:01"),
    ])
    conn.commit()
    conn.close()
    prefix = unique_prefix()
    report = emulate(f"sqlite:///{path}", mode="batch", kafka=kafka, prefix=prefix, progress=False)
    assert report.ok
    geo = {json.loads(v)["ind"]: json.loads(v) for _, v, _ in kafka_messages(kafka, topic_name(prefix, "geo"))}
    user = {json.loads(v)["ind"]: json.loads(v) for _, v, _ in kafka_messages(kafka, topic_name(prefix, "user"))}
    pin = [json.loads(v) for _, v, _ in kafka_messages(kafka, topic_name(prefix, "pin"))]
    assert sorted(p["index"] for p in pin) == [3, 7] and "extra" not in pin[0]
    assert geo[7]["timestamp"] == "2020-08-28T03:52:47" and geo[3]["timestamp"] == "2019-01-02T10:11:12"
    assert geo[3]["latitude"] == 12.123456789012345
    assert user[7]["date_joined"] == "2016-03-04T05:06:07" and user[3]["date_joined"] == "2015-10-01T00:00:01"


# --- posted_at: Kafka record timestamps of a chosen day --------------------------------------------

DAY_MS = 86_400_000


def kafka_timestamped(kafka, topic: str, timeout: float = 60) -> list[tuple[int, int, int, int, int]]:
    """Every message of `topic` read with a plain confluent_kafka Consumer, as
    (partition, offset, key, timestamp type, timestamp ms), in partition and offset order."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": kafka.resolved_bootstrap_servers(),
                         "group.id": f"test-ts-{uuid.uuid4().hex}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    return sorted(_read_topic(consumer, topic, lambda msg: (msg.partition(), msg.offset(), int(msg.key()),
                                                              *msg.timestamp()), timeout))


def day_start_ms(day) -> int:
    import datetime as dt

    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 1000


def utc_today():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).date()


def produce_order(kafka, prefix: str) -> list[tuple[int, int, int]]:
    """(key, kind position, timestamp) of every message of the three topics, sorted in the emulator's produce
    order (key order, pin/geo/user within an event) of a single run."""
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    out = []
    for pos, kind in enumerate(EVENT_KINDS):
        for _, _, key, ts_type, ts in kafka_timestamped(kafka, topic_name(prefix, kind)):
            assert ts_type == TIMESTAMP_CREATE_TIME
            out.append((key, pos, ts))
    return sorted(out)


def test_posted_at_stamps_create_time_within_that_day_in_produce_order(source, kafka):
    import datetime as dt

    url, _, expected = source
    keys = sorted(expected["pin"])
    day = utc_today() - dt.timedelta(days=3)
    start, end = day_start_ms(day), day_start_ms(day) + DAY_MS - 1

    prefix = unique_prefix()
    before = time.time_ns() // 1_000_000
    report = emulate(url, "batch", kafka, None, prefix, limit=40, posted_at=day, progress=False, page_size=15)
    after = time.time_ns() // 1_000_000
    assert report.ok and report.events_read == 40 and report.posted_at == day.isoformat()
    assert f"Kafka record timestamps: {day.isoformat()} (UTC)" in report.summary()
    stamped = produce_order(kafka, prefix)
    assert [(k, p) for k, p, _ in stamped] == [(k, p) for k in keys[:40] for p in range(3)]
    stamps = [ts for _, _, ts in stamped]
    assert all(start <= ts <= end for ts in stamps)
    assert stamps == sorted(stamps), "timestamps follow the produce order"
    # the day at the UTC time of day of posting (measured from the midnight the run started on)
    midnight = before // DAY_MS * DAY_MS
    assert start + (before - midnight) <= stamps[0] and stamps[-1] <= min(start + (after - midnight), end)

    # without posted_at: the producer's own timestamp, i.e. now
    live = unique_prefix()
    before = time.time_ns() // 1_000_000
    assert emulate(url, "batch", kafka, None, live, limit=10, progress=False).ok
    after = time.time_ns() // 1_000_000
    stamps = [ts for _, _, ts in produce_order(kafka, live)]
    assert len(stamps) == 30 and all(before - 1000 <= ts <= after + 1000 for ts in stamps)


def test_posted_at_runs_keep_their_order_and_clamp_at_the_days_end(source, kafka, monkeypatch):
    """Driven clock: a run starting a moment before (wall) midnight, and a second one crossing it. The second
    run's records come after the first's, and those produced after midnight stay at 23:59:59.999."""
    import datetime as dt

    url, _, _ = source
    day = utc_today() - dt.timedelta(days=1)
    start, end = day_start_ms(day), day_start_ms(day) + DAY_MS - 1
    clock = {"now": day_start_ms(utc_today()) + DAY_MS - 200}   # today 23:59:59.800 (wall)

    def fake_wall_ms() -> int:
        clock["now"] += 5
        return clock["now"]

    monkeypatch.setattr(emulator, "_wall_ms", fake_wall_ms)
    prefix = unique_prefix()
    assert emulate(url, "batch", kafka, None, prefix, limit=10, posted_at=day, progress=False).ok
    first = [ts for _, _, ts in produce_order(kafka, prefix)]
    assert len(first) == 30 and all(start <= ts < end for ts in first) and first == sorted(first)
    assert emulate(url, "batch", kafka, None, prefix, limit=20, posted_at=day, progress=False).ok

    from confluent_kafka import TIMESTAMP_CREATE_TIME

    everything = []
    for kind in EVENT_KINDS:
        messages = kafka_timestamped(kafka, topic_name(prefix, kind))
        assert {t for _, _, _, t, _ in messages} == {TIMESTAMP_CREATE_TIME}
        for partition in {p for p, *_ in messages}:   # offset order = produce order across both runs
            in_partition = [ts for p, _, _, _, ts in messages if p == partition]
            assert in_partition == sorted(in_partition)
        everything.extend(ts for *_, ts in messages)
    second = sorted(everything)[30:]
    assert len(second) == 60 and min(second) >= max(first)
    assert all(start <= ts <= end for ts in everything)
    assert second.count(end) > 1, "records produced after midnight are clamped to the day's last millisecond"


def test_resume_continues_after_the_last_event_whatever_day_it_was_stamped(source, kafka, tmp_path):
    """History is replayed day by day: the next events, on the next day, from the one cursor."""
    import datetime as dt

    url, _, expected = source
    keys = sorted(expected["pin"])
    prefix = unique_prefix()
    day, next_day = utc_today() - dt.timedelta(days=2), utc_today() - dt.timedelta(days=1)
    cursor = emulator.default_cursor_path(tmp_path, prefix, "batch")

    first = emulate(url, "batch", kafka, None, prefix, limit=30, posted_at=day, cursor_path=cursor, progress=False)
    assert first.ok and first.first_key == keys[0] and read_cursor(cursor) == keys[29]
    rest = emulate(url, "batch", kafka, None, prefix, limit=20, posted_at=next_day, cursor_path=cursor,
                   resume=True, progress=False)
    assert rest.ok and rest.first_key == keys[30] and read_cursor(cursor) == keys[49]
    live = emulate(url, "batch", kafka, None, prefix, limit=1, cursor_path=cursor, resume=True, progress=False)
    assert live.first_key == keys[50]
    stamps = [ts for _, _, ts in produce_order(kafka, prefix)]
    # 3 topics: 30 events on the first day, 20 on the next, 1 now
    assert sum(day_start_ms(day) <= ts < day_start_ms(day) + DAY_MS for ts in stamps) == 90
    assert sum(day_start_ms(next_day) <= ts < day_start_ms(next_day) + DAY_MS for ts in stamps) == 60
    assert sum(ts >= day_start_ms(utc_today()) for ts in stamps) == 3


def test_posted_at_needs_topics_that_keep_such_timestamps(source, kafka):
    import datetime as dt

    from confluent_kafka.admin import NewTopic

    url, _, _ = source

    def create(prefix: str, config: dict) -> None:
        admin = kafka.admin()   # referenced until the answers are in
        futures = admin.create_topics(
            [NewTopic(topic_name(prefix, k), num_partitions=3, replication_factor=1, config=config)
             for k in EVENT_KINDS], operation_timeout=30)
        for future in futures.values():
            future.result(30)

    # Kafka's default topics keep 7 days (retention.ms, by record timestamp; the local stack's broker keeps
    # everything): a month-old day would be deleted
    prefix = unique_prefix()
    create(prefix, {"retention.ms": str(7 * DAY_MS)})
    with pytest.raises(ValueError, match="retention.ms"):
        emulate(url, "batch", kafka, None, prefix, limit=5, posted_at=utc_today() - dt.timedelta(days=30),
                progress=False)

    # topics kept forever take history: records of a 2019 day
    history = unique_prefix()
    create(history, {"retention.ms": "-1"})
    day = dt.date(2019, 3, 15)
    assert emulate(url, "batch", kafka, None, history, limit=10, posted_at=day, progress=False).ok
    stamps = [ts for _, _, ts in produce_order(kafka, history)]
    assert len(stamps) == 30 and all(day_start_ms(day) <= ts < day_start_ms(day) + DAY_MS for ts in stamps)

    # a topic whose broker overwrites the timestamps cannot take posted_at
    appended = unique_prefix()
    create(appended, {"message.timestamp.type": "LogAppendTime"})
    with pytest.raises(ValueError, match="LogAppendTime"):
        emulate(url, "batch", kafka, None, appended, limit=5, posted_at=utc_today(), progress=False)


def test_posted_at_api_refuses_kinesis_http_and_the_future(source, kafka, kinesis):
    import datetime as dt

    url, _, _ = source
    past = utc_today() - dt.timedelta(days=1)
    for mode in ("stream", "both"):
        with pytest.raises(ValueError, match="approximateArrivalTimestamp"):
            emulate(url, mode, kafka, kinesis, unique_prefix(), posted_at=past, progress=False)
    with pytest.raises(ValueError, match="REST"):
        emulate(url, "batch", via="http", invoke_url="http://127.0.0.1:9", posted_at=past, progress=False)
    with pytest.raises(ValueError, match="future"):
        emulate(url, "batch", kafka, posted_at=utc_today() + dt.timedelta(days=1), progress=False)


def test_cli_posted_at_refusals_exit_2(capsys):
    import datetime as dt

    from pinterest_platform.cli import main

    past = (utc_today() - dt.timedelta(days=1)).isoformat()
    for argv in (["emulate", "--posted-at", past],                      # default --mode both
                 ["emulate", "--mode", "stream", "--posted-at", past],
                 ["emulate", "--mode", "both", "--posted-at", past]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Kinesis cannot be given an arrival time" in err and "--mode batch" in err
    assert main(["emulate", "--mode", "batch", "--via", "http", "--posted-at", past]) == 2
    err = capsys.readouterr().err
    assert "REST proxy" in err and "--via direct" in err

    future = (utc_today() + dt.timedelta(days=1)).isoformat()
    for bad, says in (("2023-02-30", "not a date"), ("yesterday", "not a date"), ("20230101", "not a date"),
                      (future, "in the future")):
        with pytest.raises(SystemExit) as exit_:
            main(["emulate", "--mode", "batch", "--posted-at", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "argument --posted-at" in err and says in err


def test_cli_posted_at_posts_and_keeps_the_cursor(source, kafka, monkeypatch, capsys):
    import datetime as dt

    from pinterest_platform.cli import main
    from pinterest_platform.settings import load_settings

    url, _, _ = source
    prefix = unique_prefix()
    monkeypatch.setenv("PINTEREST_SOURCE_DB_URL", url)
    monkeypatch.setenv("PINTEREST_TOPIC_PREFIX", prefix)
    day = utc_today() - dt.timedelta(days=2)
    assert main(["emulate", "--mode", "batch", "--limit", "5", "--posted-at", day.isoformat(), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Kafka record timestamps: {day.isoformat()}" in out
    state = load_settings().state_dir
    assert read_cursor(emulator.default_cursor_path(state, prefix, "batch")) is not None
    stamps = [ts for _, _, ts in produce_order(kafka, prefix)]
    assert len(stamps) == 15 and all(day_start_ms(day) <= ts < day_start_ms(day) + DAY_MS for ts in stamps)


# --- the JSON text on the wire -----------------------------------------------------------------------


def test_encode_row_is_byte_for_byte_the_stdlib_compact_json():
    """encode_row (orjson where it writes the same bytes) == json.dumps(ensure_ascii=False, compact), for
    the values a source row can hold: floats of every magnitude (orjson writes 1e-05 as 0.00001), NaN and
    infinities, None, huge ints, emoji, control characters, strings that look like those markers."""
    import math
    import random
    import struct

    def reference(row):
        return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    rng = random.Random(13)
    floats = [0.0, -0.0, 1e-4, 9.999e-5, 1e-5, -1e-7, 1e-10, 5e-324, 1e15, 1e16, 1.5e22, 123456789012345.6,
              -5.34445, 12.123456789012345, math.nan, math.inf, -math.inf, 1.7976931348623157e308]
    floats += [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 20) for _ in range(3000)]
    floats += [struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    texts = ["", "plain", "User Info Error 😀 ", "a\x00\x1f\x7f\"\\/\n\t\u2028\u2029é", "1e-5", "0.00001",
             "null", "756d3bcb-8e35-4b6a-be1e-77e1cff61e34", "Local save in /data/art"]
    ints = [0, -1, 2**63 - 1, -2**63, 2**64, -2**70, True, False]
    for i, value in enumerate(floats):
        row = {"ind": i, "timestamp": "2020-08-28T03:52:47", "latitude": value, "longitude": -value,
               "country": texts[i % len(texts)], "n": ints[i % len(ints)], "none": None if i % 3 else "x"}
        assert emulator.encode_row(row) == reference(row), row
    for text in texts:
        assert emulator.encode_row({"title": text, "k": None}) == reference({"title": text, "k": None})
    # a lone surrogate cannot be UTF-8: an error, as with the stdlib
    with pytest.raises(UnicodeEncodeError):
        emulator.encode_row({"title": "\ud800"})


def test_pages_carry_the_rows_and_their_json_in_posting_order(source):
    url, _, expected = source
    reader = emulator.SourceReader(url, page_size=PAGE)
    try:
        keys = sorted(expected["pin"])
        seen = []
        for page in reader.record_pages(limit=500):
            assert page.events <= PAGE and page.first_key == page.keys[0] and page.last_key == page.keys[-1]
            for kind, key, row, payload in zip(page.kinds, page.keys, page.rows, page.payloads, strict=True):
                assert row == expected[kind][key] and payload == emulator.encode_row(row)
                seen.append((key, kind))
        assert seen == [(k, kind) for k in keys[:500] for kind in EVENT_KINDS]
        events = [e for p in reader.pages(limit=500) for e in p]
        assert [k for k, _ in events] == keys[:500]
        assert all(rows[kind] == expected[kind][key] for key, rows in events for kind in EVENT_KINDS)
    finally:
        reader.close()
