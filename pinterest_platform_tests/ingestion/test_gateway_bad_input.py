"""The gateway never answers bad input with a 500 or plain text: every bad body gets a 4xx JSON error with an
`error_code`, nothing of it reaches Kafka or Kinesis, size errors are permanent (413, never 503), and the
Kinesis proxy enforces AWS' limits itself because moto does not. Over real HTTP, against the local stack."""

from __future__ import annotations

import base64
import json
import logging
import os

import httpx
import pytest

from pinterest_platform.contract import stream_name, topic_name
from pinterest_platform.ingestion.gateway import (
    KAFKA_JSON_V2,
    KAFKA_MAX_RECORD_BYTES,
    KINESIS_MAX_PARTITION_KEY,
    KINESIS_MAX_RECORD_BYTES,
    KINESIS_MAX_REQUEST_BYTES,
    create_app,
)
from pinterest_platform_tests.ingestion.test_emulator import kafka_messages, kinesis_records, unique_prefix
from pinterest_platform_tests.ingestion.test_gateway import API_KEY, JSON_HEADERS, KAFKA_HEADERS, RunningGateway

PARTITIONS = 3   # ensure_topics' default


@pytest.fixture(scope="module")
def resources(local_stack):
    from pinterest_platform.resources.kafka import LocalKafkaResource
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    return LocalKafkaResource(), LocalKinesisResource()


@pytest.fixture(scope="module")
def gateway(resources):
    """The default body limit (10 MiB), so records can reach the Kafka and Kinesis record limits."""
    kafka, kinesis = resources
    running = RunningGateway(create_app(kafka, kinesis, api_key=API_KEY))
    yield running.url
    running.stop()


@pytest.fixture
def client(gateway):
    with httpx.Client(base_url=gateway, timeout=120) as http:
        yield http


@pytest.fixture
def fresh(resources) -> tuple[str, str]:
    """An empty topic and stream: anything a request wrote would show."""
    kafka, kinesis = resources
    prefix = unique_prefix()
    topic, stream = topic_name(prefix, "pin"), stream_name(prefix, "pin")
    kafka.ensure_topics([topic], partitions=PARTITIONS)
    kinesis.ensure_streams([stream])
    return topic, stream


def assert_json_error(response: httpx.Response, status: int, error_code: int | None = None) -> dict:
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    answer = response.json()
    assert isinstance(answer["error_code"], int) and isinstance(answer["message"], str), answer
    if error_code is not None:
        assert answer["error_code"] == error_code, answer
    return answer


def assert_nothing_written(resources, topic: str, stream: str) -> None:
    kafka, kinesis = resources
    assert kafka_messages(kafka, topic) == []
    assert kinesis_records(kinesis, stream) == []   # GetRecords over every shard


def send(client: httpx.Client, endpoint: str, topic: str, stream: str, body: bytes) -> httpx.Response:
    if endpoint == "topic":
        return client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=body)
    if endpoint == "record":
        return client.put(f"/streams/{stream}/record", headers=JSON_HEADERS, content=body)
    return client.put(f"/streams/{stream}/records", headers=JSON_HEADERS, content=body)


def incompressible(n: int) -> str:
    """n characters lz4 cannot shrink, so the broker sees the record's real size."""
    return base64.b64encode(os.urandom(n))[:n].decode()


# --- lone surrogates and duplicate keys ---------------------------------------------------------------


# `\ud800` as the six characters of a JSON escape: valid JSON syntax, but no UTF-8 text can hold it
LONE_SURROGATE = {
    "topic": b'{"records": [{"value": {"index": 1, "title": "a\\ud800b"}}]}',
    "record": b'{"Data": {"ind": 1, "country": "\\ud800"}, "PartitionKey": "1"}',
    "records": b'{"records": [{"data": {"ind": 1, "country": "\\ud800"}, "partition-key": "1"}]}',
}


@pytest.mark.parametrize("endpoint", sorted(LONE_SURROGATE))
def test_lone_surrogate_is_a_json_422(client, resources, fresh, endpoint):
    topic, stream = fresh
    response = send(client, endpoint, topic, stream, LONE_SURROGATE[endpoint])
    answer = assert_json_error(response, 422, 42211)
    assert "lone surrogate" in answer["message"]
    assert_nothing_written(resources, topic, stream)


