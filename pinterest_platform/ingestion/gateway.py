"""`pinterest-platform gateway`: the local stand-in for the original API Gateway, which fronted a Confluent
Kafka REST Proxy (batch) and a Kinesis proxy integration (streaming). DATA_CONTRACT.md §2.

Endpoints (exactly these):

- `POST /topics/{topic}`: REST Proxy v2, `Content-Type: application/vnd.kafka.json.v2+json`, body
  `{"records": [{"value": ..., "key"?: ..., "partition"?: int}, ...]}`; answers
  `{"offsets": [{"partition", "offset", "error_code", "error"}], "key_schema_id": null, "value_schema_id": null}`
  only once the broker acknowledged every record (acks=all, idempotent producer).
- `PUT /streams/{stream}/record`: `{"StreamName", "Data": {row}, "PartitionKey"}` -> `{"SequenceNumber", "ShardId"}`.
- `PUT /streams/{stream}/records`: `{"records": [{"data": {row}, "partition-key": ...}]}` ->
  `{"FailedRecordCount", "Records": [{"SequenceNumber", "ShardId"} | {"ErrorCode", "ErrorMessage"}]}`.
- `GET /openapi.json`, `GET /health`.

Every error answer is JSON `{"error_code": <int>, "message": <text>}`; no input gets a 500 or a plain-text
answer. The codes:

- 400: 40001 body empty or not JSON (NaN/Infinity included), 40002 Kinesis refused the request, 40003 bad
  Content-Length, 40004 client disconnected mid-body.
- 401 40101 no API key; 403 40301 wrong API key.
- 404: 40400 no such route, 40401 unknown topic, 40402 unknown stream; 405 40500 wrong method.
- 413: 41301 body over the gateway's limit (10 MiB by default); 41302 record too large: a Kafka key + value
  over the producer's message.max.bytes less librdkafka's framing (KAFKA_MAX_RECORD_BYTES), or Kinesis data
  + partition key over 1 MiB; 41303 PutRecords over 5 MiB in all.
- 415 41501 wrong Content-Type.
- 422: 42201 body not an object with a non-empty `records` array, 42202 a record of the wrong shape (not an
  object, no value/data, Kinesis data neither object nor string), 42203 partition key missing, not a
  string or not 1..256 characters, 42204 partition not an integer of the topic, 42205 StreamName differs
  from the path, 42207 over 500 PutRecords records, 42210 body not UTF-8, 42211 lone surrogate (`\\ud800`),
  42212 duplicate object key at any depth, 42213 nested too deeply, 42214 number out of range (1e999,
  over 4300 digits).
- 500: 50000 a bug of the gateway (logged with its traceback), 50001 unexpected Kinesis client failure.
- 503 (retry later): 50301 broker unavailable or no record acknowledged, 50302 Kinesis unavailable or
  throttling, 50303 timed out waiting for the broker's acknowledgement.

Size errors are permanent, so never 503. REST Proxy answers per record as REST Proxy v2 does: a record too
large gets `{"partition": null, "offset": null, "error_code": 41302, "error": "record too large: ..."}` in
`offsets` and is not produced; the rest are, with HTTP 200; when every record is too large the answer is
HTTP 413 (error_code 41302) with the same `offsets`. Kinesis limits are checked here before calling
Kinesis, and, as AWS does for PutRecords, one record over 1 MiB rejects the whole request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger(__name__)

KAFKA_JSON_V2 = "application/vnd.kafka.json.v2+json"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024       # API Gateway's payload limit
KINESIS_MAX_RECORDS = 500
KINESIS_MAX_RECORD_BYTES = 1024 * 1024          # data + partition key, per record
KINESIS_MAX_REQUEST_BYTES = 5 * 1024 * 1024     # all data + partition keys of one PutRecords
KINESIS_MAX_PARTITION_KEY = 256
# Set on the gateway's producer (it is librdkafka's default) so the check below and librdkafka agree; the
# broker's own limit (1048588 by default) is higher, so a record that passes here is not refused there.
KAFKA_MAX_MESSAGE_BYTES = 1_000_000
# librdkafka counts a record's worst-case v2 framing against message.max.bytes (measured: with the default
# 1,000,000 it takes key + value up to 999,964 bytes and refuses one more).
KAFKA_RECORD_OVERHEAD_BYTES = 36
KAFKA_MAX_RECORD_BYTES = KAFKA_MAX_MESSAGE_BYTES - KAFKA_RECORD_OVERHEAD_BYTES
RECORD_TOO_LARGE = 41302
DELIVERY_TIMEOUT_MS = 30_000
METADATA_TTL = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_code: int | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code or status * 100
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error_code": self.error_code, "message": self.message, **self.extra},
                            status_code=self.status)


# --- backends -------------------------------------------------------------------------------------


class KafkaBackend:
    """One idempotent producer shared by all requests; a thread serves its delivery reports and resolves
    each request's asyncio futures, so a request is answered only when the broker has its records."""

    def __init__(self, kafka, delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS):
        self.kafka = kafka
        self.delivery_timeout_ms = delivery_timeout_ms
        self.producer = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._topics: dict[str, int] = {}   # topic -> partition count
        self._topics_at = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        # short linger: a REST request waits for its own records' acknowledgement
        self.producer = self.kafka.producer(**{"linger.ms": 2, "message.timeout.ms": self.delivery_timeout_ms,
                                               "message.max.bytes": KAFKA_MAX_MESSAGE_BYTES})
        self._thread = threading.Thread(target=self._serve, name="gateway-kafka-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None  # destroyed with its threads, not left reconnecting

    def partitions(self, topic: str) -> int | None:
        """Partition count of an existing topic (None: no such topic). Metadata is cached briefly."""
        topics, at = self._topics, self._topics_at
        if topic in topics and time.monotonic() - at < METADATA_TTL:
            return topics[topic]
        with self._lock:  # one metadata refresh at a time
            if self._topics_at > at and topic in self._topics:
                return self._topics[topic]
            try:
                metadata = self.producer.list_topics(timeout=min(10.0, self.delivery_timeout_ms / 1000))
            except Exception as exc:  # KafkaException: broker unreachable
                raise ApiError(503, f"Kafka broker unavailable: {exc}", 50301) from exc
            self._topics = {name: len(t.partitions) for name, t in metadata.topics.items()
                            if t.error is None and not name.startswith("__")}
            self._topics_at = time.monotonic()
            return self._topics.get(topic)

    async def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]
                      ) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = []

        def resolve(future: asyncio.Future, err, msg) -> None:
            if not future.done():
                future.set_result((err, msg))

        for key, value, partition in records:
            future = loop.create_future()
            futures.append(future)

            def on_delivery(err, msg, future=future):
                loop.call_soon_threadsafe(resolve, future, err, msg)

            kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
            if partition is not None:
                kwargs["partition"] = partition
            while True:
                try:
                    self.producer.produce(topic, **kwargs)
                    break
                except BufferError:  # local queue full: the poll thread drains it
                    await asyncio.sleep(0.01)
                except Exception as exc:  # KafkaException from produce itself (e.g. fatal producer state)
                    future.set_result((exc, None))
                    break
        timeout = self.delivery_timeout_ms / 1000 + 10
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        return [{"partition": msg.partition(), "offset": msg.offset(), "error_code": None, "error": None}
                if err is None else _failed_offset(err) for err, msg in results]

    def healthy(self) -> tuple[bool, str]:
        try:
            metadata = self.producer.list_topics(timeout=3)
            return True, f"{len(metadata.brokers)} broker(s)"
        except Exception as exc:
            return False, str(exc)


