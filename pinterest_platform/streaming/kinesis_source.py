"""Kinesis as a Spark Structured Streaming source: the `kinesis-local` Python data source.

Open-source Spark has no Kinesis connector. This data source gives local Spark the schema
(`contract.KINESIS_SOURCE_SCHEMA`) and the main options of Databricks' `kinesis` format, so the same
streaming query runs on both:

    register(spark)
    spark.readStream.format("kinesis-local").option("streamName", "streaming-pinterest-pin")
        .option("region", "us-east-1").option("endpoint", "http://127.0.0.1:5000")
        .option("initialPosition", "trim_horizon").load()

Options (case-insensitive): `streamName` (one stream, or several comma-separated), `region`, `endpoint`,
`initialPosition` (`trim_horizon` (default; alias `earliest`), `latest`, or Databricks' JSON form
`{"at_timestamp": "<ISO-8601 or epoch ms>"}`), `awsAccessKey`/`awsSecretKey`/`awsSessionToken` (else the
default AWS credential chain), `maxRecordsPerFetch` (GetRecords Limit, default 10000), `maxFetchDuration`
(how long the driver may spend finding the stream's tip per micro-batch, default "10s"), and two
options of this source only: `maxRecordsPerTrigger` (a cap on records per micro-batch), `availableNow`
(`true` for a `Trigger.AvailableNow` query: Spark 4.0 runs it as one batch, so the cap is ignored and the
batch ends at what had arrived when the query started), `failOnDataLoss` (default true: fail when
records a batch must read are gone, e.g. trimmed past retention), `reuseDriverReads` (default true: see
Cost) and `startingOffsets` (an offset of this source, as JSON: where streams it names start when the
query has no checkpoint yet, e.g. the offsets of older per-stream checkpoints; others start at
`initialPosition`).

Offsets and exactly-once. An offset is JSON `{stream: {shardId: state}}` where state is `{"seq": S}` (all
records up to and including sequence number S consumed), `{"ts": epoch_ms}` (start AT_TIMESTAMP: the
`latest` and `at_timestamp` positions) or absent (start at TRIM_HORIZON), plus `"closed": true` once a
closed shard (after a split or merge) has been read to its end. The driver computes each batch's end
offset by reading every eligible shard up to its tip; Spark writes (start, end) to the checkpoint's
offset log before the batch runs, and each task reads exactly the records of one shard in
(start, end]. A replayed batch therefore reads the same records; with idempotent sinks the pipeline is
exactly-once. Under `availableNow` the target is every record that had arrived when the run started (by
ApproximateArrivalTimestamp, so a busy stream's moving tip cannot keep the run going); later records wait
for the next run.

Resharding: a child shard becomes eligible only once its parents are read to their end, so records of one
partition key stay in order; shards that appear later are read from their start. Expired shard iterators
are re-acquired AFTER_SEQUENCE_NUMBER of the last record seen; throttling
(ProvisionedThroughputExceeded, LimitExceeded) is retried with exponential backoff and jitter.

Cost: the driver must read a shard to find its tip (Kinesis gives no "last sequence number" of an open
shard). It keeps the records it read, as Arrow, and hands each batch's planned range to its task inside
the partition (`ShardRange.records`), so a record is fetched from Kinesis once, not twice (driver, then
executor). Only a range the driver did not read (a batch replayed after a restart, `reuseDriverReads`
false) is fetched by the task itself, GetRecords from the range's start. The records are exactly those of
(start, end] either way, so replays stay exact. On Databricks the native `kinesis` format is used."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from pinterest_platform.contract import KINESIS_SOURCE_SCHEMA

log = logging.getLogger(__name__)

FORMAT_NAME = "kinesis-local"

# GetRecords may answer empty while still behind the tip (gaps in a sparse shard); this many in a row is a hang
MAX_EMPTY_READS = 10_000
THROTTLING_ERRORS = frozenset({
    "ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException",
    "KMSThrottlingException", "RequestLimitExceeded",
})


class KinesisSourceError(RuntimeError):
    """A condition the source cannot recover from by retrying (missing stream, lost records, bad option)."""


# --- options ----------------------------------------------------------------------------------------

def _parse_duration_s(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|minutes?)?\s*", str(text))
    if not match:
        raise KinesisSourceError(f"cannot parse duration {text!r} (e.g. '10s', '500ms', '1m')")
    value, unit = float(match.group(1)), (match.group(2) or "s")
    return value / 1000 if unit == "ms" else value * 60 if unit.startswith("m") else value


def _parse_timestamp_ms(value: Any) -> int:
    if isinstance(value, (int, float)) or str(value).strip().isdigit():
        return int(value)
    parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:  # zone-less times are UTC throughout the platform
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class SourceOptions:
    streams: tuple[str, ...]
    region: str
    endpoint: str | None
    initial_position: str  # trim_horizon | latest | at_timestamp
    initial_timestamp_ms: int | None
    max_records_per_fetch: int
    max_fetch_duration_s: float
    max_records_per_trigger: int | None
    available_now: bool
    fail_on_data_loss: bool
    reuse_driver_reads: bool
    starting_offsets: str | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> SourceOptions:
        opts = {str(k).lower(): v for k, v in options.items() if v is not None}
        streams = tuple(s.strip() for s in str(opts.get("streamname", "")).split(",") if s.strip())
        if not streams:
            raise KinesisSourceError("option streamName is required (one stream, or several comma-separated)")
        position = str(opts.get("initialposition", "trim_horizon")).strip()
        timestamp_ms = None
        if position.startswith("{"):
            spec = json.loads(position)
            if "at_timestamp" not in spec:
                raise KinesisSourceError(f"initialPosition {position!r}: expected {{\"at_timestamp\": ...}}")
            position, timestamp_ms = "at_timestamp", _parse_timestamp_ms(spec["at_timestamp"])
        position = position.lower()
        if position == "earliest":
            position = "trim_horizon"
        if position not in ("trim_horizon", "latest", "at_timestamp"):
            raise KinesisSourceError(
                f"initialPosition {position!r}: expected trim_horizon, latest or {{\"at_timestamp\": ...}}")
        per_trigger = opts.get("maxrecordspertrigger")
        return cls(
            streams=streams,
            region=opts.get("region") or "us-east-1",
            endpoint=opts.get("endpoint") or None,
            initial_position=position,
            initial_timestamp_ms=timestamp_ms,
            max_records_per_fetch=int(opts.get("maxrecordsperfetch", 10000)),
            max_fetch_duration_s=_parse_duration_s(opts.get("maxfetchduration", "10s")),
            max_records_per_trigger=int(per_trigger) if per_trigger else None,
            available_now=str(opts.get("availablenow", "false")).lower() == "true",
            fail_on_data_loss=str(opts.get("failondataloss", "true")).lower() != "false",
            reuse_driver_reads=str(opts.get("reusedriverreads", "true")).lower() != "false",
            starting_offsets=opts.get("startingoffsets") or None,
            access_key=opts.get("awsaccesskey") or None,
            secret_key=opts.get("awssecretkey") or None,
            session_token=opts.get("awssessiontoken") or None,
        )


_clients: dict[SourceOptions, Any] = {}
_clients_lock = threading.Lock()


def make_client(options: SourceOptions):
    """A boto3 Kinesis client, shared per option set within a process (tasks of a reused Python worker)."""
    with _clients_lock:
        client = _clients.get(options)
        if client is None:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {}
            if options.access_key and options.secret_key:
                kwargs = {"aws_access_key_id": options.access_key, "aws_secret_access_key": options.secret_key,
                          "aws_session_token": options.session_token}
            # botocore retries transient network errors; throttling gets our own, longer backoff (_call)
            client = boto3.session.Session().client(
                "kinesis", region_name=options.region, endpoint_url=options.endpoint,
                config=Config(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=10, read_timeout=60), **kwargs)
            _clients[options] = client
        return client


# --- Kinesis calls ----------------------------------------------------------------------------------

def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _call(fn, *, max_wait_s: float = 300.0, **kwargs):
    """Call a Kinesis API, backing off exponentially (with jitter) while it is throttled."""
    delay, waited = 0.1, 0.0
    while True:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if _error_code(exc) not in THROTTLING_ERRORS or waited >= max_wait_s:
                raise
            sleep = min(delay, 5.0) * (0.5 + random.random())
            log.debug("kinesis throttled (%s); retrying in %.2fs", _error_code(exc), sleep)
            time.sleep(sleep)
            waited += sleep
            delay *= 2


def list_shards(client, stream: str) -> list[dict]:
    """Every shard Kinesis still lists for the stream (open and closed, within retention)."""
    shards: list[dict] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        try:
            page = _call(client.list_shards, **kwargs)
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                raise KinesisSourceError(f"Kinesis stream {stream!r} does not exist") from exc
            if _error_code(exc) == "ResourceInUseException":  # stream is being created or resharded
                time.sleep(1.0)
                continue
            raise
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}  # ListShards refuses StreamName together with NextToken


def shard_iterator(client, stream: str, shard_id: str, position: Mapping[str, Any]) -> str:
    """An iterator just after `position`: {"seq": S} -> AFTER S, {"ts": ms} -> AT_TIMESTAMP, {} -> TRIM_HORIZON."""
    kwargs: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
    if position.get("seq") is not None:
        kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=str(position["seq"]))
    elif position.get("ts") is not None:
        kwargs.update(ShardIteratorType="AT_TIMESTAMP",
                      Timestamp=datetime.fromtimestamp(int(position["ts"]) / 1000, tz=timezone.utc))
    else:
        kwargs.update(ShardIteratorType="TRIM_HORIZON")
    return _call(client.get_shard_iterator, **kwargs)["ShardIterator"]


def _get_records(client, iterator: str, limit: int) -> dict:
    return _call(client.get_records, ShardIterator=iterator, Limit=limit)


def _is_expired(exc: BaseException) -> bool:
    return _error_code(exc) == "ExpiredIteratorException"


def _arrival(record: dict) -> datetime | None:
    ts = record.get("ApproximateArrivalTimestamp")
    if ts is None:
        return None
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts, tz=timezone.utc)
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _at_tip(response: dict, limit: int) -> bool:
    # MillisBehindLatest == 0 says the read caught up; a full page may still be followed by more records
    return response.get("MillisBehindLatest", 0) == 0 and len(response.get("Records", [])) < limit


# --- offsets ----------------------------------------------------------------------------------------

def _norm_state(state: Mapping[str, Any]) -> dict:
    out: dict[str, Any] = {}
    if state.get("seq") is not None:
        out["seq"] = str(state["seq"])
    elif state.get("ts") is not None:
        out["ts"] = int(state["ts"])
    if state.get("closed"):
        out["closed"] = True
    return out


def normalize_offset(offset: Mapping[str, Any] | None, streams: tuple[str, ...] = ()) -> dict:
    """Canonical form (sorted keys, no empty states): Spark compares offsets by their JSON text."""
    offset = offset or {}
    out: dict[str, dict] = {}
    for stream in sorted(set(offset) | set(streams)):
        shards = {}
        for shard_id, state in sorted((offset.get(stream) or {}).items()):
            norm = _norm_state(state or {})
            if norm:
                shards[shard_id] = norm
        out[stream] = shards
    return out


def _position_key(state: Mapping[str, Any]) -> tuple:
    if state.get("seq") is not None:
        return ("seq", int(state["seq"]))
    if state.get("ts") is not None:
        return ("ts", int(state["ts"]))
    return ("trim",)


def _parents(shard: Mapping[str, Any]) -> list[str]:
    return [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]


def shard_finished(shard_id: str, state: Mapping[str, Any], listing: Mapping[str, Mapping]) -> bool:
    """True when the shard can yield no more records to this query.

    Read to its end (GetRecords gave no next iterator), past the EndingSequenceNumber of a closed shard, or no
    longer listed (expired). The EndingSequenceNumber test is re-evaluated on every listing rather than
    remembered, because moto keeps appending to "closed" parents after a split."""
    if state.get("closed"):
        return True
    shard = listing.get(shard_id)
    if shard is None:
        return True
    ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    return ending is not None and int(state.get("seq") or 0) >= int(ending)


def shard_eligible(shard_id: str, state: Mapping[str, Any], listing: Mapping[str, Mapping],
                   offsets: Mapping[str, Mapping]) -> bool:
    """A shard is read once its parents are finished (or once it has been started)."""
    if shard_id not in listing or shard_finished(shard_id, state, listing):
        return False
    if state.get("seq") is not None:
        return True
    return all(shard_finished(p, offsets.get(p, {}), listing) for p in _parents(listing[shard_id]))


def allocate(available: list[int], max_rows: int | None) -> list[int]:
    """How many records to take from each shard: all (no cap), or a fair share of `max_rows`."""
    if not max_rows:
        return list(available)
    counts = [0] * len(available)
    remaining = max(int(max_rows), 1)
    active = [i for i, a in enumerate(available) if a > 0]
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for i in active:
            take = min(share, available[i] - counts[i], remaining)
            counts[i] += take
            remaining -= take
            if remaining == 0:
                break
        active = [i for i in active if counts[i] < available[i]]
    return counts


# --- driver: finding the tip ------------------------------------------------------------------------

class ShardScan:
    """Driver-side scan of one shard: the sequence numbers after `base`, read ahead up to the tip.

    Kept across micro-batches so every record is read by the driver once; trimmed as batches commit. With
    `keep_records`, the records themselves are kept too (as Arrow, row i is `seqs[i]`), for the tasks."""

    def __init__(self, stream: str, shard_id: str, base: Mapping[str, Any], keep_records: bool = False):
        self.stream = stream
        self.shard_id = shard_id
        self.base = _norm_state({k: v for k, v in base.items() if k != "closed"})
        self.seqs: list[int] = []
        self.keep_records = keep_records
        self.batches: list = []  # pyarrow RecordBatches of the rows of `seqs`, in order (keep_records only)
        self.iterator: str | None = None
        self.closed = False  # GetRecords returned no next iterator: nothing follows the last of `seqs`

    def _extend(self, records: list[dict]) -> None:
        if not records:
            return
        self.seqs.extend(int(r["SequenceNumber"]) for r in records)
        if self.keep_records:
            self.batches.append(_to_batch(records, self.stream, self.shard_id, _arrow_schema()))

    def _drop(self, n: int) -> None:
        """Forget the first n records (committed: a later batch starts after them)."""
        self.seqs = self.seqs[n:]
        while n > 0 and self.batches:
            first = self.batches[0]
            if first.num_rows <= n:
                n -= first.num_rows
                self.batches.pop(0)
            else:
                self.batches[0] = first.slice(n)
                n = 0

    def records_ipc(self, n: int) -> bytes | None:
        """The first n records as an Arrow IPC stream, or None when they are not kept."""
        if not self.keep_records or n <= 0 or sum(b.num_rows for b in self.batches) < n:
            return None
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, _arrow_schema()) as writer:
            left = n
            for batch in self.batches:
                if left <= 0:
                    break
                part = batch if batch.num_rows <= left else batch.slice(0, left)
                writer.write_batch(part)
                left -= part.num_rows
        return sink.getvalue().to_pybytes()

    def position(self) -> dict:
        return {"seq": str(self.seqs[-1])} if self.seqs else dict(self.base)

    def align(self, state: Mapping[str, Any]) -> bool:
        """Make `state` the scan's base, keeping what was read beyond it; False if it lies elsewhere."""
        key = _position_key(state)
        if key == _position_key(self.base):
            return True
        if key[0] == "seq":
            import bisect

            i = bisect.bisect_left(self.seqs, key[1])
            if i < len(self.seqs) and self.seqs[i] == key[1]:
                self._drop(i + 1)
                self.base = {"seq": str(key[1])}
                return True
        return False

    def scan(self, client, fetch_limit: int, max_records: int | None = None, deadline: float | None = None,
             cutoff: datetime | None = None) -> None:
        """Read ahead until the tip, the shard's end, `max_records` buffered, `deadline` (monotonic), or the
        first record that arrived after `cutoff` (which a busy shard's moving tip would never give)."""
        while not self.closed:
            if max_records is not None and len(self.seqs) >= max_records:
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            if self.iterator is None:
                self.iterator = shard_iterator(client, self.stream, self.shard_id, self.position())
            try:
                response = _get_records(client, self.iterator, fetch_limit)
            except Exception as exc:
                if _is_expired(exc):  # iterators live 5 minutes; resume after the last record seen
                    self.iterator = None
                    continue
                raise
            records = response.get("Records", [])
            if cutoff is not None:
                late = next((i for i, r in enumerate(records) if _arrival(r) is not None and _arrival(r) > cutoff),
                            None)
                if late is not None:
                    self._extend(records[:late])
                    self.iterator = None  # it points past records not taken; resume from position()
                    return
            self._extend(records)
            self.iterator = response.get("NextShardIterator")
            if self.iterator is None:
                self.closed = True
                return
            if _at_tip(response, fetch_limit):
                return


