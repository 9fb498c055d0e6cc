"""The raw sink against the embedded broker and real lakes: layout, bounds, exactly-once files across
re-runs and crashes, bad values kept verbatim, and reading files a real Confluent S3 sink wrote."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import TopicPartition

from pinterest_platform.contract import raw_file_name, raw_index_name
from pinterest_platform.ingestion.raw_sink import (
    RawFileCollisionError,
    escape_line_breaks,
    frame_value,
    parse_raw_file_name,
    read_raw_files,
    sink_topics,
)
from pinterest_platform.resources.lake import LocalLakeResource

# every record of these tests is stamped with one day, so the files' paths are known in advance
DAY = datetime.date(2026, 11, 30)
POSTED_MS = int(datetime.datetime(2026, 11, 30, 9, 30, tzinfo=datetime.UTC).timestamp() * 1000)

# records per partition: uneven on purpose, so partition 0 needs two files at 1,000 records per file
SPLIT = {0: 1500, 1: 700, 2: 300}
EXPECTED_FILES = {raw_file_name("{t}", 0, 0, DAY), raw_file_name("{t}", 0, 1000, DAY), raw_file_name("{t}", 1, 0, DAY),
                  raw_file_name("{t}", 2, 0, DAY)}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def lake(tmp_path):
    return LocalLakeResource(root=str(tmp_path / "lake"))


def _produce_rows(kafka, topic: str, split: dict[int, int] = SPLIT) -> int:
    kafka.ensure_topics([topic], partitions=len(split))
    producer = kafka.producer()
    ind = 0
    for partition, count in split.items():
        for _ in range(count):
            row = {"index": ind, "title": f"pin {ind}", "category": "travel"}
            producer.produce(topic, value=json.dumps(row).encode(), partition=partition, timestamp=POSTED_MS)
            ind += 1
    assert producer.flush(60) == 0
    return ind


def _read_lines(lake, topic: str) -> list[bytes]:
    lines = []
    for f in read_raw_files(lake, topic):
        data = lake.read_bytes(f.path)
        assert data.endswith(b"\n")
        lines.extend(data[:-1].split(b"\n"))
    return lines


def _expected(topic: str) -> set[str]:
    return {p.replace("{t}", topic) for p in EXPECTED_FILES}


def _committed(kafka, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = kafka.consumer(group)
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got}


def test_sink_writes_confluent_layout_and_every_record_once(kafka, lake):
    topic, group = _unique("sink"), _unique("g")
    total = _produce_rows(kafka, topic)
    assert total == 2500
    progress = []

    result = sink_topics(kafka, lake, [topic], group, max_records_per_file=1000, log=progress.append)

    assert result[topic]["records"] == 2500 and result[topic]["files"] == 4
    assert set(result[topic]["paths"]) == _expected(topic)
    assert result[topic]["next_offsets"] == {0: 1500, 1: 700, 2: 300}
    assert [f.path for f in read_raw_files(lake, topic)] == sorted(_expected(topic))
    lines = _read_lines(lake, topic)
    assert len(lines) == 2500
    assert Counter(json.loads(line)["index"] for line in lines) == Counter(range(2500))
    # bare row objects, byte for byte what was produced
    assert lines[0] == json.dumps({"index": 0, "title": "pin 0", "category": "travel"}).encode()
    # each file starts at the offset in its name and holds consecutive offsets of its partition
    second = lake.read_bytes(raw_file_name(topic, 0, 1000, DAY)).splitlines()
    assert len(second) == 500 and json.loads(second[0])["index"] == 1000
    assert _committed(kafka, group, topic, 3) == {0: 1500, 1: 700, 2: 300}
    assert any("wrote" in line for line in progress)

    before = {f.path: f.modified for f in read_raw_files(lake, topic)}
    again = sink_topics(kafka, lake, [topic], group, max_records_per_file=1000)
    assert again[topic]["records"] == 0 and again[topic]["files"] == 0
    assert {f.path: f.modified for f in read_raw_files(lake, topic)} == before


def test_sink_picks_up_only_new_records(kafka, lake):
    topic, group = _unique("sink-incr"), _unique("g")
    _produce_rows(kafka, topic, {0: 10, 1: 10})
    assert sink_topics(kafka, lake, [topic], group)[topic]["records"] == 20
    producer = kafka.producer()
    for i in range(5):
        producer.produce(topic, value=json.dumps({"index": 100 + i}).encode(), partition=1, timestamp=POSTED_MS)
    producer.flush(30)
    result = sink_topics(kafka, lake, [topic], group)
    assert result[topic]["records"] == 5
    assert result[topic]["paths"] == [raw_file_name(topic, 1, 10, DAY)]
    assert len(_read_lines(lake, topic)) == 25


def test_crash_between_write_and_commit_rewrites_the_same_file(kafka, lake):
    topic, group = _unique("sink-crash"), _unique("g")
    _produce_rows(kafka, topic)
    written = []

    class Crash(Exception):
        pass

    def crash_on_second_file(path: str, records: int) -> None:
        written.append(path)
        if len(written) == 2:
            raise Crash(path)

    with pytest.raises(Crash):
        sink_topics(kafka, lake, [topic], group, max_records_per_file=1000, on_file_written=crash_on_second_file)
    orphan = written[-1]
    assert orphan in {f.path for f in read_raw_files(lake, topic)}  # written, never committed
    orphan_name = parse_raw_file_name(orphan, topic)
    # the group's offset stops where the orphan begins (-1001: nothing committed yet)
    expected_offset = orphan_name.offset if orphan_name.offset else -1001
    assert _committed(kafka, group, topic, 3)[orphan_name.partition] == expected_offset

    result = sink_topics(kafka, lake, [topic], group, max_records_per_file=1000)
    assert orphan in result[topic]["paths"]  # the same name, rewritten from the same offset
    assert {f.path for f in read_raw_files(lake, topic)} == _expected(topic)
    lines = _read_lines(lake, topic)
    assert len(lines) == 2500
    assert Counter(json.loads(line)["index"] for line in lines) == Counter(range(2500))


def test_values_that_are_not_json_land_verbatim(kafka, lake):
    topic, group = _unique("sink-bad"), _unique("g")
    kafka.ensure_topics([topic], partitions=1)
    values = [
        b'{"index": 1, "title": "ok"}',
        b"not json at all",
        b'{"index": 2, "title": "\xff\xfe broken utf-8"}',
        b'{\n  "index": 3,\n  "title": "pretty \\n printed"\n}',
        b"broken {\n json\r\n",
        b"",
        None,
        '{"index": 4, "title": "caf\u00e9 \u2028 \U0001f600"}'.encode(),
    ]
    producer = kafka.producer()
    for value in values:
        producer.produce(topic, value=value, partition=0, timestamp=POSTED_MS)
    producer.flush(30)

    result = sink_topics(kafka, lake, [topic], group)
    assert result[topic]["records"] == len(values)
    data = lake.read_bytes(raw_file_name(topic, 0, 0, DAY))
    lines = data[:-1].split(b"\n")
    assert len(lines) == len(values)
    assert lines[0] == values[0]
    assert lines[1] == b"not json at all"
    assert lines[2] == values[2]  # invalid UTF-8 kept byte for byte
    assert lines[3] == b'{"index":3,"title":"pretty \\n printed"}'
    assert json.loads(lines[3]) == json.loads(values[3])
    assert lines[4] == b"broken {\\n json\\r\\n" == escape_line_breaks(values[4])
    assert lines[5] == b'""' and lines[6] == b"null"
    assert lines[7] == values[7]


def test_frame_value_rules():
    assert frame_value(b'{"a":1}') == b'{"a":1}'
    assert frame_value(b'[1,\r\n2]') == b"[1,2]"
    assert frame_value(b"  \n ") == b'"  \\n "'
    assert frame_value(b"\xff\n") == b"\xff\\n"


def test_empty_and_missing_topics(kafka, lake):
    empty, missing, group = _unique("sink-empty"), _unique("sink-missing"), _unique("g")
    kafka.ensure_topics([empty], partitions=2)
    messages = []
    result = sink_topics(kafka, lake, [empty, missing], group, idle_timeout_s=20, log=messages.append)
    assert result[empty] == {"records": 0, "files": 0, "paths": [], "exists": True,
                             "next_offsets": {0: 0, 1: 0}, "end_offsets": {0: 0, 1: 0}}
    assert result[missing]["exists"] is False and result[missing]["records"] == 0
    assert any(missing in m and "does not exist" in m for m in messages)
    assert missing not in kafka.admin().list_topics(timeout=10).topics  # reading never creates topics
    assert read_raw_files(lake, empty) == []

    created = sink_topics(kafka, lake, [missing], group, create_missing_topics=True)
    assert created[missing]["exists"] is True
    assert missing in kafka.admin().list_topics(timeout=10).topics


def test_byte_bound_splits_files(kafka, lake):
    topic, group = _unique("sink-bytes"), _unique("g")
    _produce_rows(kafka, topic, {0: 100})
    line_size = len(json.dumps({"index": 10, "title": "pin 10", "category": "travel"})) + 1
    result = sink_topics(kafka, lake, [topic], group, max_bytes_per_file=line_size * 10)
    files = read_raw_files(lake, topic)
    assert result[topic]["records"] == 100 and len(files) >= 10
    assert all(f.size <= line_size * 10 for f in files)
    assert len(_read_lines(lake, topic)) == 100


def test_sink_to_s3_lake(kafka, s3_lake):
    topic, group = _unique("sink-s3"), _unique("g")
    _produce_rows(kafka, topic)
    result = sink_topics(kafka, s3_lake, [topic], group, max_records_per_file=1000)
    assert result[topic]["records"] == 2500
    assert [f.path for f in read_raw_files(s3_lake, topic)] == sorted(_expected(topic))
    assert Counter(json.loads(x)["index"] for x in _read_lines(s3_lake, topic)) == Counter(range(2500))


def test_read_raw_files_accepts_a_real_confluent_sink_layout(lake):
    topic = "pinterest.pin"
    lake.write_bytes(f"topics/{topic}/partition=0/{topic}+0+0000000000.json", b'{"index": 1}\n')
    lake.write_bytes(f"topics/{topic}/dt=2024-01-02/partition=1/{topic}+1+0000000042.json", b'{"index": 2}\n')
    lake.write_bytes(f"topics/{topic}/year=2024/month=01/{topic}+2+0000000007.json", b'{"index": 3}\n')
    # not files of this topic's sink output
    lake.write_bytes(f"topics/{topic}/partition=0/README.txt", b"x")
    lake.write_bytes(f"topics/{topic}/partition=3/{topic}+1+0000000001.json", b"{}\n")
    lake.write_bytes(f"topics/{topic}2/partition=0/{topic}2+0+0000000000.json", b"{}\n")
    lake.write_bytes("topics/pinterestXpin/partition=0/pinterestXpin+0+0000000000.json", b"{}\n")

    files = read_raw_files(lake, topic)
    assert [f.path for f in files] == [
        f"topics/{topic}/partition=0/{topic}+0+0000000000.json",
        f"topics/{topic}/dt=2024-01-02/partition=1/{topic}+1+0000000042.json",
        f"topics/{topic}/year=2024/month=01/{topic}+2+0000000007.json",
    ]
    name = parse_raw_file_name(files[1].path, topic)
    assert (name.topic, name.partition, name.offset) == (topic, 1, 42)


# --- crashes, other writers -----------------------------------------------------------------------------

_DYING_SINK = """
import sys, time
from pathlib import Path
from pinterest_platform.ingestion.raw_sink import sink_topics
from pinterest_platform.resources.kafka import LocalKafkaResource
from pinterest_platform.resources.lake import LocalLakeResource
bootstrap, root, topic, group, marker = sys.argv[1:]
def stall(path, records):
    Path(marker).write_text(path)
    time.sleep(600)  # killed here: file written, offset not committed
