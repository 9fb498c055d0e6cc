"""The raw assets' row count: lines in every raw file of a topic, the sink's and other writers' alike."""

from __future__ import annotations

import json

from pinterest_platform.assets import batch
from pinterest_platform.contract import raw_file_name
from pinterest_platform.resources.lake import LocalLakeResource


def test_raw_row_count_counts_every_file_whoever_wrote_it(tmp_path):
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    topic = "pinterest.pin"
    lake.write_bytes(raw_file_name(topic, 0, 0), b'{"index": 1}\n{"index": 2}\n')
    # a Confluent sink's file under a time-based layout, and one without a final newline
    lake.write_bytes(f"topics/{topic}/year=2026/month=11/day=30/partition=1/{topic}+1+0000000000.json",
                     b'{"index": 3}\n{"index": 4}\n{"index": 5}')
    lake.write_bytes(f"topics/{topic}/partition=0/notes.txt", b"not a raw file\n")
    assert batch.raw_line_counts(lake, [topic, "pinterest.geo"]) == {topic: 5, "pinterest.geo": 0}
    cache = json.loads(lake.read_bytes(batch.RAW_LINE_COUNTS))
    assert sorted(cache.values()) == [2, 3]

    # a file that grew is counted again; the others come from the cache
    lake.write_bytes(raw_file_name(topic, 0, 0), b'{"index": 1}\n{"index": 2}\n{"index": 6}\n')
    assert batch.raw_line_counts(lake, [topic]) == {topic: 6}
