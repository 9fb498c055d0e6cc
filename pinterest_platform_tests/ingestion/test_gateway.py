"""The HTTP gateway over real HTTP (uvicorn on a free loopback port, httpx) in front of the real local stack:
every endpoint's happy path, clear 4xx answers for bad requests, nothing accepted is lost, and the emulator's
`via="http"` path delivering exactly N."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pinterest_platform.contract import EVENT_KINDS, stream_name, topic_name
from pinterest_platform.datagen import seed_source_database
from pinterest_platform.ingestion.emulator import HttpError, HttpIngestClient, emulate
from pinterest_platform.ingestion.gateway import KAFKA_JSON_V2, create_app
from pinterest_platform_tests.ingestion.test_emulator import (
    assert_exactly_once,
    expected_rows,
    kafka_messages,
    kinesis_records,
    unique_prefix,
)

API_KEY = "test-key-123"
MAX_BODY = 256 * 1024
KAFKA_HEADERS = {"x-api-key": API_KEY, "Content-Type": KAFKA_JSON_V2}
JSON_HEADERS = {"x-api-key": API_KEY, "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningGateway:
    """uvicorn serving the app in a thread on 127.0.0.1; stopped (and joined) by `stop()`."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="gateway-under-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def resources(local_stack):
    from pinterest_platform.resources.kafka import LocalKafkaResource
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    return LocalKafkaResource(), LocalKinesisResource()


@pytest.fixture(scope="module")
def prefix(resources) -> str:
    kafka, kinesis = resources
    prefix = unique_prefix()
    kafka.ensure_topics([topic_name(prefix, k) for k in EVENT_KINDS])
    kinesis.ensure_streams([stream_name(prefix, k) for k in EVENT_KINDS])
    return prefix


@pytest.fixture(scope="module")
def gateway(resources):
    kafka, kinesis = resources
    running = RunningGateway(create_app(kafka, kinesis, api_key=API_KEY, max_body_bytes=MAX_BODY))
    yield running.url
    running.stop()


def test_health_and_openapi(gateway):
    health = httpx.get(f"{gateway}/health", timeout=30)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["kafka"]["ok"] and health.json()["kinesis"]["ok"]

    schema = httpx.get(f"{gateway}/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {"/topics/{topic}", "/streams/{stream}/record", "/streams/{stream}/records",
                                    "/openapi.json", "/health"}
    assert set(schema["paths"]["/topics/{topic}"]) == {"post"}
    assert KAFKA_JSON_V2 in schema["paths"]["/topics/{topic}"]["post"]["requestBody"]["content"]
    assert set(schema["paths"]["/streams/{stream}/records"]) == {"put"}
    assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "x-api-key"


def test_produce_acknowledges_with_offsets(gateway, resources, prefix):
    kafka, _ = resources
    topic = topic_name(prefix, "pin")
    before = len(kafka_messages(kafka, topic))
    rows = [{"index": 900_000 + i, "title": f"row {i}", "emoji": "\U0001f600"} for i in range(3)]
    response = httpx.post(f"{gateway}/topics/{topic}", headers=KAFKA_HEADERS,
                          content=json.dumps({"records": [{"value": r} for r in rows]}))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(KAFKA_JSON_V2)
    body = response.json()
    assert body["key_schema_id"] is None and body["value_schema_id"] is None
    assert len(body["offsets"]) == 3
    for offset in body["offsets"]:
        assert set(offset) == {"partition", "offset", "error_code", "error"}
        assert offset["error_code"] is None and offset["error"] is None
        assert isinstance(offset["partition"], int) and isinstance(offset["offset"], int)
    # acknowledged means in the broker: readable right away, exactly as sent
    messages = kafka_messages(kafka, topic)
    assert len(messages) == before + 3
    mine = sorted((json.loads(v) for _, v, _ in messages if json.loads(v).get("index", 0) >= 900_000),
                  key=lambda r: r["index"])
    assert mine == rows

    # REST Proxy json format: keys are JSON too, and an explicit partition is honoured
    keyed = httpx.post(f"{gateway}/topics/{topic}", headers=KAFKA_HEADERS,
                       content=json.dumps({"records": [{"key": 7528, "value": {"index": 7528}, "partition": 2}]}))
    assert keyed.status_code == 200 and keyed.json()["offsets"][0]["partition"] == 2
    assert (b"7528", b'{"index":7528}', 2) in kafka_messages(kafka, topic)