def _failed_offset(err) -> dict:
    """A failed delivery (KafkaError, or the KafkaException produce() raised) as a REST Proxy offset entry."""
    from confluent_kafka import KafkaError

    error = err.args[0] if isinstance(err, Exception) and err.args else err
    code = error.code() if hasattr(error, "code") else None
    # a size refusal (ours or the broker's) cannot succeed on retry: a permanent per-record error, not 503
    if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE):
        return _too_large_offset(f"Kafka refused it: {err}")
    retriable = bool(error.retriable()) if hasattr(error, "retriable") else True
    return {"partition": None, "offset": None, "error_code": 1 if retriable else 2, "error": str(err)}


def _too_large_offset(detail: str) -> dict:
    return {"partition": None, "offset": None, "error_code": RECORD_TOO_LARGE, "error": f"record too large: {detail}"}


class KinesisBackend:
    """boto3 Kinesis calls, run in the thread pool."""

    def __init__(self, kinesis):
        self.kinesis = kinesis
        self.client = None
        self._streams: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.client = self.kinesis.client()

    def exists(self, stream: str) -> bool:
        with self._lock:
            seen = self._streams.get(stream)
            if seen is not None and time.monotonic() - seen < METADATA_TTL:
                return True
        try:
            self.client.describe_stream_summary(StreamName=stream)
        except self.client.exceptions.ResourceNotFoundException:
            return False
        except Exception as exc:
            raise _kinesis_error(exc) from exc
        with self._lock:
            self._streams[stream] = time.monotonic()
        return True

    def put_record(self, stream: str, data: bytes, partition_key: str) -> dict:
        try:
            answer = self.client.put_record(StreamName=stream, Data=data, PartitionKey=partition_key)
        except Exception as exc:
            raise _kinesis_error(exc) from exc
        return {k: answer[k] for k in ("SequenceNumber", "ShardId", "EncryptionType") if k in answer}

    def put_records(self, stream: str, entries: list[dict]) -> dict:
        try:
            answer = self.client.put_records(StreamName=stream, Records=entries)
        except Exception as exc:
            raise _kinesis_error(exc) from exc
        out = {"FailedRecordCount": answer.get("FailedRecordCount", 0), "Records": answer["Records"]}
        if "EncryptionType" in answer:
            out["EncryptionType"] = answer["EncryptionType"]
        return out

    def healthy(self) -> tuple[bool, str]:
        try:
            self.client.list_streams(Limit=1)
            return True, "reachable"
        except Exception as exc:
            return False, str(exc)