DUPLICATE_KEYS = [
    ("topic", "top level", b'{"records": [{"value": {"index": 1}}], "records": [{"value": {"index": 2}}]}'),
    ("topic", "record", b'{"records": [{"value": {"index": 1}, "value": {"index": 2}}]}'),
    ("topic", "deep in the value", b'{"records": [{"value": {"index": 1, "a": [{"b": {"c": 1, "c": 2}}]}}]}'),
    ("record", "top level", b'{"Data": {"ind": 1}, "PartitionKey": "1", "PartitionKey": "2"}'),
    ("record", "in the row", b'{"Data": {"ind": 1, "ind": 2}, "PartitionKey": "1"}'),
    ("records", "record", b'{"records": [{"data": {"ind": 1}, "partition-key": "1", "partition-key": "2"}]}'),
    ("records", "deep in the row", b'{"records": [{"data": {"ind": 1, "x": {"y": [{"z": 1, "z": 1}]}}, '
                                   b'"partition-key": "1"}]}'),
]


@pytest.mark.parametrize(("endpoint", "where", "body"), DUPLICATE_KEYS,
                         ids=[f"{e}-{w}" for e, w, _ in DUPLICATE_KEYS])
def test_duplicate_key_is_422(client, resources, fresh, endpoint, where, body):
    topic, stream = fresh
    answer = assert_json_error(send(client, endpoint, topic, stream, body), 422, 42212)
    assert "Duplicate key" in answer["message"]
    assert_nothing_written(resources, topic, stream)


# --- Kafka record size ------------------------------------------------------------------------------


def value_of_size(n: int) -> dict:
    """A row whose compact JSON is exactly n bytes."""
    row = {"x": "y" * (n - len('{"x":""}'))}
    assert len(json.dumps(row, separators=(",", ":"))) == n
    return row


def test_record_over_the_producer_limit_is_413_per_record_not_503(client, resources, fresh):
    topic, stream = fresh
    body = json.dumps({"records": [{"value": value_of_size(1_000_341)}]})
    answer = assert_json_error(client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=body), 413, 41302)
    [offset] = answer["offsets"]   # REST Proxy's per-record shape, so a client sees which record failed
    assert offset["partition"] is None and offset["offset"] is None and offset["error_code"] == 41302
    assert offset["error"].startswith("record too large")
    assert_nothing_written(resources, topic, stream)


def test_too_large_record_fails_alone_and_the_others_are_produced(client, resources, fresh):
    kafka, _ = resources
    topic, _ = fresh
    body = json.dumps({"records": [{"value": {"index": 1}}, {"value": value_of_size(2_000_000)},
                                   {"value": {"index": 3}}]})
    response = client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=body)
    assert response.status_code == 200, response.text
    first, big, last = response.json()["offsets"]
    assert big["error_code"] == 41302 and big["offset"] is None
    assert first["error_code"] is None and isinstance(first["offset"], int)
    assert last["error_code"] is None and isinstance(last["offset"], int)
    assert sorted(v for _, v, _ in kafka_messages(kafka, topic)) == [b'{"index":1}', b'{"index":3}']


def test_kafka_record_limit_is_the_producers(client, resources, fresh):
    """Key + value of exactly KAFKA_MAX_RECORD_BYTES is produced, one byte more is refused: the gateway's
    check agrees with librdkafka's, so no record reaches the producer only to be refused there."""
    kafka, _ = resources
    topic, _ = fresh
    key = 12345   # 5 bytes as JSON
    fits = {"key": key, "value": value_of_size(KAFKA_MAX_RECORD_BYTES - 5)}
    response = client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=json.dumps({"records": [fits]}))
    assert response.status_code == 200, response.text[:500]
    assert response.json()["offsets"][0]["error_code"] is None
    over = {"key": key, "value": value_of_size(KAFKA_MAX_RECORD_BYTES - 4)}
    response = client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=json.dumps({"records": [over]}))
    assert_json_error(response, 413, 41302)
    stored = kafka_messages(kafka, topic)
    assert len(stored) == 1 and stored[0][0] == b"12345" and len(stored[0][1]) == KAFKA_MAX_RECORD_BYTES - 5


