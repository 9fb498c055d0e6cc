"""The Kinesis source's planning and reading without Spark: the reader is driven the way Spark 4.0's
micro-batch engine drives a Python source (latestOffset, initialOffset, partitions, read, commit), against the fake
Kinesis of fake_kinesis.py, which behaves like the real service where moto does not."""

from __future__ import annotations

import json
import time

import pytest

from pinterest_platform.streaming import kinesis_source as ks
from pinterest_platform_tests.streaming.fake_kinesis import FakeKinesis

STREAM = "streaming-test-pin"
REAL_SLEEP = time.sleep  # time.sleep itself is patched out below, for the backoff paths


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch):
    monkeypatch.setattr(ks.time, "sleep", lambda _s: None)


def make_reader(fake: FakeKinesis, **options) -> ks.KinesisStreamReader:
    opts = {"streamName": STREAM, "maxRecordsPerFetch": "7", **{k: str(v) for k, v in options.items()}}
    return ks.KinesisStreamReader(ks.SourceOptions.parse(opts), client=fake)


def put(fake: FakeKinesis, start: int, n: int, stream: str = STREAM) -> list[bytes]:
    data = [f'{{"i": {i}}}'.encode() for i in range(start, start + n)]
    for i, d in zip(range(start, start + n), data, strict=True):
        fake.put(stream, d, str(i))
    return data


def read_partition(reader: ks.KinesisStreamReader, part: ks.ShardRange) -> list[dict]:
    return [row for batch in reader.read(part) for row in batch.to_pylist()]


def drive(reader, start=None, *, max_batches=200):
    """Spark's micro-batch loop; returns (final offset, rows per batch). Offsets go through JSON as in Spark.

    With `start`, a restarted query: Spark first re-plans its last logged batch, which is how a Python
    source without admission control learns where it stands."""
    if start is None:
        start = reader.initialOffset()
    else:
        reader.partitions(start, start)
    start = json.loads(json.dumps(start))
    batches = []
    for _ in range(max_batches):
        end = json.loads(json.dumps(reader.latestOffset()))
        if json.dumps(end) == json.dumps(start):
            return start, batches
        rows = [row for part in reader.partitions(start, end) for row in read_partition(reader, part)]
        batches.append(rows)
        reader.commit(end)
        start = end
    raise AssertionError("query did not converge")


def datas(batches) -> list[bytes]:
    return [row["data"] for rows in batches for row in rows]


def test_reads_every_record_of_every_shard_once():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 3)
    sent = put(fake, 0, 200)
    offset, batches = drive(make_reader(fake))
    got = datas(batches)
    assert sorted(got) == sorted(sent)
    assert len(got) == len(set(got))
    assert set(offset[STREAM]) == {s.shard_id for s in fake.streams[STREAM]}
    row = batches[0][0]
    assert set(row) == {f.name for f in ks.KINESIS_SOURCE_SCHEMA.fields}
    assert row["stream"] == STREAM and row["approximateArrivalTimestamp"].tzinfo is not None


def test_rows_carry_shard_sequence_and_key():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    put(fake, 0, 30)
    _, batches = drive(make_reader(fake))
    expected = {(shard, seq, data) for shard, seq, data in fake.all_records(STREAM)}
    got = {(r["shardId"], r["sequenceNumber"], r["data"]) for rows in batches for r in rows}
    assert got == expected
    # within a shard, rows come in sequence order
    for rows in batches:
        by_shard: dict[str, list[int]] = {}
        for r in rows:
            by_shard.setdefault(r["shardId"], []).append(int(r["sequenceNumber"]))
        assert all(seqs == sorted(seqs) for seqs in by_shard.values())


def test_resume_from_offset_reads_only_new_records():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 3)
    put(fake, 0, 100)
    offset, _ = drive(make_reader(fake))
    more = put(fake, 100, 50)
    # a new reader (a restarted query) from the checkpointed offset
    offset2, batches = drive(make_reader(fake), start=offset)
    assert sorted(datas(batches)) == sorted(more)
    assert drive(make_reader(fake), start=offset2)[1] == []


def test_empty_stream_gives_no_batch():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 3)
    reader = make_reader(fake)
    offset, batches = drive(reader)
    assert batches == []
    assert offset == {STREAM: {}}


