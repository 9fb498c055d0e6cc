"""The analytics job on Delta tables: it writes what the pure transforms compute, and a table whose rows did
not change keeps its Delta version (the job recomputes everything, but rewrites only what changed)."""

from __future__ import annotations

from collections import Counter

from delta.tables import DeltaTable

from pinterest_platform import contract
from pinterest_platform.jobs import batch as batch_jobs
from pinterest_platform.transforms.analytics import compute_all
from pinterest_platform_tests.transforms.test_analytics import GEO_PINS, GEOS, USER_PINS, USERS, cleaned_tables, pin


def _version(spark, uri: str) -> int:
    return DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"]


def _rows(df) -> Counter:
    return Counter(map(tuple, df.collect()))


def _write_cleaned(spark, root: str, pins) -> None:
    for kind, df in zip(contract.EVENT_KINDS, cleaned_tables(spark, pins, GEOS, USERS), strict=True):
        df.write.format("delta").mode("overwrite").save(f"{root}/{kind}")


def test_writes_the_transforms_outputs_and_rewrites_only_changed_tables(spark, tmp_path):
    root = str(tmp_path / "tables")
    _write_cleaned(spark, root, GEO_PINS + USER_PINS)

    first = batch_jobs.analytics(spark, {"tables_root": root, "preview_rows": 5})
    expected = compute_all(*cleaned_tables(spark, GEO_PINS + USER_PINS, GEOS, USERS))
    for name in contract.ANALYTICS_TABLES:
        stored = spark.read.format("delta").load(f"{root}/{name}")
        assert stored.schema == contract.ANALYTICS_SCHEMAS[name], name
        assert _rows(stored) == _rows(expected[name]), name
        assert first[name]["rewritten"] is True
        assert first[name]["rows"] == stored.count()
        assert len(first[name]["preview"]) == min(5, first[name]["rows"])
    versions = {name: _version(spark, f"{root}/{name}") for name in contract.ANALYTICS_TABLES}

    # the same inputs again: every table already holds its rows, so none gets a new version
    again = batch_jobs.analytics(spark, {"tables_root": root, "preview_rows": 0})
    assert not any(again[name]["rewritten"] for name in contract.ANALYTICS_TABLES)
    assert {name: _version(spark, f"{root}/{name}") for name in contract.ANALYTICS_TABLES} == versions

    # one more post, by a user who had none: some outputs change, the geo-side ones (posts with a geo row)
    # cannot; exactly the tables whose rows changed are rewritten
    before = {name: _rows(df) for name, df in expected.items()}
    changed_pins = GEO_PINS + USER_PINS + [pin(35, "tattoos", "q", 7)]
    _write_cleaned(spark, root, changed_pins)
    third = batch_jobs.analytics(spark, {"tables_root": root, "preview_rows": 0})
    after = {name: _rows(df) for name, df in compute_all(*cleaned_tables(spark, changed_pins, GEOS, USERS)).items()}
    for name in contract.ANALYTICS_TABLES:
        assert _rows(spark.read.format("delta").load(f"{root}/{name}")) == after[name], name
        moved = _version(spark, f"{root}/{name}") != versions[name]
        assert moved == third[name]["rewritten"] == (after[name] != before[name]), name
    rewritten = {name for name in contract.ANALYTICS_TABLES if third[name]["rewritten"]}
    assert rewritten and "popular_category_by_country" not in rewritten


def test_a_table_changed_behind_the_platforms_back_is_written_again(spark, tmp_path):
    root = str(tmp_path / "tables")
    _write_cleaned(spark, root, GEO_PINS + USER_PINS)
    batch_jobs.analytics(spark, {"tables_root": root, "preview_rows": 0})
    expected = {name: _rows(df) for name, df in compute_all(*cleaned_tables(spark, GEO_PINS + USER_PINS, GEOS,
                                                                            USERS)).items()}
    # someone deletes a row of one output: its latest commit is no longer the platform's, so the next run
    # cannot take the table for what it wrote, and writes it again; the others keep their versions
    touched = "popular_category_by_country"
    DeltaTable.forPath(spark, f"{root}/{touched}").delete("true")
    assert _rows(spark.read.format("delta").load(f"{root}/{touched}")) == Counter()
    versions = {name: _version(spark, f"{root}/{name}") for name in contract.ANALYTICS_TABLES}

    again = batch_jobs.analytics(spark, {"tables_root": root, "preview_rows": 0})
    assert {name for name in contract.ANALYTICS_TABLES if again[name]["rewritten"]} == {touched}
    assert _rows(spark.read.format("delta").load(f"{root}/{touched}")) == expected[touched]
    for name in contract.ANALYTICS_TABLES:
        assert (_version(spark, f"{root}/{name}") != versions[name]) == (name == touched), name
