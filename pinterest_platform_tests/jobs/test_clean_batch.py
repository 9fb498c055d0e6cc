"""The batch cleaning job on raw files written as the sink writes them (day folders and indexes): latest
posted wins by (day, Kafka timestamp, partition, offset), a re-run of an older day never brings older
content back, and conservation counts the tables, so a lost row fails it."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from pinterest_platform import contract
from pinterest_platform.assets.batch import conservation_check
from pinterest_platform.ingestion import raw_days
from pinterest_platform.jobs import batch as batch_jobs
from pinterest_platform.resources.lake import LakeFile, LocalLakeResource

TOPIC = "t.geo"
DAY1 = dt.date(2026, 11, 28)
DAY2 = dt.date(2026, 11, 29)


def ms(day: dt.date, seconds: int) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000) + seconds * 1000


def geo(ind: int, country: str) -> dict:
    return {"ind": ind, "timestamp": "2020-01-01T00:00:00", "latitude": 1.5, "longitude": 2.5, "country": country}


def write_raw(lake: LocalLakeResource, day: dt.date, partition: int, first_offset: int,
              records: list[tuple[dict, int]], index: str | None = "compact") -> dict:
    """A raw file as the sink writes it: lines, and its index (`compact`, as the sink writes it now;
    `per_record`, as earlier versions did; None, as another writer leaves it)."""
    lines = [json.dumps(row).encode() for row, _ in records]
    path = contract.raw_file_name(TOPIC, partition, first_offset, day)
    lake.write_bytes(path, b"".join(line + b"\n" for line in lines))
    stamps = [ts for _, ts in records]
    if index == "compact":
        runs = [[ts, len(list(group))] for ts, group in itertools.groupby(stamps)]
        lake.write_bytes(contract.raw_index_name(path),
                         json.dumps({"o": first_offset, "n": len(lines), "runs": runs}).encode() + b"\n")
    elif index == "per_record":
        lake.write_bytes(contract.raw_index_name(path), b"".join(
            json.dumps({"h": hashlib.md5(line).hexdigest(), "t": ts, "o": first_offset + i}).encode() + b"\n"
            for i, (line, ts) in enumerate(zip(lines, stamps, strict=True))))
    size = len(b"".join(line + b"\n" for line in lines))
    return {"uri": lake.uri(path), "path": path, "size": size, "topic": TOPIC, "day": day.isoformat(),
            "index_uri": lake.uri(contract.raw_index_name(path)) if index else None}


def run(spark, lake, files: list[dict]) -> dict:
    return batch_jobs.clean_batch(spark, {"tables_root": lake.uri("tables"), "versions_root": lake.uri("_manifests/latest"),
                                          "files": {"geo": files}})["geo"]


def countries(spark, lake) -> dict[int, str]:
    return {r["ind"]: r["country"] for r in spark.read.format("delta").load(lake.uri("tables/geo")).collect()}


@pytest.fixture
def lake(tmp_path):
    return LocalLakeResource(root=str(tmp_path / "lake"))


@pytest.mark.parametrize("index", ["compact", "per_record"])
def test_latest_timestamp_wins_across_partitions_and_files(spark, lake, index):
    files = [
        # partition 0 holds the later post of ind 1 at a lower offset; partition 1 the earlier one
        write_raw(lake, DAY1, 0, 0, [(geo(1, "Late"), ms(DAY1, 50)), (geo(2, "Early"), ms(DAY1, 1))], index),
        write_raw(lake, DAY1, 1, 7, [(geo(1, "Early"), ms(DAY1, 10)), (geo(2, "Late"), ms(DAY1, 60))], index),
        # the same timestamp: the higher partition wins, then the higher offset
        write_raw(lake, DAY1, 2, 0, [(geo(3, "P2"), ms(DAY1, 5)), (geo(4, "First"), ms(DAY1, 5)),
                                     (geo(4, "Second"), ms(DAY1, 5))], index),
        write_raw(lake, DAY1, 1, 9, [(geo(3, "P1"), ms(DAY1, 5))], index),
    ]
    counts = run(spark, lake, files)
    assert countries(spark, lake) == {1: "Late", 2: "Late", 3: "P2", 4: "Second"}
    assert counts["read"] == 8 and counts["duplicates"] == 4 and counts["table_rows"] == 4


def test_an_older_day_never_brings_back_older_content(spark, lake):
    newer = write_raw(lake, DAY2, 0, 0, [(geo(1, "New"), ms(DAY2, 1))])
    run(spark, lake, [newer])
    # posted later in wall time, but stamped on an older day: a backfill of that day
    older = write_raw(lake, DAY1, 0, 5, [(geo(1, "Old"), ms(DAY1, 80_000)), (geo(2, "Only"), ms(DAY1, 1))])
    counts = run(spark, lake, [older])
    assert countries(spark, lake) == {1: "New", 2: "Only"}
    assert counts["older"] == 1 and counts["upserted"] == 1
    # and both days together, in either order of the file list, agree
    again = run(spark, lake, [older, newer])
    assert countries(spark, lake) == {1: "New", 2: "Only"}
    assert again["table_rows"] == 2


def test_files_without_index_order_by_day(spark, lake):
    """Another sink's files carry no timestamps: the later day still wins."""
    run(spark, lake, [write_raw(lake, DAY2, 0, 0, [(geo(1, "Day2"), 0)], index=None),
                      write_raw(lake, DAY1, 0, 0, [(geo(1, "Day1"), 0)], index=None)])
    assert countries(spark, lake) == {1: "Day2"}