# --- executor: reading one bounded range ------------------------------------------------------------

class ShardRange(InputPartition):
    """The records of one shard after `start` up to and including `end_seq`; `count`, when the driver knows
    it, only sizes the GetRecords calls (a short range then does not fetch 10,000 records past its end).
    `records`, when the driver read the range while planning, holds them (an Arrow IPC stream): the task
    emits them instead of fetching them again."""

    def __init__(self, stream: str, shard_id: str, start: dict, end_seq: str, count: int | None = None,
                 records: bytes | None = None):
        super().__init__((stream, shard_id, start, end_seq))
        self.stream = stream
        self.shard_id = shard_id
        self.start = start
        self.end_seq = end_seq
        self.count = count
        self.records = records


def _arrow_schema():
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(KINESIS_SOURCE_SCHEMA, timestamp_utc=True)


def _to_batch(records: list[dict], stream: str, shard_id: str, schema):
    import pyarrow as pa

    n = len(records)
    return pa.RecordBatch.from_arrays([
        pa.array([r.get("PartitionKey") for r in records], pa.string()),
        pa.array([bytes(r["Data"]) for r in records], pa.binary()),
        pa.array([stream] * n, pa.string()),
        pa.array([shard_id] * n, pa.string()),
        pa.array([str(r["SequenceNumber"]) for r in records], pa.string()),
        pa.array([_arrival(r) for r in records], pa.timestamp("us", tz="UTC")),
    ], schema=schema)


