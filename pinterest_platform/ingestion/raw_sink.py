"""The raw sink: Kafka topics -> raw topic files on the lake, as MSK Connect's Confluent S3 sink did.

`sink_topics` drains a consumer group to the end of every assigned partition and writes newline-delimited
JSON files in the Confluent layout, `topics/<topic>/partition=<p>/<topic>+<p>+<first offset:010d>.json`
(contract.raw_file_name). A file is written first and the partition's offset committed after it, so a crash
in between makes the next run rewrite the same file name from the same offset: nothing lost, nothing
duplicated. `read_raw_files` lists a topic's files, ours or a real Confluent sink's.

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

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pinterest_platform.contract import TOPICS_DIR, raw_file_name
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
    size: int = 0
    first_offset: int = -1
    last_offset: int = -1

    def add(self, offset: int, line: bytes) -> None:
        if not self.lines:
            self.first_offset = offset
        self.lines.append(line)
        self.size += len(line) + 1
        self.last_offset = offset

    def clear(self) -> None:
        self.lines, self.size, self.first_offset, self.last_offset = [], 0, -1, -1


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
) -> dict[str, dict[str, Any]]:
    """Drain `topics` for consumer group `group_id` into raw files; commit each partition after its file.

    Stops when every assigned partition has reached its end, or when nothing (no message, no end of
    partition) arrived for `idle_timeout_s` (e.g. the group's partitions are held by another member).
    Topics that do not exist are created when `create_missing_topics`, else reported (`exists: False`)
    and skipped. `log` receives progress lines; `on_file_written(path, records)` runs after a file is
    written and before its offsets are committed (an exception there leaves the file uncommitted, which
    the next run rewrites under the same name).

    Returns, per topic: records, files, paths (written this run), exists, and next_offsets per partition.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    if max_records_per_file < 1 or max_bytes_per_file < 1:
        raise ValueError("max_records_per_file and max_bytes_per_file must be positive")
    out = _Log(log)
    result: dict[str, dict[str, Any]] = {
        t: {"records": 0, "files": 0, "paths": [], "exists": True, "next_offsets": {}} for t in topics}

    existing = set(kafka.admin().list_topics(timeout=30).topics)
    missing = [t for t in topics if t not in existing]
    if missing and create_missing_topics:
        kafka.ensure_topics(missing)
        out.info(f"raw sink: created missing topics {missing}")
        missing = []
    for topic in missing:
        result[topic]["exists"] = False
        out.warning(f"raw sink: topic {topic} does not exist yet; nothing to sink from it")
    subscribed = [t for t in topics if t not in missing]
    if not subscribed:
        return result

    buffers: dict[tuple[str, int], _Buffer] = {}
    assigned: set[tuple[str, int]] = set()
    at_end: set[tuple[str, int]] = set()
    consumer = kafka.consumer(group_id, **{"enable.partition.eof": True, "enable.auto.commit": False,
                                           "enable.auto.offset.store": False})

    def flush(key: tuple[str, int]) -> None:
        buf = buffers.get(key)
        if buf is None or not buf.lines:
            return
        topic, partition = key
        path = raw_file_name(topic, partition, buf.first_offset)
        lake.write_bytes(path, b"\n".join(buf.lines) + b"\n")
        if on_file_written is not None:
            on_file_written(path, len(buf.lines))
        committed = consumer.commit(offsets=[TopicPartition(topic, partition, buf.last_offset + 1)],
                                    asynchronous=False)
        for tp in committed or []:
            if tp.error is not None:
                # the file stays; whoever owns the partition next rewrites it from the committed offset
                raise RuntimeError(f"raw sink: wrote {path} but could not commit {topic}[{partition}] "
                                   f"offset {buf.last_offset + 1}: {tp.error}")
        stats = result[topic]
        stats["records"] += len(buf.lines)
        stats["files"] += 1
        stats["paths"].append(path)
        stats["next_offsets"][partition] = buf.last_offset + 1
        out.info(f"raw sink: wrote {path} ({len(buf.lines)} records, offsets "
                 f"{buf.first_offset}..{buf.last_offset}, {buf.size} bytes) and committed")
        buf.clear()

    def on_assign(_consumer, partitions) -> None:
        for tp in partitions:
            assigned.add((tp.topic, tp.partition))
        out.info(f"raw sink: assigned {sorted(f'{t}[{p}]' for t, p in assigned)}")

    aborted = False

    def on_revoke(_consumer, partitions) -> None:
        # commit what we hold while we still own it; the new owner continues from there. After a failure
        # (close() revokes too) buffers are dropped instead: the failed file must stay uncommitted.
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if not aborted:
                flush(key)
            assigned.discard(key)
            at_end.discard(key)
            buffers.pop(key, None)

    started = time.monotonic()
    last_activity = started
    try:
        consumer.subscribe(subscribed, on_assign=on_assign, on_revoke=on_revoke)
        while True:
            messages = consumer.consume(num_messages=1000, timeout=poll_timeout_s)
            now = time.monotonic()
            if messages:
                last_activity = now
            for msg in messages:
                key = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        flush(key)
                        at_end.add(key)
                        continue
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise RuntimeError(f"raw sink: topic {msg.topic()} disappeared while sinking: {error}")
                    if error.fatal() or not error.retriable():
                        raise KafkaException(error)
                    out.warning(f"raw sink: transient consumer error (retrying): {error}")
                    continue
                at_end.discard(key)
                buf = buffers.get(key)
                if buf is None:
                    buf = buffers[key] = _Buffer(*key)
                line = frame_value(msg.value())
                if buf.lines and (len(buf.lines) >= max_records_per_file
                                  or buf.size + len(line) + 1 > max_bytes_per_file):
                    flush(key)
                buf.add(msg.offset(), line)
                if len(buf.lines) >= max_records_per_file:
                    flush(key)
            if assigned and assigned <= at_end:
                break
            if now - last_activity > idle_timeout_s:
                waiting = sorted(f"{t}[{p}]" for t, p in assigned - at_end)
                out.warning(f"raw sink: nothing arrived for {idle_timeout_s:.0f} s; stopping "
                            + (f"before the end of {waiting}" if waiting else "(no partitions assigned to "
                               f"group {group_id}: another member may hold them)"))
                break
        for key in list(buffers):
            flush(key)
    except BaseException:
        aborted = True
        raise
    finally:
        consumer.close()

    total = sum(r["records"] for r in result.values())
    files = sum(r["files"] for r in result.values())
    out.info(f"raw sink: group {group_id} sank {total} records into {files} files in "
             f"{time.monotonic() - started:.1f} s")
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


def read_raw_files(lake: LakeResource, topic: str) -> list[LakeFile]:
    """The raw files of `topic` in the Confluent layout (extra `k=v/` levels allowed), by partition, offset."""
    found = []
    for lake_file in lake.list_files(f"{TOPICS_DIR}/{topic}/"):
        name = parse_raw_file_name(lake_file.path, topic)
        if name is not None:
            found.append((name.partition, name.offset, lake_file.path, lake_file))
    return [item[-1] for item in sorted(found, key=lambda item: item[:3])]
