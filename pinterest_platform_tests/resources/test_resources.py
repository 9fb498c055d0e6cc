"""Resources against real components: Kafka (embedded broker), Kinesis and S3 (moto server), the local
lake, and Delta tables written by Spark and read by delta-rs, locally and on the S3 lake."""

from __future__ import annotations

import json
import time
import uuid

import pyarrow as pa
from confluent_kafka import KafkaError, TopicPartition
from deltalake import DeltaTable, write_deltalake

from pinterest_platform.resources.lake import LocalLakeResource


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _drain(consumer, partitions: int, timeout: float = 30.0) -> list:
    """Messages until every partition reported its end."""
    messages, at_end, deadline = [], set(), time.monotonic() + timeout
    while len(at_end) < partitions:
        assert time.monotonic() < deadline, f"no end of partition after {timeout} s (ends seen: {at_end})"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
            at_end.add(msg.partition())
            continue
        at_end.discard(msg.partition())
        messages.append(msg)
    return messages


def test_kafka_produce_and_consume_with_committed_offsets(kafka):
    topic, group = _unique("res-kafka"), _unique("g")
    kafka.ensure_topics([topic], partitions=3)
    kafka.ensure_topics([topic], partitions=3)  # existing topics are fine
    producer = kafka.producer()
    sent = [{"ind": i, "title": f"pin {i}"} for i in range(30)]
    for row in sent:
        producer.produce(topic, key=str(row["ind"]), value=json.dumps(row))
    assert producer.flush(30) == 0

    consumer = kafka.consumer(group)
    consumer.subscribe([topic])
    try:
        messages = _drain(consumer, partitions=3)
        assert sorted(json.loads(m.value())["ind"] for m in messages) == list(range(30))
        ends: dict[int, int] = {}
        for m in messages:
            ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert sum(tp.offset for tp in committed if tp.offset >= 0) == 30
    finally:
        consumer.close()

    again = kafka.consumer(group)
    again.subscribe([topic])
    try:
        assert _drain(again, partitions=3) == []
    finally:
        again.close()


def test_kinesis_put_and_get_records(kinesis):
    stream = _unique("streaming-test-pin")
    kinesis.ensure_streams([stream], shards=1)
    client = kinesis.client()
    rows = [{"ind": i, "category": "travel"} for i in range(10)]
    response = client.put_records(StreamName=stream, Records=[
        {"Data": json.dumps(r).encode(), "PartitionKey": str(r["ind"])} for r in rows])
    assert response["FailedRecordCount"] == 0
    shard = client.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard,
                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = client.get_records(ShardIterator=iterator, Limit=100)["Records"]
    assert [json.loads(r["Data"]) for r in records] == rows


def _lake_roundtrip(lake) -> None:
    lake.write_bytes("topics/t/partition=0/t+0+0000000000.json", b'{"a": 1}\n')
    lake.write_bytes("topics/t/partition=1/t+1+0000000005.json", b'{"a": 2}\n{"a": 3}\n')
    lake.write_bytes("other/x.txt", b"x")
    files = lake.list_files("topics/t")
    assert [f.path for f in files] == ["topics/t/partition=0/t+0+0000000000.json",
                                       "topics/t/partition=1/t+1+0000000005.json"]
    assert [f.size for f in files] == [9, 18]
    assert lake.read_bytes(files[1].path) == b'{"a": 2}\n{"a": 3}\n'
    lake.write_bytes(files[0].path, b'{"a": 10}\n')  # overwrite in place
    assert lake.read_bytes(files[0].path) == b'{"a": 10}\n'
    assert lake.list_files("nothing/here") == []


def test_s3_lake_write_list_read(s3_lake):
    _lake_roundtrip(s3_lake)
    assert s3_lake.root_uri() == f"s3://{s3_lake.bucket}/lake"


def test_local_lake_write_list_read(tmp_path):
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    _lake_roundtrip(lake)
    assert not list((tmp_path / "lake").rglob(".tmp-*"))


def test_spark_delta_table_read_by_deltalake(spark, tmp_path):
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    uri = lake.table_uri("pin")
    df = spark.createDataFrame([(1, "travel", 10), (2, "art", None)], "ind int, category string, follower_count long")
    df.write.format("delta").mode("overwrite").save(uri)
    spark.createDataFrame([(3, "quotes", 5)], df.schema).write.format("delta").mode("append").save(uri)

    back = spark.read.format("delta").load(uri)
    assert sorted(r.ind for r in back.collect()) == [1, 2, 3]

    table = DeltaTable(uri, storage_options=lake.storage_options())
    assert table.version() == 1
    rows = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["ind"])
    assert rows == [{"ind": 1, "category": "travel", "follower_count": 10},
                    {"ind": 2, "category": "art", "follower_count": None},
                    {"ind": 3, "category": "quotes", "follower_count": 5}]


def test_deltalake_on_s3_lake(s3_lake):
    uri = s3_lake.table_uri("geo")
    options = s3_lake.storage_options()
    assert options["AWS_ALLOW_HTTP"] == "true"
    data = pa.table({"ind": pa.array([1, 2], pa.int32()), "country": ["Chad", "Peru"]})
    write_deltalake(uri, data, storage_options=options)
    write_deltalake(uri, pa.table({"ind": pa.array([3], pa.int32()), "country": ["Fiji"]}), mode="append",
                    storage_options=options)

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    assert sorted(table.to_pyarrow_table().column("country").to_pylist()) == ["Chad", "Fiji", "Peru"]
    assert any(f.path.startswith("tables/geo/_delta_log/") for f in s3_lake.list_files("tables/geo"))
