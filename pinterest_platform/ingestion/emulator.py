"""The posting emulator: replays the source database's posting events into Kafka and/or Kinesis.

Each event (one `pinterest_data` row and the `geolocation_data` and `user_data` rows sharing its key) is
posted as three JSON objects with the source column names (DATA_CONTRACT.md §2):

- batch:  Kafka topics `<prefix>.pin/.geo/.user` through an idempotent producer (acks=all), key = ind;
- stream: Kinesis streams `streaming-<prefix>-pin/-geo/-user` through PutRecords, partition key = ind;
- `via="http"`: the same through the original HTTP contract (REST Proxy v2 and the API Gateway Kinesis
  proxy), e.g. against `pinterest-platform gateway` or the real API Gateway.

Events are read in key order, one page of a few thousand at a time (keyset pagination, bound parameters).
A page is posted, every record acknowledged (failed ones re-sent a bounded number of times), and only then
is the page's last key written to the cursor file, so `resume=True` continues exactly after the last fully
acknowledged page. A record that still fails is counted and reported (non-zero exit code), never dropped
silently; the run stops after that page so that a resume re-posts it.

Throughput: a thread reads and encodes the next page while the current one is posted; rows are encoded by
orjson wherever its text is byte-for-byte the stdlib encoder's (`encode_row`); Kafka delivery reports are
counted by one callback per topic and attempt, and (Kafka only) the next page is produced while the
previous one's reports come in, the cursor still advancing only past pages whose every record is
acknowledged (a page posted after a failed one is waited for and counted, and posted again on resume).

`posted_at=<date>` (Kafka only) stamps every Kafka record's timestamp (CreateTime) with that UTC day at the
current UTC time of day of the moment it is produced, to replay history and test backfills: the raw sink
files a record under the UTC day of its Kafka timestamp. Kinesis cannot be given an arrival time
(approximateArrivalTimestamp is set by the service) and REST Proxy v2 has no timestamp field, so both are
refused. The cursor is the same whatever the day: `--limit N --posted-at D1`, then `--resume --limit N
--posted-at D2` posts the next N events on the next day, which is how history is replayed day by day.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import logging
import os
import queue
import random
import re
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pinterest_platform.contract import (
    EVENT_KINDS,
    SOURCE_COLUMNS,
    SOURCE_GEO_TABLE,
    SOURCE_KEY,
    SOURCE_PIN_TABLE,
    SOURCE_TABLE_OF,
    SOURCE_USER_TABLE,
    stream_name,
    topic_name,
)

log = logging.getLogger(__name__)

Mode = Literal["batch", "stream", "both"]
Via = Literal["direct", "http"]
MODES: tuple[str, ...] = ("batch", "stream", "both")
VIAS: tuple[str, ...] = ("direct", "http")

PAGE_SIZE = 5000                  # events read and posted per acknowledged page
KINESIS_MAX_RECORDS = 500         # PutRecords limits
KINESIS_MAX_REQUEST_BYTES = 5 * 1024 * 1024
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
HTTP_TOPIC_RECORDS_PER_REQUEST = 500
HTTP_MAX_REQUEST_BYTES = 4 * 1024 * 1024   # under API Gateway's 10 MB payload limit
MAX_ATTEMPTS = 6                  # sends of one record before it counts as failed (lost)
# the emulator's producer settings on top of the resource's (idempotence and acks=all come from there and
# are not changed here), chosen by measurement (bench/ingest.py on the local stack, 2 CPUs): without lz4
# the same run took 35-40 % less time (the producer is CPU-bound here, compressing competes with reading
# and encoding); a longer linger.ms gained ~10 % with lz4, nothing measurable without. The records are the
# same bytes either way (compression is per batch, undone by the consumer); where network bytes cost more
# than CPU (MSK across zones), pass compression_type="lz4" through `KafkaSink(..., **producer_overrides)`.
KAFKA_PRODUCER_SETTINGS: dict[str, Any] = {"compression.type": "none"}
PIPELINE_PAGES = 1                # pages posted to Kafka before the previous one's acknowledgements are all in
DAY_MS = 86_400_000
RETENTION_MARGIN_MS = 3_600_000   # a posted_at replay must stay within the topics' retention this long

# one event: its key and its three rows (None when the source has no row of that kind for the key)
Event = tuple[int, dict[str, dict[str, Any] | None]]

# --- report ---------------------------------------------------------------------------------------


@dataclass
class EmulationReport:
    """What a run did. `sent`/`failed` count records per destination (topic or stream name)."""

    mode: str
    via: str
    events_read: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    missing_rows: dict[str, int] = field(default_factory=dict)  # events lacking a geo/user row
    seconds: float = 0.0
    first_key: int | None = None
    last_key: int | None = None      # last key of the last fully acknowledged page
    stopped_early: bool = False      # a page had permanent failures; later events were not posted
    errors: list[str] = field(default_factory=list)   # a sample of the failure reasons
    posted_at: str | None = None     # the UTC day stamped on the Kafka records' timestamps (None: now)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def ok(self) -> bool:
        return self.total_failed == 0 and not self.stopped_early

    @property
    def records_per_second(self) -> float:
        return self.total_sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"posting emulator: mode={self.mode} via={self.via}: {self.events_read} events read in "
                 f"{self.seconds:.1f} s ({self.records_per_second:,.0f} records/s)"]
        for dest in sorted(set(self.sent) | set(self.failed)):
            line = f"  {dest:<40} sent {self.sent.get(dest, 0):>9,}  failed {self.failed.get(dest, 0):>7,}"
            if self.retried.get(dest):
                line += f"  (re-sent {self.retried[dest]:,})"
            lines.append(line)
        for kind, n in sorted(self.missing_rows.items()):
            if n:
                lines.append(f"  {n:,} events have no {SOURCE_TABLE_OF[kind]} row (nothing to post)")
        if self.posted_at is not None:
            lines.append(f"  Kafka record timestamps: {self.posted_at} (UTC) at the time of day of posting")
        if self.last_key is not None:
            lines.append(f"  acknowledged up to key {self.last_key}")
        if self.stopped_early:
            lines.append("  STOPPED EARLY after permanent failures; `--resume` re-posts from the last "
                         "acknowledged key")
        for err in self.errors[:5]:
            lines.append(f"  error: {err}")
        if self.total_failed:
            lines.append(f"  FAILED: {self.total_failed:,} records were not delivered")
        return "\n".join(lines)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "events_read": self.events_read,
            "records_sent": self.total_sent,
            "records_failed": self.total_failed,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records_per_second, 1),
            "sent": dict(self.sent),
            "failed": dict(self.failed),
            "last_key": self.last_key,
            "stopped_early": self.stopped_early,
            "posted_at": self.posted_at,
        }


# --- reading the source ---------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Source values as JSON: datetimes as ISO-8601 (`2020-08-28T03:52:47`), decimals as numbers."""
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})