sink_topics(LocalKafkaResource(bootstrap_servers=bootstrap), LocalLakeResource(root=root), [topic], group,
            max_records_per_file=1000, on_file_written=stall)
"""


def test_a_sink_killed_mid_file_leaves_the_next_run_everything(kafka, lake, tmp_path):
    """kill -9 of the sink while it writes; the next run reads up to the end at once (no group session of
    the dead run to wait for) and writes every record exactly once."""
    topic, group = _unique("sink-kill"), _unique("g")
    total = _produce_rows(kafka, topic)
    marker = tmp_path / "written"
    dying = subprocess.Popen([sys.executable, "-c", _DYING_SINK, kafka.resolved_bootstrap_servers(),
                              lake.root, topic, group, str(marker)], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert dying.poll() is None, "the sink died before writing a file"
            assert time.monotonic() < deadline, "the sink never wrote a file"
            time.sleep(0.1)
    finally:
        os.killpg(dying.pid, signal.SIGKILL)
        dying.wait(30)
    started = time.monotonic()
    result = sink_topics(kafka, lake, [topic], group, max_records_per_file=1000, idle_timeout_s=20)
    assert time.monotonic() - started < 20  # it did not sit out an idle timeout or a session timeout
    assert result[topic]["records"] == total
    assert result[topic]["next_offsets"] == result[topic]["end_offsets"] == {p: n for p, n in SPLIT.items()}
    lines = _read_lines(lake, topic)
    assert Counter(json.loads(line)["index"] for line in lines) == Counter(range(total))


def test_another_writers_file_is_never_replaced(kafka, lake):
    topic, group = _unique("sink-foreign"), _unique("g")
    _produce_rows(kafka, topic, {0: 72})
    foreign = raw_file_name(topic, 0, 0, DAY)
    theirs = b"".join(json.dumps({"index": 10_000 + i, "from": "msk-connect"}).encode() + b"\n"
                      for i in range(150))
    lake.write_bytes(foreign, theirs)
    with pytest.raises(RawFileCollisionError) as failure:
        sink_topics(kafka, lake, [topic], group)
    message = str(failure.value)
    assert lake.uri(foreign) in message and "150 records" in message and "offsets 0..71" in message
    assert lake.read_bytes(foreign) == theirs  # untouched
    assert _committed(kafka, group, topic, 1) == {0: -1001}  # nothing committed: the records wait in Kafka

    lake.write_bytes(foreign + ".moved", theirs)
    os.remove(lake.uri(foreign))
    assert sink_topics(kafka, lake, [topic], group)[topic]["records"] == 72


def test_own_uncommitted_file_of_a_shorter_run_is_extended(kafka, lake):
    topic, group = _unique("sink-extend"), _unique("g")
    _produce_rows(kafka, topic, {0: 30})
    path = raw_file_name(topic, 0, 0, DAY)
    consumer = kafka.consumer(_unique("peek"))
    consumer.assign([TopicPartition(topic, 0, 0)])
    first_ten = [m.value() for m in consumer.consume(num_messages=10, timeout=10)]
    consumer.close()
    lake.write_bytes(path, b"\n".join(first_ten) + b"\n")  # what a run that died before committing left
    messages = []
    result = sink_topics(kafka, lake, [topic], group, log=messages.append)
    assert result[topic]["records"] == 30
    assert len(_read_lines(lake, topic)) == 30
    assert any("extending this sink's own uncommitted file" in m for m in messages)


def test_records_that_arrive_during_the_run_wait_for_the_next(kafka, lake):
    topic, group = _unique("sink-moving"), _unique("g")
    _produce_rows(kafka, topic, {0: 50})
    producer = kafka.producer()

    def produce_more(path: str, records: int) -> None:
        for i in range(20):
            producer.produce(topic, value=json.dumps({"index": 1000 + i}).encode(), partition=0, timestamp=POSTED_MS)
        producer.flush(30)

    first = sink_topics(kafka, lake, [topic], group, max_records_per_file=25, on_file_written=produce_more)
    assert first[topic]["records"] == 50 and first[topic]["end_offsets"] == {0: 50}
    second = sink_topics(kafka, lake, [topic], group)
    assert second[topic]["records"] == 40  # both files' worth of later records, once
    assert len(_read_lines(lake, topic)) == 90


def test_records_are_filed_under_the_day_of_their_timestamp_with_an_index(kafka, lake):
    """A partition whose records change day starts a new file in the new day's folder; each file's index
    holds its first offset, its line count and every line's Kafka timestamp, in order."""
    topic, group = _unique("sink-days"), _unique("g")
    kafka.ensure_topics([topic], partitions=1)
    producer = kafka.producer()
    next_day_ms = POSTED_MS + 86_400_000
    stamps = [POSTED_MS, POSTED_MS + 1, next_day_ms, next_day_ms + 5, POSTED_MS + 2]
    for i, ts in enumerate(stamps):
        producer.produce(topic, value=json.dumps({"index": i}).encode(), partition=0, timestamp=ts)
    assert producer.flush(60) == 0

    result = sink_topics(kafka, lake, [topic], group)

    nxt = DAY + datetime.timedelta(days=1)
    assert result[topic]["paths"] == [raw_file_name(topic, 0, 0, DAY), raw_file_name(topic, 0, 2, nxt),
                                      raw_file_name(topic, 0, 4, DAY)]
    assert [f.path for f in read_raw_files(lake, topic)] == result[topic]["paths"]  # by partition, offset
    for path, offsets in zip(result[topic]["paths"], [(0, 1), (2, 3), (4,)], strict=True):
        lines = lake.read_bytes(path).splitlines()
        index = json.loads(lake.read_bytes(raw_index_name(path)))
        assert [json.loads(line)["index"] for line in lines] == list(offsets)
        # runs of equal timestamps; line i has offset o + i
        expanded = [ts for ts, count in index["runs"] for _ in range(count)]
        assert (index["o"], index["n"], expanded) == (offsets[0], len(lines), [stamps[o] for o in offsets])