def test_put_record_and_put_records(gateway, resources, prefix):
    _, kinesis = resources
    stream = stream_name(prefix, "geo")
    one = httpx.put(f"{gateway}/streams/{stream}/record", headers=JSON_HEADERS,
                    json={"StreamName": stream, "Data": {"ind": 1, "country": "Cote d'Ivoire"}, "PartitionKey": "1"})
    assert one.status_code == 200, one.text
    assert set(one.json()) >= {"SequenceNumber", "ShardId"}

    many = httpx.put(f"{gateway}/streams/{stream}/records", headers=JSON_HEADERS,
                     json={"records": [{"data": {"ind": i, "country": "Antarctica"}, "partition-key": str(i)}
                                       for i in range(2, 12)]})
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["FailedRecordCount"] == 0 and len(body["Records"]) == 10
    assert all(set(r) >= {"SequenceNumber", "ShardId"} for r in body["Records"])

    stored = {k: json.loads(d) for k, d, _ in kinesis_records(kinesis, stream)}
    assert stored["1"] == {"ind": 1, "country": "Cote d'Ivoire"}
    assert all(stored[str(i)] == {"ind": i, "country": "Antarctica"} for i in range(2, 12))

    # the client's single-record call speaks the same contract
    client = HttpIngestClient(gateway, API_KEY)
    answer = client.put_stream_record(stream, {"ind": 99, "country": "Peru"}, "99")
    client.close()
    assert "SequenceNumber" in answer
    assert {k: json.loads(d) for k, d, _ in kinesis_records(kinesis, stream)}["99"]["country"] == "Peru"