def read_ipc(records: bytes) -> Iterator:
    """The RecordBatches of an Arrow IPC stream (a range the driver read while planning)."""
    import pyarrow as pa

    yield from pa.ipc.open_stream(records)


def read_shard_range(client, stream: str, shard_id: str, start: Mapping[str, Any], end_seq: str, *,
                     fetch_limit: int = 10000, fail_on_data_loss: bool = True, count: int | None = None,
                     empty_polls_at_tip: int = 3) -> Iterator:
    """Yield pyarrow RecordBatches of the records in (start, end_seq], in sequence order.

    Stops at end_seq. Reaching the tip or the shard's end first means records the batch was planned with
    are gone (trimmed past retention): an error, or a warning when fail_on_data_loss is off."""
    schema = _arrow_schema()
    end = int(end_seq)
    last: int | None = None
    iterator: str | None = None
    empty_at_tip = empty_reads = read = 0
    while True:
        if iterator is None:
            iterator = shard_iterator(client, stream, shard_id, {"seq": str(last)} if last is not None else start)
        limit = min(fetch_limit, count - read) if count is not None and count > read else fetch_limit
        try:
            response = _get_records(client, iterator, limit)
        except Exception as exc:
            if _is_expired(exc):
                iterator = None
                continue
            raise
        records = response.get("Records", [])
        wanted = [r for r in records if int(r["SequenceNumber"]) <= end]
        if wanted:
            yield _to_batch(wanted, stream, shard_id, schema)
            last = int(wanted[-1]["SequenceNumber"])
            read += len(wanted)
        if last is not None and last >= end:
            return
        iterator = response.get("NextShardIterator")
        if len(wanted) < len(records) or iterator is None:
            lost = True  # went past end_seq without meeting it, or the shard ended before it
        elif not records and _at_tip(response, limit):
            empty_at_tip += 1
            lost = empty_at_tip >= empty_polls_at_tip
        else:
            empty_at_tip, lost = 0, False
        if lost:
            message = (f"{stream}/{shard_id}: records up to sequence number {end_seq} can no longer be read "
                       f"(last read: {last}); they were probably trimmed past the stream's retention")
            if fail_on_data_loss:
                raise KinesisSourceError(message + ". Set failOnDataLoss=false to skip them.")
            log.warning(message)
            return
        if not records:
            empty_reads += 1
            if empty_reads > MAX_EMPTY_READS:
                raise KinesisSourceError(f"{stream}/{shard_id}: {empty_reads} empty reads in a row before sequence "
                                         f"number {end_seq}; giving up")
            time.sleep(0.05 * max(empty_at_tip, 1))
        else:
            empty_reads = 0