def _kinesis_error(exc: Exception) -> ApiError:
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    if isinstance(exc, ParamValidationError):  # botocore's own check of the input, before any call
        return ApiError(400, f"Kinesis rejected the request: {exc}", 40002)

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code == "ResourceNotFoundException":
            return ApiError(404, f"Stream not found: {message}", 40402)
        if code in ("ValidationException", "InvalidArgumentException"):
            return ApiError(400, f"Kinesis rejected the request: {message}", 40002)
        return ApiError(503, f"Kinesis unavailable ({code}): {message}", 50302)
    if isinstance(exc, BotoCoreError):
        return ApiError(503, f"Kinesis unavailable: {exc}", 50302)
    log.error("unexpected Kinesis client failure", exc_info=exc)
    return ApiError(500, f"Kinesis call failed: {exc}", 50001)


# --- request helpers ------------------------------------------------------------------------------


async def _body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ApiError(413, f"Request body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes",
                               41301)
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header", 40003) from None
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"Request body exceeds the limit of {max_bytes} bytes", 41301)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "Client disconnected before the body was complete", 40004) from None
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# A lone surrogate can only come from a \uD800-\uDFFF escape (strict UTF-8 decoding refuses encoded ones),
# so bodies without such an escape, nearly all of them, skip the walk over every string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # the platform reads duplicate keys as malformed; letting the last one win here would forward a record
    # whose meaning depends on the reader
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(422, f"Duplicate key {_short(key)} in a JSON object", 42212)
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ApiError(400, f"Request body is not valid JSON: {name} is not a JSON value", 40001)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # would be forwarded as `Infinity`, which no JSON reader accepts
        raise ApiError(422, f"Number {_short(text)} is out of range", 42214)
    return value


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)  # repr escapes surrogates, so the error answer itself always encodes
    return shown if len(shown) <= limit else shown[:limit] + "...'"


