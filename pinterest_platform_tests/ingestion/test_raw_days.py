"""Raw files by ingest day: which files belong to a day (the day folder, and flat-layout files by their
last-modified day), their line counts on the bytes, and the pending days the sink leaves for cleaning."""

from __future__ import annotations

import datetime
import json
import os

from pinterest_platform.contract import raw_day_prefix, raw_file_name
from pinterest_platform.ingestion import raw_days
from pinterest_platform.ingestion.raw_sink import day_of_raw_path, flat_raw_files, raw_files_of_day
from pinterest_platform.resources.lake import LocalLakeResource

TOPIC = "pinterest.pin"
DAY = datetime.date(2026, 11, 30)
NEXT = datetime.date(2026, 12, 1)


def lake_at(tmp_path) -> LocalLakeResource:
    return LocalLakeResource(root=str(tmp_path / "lake"))


def test_layout_has_the_day_of_the_record_and_reads_back():
    path = raw_file_name(TOPIC, 2, 42, DAY)
    assert path == f"topics/{TOPIC}/year=2026/month=11/day=30/partition=2/{TOPIC}+2+0000000042.json"
    assert path.startswith(raw_day_prefix(TOPIC, DAY))
    assert day_of_raw_path(path) == DAY
    assert day_of_raw_path(raw_file_name(TOPIC, 2, 42)) is None


def test_files_of_a_day_include_flat_files_modified_that_day(tmp_path):
    lake = lake_at(tmp_path)
    lake.write_bytes(raw_file_name(TOPIC, 0, 0, DAY), b'{"index": 1}\n')
    lake.write_bytes(raw_file_name(TOPIC, 0, 1, NEXT), b'{"index": 2}\n')
    # another sink's files without a day level: their day is the object's last-modified day
    flat_old = raw_file_name(TOPIC, 1, 0)
    flat_new = raw_file_name(TOPIC, 1, 7)
    lake.write_bytes(flat_old, b'{"index": 3}\n')
    lake.write_bytes(flat_new, b'{"index": 4}\n')
    noon = datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.UTC).timestamp()
    os.utime(lake.uri(flat_old), (noon, noon))
    os.utime(lake.uri(flat_new), (noon + 86400, noon + 86400))
    lake.write_bytes(f"topics/{TOPIC}/partition=1/notes.txt", b"not a raw file\n")

    assert [f.path for f in flat_raw_files(lake, TOPIC)] == [flat_old, flat_new]
    assert [f.path for f in raw_files_of_day(lake, TOPIC, DAY)] == [raw_file_name(TOPIC, 0, 0, DAY), flat_old]
    assert [f.path for f in raw_files_of_day(lake, TOPIC, NEXT)] == [raw_file_name(TOPIC, 0, 1, NEXT), flat_new]
    assert raw_files_of_day(lake, TOPIC, datetime.date(2026, 11, 29)) == []


def test_line_counts_count_records_on_the_bytes_and_cache_by_size(tmp_path):
    lake = lake_at(tmp_path)
    path = raw_file_name(TOPIC, 0, 0, DAY)
    # a final line without newline, a blank line and a CRLF line: 3 records
    lake.write_bytes(path, b'{"index": 1}\n\n  \n{"index": 2}\r\n{"index": 3}')
    files = raw_files_of_day(lake, TOPIC, DAY)
    assert raw_days.line_counts(lake, TOPIC, DAY, files) == {path: 3}
    cache = json.loads(lake.read_bytes(f"_manifests/raw_lines/{TOPIC}/{DAY}.json"))
    assert list(cache.values()) == [3]
    # a file that grew is counted again
    lake.write_bytes(path, b'{"index": 1}\n{"index": 2}\n{"index": 3}\n{"index": 4}\n')
    assert raw_days.line_counts(lake, TOPIC, DAY, raw_files_of_day(lake, TOPIC, DAY)) == {path: 4}


def test_pending_days_are_added_once_and_cleared_per_day(tmp_path):
    lake = lake_at(tmp_path)
    known: set = set()
    raw_days.add_pending_day(lake, TOPIC, NEXT, known)
    raw_days.add_pending_day(lake, TOPIC, DAY, known)
    raw_days.add_pending_day(lake, "pinterest.geo", DAY, set())
    assert raw_days.pending_days(lake) == [DAY, NEXT]
    assert raw_days.pending_days(lake, ["pinterest.geo"]) == [DAY]
    raw_days.clear_pending_days(lake, [TOPIC, "pinterest.geo"], [DAY])
    assert raw_days.pending_days(lake) == [NEXT]


def test_processed_files_remember_path_and_size(tmp_path):
    lake = lake_at(tmp_path)
    lake.write_bytes(raw_file_name(TOPIC, 0, 0, DAY), b'{"index": 1}\n')
    files = raw_files_of_day(lake, TOPIC, DAY)
    raw_days.record_processed(lake, "pin", DAY, files)
    assert raw_days.processed_files(lake, "pin", DAY) == {(files[0].path, files[0].size)}
    assert raw_days.processed_files(lake, "pin", NEXT) == set()