DATETIME_COLUMNS = frozenset({"timestamp", "date_joined"})
_SPACE_SEPARATED_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _source_tables(engine) -> dict[str, Any]:
    """The three source tables with the contract's column names, read without SQLAlchemy type processing.

    A source database we did not create may store datetimes as text in any ISO-like form (SQLite has no
    datetime type); SQLAlchemy's SQLite DATETIME parser would silently drop a `T`-separated time. So
    values arrive as the driver returns them (PyMySQL still gives datetime objects for DATETIME columns)
    and `_wire_value` normalizes them; the key stays an Integer for keyset pagination."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    tables: dict[str, Any] = {}
    for name in (SOURCE_PIN_TABLE, SOURCE_GEO_TABLE, SOURCE_USER_TABLE):
        key = SOURCE_KEY[name]
        tables[name] = sa.Table(name, metadata, *[
            sa.Column(col, sa.Integer() if col == key else sa.types.NullType(), key=col)
            for col in SOURCE_COLUMNS[name]
        ])
    return tables


def _wire_value(column: str, value: Any) -> Any:
    """A source value as posted: datetimes as ISO-8601 (`2020-08-28T03:52:47`) whether the driver gave a
    datetime or text."""
    if type(value) is str and column in DATETIME_COLUMNS and _SPACE_SEPARATED_DATETIME.match(value):
        return value[:10] + "T" + value[11:]
    return value if type(value) in _PLAIN else _jsonable(value)


def _engine(source_db_url: str):
    try:
        from pinterest_platform.datagen import source_engine
    except ImportError:  # pragma: no cover
        import sqlalchemy as sa

        return sa.create_engine(source_db_url)
    return source_engine(source_db_url)


class SourceReader:
    """Reads events in key order, page by page (keyset pagination on `pinterest_data.index`).

    One query per page: the three tables joined on the key (left joins from `pinterest_data`, so an event
    missing a geo or user row is still seen), `ORDER BY index`, `index > :after`, `LIMIT :page`, executed
    with `stream_results`/`yield_per` so the driver never buffers more than a page. Each page is a short
    statement, so a slow or rate-limited run never holds a server-side cursor open (MySQL would time
    it out)."""

    def __init__(self, source_db_url: str, page_size: int = PAGE_SIZE):
        import sqlalchemy as sa

        self.engine = _engine(source_db_url)
        self.page_size = page_size
        tables = _source_tables(self.engine)
        self.pin, self.geo, self.user = (tables[SOURCE_PIN_TABLE], tables[SOURCE_GEO_TABLE],
                                         tables[SOURCE_USER_TABLE])
        self.by_kind = {"pin": self.pin, "geo": self.geo, "user": self.user}
        self.key = self.pin.c[SOURCE_KEY[SOURCE_PIN_TABLE]]
        # selected columns are labelled "<kind>__<n>"; layout: kind -> [(source column name, position)]
        self.layout: list[tuple[str, list[tuple[str, int]]]] = []
        selected = []
        for kind in EVENT_KINDS:
            table = self.by_kind[kind]
            positions = []
            for n, col in enumerate(SOURCE_COLUMNS[SOURCE_TABLE_OF[kind]]):
                positions.append((col, len(selected)))
                selected.append(table.c[col].label(f"{kind}__{n}"))
            self.layout.append((kind, positions))
        self.columns = [col for _, positions in self.layout for col, _ in positions]
        # per kind: (kind, its column names, slice of the joined row, its key's position, datetime columns)
        self.slices = []
        for kind, positions in self.layout:
            cols = [col for col, _ in positions]
            first = positions[0][1]
            assert [pos for _, pos in positions] == list(range(first, first + len(cols)))
            key_pos = first + cols.index(SOURCE_KEY[SOURCE_TABLE_OF[kind]])
            self.slices.append((kind, cols, first, first + len(cols), key_pos,
                                [c for c in cols if c in DATETIME_COLUMNS]))
        self.pin_key_pos = dict(self.layout[0][1])[SOURCE_KEY[SOURCE_PIN_TABLE]]
        geo_key = self.geo.c[SOURCE_KEY[SOURCE_GEO_TABLE]]
        user_key = self.user.c[SOURCE_KEY[SOURCE_USER_TABLE]]
        joined = self.pin.outerjoin(self.geo, geo_key == self.key).outerjoin(self.user, user_key == self.key)
        self.base = sa.select(*selected).select_from(joined).order_by(self.key)

    def count(self, after: int | None = None, limit: int | None = None) -> int:
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(self.pin)
        if after is not None:
            query = query.where(self.key > after)
        with self.engine.connect() as conn:
            total = int(conn.execute(query).scalar_one())
        return min(total, limit) if limit is not None else total

    def row_pages(self, after: int | None = None, limit: int | None = None,
                  page_size: int | None = None) -> Iterator[list[tuple]]:
        """The joined source rows (plain tuples, as the driver returns them), one page at a time."""
        page_size = page_size or self.page_size
        remaining = limit
        while remaining is None or remaining > 0:
            n = page_size if remaining is None else min(page_size, remaining)
            query = self.base
            if after is not None:
                query = query.where(self.key > after)
            query = query.limit(n)
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=n).execute(query)
                rows = [tuple(row) for row in result]
            if not rows:
                return
            yield rows
            after = int(rows[-1][self.pin_key_pos])
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < n:
                return

    def pages(self, after: int | None = None, limit: int | None = None,
              page_size: int | None = None) -> Iterator[list[Event]]:
        """Events (key and the three rows as posted), one page at a time: `record_pages` grouped by event."""
        for page in self.record_pages(after, limit, page_size):
            events: dict[int, dict[str, dict[str, Any] | None]] = {}
            for kind, key, row in zip(page.kinds, page.keys, page.rows, strict=True):
                events.setdefault(key, dict.fromkeys(EVENT_KINDS))[kind] = row
            yield list(events.items())

    def record_pages(self, after: int | None = None, limit: int | None = None,
                     page_size: int | None = None) -> Iterator[Page]:
        """Pages of records ready to post (rows and their JSON text); see `Page`."""
        for rows in self.row_pages(after, limit, page_size):
            yield self.page(rows)

    def page(self, rows: list[tuple]) -> Page:
        """A page of joined source rows as records, in posting order (pin, geo, user of each event in turn),
        with their JSON text (what `encode_row` gives, its fast path inlined)."""
        key_pos = self.pin_key_pos
        page = Page(events=len(rows), first_key=int(rows[0][key_pos]), last_key=int(rows[-1][key_pos]))
        kinds, keys, values, payloads = page.kinds, page.keys, page.rows, page.payloads
        add_kind, add_key, add_row, add_payload = kinds.append, keys.append, values.append, payloads.append
        missing = dict.fromkeys(EVENT_KINDS, 0)
        plain = _PLAIN.issuperset
        encode = _encode_plain if _orjson is not None else _stdlib_encode
        match = _SPACE_SEPARATED_DATETIME.match
        slices = self.slices
        for row in rows:
            if not plain(map(type, row)):   # e.g. datetime or Decimal objects (MySQL)
                row = tuple(_wire_value(col, value) for col, value in zip(self.columns, row, strict=True))
            key = row[key_pos]
            if type(key) is not int:
                key = int(key)
            for kind, columns, start, stop, kind_key_pos, dt_columns in slices:
                if row[kind_key_pos] is None:   # the left join found no row of this kind
                    missing[kind] += 1
                    continue
                obj = dict(zip(columns, row[start:stop]))
                for col in dt_columns:
                    value = obj[col]
                    if type(value) is str and match(value):
                        obj[col] = value[:10] + "T" + value[11:]
                add_kind(kind)
                add_key(key)
                add_row(obj)
                add_payload(encode(obj))
        page.missing = {kind: n for kind, n in missing.items() if n}
        return page

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Page:
    """One page of events as records, in posting order, as parallel lists: `kinds[i]` ("pin"/"geo"/"user"),
    `keys[i]` (the event's key), `rows[i]` (the row object) and `payloads[i]` (its JSON text)."""

    events: int
    first_key: int
    last_key: int
    kinds: list[str] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)   # events lacking a row of that kind
    _records: list[Outgoing] | None = field(default=None, repr=False)

    @property
    def records(self) -> list[Outgoing]:
        if self._records is None:
            self._records = [Outgoing(k, key, row, payload) for k, key, row, payload
                             in zip(self.kinds, self.keys, self.rows, self.payloads, strict=True)]
        return self._records