def test_broker_size_refusal_is_413_not_503(client, resources):
    """A record the broker refuses for its size (here: a topic with a small max.message.bytes) is a permanent
    per-record error, and the shared producer keeps working for everyone else."""
    from confluent_kafka.admin import NewTopic

    kafka, _ = resources
    topic = topic_name(unique_prefix(), "pin")
    admin = kafka.admin()   # kept referenced: a collected admin client cancels its futures
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                            config={"max.message.bytes": "2048"})])
    futures[topic].result(30)
    body = json.dumps({"records": [{"value": incompressible(20_000)}]})
    answer = assert_json_error(client.post(f"/topics/{topic}", headers=KAFKA_HEADERS, content=body), 413, 41302)
    assert answer["offsets"][0]["error_code"] == 41302
    assert kafka_messages(kafka, topic) == []
    small = client.post(f"/topics/{topic}", headers=KAFKA_HEADERS,
                        content=json.dumps({"records": [{"value": {"index": 7}}]}))
    assert small.status_code == 200 and small.json()["offsets"][0]["error_code"] is None, small.text
    assert [v for _, v, _ in kafka_messages(kafka, topic)] == [b'{"index":7}']


# --- Kinesis limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["record", "records"])
def test_kinesis_record_over_1_mib_is_rejected_and_not_stored(client, resources, fresh, endpoint):
    topic, stream = fresh
    row = {"ind": 1, "blob": "z" * 2_000_000}
    if endpoint == "record":
        body = json.dumps({"Data": row, "PartitionKey": "1"})
    else:   # a valid record beside it is not stored either: AWS refuses the whole PutRecords call
        body = json.dumps({"records": [{"data": {"ind": 0}, "partition-key": "0"}, {"data": row, "partition-key": "1"}]})
    answer = assert_json_error(send(client, endpoint, topic, stream, body.encode()), 413, 41302)
    assert "record too large" in answer["message"]
    assert_nothing_written(resources, topic, stream)


@pytest.mark.parametrize("endpoint", ["record", "records"])
def test_kinesis_record_limit_counts_the_partition_key(client, resources, fresh, endpoint):
    _, kinesis = resources
    topic, stream = fresh
    key = "k" * 10

    def body(n: int) -> bytes:
        if endpoint == "record":
            return json.dumps({"Data": "d" * n, "PartitionKey": key}).encode()
        return json.dumps({"records": [{"data": "d" * n, "partition-key": key}]}).encode()

    assert send(client, endpoint, topic, stream, body(KINESIS_MAX_RECORD_BYTES - len(key))).status_code == 200
    assert_json_error(send(client, endpoint, topic, stream, body(KINESIS_MAX_RECORD_BYTES - len(key) + 1)), 413,
                      41302)
    assert [(k, len(d)) for k, d, _ in kinesis_records(kinesis, stream)] == [(key, KINESIS_MAX_RECORD_BYTES - 10)]


def test_put_records_over_500_records_is_rejected(client, resources, fresh):
    topic, stream = fresh
    body = json.dumps({"records": [{"data": {"ind": i}, "partition-key": str(i)} for i in range(501)]}).encode()
    answer = assert_json_error(send(client, "records", topic, stream, body), 422, 42207)
    assert "At most 500" in answer["message"]
    assert_nothing_written(resources, topic, stream)


def test_put_records_over_5_mib_in_all_is_rejected(client, resources, fresh):
    _, kinesis = resources
    topic, stream = fresh
    # each record is within 1 MiB; together they are 6 MB
    over = [{"data": "d" * 1_000_000, "partition-key": str(i)} for i in range(6)]
    assert 6 * 1_000_001 > KINESIS_MAX_REQUEST_BYTES
    answer = assert_json_error(send(client, "records", topic, stream, json.dumps({"records": over}).encode()), 413,
                               41303)
    assert "5 MiB" in answer["message"]
    assert_nothing_written(resources, topic, stream)
    # exactly 5 MiB, partition keys included, is within the limit
    key_len = 1
    exact = [{"data": "d" * (KINESIS_MAX_RECORD_BYTES - key_len), "partition-key": str(i)} for i in range(5)]
    response = send(client, "records", topic, stream, json.dumps({"records": exact}).encode())
    assert response.status_code == 200 and response.json()["FailedRecordCount"] == 0, response.text[:500]
    assert sorted(k for k, _, _ in kinesis_records(kinesis, stream)) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("endpoint", ["record", "records"])