def _bad_requests(topic: str, stream: str) -> list[tuple[str, str, str, dict, bytes, int, str]]:
    valid = json.dumps({"records": [{"value": {"index": 1}}]}).encode()
    stream_body = json.dumps({"records": [{"data": {"ind": 1}, "partition-key": "1"}]}).encode()
    return [
        ("no api key", "POST", f"/topics/{topic}", {"Content-Type": KAFKA_JSON_V2}, valid, 401, "Missing API key"),
        ("wrong api key", "POST", f"/topics/{topic}", {**KAFKA_HEADERS, "x-api-key": "nope"}, valid, 403,
         "does not match"),
        ("no api key (stream)", "PUT", f"/streams/{stream}/records", {"Content-Type": "application/json"},
         stream_body, 401, "Missing API key"),
        ("wrong content type", "POST", f"/topics/{topic}", JSON_HEADERS, valid, 415, KAFKA_JSON_V2),
        ("no content type", "POST", f"/topics/{topic}", {"x-api-key": API_KEY}, valid, 415, "Unsupported Content-Type"),
        ("stream wrong content type", "PUT", f"/streams/{stream}/records",
         {"x-api-key": API_KEY, "Content-Type": "text/plain"}, stream_body, 415, "application/json"),
        ("invalid json", "POST", f"/topics/{topic}", KAFKA_HEADERS, b'{"records": [', 400, "not valid JSON"),
        ("empty body", "POST", f"/topics/{topic}", KAFKA_HEADERS, b"", 400, "empty"),
        ("invalid json (stream)", "PUT", f"/streams/{stream}/record", JSON_HEADERS, b"{nope", 400, "not valid JSON"),
        ("missing records", "POST", f"/topics/{topic}", KAFKA_HEADERS, b'{"value": {}}', 422, "Missing `records`"),
        ("records not a list", "POST", f"/topics/{topic}", KAFKA_HEADERS, b'{"records": {}}', 422, "non-empty array"),
        ("empty records", "POST", f"/topics/{topic}", KAFKA_HEADERS, b'{"records": []}', 422, "non-empty array"),
        ("not an object", "POST", f"/topics/{topic}", KAFKA_HEADERS, b"[1, 2]", 422, "JSON object"),
        ("record without value", "POST", f"/topics/{topic}", KAFKA_HEADERS,
         b'{"records": [{"value": {"a": 1}}, {"key": 1}]}', 422, "records[1] has no `value`"),
        ("bad partition", "POST", f"/topics/{topic}", KAFKA_HEADERS,
         b'{"records": [{"value": {}, "partition": 99}]}', 422, "partition"),
        ("stream record without partition key", "PUT", f"/streams/{stream}/records", JSON_HEADERS,
         b'{"records": [{"data": {"ind": 1}}]}', 422, "records[0] has no `partition-key`"),
        ("stream record without data", "PUT", f"/streams/{stream}/records", JSON_HEADERS,
         b'{"records": [{"partition-key": "1"}]}', 422, "records[0] has no `data`"),
        ("stream missing records", "PUT", f"/streams/{stream}/records", JSON_HEADERS, b'{"Data": {}}', 422,
         "Missing `records`"),
        ("too many stream records", "PUT", f"/streams/{stream}/records", JSON_HEADERS,
         json.dumps({"records": [{"data": {}, "partition-key": "k"}] * 501}).encode(), 422, "At most 500"),
        ("single record without Data", "PUT", f"/streams/{stream}/record", JSON_HEADERS,
         b'{"PartitionKey": "1"}', 422, "Missing `Data`"),
        ("single record without PartitionKey", "PUT", f"/streams/{stream}/record", JSON_HEADERS,
         b'{"Data": {}}', 422, "Missing `PartitionKey`"),
        ("single record other stream", "PUT", f"/streams/{stream}/record", JSON_HEADERS,
         b'{"StreamName": "other", "Data": {}, "PartitionKey": "1"}', 422, "does not match"),
        ("oversized body", "POST", f"/topics/{topic}", KAFKA_HEADERS,
         json.dumps({"records": [{"value": {"x": "y" * MAX_BODY}}]}).encode(), 413, "exceeds the limit"),
        ("oversized stream body", "PUT", f"/streams/{stream}/records", JSON_HEADERS,
         json.dumps({"records": [{"data": "y" * MAX_BODY, "partition-key": "1"}]}).encode(), 413,
         "exceeds the limit"),
        ("unknown topic", "POST", "/topics/no.such.topic", KAFKA_HEADERS, valid, 404, "'no.such.topic' not found"),
        ("unknown stream", "PUT", "/streams/no-such-stream/records", JSON_HEADERS, stream_body, 404,
         "'no-such-stream' not found"),
        ("unknown stream (single)", "PUT", "/streams/no-such-stream/record", JSON_HEADERS,
         b'{"Data": {}, "PartitionKey": "1"}', 404, "not found"),
        ("unknown route", "GET", "/topics", {"x-api-key": API_KEY}, b"", 404, "No route"),
        ("wrong method", "GET", f"/topics/{topic}", {"x-api-key": API_KEY}, b"", 405, "not allowed"),
    ]


def test_bad_requests_get_clear_4xx_and_write_nothing(gateway, resources):
    kafka, kinesis = resources
    prefix = unique_prefix()   # fresh, empty destinations: anything written by a bad request would show
    topic, stream = topic_name(prefix, "pin"), stream_name(prefix, "pin")
    kafka.ensure_topics([topic])
    kinesis.ensure_streams([stream])
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for name, method, path, headers, body, status, message in _bad_requests(topic, stream):
            response = client.request(method, path, headers=headers, content=body)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
            answer = response.json()
            assert message in answer["message"], f"{name}: {answer}"
            assert isinstance(answer["error_code"], int)
    assert kafka_messages(kafka, topic) == []
    assert kinesis_records(kinesis, stream) == []