# --- sinks ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outgoing:
    """One record to post: destination kind, key and the row object."""

    kind: str
    key: int
    row: dict[str, Any]
    _payload: bytes | None = field(default=None, repr=False, compare=False)

    def payload(self) -> bytes:
        if self._payload is None:
            self._payload = encode_row(self.row)
        return self._payload


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

try:  # a C encoder about 15x faster than the stdlib's; its output is used only where it is the same bytes
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency of the orchestrator extra
    _orjson = None

# orjson writes some floats differently from the stdlib encoder (the reference): magnitudes below 1e-4
# (`0.00001` for `1e-05`, `1e-7` for `1e-07`) and NaN/Infinity (`null` for `NaN`). Its text holds one of
# these markers then (`e-`, `0.0000`, `null`); only a text with a marker (a UUID or a None value has one
# too) has its row's values looked at, and the row is encoded by the stdlib when it holds such a float.
_INF = float("inf")


def _stdlib_encode(row: Any) -> bytes:
    return _ENCODER.encode(row).encode("utf-8")


def _orjson_differs(values) -> bool:
    """Whether orjson would write one of these values differently from the stdlib encoder."""
    for value in values:
        if type(value) is float and not (1e-4 <= abs(value) < _INF) and value != 0.0:
            return True   # below 1e-4 (but not zero), infinite or NaN
    return False


def _encode_plain(row: dict[str, Any]) -> bytes:
    """`encode_row` of a row whose values are all of a `_PLAIN` type."""
    try:
        out = _orjson.dumps(row)
    except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a lone surrogate ...
        return _stdlib_encode(row)
    if (b"e-" in out or b"0.0000" in out or b"null" in out) and _orjson_differs(row.values()):
        return _stdlib_encode(row)
    return out


def encode_row(row: dict[str, Any]) -> bytes:
    """A row as compact UTF-8 JSON text (emoji kept as characters): exactly the bytes of
    `json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")`, produced by orjson when
    every value is a plain str/int/float/bool/None and its text cannot differ, else by the stdlib."""
    if _orjson is not None and _PLAIN.issuperset(map(type, row.values())):
        return _encode_plain(row)
    return _stdlib_encode(row)


@dataclass
class SendResult:
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, bucket: dict[str, int], dest: str, n: int = 1) -> None:
        if n:
            bucket[dest] = bucket.get(dest, 0) + n

    def merge(self, other: SendResult) -> None:
        for mine, theirs in ((self.sent, other.sent), (self.failed, other.failed),
                             (self.retried, other.retried)):
            for dest, n in theirs.items():
                mine[dest] = mine.get(dest, 0) + n
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])


def _backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * (2 ** attempt))) + base / 2


class Sink:
    name = "sink"

    def destinations(self) -> list[str]:
        raise NotImplementedError

    def send(self, records: Sequence[Outgoing]) -> SendResult:
        raise NotImplementedError

    def send_page(self, page: Page) -> SendResult:
        """Post a page's records (every one acknowledged or counted as failed when this returns)."""
        return self.send(page.records)

    # a sink that can post a page while the previous one's acknowledgements are awaited (submit, then wait)
    pipelined = False

    def submit(self, page: Page) -> Any:
        return self.send_page(page)

    def wait(self, ticket: Any) -> SendResult:
        return ticket

    def close(self) -> None:
        pass


def _wall_ms() -> int:
    """Milliseconds since the epoch, now (a function of its own so tests can drive the clock)."""
    return time.time_ns() // 1_000_000


class PostedAtClock:
    """Kafka timestamps for a replay of `day`: that UTC day at the current UTC time of day.

    The time of day is measured from the UTC midnight of the run's start, so a run that crosses midnight
    keeps counting and is clamped at the day's last millisecond (23:59:59.999) instead of wrapping to its
    start; timestamps never go backwards within a run, even if the wall clock does. Two runs for the same
    day on the same wall-clock day keep their order."""

    def __init__(self, day: _dt.date, now_ms: Callable[[], int] | None = None):
        self.day = day
        self.now_ms = now_ms or (lambda: _wall_ms())
        self.day_start_ms = _day_start_ms(day)
        self.anchor_ms = self.now_ms() // DAY_MS * DAY_MS   # UTC midnight of the run's start
        self.last = self.day_start_ms

    def __call__(self) -> int:
        offset = min(max(self.now_ms() - self.anchor_ms, 0), DAY_MS - 1)
        self.last = max(self.last, self.day_start_ms + offset)
        return self.last


