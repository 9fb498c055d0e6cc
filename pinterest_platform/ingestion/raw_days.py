"""Bookkeeping of raw files by ingest day, kept in the lake and bounded by days, never by history.

- `_manifests/pending_days.json`: per topic, the days the sink wrote files to that cleaning has not
  processed since. The sink adds a day before it commits the offsets of a file in that day, so a day with
  files is never forgotten; cleaning removes a day once all its files are cleaned. `run batch` and the
  schedule take their days from here: no listing of the whole lake.
- `_manifests/raw_files/<kind>/<day>.json`: the files of that day cleaning has processed, as
  `[path, size]` pairs (a file the sink extended later has another size, so it is new again).
- `_manifests/raw_lines/<topic>/<day>.json`: the non-blank lines of each file of the day, by path and
  size, counted on the bytes (never by Spark), so conservation compares two independent counts and each
  file is read for counting once.

Only one batch runs at a time (the run queue and the CLI's guard), so these read-modify-write files have a
single writer."""

from __future__ import annotations

import datetime
import json

from pinterest_platform.resources.lake import LakeFile, LakeResource

MANIFEST_DIR = "_manifests"
PENDING_DAYS = f"{MANIFEST_DIR}/pending_days.json"


def _read_json(lake: LakeResource, path: str, default):
    try:
        return json.loads(lake.read_bytes(path))
    except Exception:  # noqa: BLE001 - missing (FileNotFoundError locally, NoSuchKey on S3): nothing yet
        return default


def _write_json(lake: LakeResource, path: str, value) -> None:
    lake.write_bytes(path, json.dumps(value, sort_keys=True).encode())


def pending_days(lake: LakeResource, topics: list[str] | None = None) -> list[datetime.date]:
    """The days with raw files not yet cleaned (of `topics`, default all), oldest first."""
    pending = _read_json(lake, PENDING_DAYS, {})
    days = {d for topic, ds in pending.items() if topics is None or topic in topics for d in ds}
    return sorted(datetime.date.fromisoformat(d) for d in days)


def add_pending_day(lake: LakeResource, topic: str, day: datetime.date, known: set[tuple[str, str]]) -> None:
    """Mark `day` of `topic` pending; `known` caches what this process already wrote (one write per day)."""
    key = (topic, day.isoformat())
    if key in known:
        return
    pending = _read_json(lake, PENDING_DAYS, {})
    days = set(pending.get(topic, []))
    if day.isoformat() not in days:
        pending[topic] = sorted(days | {day.isoformat()})
        _write_json(lake, PENDING_DAYS, pending)
    known.add(key)


def clear_pending_days(lake: LakeResource, topics: list[str], days: list[datetime.date]) -> None:
    pending = _read_json(lake, PENDING_DAYS, {})
    done = {d.isoformat() for d in days}
    changed = False
    for topic in topics:
        kept = [d for d in pending.get(topic, []) if d not in done]
        if kept != pending.get(topic, []):
            changed = True
            pending[topic] = kept
    if changed:
        _write_json(lake, PENDING_DAYS, {t: ds for t, ds in pending.items() if ds})


def processed_files(lake: LakeResource, kind: str, day: datetime.date) -> set[tuple[str, int]]:
    return {(p, int(s)) for p, s in _read_json(lake, f"{MANIFEST_DIR}/raw_files/{kind}/{day.isoformat()}.json", [])}


def record_processed(lake: LakeResource, kind: str, day: datetime.date, files: list[LakeFile]) -> None:
    """Add `files` to the day's processed files (a file with the same path and another size replaces it)."""
    path = f"{MANIFEST_DIR}/raw_files/{kind}/{day.isoformat()}.json"
    done = {p: int(s) for p, s in _read_json(lake, path, [])}
    done.update({f.path: f.size for f in files})
    _write_json(lake, path, sorted([p, s] for p, s in done.items()))


def count_lines(data: bytes) -> int:
    """Records in a raw file's bytes: lines (split on LF, a CRLF's CR dropped) that are not blank, where
    blank means only spaces, as the batch job's reader judges them."""
    return sum(1 for line in data.split(b"\n") if line.rstrip(b"\r").strip(b" "))


def line_counts(lake: LakeResource, topic: str, day: datetime.date, files: list[LakeFile]) -> dict[str, int]:
    """Records per file of `files` (all of `topic` and `day`), each file read once for its (path, size)."""
    path = f"{MANIFEST_DIR}/raw_lines/{topic}/{day.isoformat()}.json"
    cache = _read_json(lake, path, {})
    counts, fresh = {}, False
    for f in files:
        key = f"{f.path}\t{f.size}"
        if key not in cache:
            cache[key] = count_lines(lake.read_bytes(f.path))
            fresh = True
        counts[f.path] = cache[key]
    if fresh:
        current = {f"{f.path}\t{f.size}" for f in files}
        _write_json(lake, path, {k: v for k, v in cache.items() if k in current})
    return counts
