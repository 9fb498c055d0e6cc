"""The raw sink: Kafka topics -> raw topic files on the lake, as MSK Connect's Confluent S3 sink did.

`sink_topics` reads every partition of the topics from the sink group's committed offset up to the end
offset it had when the run started (partitions assigned by hand: no group rebalance to wait for after a
crash), and writes newline-delimited JSON files in the Confluent layout with a day level,
`topics/<topic>/year=YYYY/month=MM/day=DD/partition=<p>/<topic>+<p>+<first offset:010d>.json`
(contract.raw_file_name), the day being the UTC day of the Kafka record timestamp (a record without one
is filed under the day the sink read it). A file holds consecutive offsets of one partition and one day:
when a partition's records change day, a new file begins. Beside each file goes its index
(`_raw_index/<same path>`: the first offset, the line count and the lines' Kafka timestamps), which
cleaning uses to keep the latest-posted record of an `ind`. Index, then file, are written first and the
partition's offset committed after them, so a crash in between makes the next run rewrite the same file
name from the same offset: nothing lost, nothing duplicated. A file at that name that this sink did not
write (another writer's) is never replaced: the run fails instead. A run that cannot read up to the end
offsets fails too, naming the partitions and their lag. `read_raw_files` lists a topic's
files, ours or a real Confluent sink's; `raw_files_of_day` the files of one day: those below its day folder,
and files of the flat layout (no day level, another sink's) whose object was last modified that day.

Framing (one record per line, never dropped, readers split on "\\n" only):
  - a value without CR/LF is written verbatim, whether or not it is valid JSON or valid UTF-8;
  - a valid JSON value containing CR/LF (pretty-printed) is re-serialized compactly
    (`json.dumps(..., ensure_ascii=False, separators=(",", ":"))`); JSON text can hold line breaks only
    as whitespace between tokens, so the record's content is unchanged;
  - any other value containing CR/LF has each CR byte written as the two characters `\\r` and each LF
    as `\\n` (`escape_line_breaks`); the line is not JSON, so cleaning quarantines it with its text;
  - an empty or whitespace-only value is written as the JSON string of itself (`""`), since line-based
    JSON readers skip blank lines; a null value (tombstone) is written as `null`.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pinterest_platform.contract import TOPICS_DIR, raw_day_prefix, raw_file_name, raw_index_name
from pinterest_platform.resources.kafka import KafkaResource
from pinterest_platform.resources.lake import LakeFile, LakeResource

logger = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS_PER_FILE = 10_000
DEFAULT_MAX_BYTES_PER_FILE = 8 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 30.0


# --- framing ---------------------------------------------------------------------------------------

def escape_line_breaks(value: bytes) -> bytes:
    """CR -> the two bytes `\\r`, LF -> `\\n`: keeps a non-JSON value on one line, everything else verbatim."""
    return value.replace(b"\r", b"\\r").replace(b"\n", b"\\n")


def frame_value(value: bytes | None) -> bytes:
    """The one line (without its newline) that stands for a message value in a raw file."""
    if value is None:
        return b"null"
    if not value.strip():
        return json.dumps(value.decode("ascii")).encode()  # bytes.strip() only strips ASCII whitespace
    if b"\n" not in value and b"\r" not in value:
        return value
    try:
        parsed = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return escape_line_breaks(value)
    return json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- the sink --------------------------------------------------------------------------------------

@dataclass
class _Buffer:
    topic: str
    partition: int
    lines: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    size: int = 0
    first_offset: int = -1
    last_offset: int = -1
    day: datetime.date | None = None

    def add(self, offset: int, line: bytes, timestamp_ms: int, day: datetime.date) -> None:
        if not self.lines:
            self.first_offset = offset
            self.day = day
        self.lines.append(line)
        self.timestamps.append(timestamp_ms)
        self.size += len(line) + 1
        self.last_offset = offset

    def index(self) -> bytes:
        """The file's index, one JSON line: its first offset `o`, its number of lines `n`, and the lines'
        Kafka timestamps (ms) as `runs` of [timestamp, how many consecutive lines have it]. A line's offset
        is the first plus its position (offsets are consecutive)."""
        runs = [[ts, len(list(same))] for ts, same in itertools.groupby(self.timestamps)]
        return json.dumps({"o": self.first_offset, "n": len(self.lines), "runs": runs},
                          separators=(",", ":")).encode() + b"\n"

    def clear(self) -> None:
        self.lines, self.timestamps, self.size, self.first_offset, self.last_offset = [], [], 0, -1, -1
        self.day = None


def record_time(msg: Any) -> tuple[int, datetime.date]:
    """(Kafka timestamp in ms, its UTC day); a record without a timestamp gets the time it is read."""
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

    kind, timestamp_ms = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or timestamp_ms is None or timestamp_ms < 0:
        timestamp_ms = int(time.time() * 1000)
    return timestamp_ms, datetime.datetime.fromtimestamp(timestamp_ms / 1000, datetime.UTC).date()


class _Log:
    """Accepts a logging.Logger, a Dagster log manager (anything with .info/.warning) or a callable."""

    def __init__(self, target: Any):
        self.target = target or logger

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def _emit(self, level: str, message: str) -> None:
        method = getattr(self.target, level, None)
        if method is not None:
            method(message)
        else:
            self.target(message)


# a broker that just started (or moved its group coordinator) answers these for a while; they pass
_COORDINATOR_NOT_READY = ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE",
                          "_WAIT_COORD", "_TIMED_OUT", "_TRANSPORT")


def _with_coordinator(call: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    """`call()`, retried while the group coordinator is not ready yet (a fresh broker), up to `timeout_s`."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    wait = 0.2
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            name = error.name() if hasattr(error, "name") else ""
            if name not in _COORDINATOR_NOT_READY or time.monotonic() + wait > deadline:
                raise
            logger.info("raw sink: %s: %s; retrying", what, name)
            time.sleep(wait)
            wait = min(wait * 2, 3.0)