def _day_start_ms(day: _dt.date) -> int:
    return int(_dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp()) * 1000


class _Deliveries:
    """The delivery reports of one topic's records in one attempt: one callback for all of them (no object
    per record); a failed report keeps its message (topic, key and value, to re-produce it)."""

    __slots__ = ("reported", "failed", "on_delivery")

    def __init__(self) -> None:
        self.reported = 0
        self.failed: list[tuple[Any, Any]] = []   # (error, message)
        counts = self

        def on_delivery(err, msg) -> None:
            counts.reported += 1
            if err is not None:
                counts.failed.append((err, msg))

        self.on_delivery = on_delivery


@dataclass
class _Attempt:
    """Records produced in one attempt and their delivery reports so far."""

    count: int
    produced: Counter
    deliveries: dict[str, _Deliveries]
    producer: Any
    attempt: int
    result: SendResult


class KafkaSink(Sink):
    """Kafka through an idempotent producer (acks=all). Every message's delivery report is awaited; a failed
    delivery is re-produced up to `max_attempts` times, then counted as failed. Reports are counted per
    topic and per attempt by one callback each; only a failed report is looked at (its message gives the
    record to re-produce)."""

    name = "kafka"

    def __init__(self, kafka, prefix: str, max_attempts: int = MAX_ATTEMPTS,
                 delivery_timeout_ms: int = 60_000, posted_at: _dt.date | None = None,
                 **producer_overrides: Any):
        self.kafka = kafka
        self.prefix = prefix
        # posted_at: each record's timestamp (CreateTime) is that day at the time of day it is produced
        self.clock = PostedAtClock(posted_at) if posted_at is not None else None
        self.max_attempts = max_attempts
        self.delivery_timeout = delivery_timeout_ms / 1000
        self.overrides = {"message.timeout.ms": delivery_timeout_ms, **KAFKA_PRODUCER_SETTINGS,
                          **producer_overrides}
        self.topics = {kind: topic_name(prefix, kind) for kind in EVENT_KINDS}
        self.producer = kafka.producer(**self.overrides)

    def destinations(self) -> list[str]:
        return list(self.topics.values())

    def send(self, records: Sequence[Outgoing]) -> SendResult:
        return self._send([self.topics[r.kind] for r in records], [str(r.key).encode() for r in records],
                          [r.payload() for r in records])

    pipelined = True

    def send_page(self, page: Page) -> SendResult:
        return self.wait(self.submit(page))

    def submit(self, page: Page) -> _Attempt:
        """Produce a page's records without waiting for their delivery reports (see `wait`)."""
        topics = self.topics
        return self._submit([topics[kind] for kind in page.kinds], [b"%d" % key for key in page.keys],
                            page.payloads, 1, SendResult())

    def _send(self, topics: list[str], keys: list[bytes], values: list[bytes]) -> SendResult:
        return self.wait(self._submit(topics, keys, values, 1, SendResult()))

    def _submit(self, topics: list[str], keys: list[bytes], values: list[bytes], attempt: int,
                result: SendResult) -> _Attempt:
        produced = Counter(topics)   # records per topic
        deliveries = {topic: _Deliveries() for topic in produced}
        producer = self.producer
        self._produce_all(topics, keys, values, {t: d.on_delivery for t, d in deliveries.items()})
        return _Attempt(len(topics), produced, deliveries, producer, attempt, result)

    def wait(self, ticket: _Attempt) -> SendResult:
        """Wait for every delivery report of a submitted page, re-producing the failed records (bounded);
        returns what was acknowledged, re-sent and failed."""
        result = ticket.result
        while True:
            # librdkafka reports every message by message.timeout.ms; the deadline only guards against a
            # report that never comes. The producer polled is the one the records went to (a producer in
            # fatal state is replaced, but its reports are still served).
            deadline = time.monotonic() + self.delivery_timeout + 60
            deliveries = ticket.deliveries.values()
            while sum(d.reported for d in deliveries) < ticket.count and time.monotonic() < deadline:
                ticket.producer.poll(0.5)
            retry_topics, retry_keys, retry_values, fatal = [], [], [], False
            for topic, d in ticket.deliveries.items():
                unreported = ticket.produced[topic] - d.reported
                if unreported > 0:
                    # cannot tell which records these are: counted as failed, so the run stops before the
                    # cursor passes them and a resume posts the page again (never lost, maybe twice)
                    result.add(result.failed, topic, unreported)
                    result.errors.append(f"{topic}: {unreported} records had no delivery report before the "
                                         f"deadline")
                result.add(result.sent, topic, d.reported - len(d.failed))
                for err, msg in d.failed:
                    fatal = fatal or bool(getattr(err, "fatal", lambda: False)())  # a KafkaError
                    key = msg.key()
                    if len(result.errors) < 20:
                        result.errors.append(f"{topic} key {key.decode() if key is not None else key}: {err}")
                    retry_topics.append(topic)
                    retry_keys.append(key)
                    retry_values.append(msg.value())
            if not retry_topics:
                return result
            if fatal and ticket.producer is self.producer:  # an idempotent producer in fatal state is replaced
                log.warning("Kafka producer fatal error; recreating the producer")
                self.producer = self.kafka.producer(**self.overrides)
            if ticket.attempt >= self.max_attempts:
                for topic in retry_topics:
                    result.add(result.failed, topic)
                return result
            for topic in retry_topics:
                result.add(result.retried, topic)
            log.warning("re-producing %d undelivered Kafka records (attempt %d)", len(retry_topics),
                        ticket.attempt + 1)
            time.sleep(_backoff(ticket.attempt))
            ticket = self._submit(retry_topics, retry_keys, retry_values, ticket.attempt + 1, result)

    def _produce_all(self, topics: list[str], keys: list[bytes], values: list[bytes],
                     callbacks: dict[str, Callable]) -> None:
        """Produce the records in order, without waiting (the delivery reports are served by flush)."""
        produce = self.producer.produce
        clock = self.clock
        for topic, key, value in zip(topics, keys, values, strict=True):
            callback = callbacks[topic]
            try:
                if clock is None:   # the producer's own timestamp (now)
                    produce(topic, value=value, key=key, on_delivery=callback)
                else:
                    produce(topic, value=value, key=key, on_delivery=callback, timestamp=clock())
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._produce(topic, key, value, callback)

    def _produce(self, topic: str, key: bytes, value: bytes, callback: Callable) -> None:
        while True:
            self.producer.poll(0.1)
            try:
                if self.clock is None:
                    self.producer.produce(topic, value=value, key=key, on_delivery=callback)
                else:
                    self.producer.produce(topic, value=value, key=key, on_delivery=callback,
                                          timestamp=self.clock())
                return
            except BufferError:
                continue

    def close(self) -> None:
        self.producer.flush(30)