def _has_lone_surrogate(text: str, payload: Any) -> bool:
    if not _SURROGATE_ESCAPE.search(text):
        return False
    stack = [payload]  # iterative: the payload may be as deep as the parser allowed
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _json(body: bytes) -> Any:
    """The body as JSON, refused unless it is strict UTF-8 JSON that re-encodes to UTF-8 as it came."""
    if not body:
        raise ApiError(400, "Request body is empty: expected a JSON object", 40001)
    try:
        # strict UTF-8 only: json.loads(bytes) would also take UTF-16/32
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"Request body is not valid UTF-8: {exc}", 42210) from None
    try:
        payload = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                             parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", 40001) from None
    except RecursionError:
        raise ApiError(422, "Request body is nested too deeply", 42213) from None
    except ValueError as exc:  # an integer over Python's 4300-digit limit
        raise ApiError(422, f"A number in the request body is out of range: {exc}", 42214) from None
    if _has_lone_surrogate(text, payload):
        raise ApiError(422, "Request body has a lone surrogate (an unpaired \\ud800-\\udfff escape): "
                       "it has no UTF-8 encoding", 42211)
    return payload


def _records(payload: Any, what: str) -> list:
    if not isinstance(payload, dict):
        raise ApiError(422, f"Request body must be a JSON object with a `records` array, got {type(payload).__name__}",
                       42201)
    if "records" not in payload:
        raise ApiError(422, f"Missing `records`: expected {what}", 42201)
    records = payload["records"]
    if not isinstance(records, list) or not records:
        raise ApiError(422, f"`records` must be a non-empty array of {what}", 42201)
    return records


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # _json refuses these already; this keeps a miss a 422, not a 500
        raise ApiError(422, f"{where} has a lone surrogate: it has no UTF-8 encoding", 42211) from None


def _json_bytes(value: Any, where: str) -> bytes:
    """Compact UTF-8 JSON, or a 422: never bytes a JSON reader would refuse."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise ApiError(422, f"{where} is nested too deeply", 42213) from None
    except ValueError as exc:  # NaN/Infinity: _json refuses them already
        raise ApiError(422, f"{where}: {exc}", 42214) from None
    return _utf8(text, where)


def _kinesis_data(value: Any, where: str) -> bytes:
    """Kinesis data as stored: a row object as compact JSON, a string as its UTF-8 text."""
    if isinstance(value, str):
        return _utf8(value, where)
    if not isinstance(value, dict):
        raise ApiError(422, f"{where} must be the row object (or a string), got {_json_type(value)}", 42202)
    return _json_bytes(value, where)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), "?")


def _partition_key(value: Any, where: str) -> tuple[str, bytes]:
    """The key and its UTF-8 bytes (which count towards the record's 1 MiB)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(422, f"{where}: partition key must be a string, got {_json_type(value)}", 42203)
    key = str(value)
    if not 1 <= len(key) <= KINESIS_MAX_PARTITION_KEY:
        raise ApiError(422, f"{where}: partition key must be 1 to {KINESIS_MAX_PARTITION_KEY} characters "
                       f"(got {len(key)})", 42203)
    return key, _utf8(key, where)


def _check_kinesis_record_size(data: bytes, key: bytes, where: str) -> int:
    size = len(data) + len(key)
    if size > KINESIS_MAX_RECORD_BYTES:
        raise ApiError(413, f"{where}: record too large: data + partition key are {size} bytes, over Kinesis' "
                       f"limit of {KINESIS_MAX_RECORD_BYTES} bytes (1 MiB)", RECORD_TOO_LARGE)
    return size


def _check_json_content_type(request: Request) -> None:
    media = _media_type(request)
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, f"Unsupported Content-Type {media or '(none)'!r}: send application/json", 41501)