class SinkIncompleteError(RuntimeError):
    """The sink could not read up to the end offsets it started with; names the partitions and their lag."""


class RawFileCollisionError(RuntimeError):
    """A raw file at the sink's path holds records this sink did not write for those offsets."""


def _write_unless_foreign(lake: LakeResource, path: str, data: bytes, first: int, last: int,
                          before_write: Callable[[], None] = lambda: None) -> str:
    """Write `data` at `path` unless another writer's file is there. Returns "written", "same" or "extended".
    `before_write()` runs once the file is known to be this sink's, before it is written (even when the same
    bytes are there already).

    The same bytes, or a file whose lines are the first lines of `data` (this sink's own file of an earlier
    run that died before committing, which read fewer records), are this sink's; anything else is someone
    else's (a Confluent sink of another cluster, a user's file) and is never replaced."""
    try:
        existing = lake.read_bytes(path)
    except Exception:  # noqa: BLE001 - missing (FileNotFoundError locally, NoSuchKey on S3): write it
        existing = None
    if existing is None:
        before_write()
        lake.write_bytes(path, data)
        return "written"
    if existing == data:
        before_write()
        return "same"
    if existing.endswith(b"\n") and data.startswith(existing):
        before_write()
        lake.write_bytes(path, data)
        return "extended"
    theirs = existing.count(b"\n") + (0 if existing.endswith(b"\n") else 1)
    ours = data.count(b"\n")
    raise RawFileCollisionError(
        f"raw sink: {lake.uri(path)} already exists with {theirs} records that are not this sink's records for "
        f"offsets {first}..{last} ({ours} records it would write as {path}); another writer's file "
        "is never replaced: move it out of topics/ (or sink to another lake) and run again. Nothing was "
        "committed, so no record is lost")