def test_partition_key_of_257_characters_is_rejected(client, resources, fresh, endpoint):
    _, kinesis = resources
    topic, stream = fresh

    def body(key: str) -> bytes:
        if endpoint == "record":
            return json.dumps({"Data": {"ind": 1}, "PartitionKey": key}, ensure_ascii=False).encode()
        return json.dumps({"records": [{"data": {"ind": 1}, "partition-key": key}]}, ensure_ascii=False).encode()

    answer = assert_json_error(send(client, endpoint, topic, stream, body("p" * 257)), 422, 42203)
    assert "1 to 256 characters" in answer["message"]
    assert kinesis_records(kinesis, stream) == []
    # the limit is in characters, not bytes: 256 two-byte characters are fine
    wide = "\u00e9" * KINESIS_MAX_PARTITION_KEY
    assert send(client, endpoint, topic, stream, body(wide)).status_code == 200
    assert [k for k, _, _ in kinesis_records(kinesis, stream)] == [wide]


# --- everything else that once could 500 ---------------------------------------------------------------


def _corpus() -> list[tuple[str, str, bytes, int]]:
    """(name, endpoint, body, expected status)."""
    deep = b"[" * 100_000 + b"]" * 100_000

    def rest(records: bytes) -> bytes:
        return b'{"records": ' + records + b"}"

    cases = [
        # the body itself
        ("not utf-8", "topic", b'{"records": [{"value": "\xff\xfe"}]}', 422),
        ("encoded surrogate bytes", "topic", b'{"records": [{"value": "\xed\xa0\x80"}]}', 422),
        ("utf-16 body", "topic", json.dumps({"records": [{"value": {}}]}).encode("utf-16"), 422),
        ("utf-8 bom", "topic", b'\xef\xbb\xbf{"records": [{"value": {}}]}', 400),
        ("whitespace only", "topic", b"  \n ", 400),
        ("trailing garbage", "topic", b'{"records": [{"value": {}}]} x', 400),
        ("NaN", "topic", rest(b'[{"value": {"a": NaN}}]'), 400),
        ("Infinity key", "topic", rest(b'[{"key": Infinity, "value": {}}]'), 400),
        ("1e999", "topic", rest(b'[{"value": {"a": 1e999}}]'), 422),
        ("5000-digit integer", "topic", rest(b'[{"value": {"a": ' + b"9" * 5000 + b"}}]"), 422),
        ("deep nesting", "topic", rest(b'[{"value": ' + deep + b"}]"), 422),
        ("deep nesting key", "topic", rest(b'[{"key": ' + deep + b', "value": {}}]'), 422),
        ("lone low surrogate", "topic", rest(b'[{"value": ["\\udc00"]}]'), 422),
        ("surrogate in a key", "topic", rest(b'[{"value": {"\\ud800": 1}}]'), 422),
        ("reversed surrogate pair", "topic", rest(b'[{"value": "\\ude00\\ud83d"}]'), 422),
        # the shape
        ("top level string", "topic", b'"records"', 422),
        ("top level number", "topic", b"5", 422),
        ("top level null", "topic", b"null", 422),
        ("top level true", "topic", b"true", 422),
        ("records a string", "topic", rest(b'"abc"'), 422),
        ("records null", "topic", rest(b"null"), 422),
        ("records a number", "topic", rest(b"5"), 422),
        ("records an object", "topic", rest(b'{"value": {}}'), 422),
        ("records empty", "topic", rest(b"[]"), 422),
        ("record a string", "topic", rest(b'["x"]'), 422),
        ("record null", "topic", rest(b"[null]"), 422),
        ("record a list", "topic", rest(b"[[1]]"), 422),
        ("record without value", "topic", rest(b'[{"key": 1}]'), 422),
        ("partition a string", "topic", rest(b'[{"value": {}, "partition": "1"}]'), 422),
        ("partition negative", "topic", rest(b'[{"value": {}, "partition": -1}]'), 422),
        ("partition true", "topic", rest(b'[{"value": {}, "partition": true}]'), 422),
        ("partition a float", "topic", rest(b'[{"value": {}, "partition": 1.0}]'), 422),
        ("partition out of range", "topic", rest(b'[{"value": {}, "partition": %d}]' % PARTITIONS), 422),
        ("partition huge", "topic", rest(b'[{"value": {}, "partition": ' + b"9" * 40 + b"}]"), 422),
        ("partition an object", "topic", rest(b'[{"value": {}, "partition": {"p": 1}}]'), 422),
        ("partition deep", "topic", rest(b'[{"value": {}, "partition": ' + b"[" * 900 + b"]" * 900 + b"}]"), 422),
        # PutRecord
        ("single: not utf-8", "record", b'{"Data": {"a": "\xc3"}, "PartitionKey": "1"}', 422),
        ("single: array", "record", b"[]", 422),
        ("single: null", "record", b"null", 422),
        ("single: no PartitionKey", "record", b'{"Data": {}}', 422),
        ("single: PartitionKey null", "record", b'{"Data": {}, "PartitionKey": null}', 422),
        ("single: PartitionKey true", "record", b'{"Data": {}, "PartitionKey": true}', 422),
        ("single: PartitionKey float", "record", b'{"Data": {}, "PartitionKey": 1.5}', 422),
        ("single: PartitionKey list", "record", b'{"Data": {}, "PartitionKey": ["1"]}', 422),
        ("single: PartitionKey object", "record", b'{"Data": {}, "PartitionKey": {}}', 422),
        ("single: PartitionKey empty", "record", b'{"Data": {}, "PartitionKey": ""}', 422),
        ("single: PartitionKey surrogate", "record", b'{"Data": {}, "PartitionKey": "\\udfff"}', 422),
        ("single: no Data", "record", b'{"PartitionKey": "1"}', 422),
        ("single: Data null", "record", b'{"Data": null, "PartitionKey": "1"}', 422),
        ("single: Data number", "record", b'{"Data": 5, "PartitionKey": "1"}', 422),
        ("single: Data true", "record", b'{"Data": true, "PartitionKey": "1"}', 422),
        ("single: Data list", "record", b'{"Data": [{"ind": 1}], "PartitionKey": "1"}', 422),
        ("single: Data deep", "record", b'{"Data": {"a": ' + deep + b'}, "PartitionKey": "1"}', 422),
        ("single: Data 1e999", "record", b'{"Data": {"a": -1e999}, "PartitionKey": "1"}', 422),
        ("single: StreamName other", "record", b'{"StreamName": "x", "Data": {}, "PartitionKey": "1"}', 422),
        ("single: StreamName object", "record", b'{"StreamName": {}, "Data": {}, "PartitionKey": "1"}', 422),
        ("single: StreamName surrogate", "record", b'{"StreamName": "\\ud800", "Data": {}, "PartitionKey": "1"}',
         422),
        # PutRecords
        ("batch: not utf-8", "records", b'{"records": [{"data": "\x80", "partition-key": "1"}]}', 422),
        ("batch: top level list", "records", b'[{"data": {}, "partition-key": "1"}]', 422),
        ("batch: records an object", "records", b'{"records": {}}', 422),
        ("batch: records a string", "records", b'{"records": "x"}', 422),
        ("batch: records null", "records", b'{"records": null}', 422),
        ("batch: records empty", "records", b'{"records": []}', 422),
        ("batch: record a number", "records", b'{"records": [1]}', 422),
        ("batch: record null", "records", b'{"records": [null]}', 422),
        ("batch: no data", "records", b'{"records": [{"partition-key": "1"}]}', 422),
        ("batch: no partition-key", "records", b'{"records": [{"data": {}}]}', 422),
        ("batch: partition-key null", "records", b'{"records": [{"data": {}, "partition-key": null}]}', 422),
        ("batch: partition-key list", "records", b'{"records": [{"data": {}, "partition-key": []}]}', 422),
        ("batch: partition-key empty", "records", b'{"records": [{"data": {}, "partition-key": ""}]}', 422),
        ("batch: data null", "records", b'{"records": [{"data": null, "partition-key": "1"}]}', 422),
        ("batch: data number", "records", b'{"records": [{"data": 1.5, "partition-key": "1"}]}', 422),
        ("batch: data list", "records", b'{"records": [{"data": [], "partition-key": "1"}]}', 422),
        ("batch: second record bad", "records",
         b'{"records": [{"data": {}, "partition-key": "1"}, {"data": {}, "partition-key": false}]}', 422),
        ("batch: data deep", "records", b'{"records": [{"data": ' + deep + b', "partition-key": "1"}]}', 422),
        ("batch: surrogate in partition-key", "records",
         b'{"records": [{"data": {}, "partition-key": "a\\ud800"}]}', 422),
    ]
    return cases


