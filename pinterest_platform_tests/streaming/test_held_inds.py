"""The inds a streaming table holds, kept by the query between micro-batches (`jobs.stream.HeldInds`): new
inds are appended without reading the table, and any change by another writer (a user's DELETE or INSERT)
makes the query read the table again instead of trusting what it kept, so no ind is ever appended twice.
Micro-batches are written with `write_batches` as the query does, on in-memory records (no Kinesis)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from deltalake import DeltaTable

from pinterest_platform import contract
from pinterest_platform.jobs import batch as batch_jobs
from pinterest_platform.jobs import stream as stream_job
from pinterest_platform_tests import reference

ARRIVAL = dt.datetime(2026, 1, 1, 12, 0, 0)


def pin_payload(ind: int, title: str = "first") -> str:
    return json.dumps({"index": ind, "unique_id": f"u{ind}", "title": title, "description": "d",
                       "follower_count": "12k", "poster_name": "p", "tag_list": "a,b", "is_image_or_video": "image",
                       "image_src": "https://x/y.png", "save_location": "Local save in /data/x",
                       "category": "art", "downloaded": 1})


class Query:
    """What one streaming query keeps between its micro-batches for a pin table."""

    def __init__(self, spark, lake, max_rows: int = stream_job.HELD_INDS_MAX):
        self.spark = spark
        self.uri = str(lake / "tables" / "t_pin_table")
        self.quarantine = str(lake / "tables" / contract.QUARANTINE_TABLE)
        batch_jobs.ensure_table(spark, self.uri, contract.CLEANED_SCHEMAS["pin"], stream_job.STREAMING_TABLE_PROPERTIES)
        batch_jobs.ensure_table(spark, self.quarantine, contract.QUARANTINE_SCHEMA)
        self.held = stream_job.HeldInds(self.uri, max_rows=max_rows)
        self.batch_id = 0

    def batch(self, payloads: list[str]) -> stream_job.StreamStats:
        rows = [(text, "pin-stream", f"shard:{self.batch_id}:{i}", ARRIVAL + dt.timedelta(seconds=self.batch_id),
                 len(str(i)), str(i)) for i, text in enumerate(payloads)]
        df = self.spark.createDataFrame(rows, "value string, source string, origin string, _arrival timestamp, "
                                              "_seq_len int, _seq string")
        stats = stream_job.StreamStats()
        stream_job.write_batches(self.spark, df, self.batch_id, targets=[("pin", None, self.uri)],
                                 quarantine_uri=self.quarantine, app_id="test", stats={"pin": stats},
                                 held={"pin": self.held})
        self.batch_id += 1
        return stats

    def rows(self) -> dict[int, str]:
        table = DeltaTable(self.uri).to_pyarrow_table(columns=["ind", "title"]).to_pylist()
        inds = [r["ind"] for r in table]
        assert len(inds) == len(set(inds)), f"an ind appended twice: {sorted(inds)}"
        return {r["ind"]: r["title"] for r in table}


def test_new_inds_are_appended_without_reading_the_table_again(spark, tmp_path):
    query = Query(spark, tmp_path)
    first = query.batch([pin_payload(i) for i in range(1, 6)])
    second = query.batch([pin_payload(i) for i in range(6, 9)])
    assert (first.appended, first.merged, second.appended, second.merged) == (5, 0, 3, 0)
    assert query.held.reads == 1  # once, when the query met the table
    # a compaction rewrites files without changing data: what the query keeps still holds
    from delta.tables import DeltaTable as SparkDeltaTable

    SparkDeltaTable.forPath(spark, query.uri).optimize().executeCompaction()
    third = query.batch([pin_payload(9), pin_payload(3, "again")])
    assert (third.appended, third.merged) == (1, 1)
    assert query.held.reads == 1
    assert query.rows() == {**{i: "first" for i in range(1, 10)}, 3: "again"}


def test_a_change_by_another_writer_makes_the_query_read_the_table_again(spark, tmp_path):
    from delta.tables import DeltaTable as SparkDeltaTable

    query = Query(spark, tmp_path)
    query.batch([pin_payload(i) for i in range(1, 6)])
    assert query.held.reads == 1
    # behind the query's back: a user deletes ind 2 and inserts ind 7 (as the batch job's cleaning would)
    SparkDeltaTable.forPath(spark, query.uri).delete("ind = 2")
    [inserted], _ = reference.clean_wire_values("pin", [pin_payload(7, "by a user")])
    (spark.createDataFrame([inserted], contract.CLEANED_SCHEMAS["pin"]).write.format("delta").mode("append")
     .save(query.uri))
    # ind 7 must be merged (the table holds it now), ind 2 appended (it is gone), ind 8 appended
    stats = query.batch([pin_payload(2, "back"), pin_payload(7, "from the stream"), pin_payload(8)])
    assert query.held.reads == 2
    assert (stats.appended, stats.merged) == (2, 1)
    assert query.rows() == {1: "first", 2: "back", 3: "first", 4: "first", 5: "first", 7: "from the stream",
                            8: "first"}


def test_a_write_between_the_querys_own_commits_is_noticed(spark, tmp_path, monkeypatch):
    """A foreign commit that lands while the query writes a batch (after its lookup, before its next one)."""
    query = Query(spark, tmp_path)
    query.batch([pin_payload(1)])
    [inserted], _ = reference.clean_wire_values("pin", [pin_payload(5, "by a user")])
    original = stream_job.HeldInds.wrote

    def wrote_after_a_foreign_append(self, spark_, inds, operations):
        spark.createDataFrame([inserted], contract.CLEANED_SCHEMAS["pin"]).write.format("delta").mode(
            "append").save(query.uri)
        return original(self, spark_, inds, operations)

    monkeypatch.setattr(stream_job.HeldInds, "wrote", wrote_after_a_foreign_append)
    query.batch([pin_payload(2)])
    monkeypatch.undo()
    stats = query.batch([pin_payload(5, "from the stream"), pin_payload(6)])
    assert query.held.reads == 2
    assert (stats.appended, stats.merged) == (1, 1)
    assert query.rows() == {1: "first", 2: "first", 5: "from the stream", 6: "first"}


@pytest.mark.parametrize("max_rows", [0, 2])
def test_a_table_too_large_to_keep_is_looked_up_per_batch(spark, tmp_path, max_rows):
    query = Query(spark, tmp_path, max_rows=max_rows)
    query.batch([pin_payload(i) for i in range(1, 4)])  # 3 rows: more than max_rows once written
    stats = query.batch([pin_payload(3, "again"), pin_payload(4), pin_payload(4, "twice")])
    assert query.held.too_large
    assert (stats.appended, stats.merged) == (0, 2)  # 4 comes twice in the batch: merged, the later one kept
    assert query.rows() == {1: "first", 2: "first", 3: "again", 4: "twice"}