class KinesisSink(Sink):
    """Kinesis through PutRecords (<= 500 records and <= 5 MiB per call). Only the records a call rejected
    (per-record ErrorCode) are retried, with backoff; a failed call (throttled, unreachable) is retried
    whole. Records still rejected after `max_attempts` count as failed."""

    name = "kinesis"

    RETRYABLE_CALL_ERRORS = {"ProvisionedThroughputExceededException", "LimitExceededException",
                             "ThrottlingException", "ServiceUnavailable", "InternalFailure",
                             "InternalServerError", "KMSThrottlingException", "RequestTimeout"}

    def __init__(self, kinesis, prefix: str, max_attempts: int = 8):
        self.client = kinesis.client() if hasattr(kinesis, "client") else kinesis
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.streams = {kind: stream_name(prefix, kind) for kind in EVENT_KINDS}

    def destinations(self) -> list[str]:
        return list(self.streams.values())

    def send(self, records: Sequence[Outgoing]) -> SendResult:
        result = SendResult()
        for kind in EVENT_KINDS:
            stream = self.streams[kind]
            entries = []
            for rec in records:
                if rec.kind != kind:
                    continue
                data = rec.payload()
                if len(data) + len(str(rec.key)) > KINESIS_MAX_RECORD_BYTES:
                    result.add(result.failed, stream)
                    result.errors.append(f"{stream} key {rec.key}: record larger than 1 MiB")
                    continue
                entries.append({"Data": data, "PartitionKey": str(rec.key)})
            for chunk in _chunks(entries, KINESIS_MAX_RECORDS, KINESIS_MAX_REQUEST_BYTES,
                                 lambda e: len(e["Data"]) + len(e["PartitionKey"])):
                self._put(stream, chunk, result)
        return result

    def _put(self, stream: str, entries: list[dict], result: SendResult) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        pending = entries
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.put_records(StreamName=stream, Records=pending)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in self.RETRYABLE_CALL_ERRORS or attempt == self.max_attempts:
                    result.add(result.failed, stream, len(pending))
                    result.errors.append(f"{stream}: PutRecords failed: {exc}")
                    return
                result.add(result.retried, stream, len(pending))
                time.sleep(_backoff(attempt))
                continue
            except BotoCoreError as exc:  # connection errors, timeouts
                if attempt == self.max_attempts:
                    result.add(result.failed, stream, len(pending))
                    result.errors.append(f"{stream}: PutRecords failed: {exc}")
                    return
                result.add(result.retried, stream, len(pending))
                time.sleep(_backoff(attempt))
                continue
            answers = response.get("Records") or []
            if len(answers) != len(pending):  # cannot tell which were stored: send them all again
                answers = [{"ErrorCode": "UnmatchedResponse", "ErrorMessage": "answer length mismatch"}] * len(pending)
            failed = [entry for entry, answer in zip(pending, answers, strict=True) if answer.get("ErrorCode")]
            result.add(result.sent, stream, len(pending) - len(failed))
            if not failed:
                return
            if len(result.errors) < 20:
                answer = next(a for a in answers if a.get("ErrorCode"))
                result.errors.append(f"{stream}: {len(failed)} records rejected "
                                     f"({answer['ErrorCode']}: {answer.get('ErrorMessage', '')})")
            if attempt == self.max_attempts:
                result.add(result.failed, stream, len(failed))
                return
            result.add(result.retried, stream, len(failed))
            time.sleep(_backoff(attempt))
            pending = failed


def _chunks(items: list, max_count: int, max_bytes: int, size: Callable[[Any], int]) -> Iterator[list]:
    chunk: list = []
    chunk_bytes = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= max_count or chunk_bytes + n > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(item)
        chunk_bytes += n
    if chunk:
        yield chunk


# --- the HTTP contract ----------------------------------------------------------------------------


KAFKA_JSON_V2 = "application/vnd.kafka.json.v2+json"


class HttpError(RuntimeError):
    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


class HttpIngestClient:
    """Client of the original HTTP contract (API Gateway in front of Kafka REST Proxy and Kinesis):

    - `post_topic_records(topic, records)`: `POST {invoke_url}/topics/{topic}` (REST Proxy v2, json embedded
      format), returns the answer's `offsets`;
    - `put_stream_records(stream, records)`: `PUT {invoke_url}/streams/{stream}/records`, returns the
      PutRecords-like answer;
    - `put_stream_record(stream, data, partition_key)`: `PUT {invoke_url}/streams/{stream}/record`.

    Sends `x-api-key` when given. Connection errors and 5xx/429 answers are retried with backoff; other 4xx
    raise `HttpError` at once (the request itself is wrong)."""

    def __init__(self, invoke_url: str, api_key: str | None = None, timeout: float = 60.0,
                 max_attempts: int = MAX_ATTEMPTS):
        import httpx

        self.invoke_url = invoke_url.rstrip("/")
        self.max_attempts = max_attempts
        headers = {"x-api-key": api_key} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes, content_type: str) -> dict:
        import httpx

        url = f"{self.invoke_url}{path}"
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.request(method, url, content=body,
                                               headers={"Content-Type": content_type})
            except httpx.TransportError as exc:
                last = f"{method} {url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return response.json()
                last = f"{method} {url}: HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code < 500 and response.status_code != 429:
                    raise HttpError(response.status_code, last)
            if attempt < self.max_attempts:
                time.sleep(_backoff(attempt))
        raise HttpError(None, last)

    def post_topic_records(self, topic: str, records: Sequence[dict]) -> list[dict]:
        """REST Proxy v2 produce; `records` are `{"value": ..., "key"?: ..., "partition"?: ...}` objects."""
        return self.post_topic_body(topic, _json_bytes({"records": list(records)}))

    def post_topic_body(self, topic: str, body: bytes) -> list[dict]:
        """The same with an already serialized `{"records": [...]}` body."""
        return self._request("POST", f"/topics/{topic}", body, KAFKA_JSON_V2).get("offsets", [])

    def put_stream_records(self, stream: str, records: Sequence[dict]) -> dict:
        """Kinesis proxy PutRecords; `records` are `{"data": row, "partition-key": str}` objects."""
        return self.put_stream_body(stream, _json_bytes({"records": list(records)}))

    def put_stream_body(self, stream: str, body: bytes) -> dict:
        return self._request("PUT", f"/streams/{stream}/records", body, "application/json")

    def put_stream_record(self, stream: str, data: Any, partition_key: str) -> dict:
        body = _json_bytes({"StreamName": stream, "Data": data, "PartitionKey": partition_key})
        return self._request("PUT", f"/streams/{stream}/record", body, "application/json")

    def close(self) -> None:
        self.client.close()