# --- OpenAPI --------------------------------------------------------------------------------------


def openapi_schema() -> dict:
    error = {"$ref": "#/components/schemas/Error"}

    def errors(*codes: int) -> dict:
        texts = {400: "Malformed request (not JSON)", 401: "Missing API key", 403: "Invalid API key",
                 404: "Unknown topic or stream", 413: "Body or record too large (41301 body, 41302 record, "
                 "41303 PutRecords total)", 415: "Wrong content type",
                 422: "Not UTF-8 JSON without duplicate keys or lone surrogates, or JSON of the wrong shape",
                 500: "A gateway bug (logged)", 503: "Broker or Kinesis unavailable: retry later"}
        return {str(c): {"description": texts[c], "content": {"application/json": {"schema": error}}}
                for c in codes}

    row = {"type": "object", "description": "An event row with the source column names (DATA_CONTRACT.md §2)",
           "additionalProperties": True}
    stream_param = {"name": "stream", "in": "path", "required": True, "schema": {"type": "string"},
                    "example": "streaming-pinterest-pin"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "pinterest_platform gateway", "version": "1.0.0",
                 "description": "Local stand-in for API Gateway + Kafka REST Proxy v2 + the Kinesis proxy."},
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error_code", "message"],
                          "properties": {"error_code": {"type": "integer"}, "message": {"type": "string"}}},
                "Row": row,
                "ProduceRequest": {
                    "type": "object", "required": ["records"],
                    "properties": {"records": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["value"],
                        "properties": {"value": {"description": "any JSON value; a row object here"},
                                       "key": {"description": "optional JSON key"},
                                       "partition": {"type": "integer", "minimum": 0}}}}}},
                "ProduceResponse": {
                    "type": "object",
                    "properties": {
                        "offsets": {"type": "array", "items": {"type": "object", "properties": {
                            "partition": {"type": "integer", "nullable": True},
                            "offset": {"type": "integer", "nullable": True},
                            "error_code": {"type": "integer", "nullable": True,
                                           "description": "1 retriable, 2 not retriable, 41302 record "
                                                          "too large (not produced; do not retry)"},
                            "error": {"type": "string", "nullable": True}}}},
                        "key_schema_id": {"type": "integer", "nullable": True},
                        "value_schema_id": {"type": "integer", "nullable": True}}},
                "PutRecordRequest": {
                    "type": "object", "required": ["Data", "PartitionKey"],
                    "properties": {"StreamName": {"type": "string"}, "Data": row,
                                   "PartitionKey": {"type": "string", "minLength": 1, "maxLength": 256}}},
                "PutRecordResponse": {"type": "object", "properties": {
                    "SequenceNumber": {"type": "string"}, "ShardId": {"type": "string"}}},
                "PutRecordsRequest": {
                    "type": "object", "required": ["records"],
                    "properties": {"records": {"type": "array", "minItems": 1, "maxItems": KINESIS_MAX_RECORDS,
                                               "items": {"type": "object", "required": ["data", "partition-key"],
                                                         "properties": {"data": row, "partition-key": {
                                                             "type": "string", "minLength": 1,
                                                             "maxLength": 256}}}}}},
                "PutRecordsResponse": {"type": "object", "properties": {
                    "FailedRecordCount": {"type": "integer"},
                    "Records": {"type": "array", "items": {"type": "object", "properties": {
                        "SequenceNumber": {"type": "string"}, "ShardId": {"type": "string"},
                        "ErrorCode": {"type": "string"}, "ErrorMessage": {"type": "string"}}}}}},
            },
        },
        "security": [{"ApiKey": []}],
        "paths": {
            "/topics/{topic}": {"post": {
                "summary": "Produce records to a Kafka topic (Confluent REST Proxy v2, json embedded format)",
                "parameters": [{"name": "topic", "in": "path", "required": True, "schema": {"type": "string"},
                                "example": "pinterest.pin"}],
                "requestBody": {"required": True, "content": {KAFKA_JSON_V2: {
                    "schema": {"$ref": "#/components/schemas/ProduceRequest"}}}},
                "responses": {"200": {"description": "Every record acknowledged by the broker (or its error)",
                                      "content": {KAFKA_JSON_V2: {
                                          "schema": {"$ref": "#/components/schemas/ProduceResponse"}}}},
                              **errors(400, 401, 403, 404, 413, 415, 422, 500, 503)}}},
            "/streams/{stream}/record": {"put": {
                "summary": "Put one record into a Kinesis stream (PutRecord)",
                "parameters": [stream_param],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PutRecordRequest"}}}},
                "responses": {"200": {"description": "Stored", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PutRecordResponse"}}}},
                    **errors(400, 401, 403, 404, 413, 415, 422, 500, 503)}}},
            "/streams/{stream}/records": {"put": {
                "summary": "Put up to 500 records into a Kinesis stream (PutRecords)",
                "parameters": [stream_param],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PutRecordsRequest"}}}},
                "responses": {"200": {"description": "Per-record results; retry those with an ErrorCode",
                                      "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/PutRecordsResponse"}}}},
                              **errors(400, 401, 403, 404, 413, 415, 422, 500, 503)}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3 schema"}}}},
            "/health": {"get": {"summary": "Liveness and backend reachability", "security": [],
                                "responses": {"200": {"description": "Kafka and Kinesis reachable"},
                                              "503": {"description": "A backend is unreachable"}}}},
        },
    }