CORPUS = _corpus()


@pytest.mark.parametrize(("name", "endpoint", "body", "status"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_is_a_4xx_json_error(client, resources, fresh, name, endpoint, body, status):
    topic, stream = fresh
    response = send(client, endpoint, topic, stream, body)
    assert_json_error(response, status)
    assert_nothing_written(resources, topic, stream)


ODD_NAMES = ["x" * 300, "caf%C3%A9", "a%20b", "%F0%9F%98%80", "..", "-", "%FF"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_topic_and_stream_names_are_4xx(client, name):
    """Names Kafka or Kinesis would not accept (too long, spaces, non-ASCII, not UTF-8) are input errors too."""
    answers = [client.post(f"/topics/{name}", headers=KAFKA_HEADERS, content=b'{"records": [{"value": {}}]}'),
               client.put(f"/streams/{name}/record", headers=JSON_HEADERS,
                          content=b'{"Data": {}, "PartitionKey": "1"}'),
               client.put(f"/streams/{name}/records", headers=JSON_HEADERS,
                          content=b'{"records": [{"data": {}, "partition-key": "1"}]}')]
    for response in answers:
        assert 400 <= response.status_code < 500, f"{response.request.url}: {response.status_code} {response.text}"
        assert isinstance(response.json()["error_code"], int)


def test_valid_input_that_looks_bad_is_accepted(client, resources, fresh):
    """The checks refuse only what they should: a paired surrogate escape is an emoji, an escaped backslash
    before `ud800` is plain text, the same key in two objects is no duplicate, and null partition means none."""
    kafka, kinesis = resources
    topic, stream = fresh
    body = (b'{"records": [{"value": {"e": "\\ud83d\\ude00", "t": "\\\\ud800", "a": {"k": 1}, "b": {"k": 1}}, '
            b'"partition": null, "key": null}]}')
    response = send(client, "topic", topic, stream, body)
    assert response.status_code == 200 and response.json()["offsets"][0]["error_code"] is None, response.text
    [(_, value, _)] = kafka_messages(kafka, topic)
    assert json.loads(value.decode("utf-8")) == {"e": "\U0001f600", "t": "\\ud800", "a": {"k": 1}, "b": {"k": 1}}

    response = send(client, "records", topic, stream,
                    b'{"records": [{"data": {"e": "\\ud83d\\ude00"}, "partition-key": "\\ud83d\\ude00"}]}')
    assert response.status_code == 200 and response.json()["FailedRecordCount"] == 0, response.text
    [(key, data, _)] = kinesis_records(kinesis, stream)
    assert key == "\U0001f600" and data == '{"e":"\U0001f600"}'.encode()


# --- our own bugs ---------------------------------------------------------------------------------------


class _BrokenKinesisClient:
    """Answers PutRecords without `Records`: the gateway's code then fails, as a bug of ours would."""

    def describe_stream_summary(self, StreamName):  # noqa: N803 - boto3's argument names
        return {"StreamDescriptionSummary": {"StreamName": StreamName}}

    def put_records(self, StreamName, Records):  # noqa: N803
        return {}

    def list_streams(self, Limit):  # noqa: N803
        return {"StreamNames": []}


class _BrokenKinesis:
    def client(self):
        return _BrokenKinesisClient()


def test_a_bug_is_a_json_500_and_logged_with_its_traceback(resources, caplog):
    kafka, _ = resources
    running = RunningGateway(create_app(kafka, _BrokenKinesis(), api_key=None))
    try:
        with caplog.at_level(logging.ERROR, logger="pinterest_platform.ingestion.gateway"):
            response = httpx.put(f"{running.url}/streams/s/records", headers={"Content-Type": "application/json"},
                                 content=b'{"records": [{"data": {"ind": 1}, "partition-key": "1"}]}', timeout=60)
        answer = assert_json_error(response, 500, 50000)
        assert "bug" in answer["message"]
        logged = [r for r in caplog.records if r.name == "pinterest_platform.ingestion.gateway" and r.exc_info]
        assert logged and logged[0].exc_info[0] is KeyError
        assert "/streams/s/records" in logged[0].getMessage()
    finally:
        running.stop()


def test_kafka_json_v2_content_type_is_still_required(client, fresh):
    """The new checks run after the content type's: a wrong type is still a 415, not a JSON verdict."""
    topic, _ = fresh
    response = client.post(f"/topics/{topic}", headers={**JSON_HEADERS}, content=LONE_SURROGATE["topic"])
    assert_json_error(response, 415, 41501)
    assert KAFKA_JSON_V2 in response.json()["message"]