def test_every_accepted_record_is_stored(gateway, resources, prefix):
    """Many concurrent requests: every record the gateway acknowledged is in Kafka/Kinesis, nothing else."""
    kafka, kinesis = resources
    topic, stream = topic_name(prefix, "user"), stream_name(prefix, "user")
    run = uuid.uuid4().hex

    def post_batch(i: int) -> list[str]:
        ids = [f"{run}-{i}-{j}" for j in range(25)]
        response = httpx.post(f"{gateway}/topics/{topic}", headers=KAFKA_HEADERS, timeout=60,
                              content=json.dumps({"records": [{"value": {"id": x}} for x in ids]}))
        assert response.status_code == 200
        return [x for x, o in zip(ids, response.json()["offsets"], strict=True) if o["error_code"] is None]

    def put_batch(i: int) -> list[str]:
        ids = [f"{run}-{i}-{j}" for j in range(25)]
        response = httpx.put(f"{gateway}/streams/{stream}/records", headers=JSON_HEADERS, timeout=60,
                             json={"records": [{"data": {"id": x}, "partition-key": x} for x in ids]})
        assert response.status_code == 200
        return [x for x, r in zip(ids, response.json()["Records"], strict=True) if "SequenceNumber" in r]

    with ThreadPoolExecutor(8) as pool:
        kafka_accepted = [x for ids in pool.map(post_batch, range(40)) for x in ids]
        kinesis_accepted = [x for ids in pool.map(put_batch, range(40)) for x in ids]
    assert len(kafka_accepted) == len(kinesis_accepted) == 1000
    in_kafka = [json.loads(v)["id"] for _, v, _ in kafka_messages(kafka, topic) if json.loads(v).get("id", "")
                .startswith(run)]
    in_kinesis = [json.loads(d)["id"] for _, d, _ in kinesis_records(kinesis, stream)
                  if json.loads(d).get("id", "").startswith(run)]
    assert sorted(in_kafka) == sorted(kafka_accepted)
    assert sorted(in_kinesis) == sorted(kinesis_accepted)


def test_emulate_via_http_delivers_exactly_n(gateway, resources, tmp_path):
    kafka, kinesis = resources
    n = 700
    db = tmp_path / "source.db"
    seed_source_database(f"sqlite:///{db}", n, seed=3, progress=False)
    prefix = unique_prefix()
    kafka.ensure_topics([topic_name(prefix, k) for k in EVENT_KINDS])
    kinesis.ensure_streams([stream_name(prefix, k) for k in EVENT_KINDS])
    report = emulate(f"sqlite:///{db}", "both", None, None, prefix, via="http", invoke_url=gateway,
                     api_key=API_KEY, progress=False, page_size=300)
    assert report.ok, report.summary()
    assert report.total_sent == 6 * n and report.events_read == n
    assert_exactly_once(kafka, kinesis, prefix, expected_rows(db))


def test_emulate_via_http_with_wrong_key_fails_loudly(gateway, resources, tmp_path):
    db = tmp_path / "source.db"
    seed_source_database(f"sqlite:///{db}", 20, seed=3, progress=False)
    prefix = unique_prefix()
    kafka, _ = resources
    kafka.ensure_topics([topic_name(prefix, k) for k in EVENT_KINDS])
    report = emulate(f"sqlite:///{db}", "batch", None, None, prefix, via="http", invoke_url=gateway,
                     api_key="wrong", progress=False)
    assert not report.ok and report.total_failed == 60 and report.stopped_early
    assert any("HTTP 403" in e for e in report.errors)
    with pytest.raises(HttpError) as raised:
        HttpIngestClient(gateway, "wrong").post_topic_records(topic_name(prefix, "pin"), [{"value": {}}])
    assert raised.value.status == 403


def test_broker_unavailable_is_5xx(local_stack):
    """A gateway whose broker is unreachable answers 503 with a clear message, and its health says so."""
    from pinterest_platform.resources.kafka import LocalKafkaResource
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    dead = LocalKafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}")
    running = RunningGateway(create_app(dead, LocalKinesisResource(), api_key=None, delivery_timeout_ms=2000))
    try:
        response = httpx.post(f"{running.url}/topics/anything", headers={"Content-Type": KAFKA_JSON_V2},
                              content=b'{"records": [{"value": {"a": 1}}]}', timeout=60)
        assert response.status_code == 503
        assert "Kafka broker unavailable" in response.json()["message"]
        health = httpx.get(f"{running.url}/health", timeout=60)
        assert health.status_code == 503 and not health.json()["kafka"]["ok"]
    finally:
        running.stop()