# --- the data source --------------------------------------------------------------------------------

class KinesisStreamReader(DataSourceStreamReader):
    """Plans micro-batches as bounded per-shard sequence ranges (see the module docstring).

    Spark 4.0 (Databricks 17.3 LTS) gives Python stream readers no admission control: `latestOffset()`
    is called without the batch's start offset or a read limit, and `Trigger.AvailableNow` runs such a
    source as one batch. So the reader keeps its own position, as pyspark's own wrapper for simple
    readers does: the end of the last batch it planned, learned from `partitions()` or `commit()` when a
    query restarts from its checkpoint (Spark re-plans the last logged batch first), else the initial
    offset. `maxRecordsPerTrigger` caps a batch relative to that position; `availableNow=true` (set by
    the stream job for that trigger) ignores the cap, since the run has one batch, and reads only what
    had arrived when the query started."""

    def __init__(self, options: SourceOptions, client=None):
        self.options = options
        self._client = client  # injected by tests; otherwise made lazily, per process, from the options
        self._scans: dict[tuple[str, str], ShardScan] = {}
        self._position: dict | None = None
        self._initial: dict | None = None
        self._target_fixed = False
        self._cutoff: datetime | None = datetime.now(timezone.utc) if options.available_now else None

    @property
    def client(self):
        return self._client if self._client is not None else make_client(self.options)

    def _listing(self) -> dict[str, dict[str, dict]]:
        return {s: {sh["ShardId"]: sh for sh in list_shards(self.client, s)} for s in self.options.streams}

    def initialOffset(self) -> dict:
        # computed once: Spark asks for it after the first latestOffset, and "latest" must not move between
        if self._initial is None:
            self._initial = self._compute_initial_offset()
        return self._initial

    def _compute_initial_offset(self) -> dict:
        opts = self.options
        given: dict = {}
        if opts.starting_offsets:
            try:
                given = normalize_offset(json.loads(opts.starting_offsets))
            except (ValueError, AttributeError, TypeError) as exc:
                raise KinesisSourceError(f"startingOffsets is not an offset of this source: {exc}") from None
        rest = [s for s in opts.streams if s not in given]
        if opts.initial_position == "trim_horizon" or not rest:
            initial = normalize_offset({}, opts.streams)
        else:
            ts = opts.initial_timestamp_ms if opts.initial_position == "at_timestamp" else int(time.time() * 1000)
            # every listed shard (closed ones too) starts at the timestamp: a closed shard then simply ends
            initial = normalize_offset({s: {sid: {"ts": ts} for sid in shards}
                                        for s, shards in self._listing().items() if s in rest}, opts.streams)
        initial.update({s: given[s] for s in opts.streams if s in given})
        return normalize_offset(initial, opts.streams)

    def _scan_for(self, stream: str, shard_id: str, state: Mapping[str, Any], create: bool) -> ShardScan | None:
        key = (stream, shard_id)
        scan = self._scans.get(key)
        if scan is not None and scan.align(state):
            return scan
        if not create:
            return None
        scan = self._scans[key] = ShardScan(stream, shard_id, state, keep_records=self.options.reuse_driver_reads)
        return scan

    def latestOffset(self) -> dict:
        opts = self.options
        if self._position is None:
            self._position = self.initialOffset()
        start = normalize_offset(self._position, opts.streams)
        listing = self._listing()
        deadline = time.monotonic() + opts.max_fetch_duration_s
        available_now = opts.available_now
        cap = None if available_now else opts.max_records_per_trigger

        if available_now and not self._target_fixed:
            # availableNow must not read past what exists now: scan every unfinished shard (children too)
            # to its tip once, then only hand those records out
            for stream, shards in listing.items():
                for shard_id in shards:
                    state = start[stream].get(shard_id, {})
                    if not shard_finished(shard_id, state, shards):
                        self._scan_for(stream, shard_id, state, create=True).scan(
                            self.client, opts.max_records_per_fetch, cutoff=self._cutoff)
            self._target_fixed = True

        candidates: list[tuple[str, str, dict, ShardScan]] = []
        for stream, shards in listing.items():
            for shard_id in sorted(shards):
                state = start[stream].get(shard_id, {})
                if not shard_eligible(shard_id, state, shards, start[stream]):
                    continue
                scan = self._scan_for(stream, shard_id, state, create=not available_now)
                if scan is None:
                    continue
                if not available_now:
                    scan.scan(self.client, opts.max_records_per_fetch, max_records=cap, deadline=deadline)
                candidates.append((stream, shard_id, state, scan))

        counts = allocate([len(c[3].seqs) for c in candidates], cap)
        end = {stream: dict(shards) for stream, shards in start.items()}
        for (stream, shard_id, state, scan), n in zip(candidates, counts, strict=True):
            new_state = dict(state)
            if n:
                new_state = {"seq": str(scan.seqs[n - 1])}
            if scan.closed and n == len(scan.seqs):
                new_state["closed"] = True
            end[stream][shard_id] = new_state
        self._position = normalize_offset(end, opts.streams)
        return self._position

    def partitions(self, start: dict, end: dict) -> list[ShardRange]:
        start = normalize_offset(start, self.options.streams)
        end = normalize_offset(end, self.options.streams)
        if self._position is None:
            # a query restarting from its checkpoint re-plans its last logged batch before asking for more
            self._position = end
        parts = []
        for stream, shards in end.items():
            for shard_id, state in shards.items():
                begin = start.get(stream, {}).get(shard_id, {})
                if state.get("seq") is not None and state.get("seq") != begin.get("seq"):
                    position = {k: v for k, v in begin.items() if k != "closed"}
                    count = self._known_count(stream, shard_id, position, state["seq"])
                    records = self._scans[(stream, shard_id)].records_ipc(count) if count else None
                    parts.append(ShardRange(stream, shard_id, position, state["seq"], count, records))
        return parts

    def _known_count(self, stream: str, shard_id: str, begin: Mapping[str, Any], end_seq: str) -> int | None:
        """Records in (begin, end_seq] if this driver scanned them (not after a restart, say)."""
        scan = self._scans.get((stream, shard_id))
        if scan is None or _position_key(scan.base) != _position_key(begin):
            return None
        import bisect

        n = bisect.bisect_right(scan.seqs, int(end_seq))
        return n if n and scan.seqs[n - 1] == int(end_seq) else None

    def read(self, partition: ShardRange) -> Iterator:
        records = getattr(partition, "records", None)
        if records is not None:
            return read_ipc(records)
        return read_shard_range(self.client, partition.stream, partition.shard_id, partition.start,
                                partition.end_seq, fetch_limit=self.options.max_records_per_fetch,
                                fail_on_data_loss=self.options.fail_on_data_loss,
                                count=getattr(partition, "count", None))

    def commit(self, end: dict) -> None:
        if self._position is None:
            self._position = normalize_offset(end, self.options.streams)
        for stream, shards in normalize_offset(end, self.options.streams).items():
            for shard_id, state in shards.items():
                key = (stream, shard_id)
                scan = self._scans.get(key)
                if scan is None:
                    continue
                if state.get("closed"):
                    del self._scans[key]
                else:
                    scan.align(state)


class KinesisDataSource(DataSource):
    """`spark.readStream.format("kinesis-local")`: Kinesis through boto3 (moto locally)."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def schema(self):
        return KINESIS_SOURCE_SCHEMA

    def streamReader(self, schema) -> KinesisStreamReader:
        return KinesisStreamReader(SourceOptions.parse(self.options))


def register(spark) -> None:
    """Make `format("kinesis-local")` available in this SparkSession (idempotent)."""
    spark.dataSource.register(KinesisDataSource)