def test_max_records_per_trigger_splits_batches_fairly():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 3)
    sent = put(fake, 0, 250)
    _, batches = drive(make_reader(fake, maxRecordsPerTrigger=40))
    assert all(0 < len(rows) <= 40 for rows in batches)
    assert len(batches) == -(-250 // 40)
    assert sorted(datas(batches)) == sorted(sent)
    # every shard contributes to the first batch (fair share, not shard after shard)
    assert len({r["shardId"] for r in batches[0]}) == 3


def test_available_now_ignores_records_that_arrive_during_the_run():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    sent = put(fake, 0, 60)
    # Spark 4.0 runs availableNow as one batch: the per-trigger cap must not cut it short
    reader = make_reader(fake, maxRecordsPerTrigger=25, availableNow="true")
    start = json.loads(json.dumps(reader.initialOffset()))
    seen, batches = [], 0
    for i in range(20):
        end = reader.latestOffset()
        if end == start:
            break
        batches += 1
        seen += [r["data"] for p in reader.partitions(start, end) for r in read_partition(reader, p)]
        reader.commit(end)
        start = end
        if i == 0:
            put(fake, 1000, 30)  # arrives after the run's target was fixed
    assert sorted(seen) == sorted(sent)
    assert batches == 1


def test_available_now_terminates_on_a_stream_that_never_stops():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    sent = put(fake, 0, 40)
    counter = iter(range(10_000, 10**9))

    def busy_producer():
        for _ in range(5):
            i = next(counter)
            fake.put(STREAM, f'{{"i": {i}}}'.encode(), str(i))

    fake.on_get_records = busy_producer
    # the tip moves on every read (MillisBehindLatest never reaches 0); the run still ends
    _, batches = drive(make_reader(fake, maxRecordsPerFetch=3, availableNow="true"))
    got = datas(batches)
    assert set(sent) <= set(got)
    assert len(got) == len(set(got))


def test_replayed_batch_reads_the_same_records():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 3)
    put(fake, 0, 90)
    reader = make_reader(fake)
    start = json.loads(json.dumps(reader.initialOffset()))
    end = json.loads(json.dumps(reader.latestOffset()))
    first = [r for p in reader.partitions(start, end) for r in read_partition(reader, p)]
    put(fake, 90, 40)  # more data after the batch was planned must not leak into its replay
    replay_reader = make_reader(fake)  # a restarted driver replays the logged (start, end)
    replay = [r for p in replay_reader.partitions(start, end) for r in read_partition(replay_reader, p)]
    assert first == replay
    assert len(first) == 90


def test_planned_ranges_carry_the_records_the_driver_read(monkeypatch):
    """The driver read the records to find the tip: the task emits those, with no GetRecords of its own, and
    they are the records a restarted driver's replay of the same (start, end) fetches from Kinesis."""
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    put(fake, 0, 60)
    reader = make_reader(fake, maxRecordsPerTrigger=40)
    start = json.loads(json.dumps(reader.initialOffset()))
    end = json.loads(json.dumps(reader.latestOffset()))
    parts = reader.partitions(start, end)
    assert parts and all(p.records is not None for p in parts)
    calls = fake.calls["get_records"]
    first = [r for p in parts for r in read_partition(reader, p)]
    assert fake.calls["get_records"] == calls and len(first) == 40
    replay_parts = make_reader(fake).partitions(start, end)
    assert all(p.records is None for p in replay_parts)
    assert [r for p in replay_parts for r in read_partition(reader, p)] == first
    # committed records are dropped from the driver's cache; the next range carries only its own
    reader.commit(end)
    end2 = json.loads(json.dumps(reader.latestOffset()))
    second = [r for p in reader.partitions(end, end2) for r in read_partition(reader, p)]
    assert len(second) == 20 and not {r["sequenceNumber"] for r in second} & {r["sequenceNumber"] for r in first}


