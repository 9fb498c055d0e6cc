"""The `kinesis-local` data source inside real Spark Structured Streaming, against moto."""

from __future__ import annotations

import pytest

from pinterest_platform import contract
from pinterest_platform.streaming.kinesis_source import FORMAT_NAME, register
from pinterest_platform_tests.streaming.conftest import put_records


def _start(spark, stream: str, endpoint: str, checkpoint: str, batches: list, trigger: dict, **options):
    register(spark)
    reader = (spark.readStream.format(FORMAT_NAME).option("streamName", stream).option("region", "us-east-1")
              .option("endpoint", endpoint).option("awsAccessKey", "testing").option("awsSecretKey", "testing"))
    for key, value in options.items():
        reader = reader.option(key, str(value))

    def collect(df, batch_id):
        assert df.schema == contract.KINESIS_SOURCE_SCHEMA
        batches.append((batch_id, [r.asDict() for r in df.collect()]))

    return (reader.load().writeStream.foreachBatch(collect).option("checkpointLocation", checkpoint)
            .trigger(**trigger).start())


def run_available_now(spark, stream: str, endpoint: str, checkpoint: str, **options) -> list[tuple[int, list]]:
    """Drain `stream` once, as the stream job does (availableNow trigger and option); returns (batch_id, rows)
    for every micro-batch."""
    batches: list[tuple[int, list]] = []
    query = _start(spark, stream, endpoint, checkpoint, batches, {"availableNow": True}, availableNow="true",
                   **options)
    try:
        assert query.awaitTermination(timeout=300), "availableNow query did not finish"
    finally:
        query.stop()
    if query.exception() is not None:
        raise query.exception()
    return batches


def run_processing_time(spark, stream: str, endpoint: str, checkpoint: str, **options) -> list[tuple[int, list]]:
    """A processing-time query until it has processed everything available; returns (batch_id, rows)."""
    batches: list[tuple[int, list]] = []
    query = _start(spark, stream, endpoint, checkpoint, batches, {"processingTime": "200 milliseconds"}, **options)
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    if query.exception() is not None:
        raise query.exception()
    return [(batch_id, rows) for batch_id, rows in batches if rows]


def rows_of(batches) -> list[dict]:
    return [row for _, rows in batches for row in rows]


def stream_records(client, stream: str) -> set[tuple[str, str, bytes]]:
    """Everything moto holds for the stream, read directly: (shardId, sequenceNumber, data)."""
    out = set()
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            answer = client.get_records(ShardIterator=iterator, Limit=10000)
            out |= {(shard["ShardId"], r["SequenceNumber"], r["Data"]) for r in answer["Records"]}
            if not answer["Records"]:
                break
            iterator = answer["NextShardIterator"]
    return out


def payloads(start: int, n: int) -> list[bytes]:
    return [f'{{"ind": {i}, "text": "record {i}"}}'.encode() for i in range(start, start + n)]


def test_reads_every_record_of_three_shards_then_resumes(spark, kinesis_client, kinesis_endpoint, make_stream,
                                                         tmp_path):
    stream = make_stream(shards=3)
    put_records(kinesis_client, stream, payloads(0, 600))
    checkpoint = str(tmp_path / "checkpoint")

    first = rows_of(run_available_now(spark, stream, kinesis_endpoint, checkpoint))
    got = [(r["shardId"], r["sequenceNumber"], bytes(r["data"])) for r in first]
    assert len(got) == 600 and set(got) == stream_records(kinesis_client, stream)
    assert {r["shardId"] for r in first} == {f"shardId-{i:012d}" for i in range(3)}
    assert {r["stream"] for r in first} == {stream}
    assert all(r["approximateArrivalTimestamp"] is not None and r["partitionKey"] for r in first)

    # a restart from the same checkpoint reads only what arrived since
    put_records(kinesis_client, stream, payloads(600, 150), keys=[str(i) for i in range(600, 750)])
    second = rows_of(run_available_now(spark, stream, kinesis_endpoint, checkpoint))
    assert sorted(bytes(r["data"]) for r in second) == sorted(payloads(600, 150))

    # and nothing at all when nothing arrived
    assert run_available_now(spark, stream, kinesis_endpoint, checkpoint) == []


def test_max_records_per_trigger_gives_several_bounded_batches(spark, kinesis_client, kinesis_endpoint,
                                                               make_stream, tmp_path):
    stream = make_stream(shards=3)
    put_records(kinesis_client, stream, payloads(0, 300))
    batches = run_processing_time(spark, stream, kinesis_endpoint, str(tmp_path / "cp"), maxRecordsPerTrigger=100)
    assert [len(rows) for _, rows in batches] == [100, 100, 100]
    assert sorted(bytes(r["data"]) for r in rows_of(batches)) == sorted(payloads(0, 300))


def test_available_now_drains_everything_despite_a_per_trigger_cap(spark, kinesis_client, kinesis_endpoint,
                                                                    make_stream, tmp_path):
    # Spark 4.0 runs availableNow over a Python source as one batch: a cap there would leave records behind
    stream = make_stream(shards=3)
    put_records(kinesis_client, stream, payloads(0, 300))
    batches = run_available_now(spark, stream, kinesis_endpoint, str(tmp_path / "cp"), maxRecordsPerTrigger=100)
    assert sorted(bytes(r["data"]) for r in rows_of(batches)) == sorted(payloads(0, 300))


def test_empty_stream_finishes_without_a_batch(spark, kinesis_endpoint, make_stream, tmp_path):
    stream = make_stream(shards=2)
    checkpoint = str(tmp_path / "cp")
    # Spark runs the first batch of a new query even when it is empty (it records the initial offset)
    assert run_available_now(spark, stream, kinesis_endpoint, checkpoint) in ([], [(0, [])])
    assert run_available_now(spark, stream, kinesis_endpoint, checkpoint) == []


def test_resharded_stream_loses_and_duplicates_nothing(spark, kinesis_client, kinesis_endpoint, make_stream,
                                                       tmp_path):
    stream = make_stream(shards=2)
    put_records(kinesis_client, stream, payloads(0, 200))
    checkpoint = str(tmp_path / "cp")
    first = rows_of(run_available_now(spark, stream, kinesis_endpoint, checkpoint))
    shard = kinesis_client.list_shards(StreamName=stream)["Shards"][0]
    middle = (int(shard["HashKeyRange"]["StartingHashKey"]) + int(shard["HashKeyRange"]["EndingHashKey"])) // 2
    kinesis_client.split_shard(StreamName=stream, ShardToSplit=shard["ShardId"], NewStartingHashKey=str(middle))
    kinesis_client.update_shard_count(StreamName=stream, TargetShardCount=6, ScalingType="UNIFORM_SCALING")
    assert len(kinesis_client.list_shards(StreamName=stream)["Shards"]) > 3
    put_records(kinesis_client, stream, payloads(200, 200), keys=[str(i) for i in range(200, 400)])
    second = rows_of(run_available_now(spark, stream, kinesis_endpoint, checkpoint))
    data = [bytes(r["data"]) for r in first + second]
    assert sorted(data) == sorted(payloads(0, 400))


def test_missing_stream_fails_the_query_clearly(spark, kinesis_endpoint, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        run_available_now(spark, "streaming-no-such-stream", kinesis_endpoint, str(tmp_path / "cp"))