# --- the app --------------------------------------------------------------------------------------


def _internal_error() -> JSONResponse:
    return ApiError(500, "Internal gateway error (a bug, logged with its traceback); some of the request's "
                    "records may have been delivered", 50000).response()


def create_app(kafka, kinesis, api_key: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS) -> Starlette:
    """The gateway ASGI app. `kafka`/`kinesis` are KafkaResource/KinesisResource; `api_key` None means no key
    is required. The Kafka producer and Kinesis client are created at startup and closed at shutdown."""
    kafka_backend = KafkaBackend(kafka, delivery_timeout_ms)
    kinesis_backend = KinesisBackend(kinesis)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        if not given:
            raise ApiError(401, "Missing API key: send it in the x-api-key header", 40101)
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(403, "Forbidden: the x-api-key header does not match", 40301)

    def guarded(handler):
        async def endpoint(request: Request):
            try:
                authorize(request)
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except asyncio.TimeoutError:
                return ApiError(503, "Timed out waiting for the broker to acknowledge the records", 50303).response()
            except Exception:
                # only our own bugs get here (every input error is an ApiError): answer JSON like every
                # other error, and keep the traceback for whoever fixes it
                log.exception("gateway bug answering %s %s", request.method, request.url.path)
                return _internal_error()
        return endpoint

    async def produce(request: Request):
        topic = request.path_params["topic"]
        media = _media_type(request)
        if media != KAFKA_JSON_V2:
            raise ApiError(415, f"Unsupported Content-Type {media or '(none)'!r}: send {KAFKA_JSON_V2}", 41501)
        records = _records(_json(await _body(request, max_body_bytes)), 'objects {"value": ...}')
        partitions = await run_in_threadpool(kafka_backend.partitions, topic)
        if partitions is None:
            raise ApiError(404, f"Topic {topic!r} not found", 40401)
        outgoing = []
        offsets: list[dict | None] = []   # None: to be filled in by the broker's answer
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ApiError(422, f"records[{i}] must be an object with a `value`, got {_json_type(rec)}",
                               42202)
            if "value" not in rec:
                raise ApiError(422, f"records[{i}] has no `value`", 42202)
            partition = rec.get("partition")
            if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)
                                          or not 0 <= partition < partitions):
                got = _short(str(partition)) if isinstance(partition, int) and not isinstance(partition, bool) \
                    else _json_type(partition)
                raise ApiError(422, f"records[{i}].partition must be an integer in 0..{partitions - 1}, "
                               f"got {got}", 42204)
            key = None if rec.get("key") is None else _json_bytes(rec["key"], f"records[{i}].key")
            value = None if rec["value"] is None else _json_bytes(rec["value"], f"records[{i}].value")
            size = len(key or b"") + len(value or b"")
            if size > KAFKA_MAX_RECORD_BYTES:
                # REST Proxy answers each record on its own: this one fails, the others are still produced
                offsets.append(_too_large_offset(f"key + value are {size} bytes, over the limit of "
                                                 f"{KAFKA_MAX_RECORD_BYTES} bytes"))
                continue
            offsets.append(None)
            outgoing.append((key, value, partition))
        produced = iter(await kafka_backend.produce(topic, outgoing) if outgoing else [])
        offsets = [o if o is not None else next(produced) for o in offsets]
        body = {"offsets": offsets, "key_schema_id": None, "value_schema_id": None}
        failed = [o for o in offsets if o["error_code"] is not None]
        if failed and len(failed) == len(offsets):
            if all(o["error_code"] == RECORD_TOO_LARGE for o in failed):
                raise ApiError(413, f"Every record is too large: {failed[0]['error']}", RECORD_TOO_LARGE, **body)
            return JSONResponse({"error_code": 50301, "message": f"Kafka broker did not acknowledge any record: "
                                 f"{next(o for o in failed if o['error_code'] != RECORD_TOO_LARGE)['error']}",
                                 **body}, status_code=503)
        return JSONResponse(body, media_type=KAFKA_JSON_V2)

    async def put_record(request: Request):
        stream = request.path_params["stream"]
        _check_json_content_type(request)
        payload = _json(await _body(request, max_body_bytes))
        if not isinstance(payload, dict):
            raise ApiError(422, "Request body must be a JSON object with Data and PartitionKey", 42201)
        if payload.get("StreamName") not in (None, stream):
            raise ApiError(422, f"StreamName {payload['StreamName']!r} does not match the path's {stream!r}", 42205)
        if "Data" not in payload:
            raise ApiError(422, "Missing `Data`: expected the row object", 42202)
        if "PartitionKey" not in payload:
            raise ApiError(422, "Missing `PartitionKey`", 42203)
        key, key_bytes = _partition_key(payload["PartitionKey"], "PartitionKey")
        data = _kinesis_data(payload["Data"], "Data")
        _check_kinesis_record_size(data, key_bytes, "Data")
        if not await run_in_threadpool(kinesis_backend.exists, stream):
            raise ApiError(404, f"Stream {stream!r} not found", 40402)
        answer = await run_in_threadpool(kinesis_backend.put_record, stream, data, key)
        return JSONResponse(answer)

    async def put_records(request: Request):
        stream = request.path_params["stream"]
        _check_json_content_type(request)
        records = _records(_json(await _body(request, max_body_bytes)), 'objects {"data": ..., "partition-key": ...}')
        if len(records) > KINESIS_MAX_RECORDS:
            raise ApiError(422, f"At most {KINESIS_MAX_RECORDS} records per request (got {len(records)})", 42207)
        entries = []
        total = 0
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ApiError(422, f"records[{i}] must be an object with `data` and `partition-key`, got "
                               f"{_json_type(rec)}", 42202)
            if "data" not in rec:
                raise ApiError(422, f"records[{i}] has no `data`", 42202)
            if "partition-key" not in rec:
                raise ApiError(422, f"records[{i}] has no `partition-key`", 42203)
            key, key_bytes = _partition_key(rec["partition-key"], f"records[{i}]")
            data = _kinesis_data(rec["data"], f"records[{i}].data")
            # one record over 1 MiB fails the whole call, as AWS' ValidationException does
            total += _check_kinesis_record_size(data, key_bytes, f"records[{i}]")
            entries.append({"Data": data, "PartitionKey": key})
        if total > KINESIS_MAX_REQUEST_BYTES:
            raise ApiError(413, f"PutRecords too large: data + partition keys are {total} bytes, over Kinesis' "
                           f"limit of {KINESIS_MAX_REQUEST_BYTES} bytes (5 MiB) per request", 41303)
        if not await run_in_threadpool(kinesis_backend.exists, stream):
            raise ApiError(404, f"Stream {stream!r} not found", 40402)
        answer = await run_in_threadpool(kinesis_backend.put_records, stream, entries)
        return JSONResponse(answer)

    async def openapi(_request: Request):
        return JSONResponse(openapi_schema())

    async def health(_request: Request):
        (kafka_ok, kafka_msg), (kinesis_ok, kinesis_msg) = await asyncio.gather(
            run_in_threadpool(kafka_backend.healthy), run_in_threadpool(kinesis_backend.healthy))
        ok = kafka_ok and kinesis_ok
        return JSONResponse({"status": "ok" if ok else "degraded",
                             "kafka": {"ok": kafka_ok, "detail": kafka_msg},
                             "kinesis": {"ok": kinesis_ok, "detail": kinesis_msg}},
                            status_code=200 if ok else 503)

    async def not_found(request: Request, _exc):
        return ApiError(404, f"No route {request.method} {request.url.path}; see GET /openapi.json", 40400).response()

    async def method_not_allowed(request: Request, _exc):
        return ApiError(405, f"Method {request.method} not allowed on {request.url.path}", 40500).response()

    async def unhandled(request: Request, exc: Exception):
        # outside the guarded endpoints (health, openapi, routing); Starlette re-raises after this answer,
        # so the server logs the traceback
        return _internal_error()

    @asynccontextmanager
    async def lifespan(_app):
        await run_in_threadpool(kafka_backend.start)
        await run_in_threadpool(kinesis_backend.start)
        try:
            yield
        finally:
            await run_in_threadpool(kafka_backend.stop)

    routes = [
        Route("/topics/{topic}", guarded(produce), methods=["POST"]),
        Route("/streams/{stream}/record", guarded(put_record), methods=["PUT"]),
        Route("/streams/{stream}/records", guarded(put_records), methods=["PUT"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: method_not_allowed,
                                                                      Exception: unhandled})


def gateway_command(args) -> int:
    """`pinterest-platform gateway`: args.host (default 127.0.0.1), args.port (8080), args.api_key (default
    PINTEREST_API_KEY; none means no key is required). Creates the prefix's topics and streams, then serves."""
    import os

    import uvicorn

    from pinterest_platform.ingestion.emulator import resources_from_settings
    from pinterest_platform.settings import load_settings

    settings = load_settings()
    host = getattr(args, "host", None) or "127.0.0.1"
    port = int(getattr(args, "port", None) or 8080)
    api_key = getattr(args, "api_key", None) or os.environ.get("PINTEREST_API_KEY") or None
    kafka, kinesis = resources_from_settings(settings)
    if kafka is None:
        print("error: KAFKA_BOOTSTRAP_SERVERS is required for the aws profile", flush=True)
        return 2
    try:
        kafka.ensure_platform_topics(settings.topic_prefix)
        kinesis.ensure_platform_streams(settings.topic_prefix)
    except Exception as exc:
        print(f"error: could not reach Kafka/Kinesis: {exc}", flush=True)
        return 2
    app = create_app(kafka, kinesis, api_key)
    print(f"gateway on http://{host}:{port} (API key {'required' if api_key else 'not required'}); "
          f"schema at /openapi.json", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