def test_a_short_range_fetches_only_its_records(monkeypatch):
    fake = FakeKinesis()
    fake.create_stream(STREAM, 1)
    put(fake, 0, 50)
    # the task fetching its range itself (as after a restart), not given the driver's records
    reader = make_reader(fake, maxRecordsPerFetch=1000, maxRecordsPerTrigger=10, reuseDriverReads="false")
    start = json.loads(json.dumps(reader.initialOffset()))
    end = reader.latestOffset()
    (part,) = reader.partitions(start, end)
    assert part.count == 10
    limits = []
    real = ks._get_records
    monkeypatch.setattr(ks, "_get_records", lambda c, it, limit: limits.append(limit) or real(c, it, limit))
    assert len(read_partition(reader, part)) == 10 and limits == [10]
    # a replay planned by a restarted driver does not know the count and still reads exactly the range
    (replayed,) = make_reader(fake, maxRecordsPerFetch=1000).partitions(start, end)
    assert replayed.count is None and len(read_partition(reader, replayed)) == 10


def test_parent_shard_is_drained_before_its_children():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    parent = fake.streams[STREAM][0].shard_id
    before = put(fake, 0, 120)
    child_a, child_b = fake.split(STREAM, parent)
    after = put(fake, 120, 120)
    _, batches = drive(make_reader(fake, maxRecordsPerTrigger=30))
    assert sorted(datas(batches)) == sorted(before + after)
    assert len(datas(batches)) == len(before) + len(after)
    batch_of = {}
    for i, rows in enumerate(batches):
        for r in rows:
            batch_of.setdefault(r["shardId"], []).append(i)
    assert max(batch_of[parent]) < min(batch_of[child_a] + batch_of[child_b])


def test_new_shards_are_picked_up_while_running():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    first = put(fake, 0, 50)
    reader = make_reader(fake)
    offset, batches = drive(reader)
    assert sorted(datas(batches)) == sorted(first)
    a, b = fake.streams[STREAM]
    fake.split(STREAM, a.shard_id)
    merged = fake.merge(STREAM, *[s.shard_id for s in fake.open_shards(STREAM)][:2])
    later = put(fake, 50, 80)
    got = []
    for _ in range(10):  # the same reader, trigger after trigger (processing-time mode)
        offset, batches = drive(reader, start=offset)
        got += datas(batches)
    assert sorted(got) == sorted(later)
    # the closed parents are finished, and the youngest shard (the merge's child) has been started
    listing = {s["ShardId"]: s for s in ks.list_shards(fake, STREAM)}
    assert ks.shard_finished(a.shard_id, offset[STREAM][a.shard_id], listing)
    assert "seq" in offset[STREAM][merged]


def test_expired_iterators_are_reacquired_after_the_last_record():
    fake = FakeKinesis(expire_every=3)
    fake.create_stream(STREAM, 3)
    sent = put(fake, 0, 150)
    _, batches = drive(make_reader(fake, maxRecordsPerTrigger=50))
    assert fake.calls["expired"] > 0
    got = datas(batches)
    assert sorted(got) == sorted(sent) and len(got) == len(set(got))


def test_throttling_is_retried_with_backoff():
    fake = FakeKinesis(throttle_every=4)
    fake.create_stream(STREAM, 3)
    sent = put(fake, 0, 150)
    _, batches = drive(make_reader(fake))
    assert fake.calls["throttled"] > 0
    assert sorted(datas(batches)) == sorted(sent)


def test_throttling_gives_up_after_max_wait():
    from botocore.exceptions import ClientError

    calls = []

    def always_throttled(**_):
        calls.append(1)
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                          "GetRecords")

    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        ks._call(always_throttled, max_wait_s=1.0)
    assert len(calls) > 1


def test_trimmed_records_are_reported_as_data_loss():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 1)
    put(fake, 0, 20)
    reader = make_reader(fake, reuseDriverReads="false")  # the task reads Kinesis (as in a replay)
    start = json.loads(json.dumps(reader.initialOffset()))
    end = reader.latestOffset()
    (part,) = reader.partitions(start, end)
    shard = part.shard_id
    fake.trim(STREAM, shard, 25)  # everything, including the batch's end, is gone
    with pytest.raises(ks.KinesisSourceError, match="no longer be read"):
        read_partition(reader, part)
    lenient = make_reader(fake, failOnDataLoss="false", reuseDriverReads="false")
    assert read_partition(lenient, part) == []


def test_missing_stream_is_a_clear_error():
    fake = FakeKinesis()
    with pytest.raises(ks.KinesisSourceError, match="does not exist"):
        make_reader(fake, streamName="nope").latestOffset()