def _json_bytes(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def _row_bytes(rec: Outgoing) -> int:
    return len(rec.payload()) + 64


def _topic_body(records: Sequence[Outgoing]) -> bytes:
    """`{"records": [{"key": ind, "value": row}, ...]}` from the already serialized rows. The key is a JSON
    number, which REST Proxy serializes to the same bytes ("7528") as a direct send's key."""
    return b'{"records":[' + b",".join(b'{"key":%d,"value":%s}' % (r.key, r.payload()) for r in records) + b"]}"


def _stream_body(records: Sequence[Outgoing]) -> bytes:
    """`{"records": [{"data": row, "partition-key": "ind"}, ...]}` from the already serialized rows."""
    return b'{"records":[' + b",".join(b'{"data":%s,"partition-key":"%d"}' % (r.payload(), r.key)
                                       for r in records) + b"]}"


class _HttpSink(Sink):
    """Both HTTP contracts: many records per request per destination; the records an answer marks as
    rejected are re-posted with backoff (bounded), then counted as failed. Subclasses send one request."""

    def __init__(self, client: HttpIngestClient, targets: dict[str, str], max_attempts: int,
                 records_per_request: int):
        self.http = client
        self.targets = targets
        self.max_attempts = max_attempts
        self.records_per_request = records_per_request

    def destinations(self) -> list[str]:
        return list(self.targets.values())

    def send(self, records: Sequence[Outgoing]) -> SendResult:
        result = SendResult()
        for kind in EVENT_KINDS:
            target = self.targets[kind]
            mine = [r for r in records if r.kind == kind]
            for chunk in _chunks(mine, self.records_per_request, HTTP_MAX_REQUEST_BYTES, _row_bytes):
                self._deliver(target, chunk, result)
        return result

    def _rejected(self, target: str, pending: list[Outgoing], result: SendResult) -> list[Outgoing]:
        """Send `pending` in one request; return the records the answer rejected (raises HttpError)."""
        raise NotImplementedError

    def _deliver(self, target: str, chunk: list[Outgoing], result: SendResult) -> None:
        pending = chunk
        for attempt in range(1, self.max_attempts + 1):
            try:
                failed = self._rejected(target, pending, result)
            except HttpError as exc:
                result.add(result.failed, target, len(pending))
                result.errors.append(str(exc))
                return
            result.add(result.sent, target, len(pending) - len(failed))
            if not failed:
                return
            if attempt == self.max_attempts:
                result.add(result.failed, target, len(failed))
                return
            result.add(result.retried, target, len(failed))
            time.sleep(_backoff(attempt))
            pending = failed


class HttpKafkaSink(_HttpSink):
    """Kafka through REST Proxy v2 (`POST /topics/{topic}`)."""

    name = "kafka"

    def __init__(self, client: HttpIngestClient, prefix: str, max_attempts: int = MAX_ATTEMPTS,
                 records_per_request: int = HTTP_TOPIC_RECORDS_PER_REQUEST):
        super().__init__(client, {kind: topic_name(prefix, kind) for kind in EVENT_KINDS}, max_attempts,
                         records_per_request)

    def _rejected(self, target: str, pending: list[Outgoing], result: SendResult) -> list[Outgoing]:
        offsets = self.http.post_topic_body(target, _topic_body(pending))
        if len(offsets) != len(pending):
            # an answer we cannot match to records: send them all again
            result.errors.append(f"{target}: answer had {len(offsets)} offsets for {len(pending)} records")
            return pending
        failed = [rec for rec, off in zip(pending, offsets, strict=True) if off.get("error_code") or off.get("error")]
        if failed and len(result.errors) < 20:
            bad = next(o for o in offsets if o.get("error_code") or o.get("error"))
            result.errors.append(f"{target}: {len(failed)} records rejected ({bad.get('error')})")
        return failed


class HttpKinesisSink(_HttpSink):
    """Kinesis through the API Gateway Kinesis proxy (`PUT /streams/{stream}/records`)."""

    name = "kinesis"

    def __init__(self, client: HttpIngestClient, prefix: str, max_attempts: int = 8):
        super().__init__(client, {kind: stream_name(prefix, kind) for kind in EVENT_KINDS}, max_attempts,
                         KINESIS_MAX_RECORDS)

    def _rejected(self, target: str, pending: list[Outgoing], result: SendResult) -> list[Outgoing]:
        answers = self.http.put_stream_body(target, _stream_body(pending)).get("Records") or []
        if len(answers) != len(pending):
            result.errors.append(f"{target}: answer had {len(answers)} records for {len(pending)} sent")
            return pending
        return [rec for rec, a in zip(pending, answers, strict=True) if a.get("ErrorCode")]


# --- cursor ---------------------------------------------------------------------------------------


def read_cursor(path: Path | None) -> int | None:
    """The last acknowledged key stored in the cursor file (None: no file, start from the beginning)."""
    if path is None or not Path(path).exists():
        return None
    data = json.loads(Path(path).read_text())
    key = data.get("last_key")
    return int(key) if key is not None else None


def write_cursor(path: Path, last_key: int, **info: Any) -> None:
    """Atomically replace the cursor file (write a temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"last_key": last_key, "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), **info}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_cursor_path(state_dir: Path, prefix: str, mode: str) -> Path:
    """Where the CLI and the asset keep the cursor: one per prefix and mode (the destinations), whatever the
    transport (a run resumed over HTTP continues one started direct and vice versa) and whatever day the
    records were stamped with (a resumed replay posts the next events, on its own day)."""
    return Path(state_dir) / "emulator" / f"cursor-{prefix}-{mode}.json"


def check_posted_at(posted_at: _dt.date, mode: str, via: str, today: _dt.date | None = None) -> None:
    """Raise ValueError when `posted_at` cannot be honoured: a day in the future, Kinesis (its
    approximateArrivalTimestamp is set by the service on arrival) or REST Proxy v2 (no timestamp field)."""
    today = today or _dt.datetime.now(_dt.timezone.utc).date()
    if posted_at > today:
        raise ValueError(f"posted_at {posted_at.isoformat()} is in the future (today is {today.isoformat()} UTC)")
    if mode != "batch":
        raise ValueError(f"--posted-at applies to Kafka only: Kinesis cannot be given an arrival time "
                         f"(approximateArrivalTimestamp is set by the service), so use --mode batch "
                         f"(not --mode {mode})")
    if via != "direct":
        raise ValueError("--posted-at needs --via direct: the REST proxy (Confluent REST v2) has no record "
                         "timestamp field, so records posted over HTTP always carry the broker's time")


def _check_topics_keep(kafka, topics: list[str], posted_at: _dt.date) -> None:
    """Raise ValueError when the topics would not keep records stamped `posted_at`: the broker overwrites
    CreateTime (message.timestamp.type=LogAppendTime), rejects timestamps that old
    (message.timestamp.before.max.ms) or deletes them at once (time-based retention looks at the records'
    timestamps, so records older than retention.ms are deleted at the next retention check, active segment
    included). A broker that does not let us read the topic configs is warned about, not refused."""
    if not hasattr(kafka, "admin"):
        return
    from confluent_kafka.admin import ConfigResource

    age_ms = _wall_ms() // DAY_MS * DAY_MS - _day_start_ms(posted_at)   # how old the records are when posted
    try:
        admin = kafka.admin()   # kept referenced until the answers are in (a dropped client cancels them)
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics])
        configs = {res.name: {k: v.value for k, v in fut.result(30).items()} for res, fut in futures.items()}
    except Exception as exc:  # noqa: BLE001 - e.g. no DescribeConfigs permission: the replay may still work
        log.warning("could not read the topics' configs to check they keep records stamped %s: %s",
                    posted_at, exc)
        return
    for topic in topics:
        config = configs.get(topic, {})
        if config.get("message.timestamp.type") == "LogAppendTime":
            raise ValueError(f"topic {topic} has message.timestamp.type=LogAppendTime: the broker replaces the "
                             f"record timestamps, so --posted-at cannot take effect")
        before = int(config.get("message.timestamp.before.max.ms") or 2**63 - 1)
        if age_ms > before:
            raise ValueError(f"topic {topic} rejects records older than message.timestamp.before.max.ms="
                             f"{before}; {posted_at.isoformat()} is older")
        retention = int(config.get("retention.ms") or -1)
        if retention >= 0 and age_ms + RETENTION_MARGIN_MS >= retention:
            raise ValueError(
                f"topic {topic} has retention.ms={retention} ({retention / DAY_MS:g} days): the broker deletes "
                f"records by their timestamp, so records stamped {posted_at.isoformat()} would be deleted "
                f"before the raw sink reads them. Raise the topic's retention (e.g. kafka-configs --alter "
                f"--entity-type topics --entity-name {topic} --add-config retention.ms=-1) or pick a later day")


# --- the run --------------------------------------------------------------------------------------


class _RateLimiter:
    def __init__(self, rate: float | None):
        self.rate = rate
        self.start = time.monotonic()
        self.done = 0

    def wait(self, upcoming: int) -> None:
        """Sleep so that after posting `upcoming` more events the average stays under the rate."""
        if not self.rate:
            return
        due = self.start + (self.done + upcoming) / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.done += upcoming


def _read_ahead(pages: Iterator[Page], depth: int = 1):
    """The pages of `pages`, read (and encoded) by a thread `depth` pages ahead of the consumer: the source
    is read while the previous page is posted. The reading thread's exception is raised in the consumer;
    closing the generator stops the thread."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)
        finally:
            pages.close()

    worker = threading.Thread(target=read, name="emulator-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def emulate(source_db_url: str, mode: Mode, kafka=None, kinesis=None, prefix: str = "pinterest",
            limit: int | None = None, rate: float | None = None, via: Via = "direct",
            invoke_url: str | None = None, api_key: str | None = None, cursor_path: Path | None = None,
            resume: bool = False, progress: bool = True, page_size: int = PAGE_SIZE,
            posted_at: _dt.date | None = None) -> EmulationReport:
    """Post the source database's events to Kafka (`batch`), Kinesis (`stream`) or both.

    `limit`: at most this many events (None: all). `rate`: at most this many events per second.
    `via="http"`: through the HTTP contract at `invoke_url` (with `api_key`) instead of the clients.
    `cursor_path`: after each acknowledged page the page's last key is stored there; with `resume=True`
    the run starts after the stored key (without it, everything is posted again: a redelivery).
    `posted_at`: (mode `batch`, via `direct` only) every Kafka record's timestamp is that UTC day at the UTC
    time of day it is produced (clamped to the day); the topics must keep records that old (retention.ms).
    Kafka topics and Kinesis streams are created first when the corresponding resource is given."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if via not in VIAS:
        raise ValueError(f"via {via!r}: expected one of {', '.join(VIAS)}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 events per second")
    if posted_at is not None:
        if isinstance(posted_at, _dt.datetime) or not isinstance(posted_at, _dt.date):
            raise ValueError(f"posted_at {posted_at!r}: expected a datetime.date")
        check_posted_at(posted_at, mode, via)
    want_kafka, want_kinesis = mode in ("batch", "both"), mode in ("stream", "both")

    # destinations exist before anything is sent
    if kafka is not None and want_kafka:
        kafka.ensure_platform_topics(prefix)
        if posted_at is not None:
            _check_topics_keep(kafka, [topic_name(prefix, k) for k in EVENT_KINDS], posted_at)
    if kinesis is not None and want_kinesis:
        kinesis.ensure_platform_streams(prefix)

    sinks: list[Sink] = []
    http: HttpIngestClient | None = None
    if via == "http":
        if not invoke_url:
            raise ValueError("via='http' needs invoke_url (PINTEREST_GATEWAY_URL or --invoke-url)")
        http = HttpIngestClient(invoke_url, api_key)
        if want_kafka:
            sinks.append(HttpKafkaSink(http, prefix))
        if want_kinesis:
            sinks.append(HttpKinesisSink(http, prefix))
    else:
        if want_kafka:
            if kafka is None:
                raise ValueError(f"mode {mode!r} needs a Kafka resource")
            sinks.append(KafkaSink(kafka, prefix, posted_at=posted_at))
        if want_kinesis:
            if kinesis is None:
                raise ValueError(f"mode {mode!r} needs a Kinesis resource")
            sinks.append(KinesisSink(kinesis, prefix))

    after = read_cursor(cursor_path) if resume else None
    report = EmulationReport(mode=mode, via=via, last_key=after,
                             posted_at=posted_at.isoformat() if posted_at is not None else None)
    for sink in sinks:
        for dest in sink.destinations():
            report.sent[dest] = 0
            report.failed[dest] = 0
    if rate:  # small pages keep a rate-limited run smooth (and its cursor fresh)
        page_size = max(1, min(page_size, int(rate)))
    reader = SourceReader(source_db_url, page_size=page_size)
    limiter = _RateLimiter(rate)
    started = time.monotonic()
    bar = None
    pool = ThreadPoolExecutor(max_workers=len(sinks), thread_name_prefix="emulator") if len(sinks) > 1 else None
    pages = None
    try:
        total = reader.count(after, limit)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="event", desc=f"posting ({mode}, {via})", dynamic_ncols=True)
        # the next page is read and encoded while this one is posted and its acknowledgements awaited; a
        # pipelined sink (Kafka alone) also posts the next page before the previous one's acknowledgements
        # are all in, the cursor advancing only past pages whose every record is acknowledged
        window = PIPELINE_PAGES if all(sink.pipelined for sink in sinks) else 0
        in_flight: deque = deque()

        def settle(done: Page, results: list[SendResult]) -> None:
            outcome = SendResult()
            for r in results:
                outcome.merge(r)
            for dest, n in outcome.sent.items():
                report.sent[dest] = report.sent.get(dest, 0) + n
            for dest, n in outcome.failed.items():
                report.failed[dest] = report.failed.get(dest, 0) + n
            for dest, n in outcome.retried.items():
                report.retried[dest] = report.retried.get(dest, 0) + n
            report.errors.extend(outcome.errors[: max(0, 20 - len(report.errors))])
            if bar is not None:
                bar.update(done.events)
            if report.stopped_early:   # an earlier page was not fully acknowledged: the cursor stays before it
                return
            if sum(outcome.failed.values()):
                # this page is not fully acknowledged: keep the cursor before it and stop here
                report.stopped_early = True
                log.error("stopping: %d records of the page after key %s could not be delivered",
                          sum(outcome.failed.values()), report.last_key)
                return
            report.last_key = done.last_key
            if cursor_path is not None:
                write_cursor(cursor_path, report.last_key, mode=mode, via=via, prefix=prefix,
                             **({"posted_at": report.posted_at} if posted_at is not None else {}))

        pages = _read_ahead(reader.record_pages(after=after, limit=limit))
        for page in pages:
            if report.first_key is None:
                report.first_key = page.first_key
            report.events_read += page.events
            for kind, n in page.missing.items():
                report.missing_rows[kind] = report.missing_rows.get(kind, 0) + n
            limiter.wait(page.events)
            if window:
                in_flight.append((page, [sink.submit(page) for sink in sinks]))
                if len(in_flight) <= window:
                    continue
                done, tickets = in_flight.popleft()
                settle(done, [sink.wait(t) for sink, t in zip(sinks, tickets, strict=True)])
            elif pool is not None:
                if any(not isinstance(sink, KafkaSink) for sink in sinks):
                    page.records  # noqa: B018 - built once here, not in two threads at once
                settle(page, list(pool.map(lambda sink, page=page: sink.send_page(page), sinks)))
            else:
                settle(page, [sinks[0].send_page(page)])
            if report.stopped_early:
                break
        while in_flight:   # posted already: wait for their reports (counted; the cursor stops at a failure)
            done, tickets = in_flight.popleft()
            settle(done, [sink.wait(t) for sink, t in zip(sinks, tickets, strict=True)])
        for sink in sinks:
            sink.close()
    finally:
        if pages is not None:
            pages.close()
        report.seconds = time.monotonic() - started
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
        if http is not None:
            http.close()
        reader.close()
    return report


# --- CLI ------------------------------------------------------------------------------------------


def resources_from_settings(settings) -> tuple[Any, Any]:
    """(KafkaResource, KinesisResource) for the active profile."""
    from pinterest_platform.resources.kafka import LocalKafkaResource, msk_resource
    from pinterest_platform.resources.kinesis import AwsKinesisResource, LocalKinesisResource

    if settings.env == "local":
        return LocalKafkaResource(), LocalKinesisResource(region=settings.aws_region)
    kafka = msk_resource(settings) if settings.kafka_bootstrap_servers else None
    return kafka, AwsKinesisResource(region=settings.aws_region)


def emulate_command(args) -> int:
    """`pinterest-platform emulate`: args.mode, args.all, args.limit, args.rate, args.via, args.invoke_url,
    args.api_key, args.resume, args.no_progress, args.posted_at (a date or None). Exit code 1 when any record
    was not delivered, 2 when the run cannot start (e.g. --posted-at with Kinesis or --via http)."""
    import sys

    from pinterest_platform.resources.source_db import mask_url
    from pinterest_platform.settings import load_settings

    mode = getattr(args, "mode", None) or "both"
    via = getattr(args, "via", None) or "direct"
    posted_at = getattr(args, "posted_at", None)
    if posted_at is not None:
        try:
            check_posted_at(posted_at, mode, via)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
    settings = load_settings()
    limit = None if getattr(args, "all", False) else getattr(args, "limit", None)
    invoke_url = getattr(args, "invoke_url", None) or settings.gateway_url
    api_key = getattr(args, "api_key", None) or settings.gateway_api_key
    kafka = kinesis = None
    if via == "direct":
        kafka, kinesis = resources_from_settings(settings)
        if kafka is None and mode in ("batch", "both"):
            print("error: KAFKA_BOOTSTRAP_SERVERS is required for the aws profile", flush=True)
            return 2
    cursor = default_cursor_path(settings.state_dir, settings.topic_prefix, mode)
    print(f"posting events from {mask_url(settings.source_db_url)} (prefix {settings.topic_prefix!r})",
          flush=True)
    try:
        report = emulate(settings.source_db_url, mode, kafka=kafka, kinesis=kinesis,
                         prefix=settings.topic_prefix, limit=limit, rate=getattr(args, "rate", None), via=via,
                         invoke_url=invoke_url, api_key=api_key, cursor_path=cursor,
                         resume=bool(getattr(args, "resume", False)),
                         progress=not getattr(args, "no_progress", False), posted_at=posted_at)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    print(report.summary(), flush=True)
    print(f"  cursor: {cursor}", flush=True)
    return 0 if report.ok else 1


__all__ = [
    "EmulationReport", "HttpIngestClient", "HttpError", "KafkaSink", "KinesisSink", "HttpKafkaSink",
    "HttpKinesisSink", "SourceReader", "emulate", "emulate_command", "read_cursor", "write_cursor",
    "default_cursor_path", "resources_from_settings", "PostedAtClock", "check_posted_at",
]