def sink_topics(
    kafka: KafkaResource,
    lake: LakeResource,
    topics: list[str],
    group_id: str,
    max_records_per_file: int = DEFAULT_MAX_RECORDS_PER_FILE,
    max_bytes_per_file: int = DEFAULT_MAX_BYTES_PER_FILE,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    *,
    create_missing_topics: bool = False,
    log: Any = None,
    on_file_written: Callable[[str, int], None] | None = None,
    poll_timeout_s: float = 0.25,
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 5.0,
) -> dict[str, dict[str, Any]]:
    """Drain `topics` up to the end offsets they had when the sink started, into raw files; commit each
    partition's offset to group `group_id` after its file.

    Partitions are assigned to this consumer by hand (no group membership), each starting at the group's
    committed offset (else the earliest), so a crashed earlier run that still holds a group session cannot
    make this run read nothing. The run reads every partition up to its end offset at start; when it cannot
    (nothing arrives for `idle_timeout_s` while some partition lags), it raises SinkIncompleteError naming
    the partitions and their lag. A file is never written over another writer's file (RawFileCollisionError).
    Topics that do not exist are created when `create_missing_topics`, else reported (`exists: False`) and
    skipped. `log` receives progress lines; `on_file_written(path, records)` runs after a file is written and
    before its offsets are committed (an exception there leaves the file uncommitted; the next run rewrites
    it under the same name). `progress` receives the start line, a line at most every `progress_every_s`
    and the final line (for a terminal: `log` gets every file).

    Returns, per topic: records, files, paths (written this run), exists, next_offsets and end_offsets per
    partition.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    if max_records_per_file < 1 or max_bytes_per_file < 1:
        raise ValueError("max_records_per_file and max_bytes_per_file must be positive")
    out = _Log(log)
    result: dict[str, dict[str, Any]] = {
        t: {"records": 0, "files": 0, "paths": [], "exists": True, "next_offsets": {}, "end_offsets": {}}
        for t in topics}

    metadata = kafka.admin().list_topics(timeout=30).topics
    missing = [t for t in topics if t not in metadata]
    if missing and create_missing_topics:
        kafka.ensure_topics(missing)
        out.info(f"raw sink: created missing topics {missing}")
        metadata = kafka.admin().list_topics(timeout=30).topics
        missing = [t for t in topics if t not in metadata]
    for topic in missing:
        result[topic]["exists"] = False
        out.warning(f"raw sink: topic {topic} does not exist yet; nothing to sink from it")
    present = [t for t in topics if t not in missing]
    if not present:
        return result

    consumer = kafka.consumer(group_id, **{"enable.partition.eof": True, "enable.auto.commit": False,
                                           "enable.auto.offset.store": False})
    buffers: dict[tuple[str, int], _Buffer] = {}
    started = time.monotonic()
    try:
        partitions = [TopicPartition(t, p) for t in present for p in sorted(metadata[t].partitions)]
        committed = {(tp.topic, tp.partition): tp.offset for tp in _with_coordinator(
            lambda: consumer.committed(partitions, timeout=30), "reading the group's committed offsets")}
        start: dict[tuple[str, int], int] = {}
        end: dict[tuple[str, int], int] = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
            offset = committed.get(key, -1)
            if offset < 0:
                offset = low
            elif offset < low:
                out.warning(f"raw sink: {tp.topic}[{tp.partition}] committed offset {offset} is below the earliest "
                            f"retained offset {low}: records {offset}..{low - 1} expired before they were sunk")
                offset = low
            start[key], end[key] = offset, high
            result[tp.topic]["end_offsets"][tp.partition] = high
            result[tp.topic]["next_offsets"][tp.partition] = offset
        to_read = sum(max(end[k] - start[k], 0) for k in start)
        out.info(f"raw sink: {to_read:,} records to read up to the end offsets of "
                 f"{', '.join(f'{t}[{p}]={end[(t, p)]}' for t, p in sorted(end))}")
        if progress is not None:
            progress(f"raw sink: {to_read:,} records to read from {len(present)} topics")
        last_progress = time.monotonic()
        position = dict(start)
        pending = {k for k in start if position[k] < end[k]}
        if pending:
            consumer.assign([TopicPartition(t, p, start[(t, p)]) for t, p in sorted(pending)])

        def flush(key: tuple[str, int]) -> None:
            buf = buffers.get(key)
            if buf is None or not buf.lines:
                return
            topic, partition = key
            path = raw_file_name(topic, partition, buf.first_offset, buf.day)
            index = buf.index()
            # the index goes first: a file never exists without the ordering of its records
            outcome = _write_unless_foreign(lake, path, b"\n".join(buf.lines) + b"\n", buf.first_offset,
                                            buf.last_offset,
                                            before_write=lambda: lake.write_bytes(raw_index_name(path), index))
            if on_file_written is not None:
                on_file_written(path, len(buf.lines))
            offsets = [TopicPartition(topic, partition, buf.last_offset + 1)]
            for tp in _with_coordinator(lambda: consumer.commit(offsets=offsets, asynchronous=False),
                                        f"committing {topic}[{partition}]") or []:
                if tp.error is not None:
                    # the file stays; the next run rewrites it from the committed offset
                    raise RuntimeError(f"raw sink: wrote {path} but could not commit {topic}[{partition}] "
                                       f"offset {buf.last_offset + 1}: {tp.error}")
            stats = result[topic]
            stats["records"] += len(buf.lines)
            stats["files"] += 1
            stats["paths"].append(path)
            stats["next_offsets"][partition] = buf.last_offset + 1
            note = {"written": "", "same": " (already there from a run that died before committing)",
                    "extended": " (extending this sink's own uncommitted file of an earlier run)"}[outcome]
            done = sum(r["records"] for r in result.values())
            out.info(f"raw sink: wrote {path} ({len(buf.lines)} records, offsets {buf.first_offset}.."
                     f"{buf.last_offset}){note}; {done:,}/{to_read:,} records")
            buf.clear()
            nonlocal last_progress
            if progress is not None and time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                progress(f"raw sink: {done:,}/{to_read:,} records ({100 * done // max(to_read, 1)}%)")

        last_activity = time.monotonic()
        while pending:
            messages = consumer.consume(num_messages=1000, timeout=poll_timeout_s)
            now = time.monotonic()
            for msg in messages:
                key = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        last_activity = now
                        position[key] = max(position.get(key, 0), msg.offset())
                        if position[key] >= end[key]:
                            flush(key)
                            pending.discard(key)
                        continue
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise RuntimeError(f"raw sink: topic {msg.topic()} disappeared while sinking: {error}")
                    if error.fatal() or not error.retriable():
                        raise KafkaException(error)
                    out.warning(f"raw sink: transient consumer error (retrying): {error}")
                    continue
                if key not in pending or msg.offset() >= end[key]:
                    continue  # arrived after the run started: the next run takes it
                last_activity = now
                buf = buffers.get(key)
                if buf is None:
                    buf = buffers[key] = _Buffer(*key)
                line = frame_value(msg.value())
                timestamp_ms, day = record_time(msg)
                if buf.lines and (len(buf.lines) >= max_records_per_file or buf.day != day
                                  or buf.size + len(line) + 1 > max_bytes_per_file):
                    flush(key)
                buf.add(msg.offset(), line, timestamp_ms, day)
                position[key] = msg.offset() + 1
                if len(buf.lines) >= max_records_per_file:
                    flush(key)
                if position[key] >= end[key]:
                    flush(key)
                    pending.discard(key)
            if pending and now - last_activity > idle_timeout_s:
                for key in list(buffers):
                    flush(key)  # what was read is kept: the next run continues after it
                lag = ", ".join(f"{t}[{p}] at {position[(t, p)]} of {end[(t, p)]} (lag {end[(t, p)] - position[(t, p)]})"
                                for t, p in sorted(pending))
                raise SinkIncompleteError(f"raw sink: could not read up to the end offsets it started with: "
                                          f"nothing arrived for {idle_timeout_s:.0f} s; {lag}")
        for key in list(buffers):
            flush(key)
    finally:
        consumer.close()

    total = sum(r["records"] for r in result.values())
    files = sum(r["files"] for r in result.values())
    summary = (f"raw sink: group {group_id} sank {total:,} records into {files} files in "
               f"{time.monotonic() - started:.1f} s, up to the end offsets")
    out.info(summary)
    if progress is not None:
        progress(summary)
    return result


# --- reading what a sink wrote ----------------------------------------------------------------------

@dataclass(frozen=True)
class RawFileName:
    topic: str
    partition: int
    offset: int


_DIR_LEVEL = r"(?:[^/=]+=[^/]*/)*"


def _raw_path_pattern(topic: str) -> re.Pattern[str]:
    t = re.escape(topic)
    # Confluent's default partitioner writes partition=<p>/, field and time partitioners other k=v levels
    return re.compile(rf"^{TOPICS_DIR}/{t}/({_DIR_LEVEL}){t}\+(\d+)\+(\d+)\.json$")


def parse_raw_file_name(path: str, topic: str) -> RawFileName | None:
    """Topic, partition and first offset of a raw file path of `topic`, None if it is not one."""
    match = _raw_path_pattern(topic).match(path)
    if not match:
        return None
    levels, partition, offset = match.group(1), int(match.group(2)), int(match.group(3))
    for level in levels.strip("/").split("/") if levels else []:
        name, _, value = level.partition("=")
        if name == "partition" and value != str(partition):
            return None  # a file filed under another partition's folder is not a sink's output
    return RawFileName(topic, partition, offset)


def day_of_raw_path(path: str) -> datetime.date | None:
    """The ingest day of a raw file from its `year=/month=/day=` levels; None for the flat layout."""
    match = _DAY_LEVELS.search(path)
    if not match:
        return None
    return datetime.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))


_DAY_LEVELS = re.compile(r"/year=(\d{4})/month=(\d{2})/day=(\d{2})/")


def modified_day(lake_file: LakeFile) -> datetime.date:
    return datetime.datetime.fromtimestamp(lake_file.modified, datetime.UTC).date()


def _raw_files_below(lake: LakeResource, prefix: str, topic: str) -> list[LakeFile]:
    """The raw files of `topic` whose path starts with `prefix`, by partition, offset, path."""
    found = []
    for lake_file in lake.list_files(prefix):
        name = parse_raw_file_name(lake_file.path, topic)
        if name is not None:
            found.append((name.partition, name.offset, lake_file.path, lake_file))
    return [item[-1] for item in sorted(found, key=lambda item: item[:3])]


def flat_raw_files(lake: LakeResource, topic: str) -> list[LakeFile]:
    """The raw files of `topic` without a day level (`topics/<topic>/partition=<p>/...`, a Confluent sink's)."""
    return _raw_files_below(lake, f"{TOPICS_DIR}/{topic}/partition=", topic)


def raw_files_of_day(lake: LakeResource, topic: str, day: datetime.date,
                     flat: list[LakeFile] | None = None) -> list[LakeFile]:
    """The raw files of one ingest day: below its day folder, plus flat-layout files last modified that day
    (`flat`: the topic's flat files when the caller listed them already)."""
    ours = _raw_files_below(lake, raw_day_prefix(topic, day), topic)
    flat = flat_raw_files(lake, topic) if flat is None else flat
    return ours + [f for f in flat if modified_day(f) == day]


def read_raw_files(lake: LakeResource, topic: str) -> list[LakeFile]:
    """The raw files of `topic` in the Confluent layout (extra `k=v/` levels allowed), by partition, offset."""
    return _raw_files_below(lake, f"{TOPICS_DIR}/{topic}/", topic)