def test_an_index_that_does_not_match_its_file_is_ignored(spark, lake):
    """Positions tie lines to the index's timestamps; a file with a line the index does not count (here one
    appended after it) orders as an unindexed one, rather than by shifted timestamps."""
    # the timestamps make "A-late" the latest; without them the tie-break, the greater raw text, keeps "Z-early"
    indexed = write_raw(lake, DAY1, 0, 0, [(geo(1, "Z-early"), ms(DAY1, 1)), (geo(1, "A-late"), ms(DAY1, 9))])
    assert run(spark, lake, [indexed])["table_rows"] == 1
    assert countries(spark, lake) == {1: "A-late"}
    other = LocalLakeResource(root=str(Path(lake.root).parent / "other"))
    spoiled = write_raw(other, DAY1, 0, 0, [(geo(1, "Z-early"), ms(DAY1, 1)), (geo(1, "A-late"), ms(DAY1, 9))])
    other.write_bytes(spoiled["path"], other.read_bytes(spoiled["path"]) + json.dumps(geo(2, "X")).encode() + b"\n")
    spoiled["size"] += len(json.dumps(geo(2, "X"))) + 1
    counts = run(spark, other, [spoiled])
    assert counts["read"] == 3 and counts["table_rows"] == 2
    # no timestamps: the tie-break by raw text keeps the greater line
    assert countries(spark, other) == {1: "Z-early", 2: "X"}


def test_conservation_counts_the_table_so_a_lost_row_fails(spark, lake, monkeypatch):
    records = [(geo(i, "X"), ms(DAY1, i)) for i in range(1, 6)] + [(geo(1, "Y"), ms(DAY1, 9)), ("not json", 0)]
    path = contract.raw_file_name(TOPIC, 0, 0, DAY1)
    files = [write_raw(lake, DAY1, 0, 0, [(r, ts) for r, ts in records if isinstance(r, dict)])]
    # a bad line appended to the same file (the index then no longer matches it; counts do not depend on it)
    lake.write_bytes(path, lake.read_bytes(path) + b"not json\n")
    files[0]["size"] += len(b"not json\n")
    raw_lines = sum(raw_days.line_counts(lake, TOPIC, DAY1, [LakeFile(path, files[0]["size"], 0)]).values())
    assert raw_lines == 7

    good = run(spark, lake, files)
    assert conservation_check("geo", good, raw_lines).passed
    assert (good["table_rows"], good["quarantine_rows"], good["duplicates"]) == (5, 1, 1)

    # a write that loses a row (here: the table's row deleted right after the MERGE) fails the check
    original = batch_jobs.upsert_by_ind

    def lossy(spark_, uri, rows, schema, ind_range=None):
        original(spark_, uri, rows, schema, ind_range)
        DeltaTable.forPath(spark_, uri).delete("ind = 3")

    monkeypatch.setattr(batch_jobs, "upsert_by_ind", lossy)
    lossy_counts = run(spark, lake, files)
    check = conservation_check("geo", lossy_counts, raw_lines)
    assert not check.passed
    assert check.metadata["unaccounted"].value == 1


def test_a_file_with_invalid_utf8_keeps_its_bytes_and_its_order(spark, lake):
    """An indexed file is split into lines as a whole: a line that is not UTF-8 still reaches the cleaning
    as its bytes (quarantined as invalid UTF-8, its raw in hex), and the file's other lines keep their
    timestamps (the later post of ind 1 wins although its text sorts lower)."""
    files = [write_raw(lake, DAY1, 0, 0, [(geo(1, "Z-early"), ms(DAY1, 1)), (geo(1, "A-late"), ms(DAY1, 9))])]
    bad = b'{"ind": 2, "country": "caf\xe9"}'
    index = json.loads(lake.read_bytes(contract.raw_index_name(files[0]["path"])))
    index["n"], index["runs"] = 3, [*index["runs"], [ms(DAY1, 10), 1]]
    lake.write_bytes(files[0]["path"], lake.read_bytes(files[0]["path"]) + bad + b"\n")
    lake.write_bytes(contract.raw_index_name(files[0]["path"]), json.dumps(index).encode() + b"\n")
    files[0]["size"] += len(bad) + 1
    counts = run(spark, lake, files)
    assert countries(spark, lake) == {1: "A-late"}
    assert (counts["read"], counts["quarantined"], counts["quarantine_rows"]) == (3, 1, 1)
    [row] = spark.read.format("delta").load(lake.uri("tables/quarantine")).collect()
    assert (row["reason"], row["raw"]) == ("invalid UTF-8", bad.hex())