def test_starting_offsets_place_the_named_streams():
    fake = FakeKinesis()
    other = "streaming-test-geo"
    fake.create_stream(STREAM, 1)
    fake.create_stream(other, 1)
    put(fake, 0, 10)
    put(fake, 100, 5, stream=other)
    offset, _ = drive(make_reader(fake))  # STREAM read to its end by an earlier (per-stream) query
    later = put(fake, 10, 3)
    reader = make_reader(fake, streamName=f"{STREAM},{other}", startingOffsets=json.dumps(offset))
    _, batches = drive(reader)
    rows = [r for rows in batches for r in rows]
    assert sorted(r["data"] for r in rows if r["stream"] == STREAM) == sorted(later)
    assert len([r for r in rows if r["stream"] == other]) == 5  # not named: from initialPosition
    with pytest.raises(ks.KinesisSourceError, match="startingOffsets"):
        make_reader(fake, startingOffsets="[1]").initialOffset()


def test_latest_skips_what_is_already_there():
    fake = FakeKinesis()
    fake.create_stream(STREAM, 2)
    put(fake, 0, 40)
    reader = make_reader(fake, initialPosition="latest")
    REAL_SLEEP(0.005)  # "latest" is a millisecond timestamp: keep the old records out of its millisecond
    start = reader.initialOffset()
    assert all("ts" in state for state in start[STREAM].values())
    REAL_SLEEP(0.005)
    later = put(fake, 40, 30)
    _, batches = drive(reader, start=start)
    assert sorted(datas(batches)) == sorted(later)


def test_several_streams_in_one_source():
    fake = FakeKinesis()
    other = "streaming-test-geo"
    fake.create_stream(STREAM, 2)
    fake.create_stream(other, 1)
    a, b = put(fake, 0, 20), put(fake, 100, 10, stream=other)
    _, batches = drive(make_reader(fake, streamName=f"{STREAM}, {other}"))
    rows = [r for rows in batches for r in rows]
    assert sorted(r["data"] for r in rows if r["stream"] == STREAM) == sorted(a)
    assert sorted(r["data"] for r in rows if r["stream"] == other) == sorted(b)


# --- pure helpers ---------------------------------------------------------------------------------------

def test_allocate_is_fair_and_exact():
    assert ks.allocate([10, 0, 5], None) == [10, 0, 5]
    assert ks.allocate([100, 100, 100], 30) == [10, 10, 10]
    assert ks.allocate([2, 100, 100], 30) == [2, 14, 14]
    assert sum(ks.allocate([7, 3, 50], 31)) == 31
    assert ks.allocate([1, 1], 10) == [1, 1]


def test_offsets_are_canonical_json():
    a = ks.normalize_offset({"s": {"b": {"seq": 5}, "a": {"ts": 10, "closed": False}, "c": {}}})
    b = ks.normalize_offset({"s": {"a": {"ts": "10"}, "b": {"seq": "5"}}})
    assert json.dumps(a) == json.dumps(b) == '{"s": {"a": {"ts": 10}, "b": {"seq": "5"}}}'


@pytest.mark.parametrize("options, message", [
    ({}, "streamName is required"),
    ({"streamName": "s", "initialPosition": "yesterday"}, "initialPosition"),
    ({"streamName": "s", "maxFetchDuration": "soon"}, "duration"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ks.KinesisSourceError, match=message):
        ks.SourceOptions.parse(options)


def test_options_mirror_databricks_names():
    opts = ks.SourceOptions.parse({"STREAMNAME": "a,b", "region": "eu-west-1", "endpoint": "http://x",
                                   "initialPosition": '{"at_timestamp": "2024-01-02T03:04:05Z"}',
                                   "maxFetchDuration": "500ms", "awsAccessKey": "k", "awsSecretKey": "s"})
    assert opts.streams == ("a", "b") and opts.region == "eu-west-1" and opts.endpoint == "http://x"
    assert opts.initial_position == "at_timestamp" and opts.initial_timestamp_ms == 1704164645000
    assert opts.max_fetch_duration_s == 0.5 and opts.access_key == "k"
    assert ks.SourceOptions.parse({"streamName": "a", "initialPosition": "EARLIEST"}).initial_position == "trim_horizon"
