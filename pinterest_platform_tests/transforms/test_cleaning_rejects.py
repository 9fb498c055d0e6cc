"""Records that docs/data-contract.md sends to quarantine rather than cleaning: bytes that are not
UTF-8, JSON objects with a duplicate key, and impossible values (a negative ind, latitude outside
[-90, 90], longitude outside [-180, 180], an age outside [0, 150]).

Every case runs through `clean` in the three shapes the jobs give it: a raw topic file read as text lines
(batch), Kinesis `data` cast to string (what the stream job does today) and Kinesis `data` as binary. The
results must be the same in all three and agree with the plain-Python reference, fed the same bytes."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pinterest_platform import contract
from pinterest_platform.transforms.cleaning import clean, cleaned_rows, quarantine_rows
from pinterest_platform_tests import reference
from pinterest_platform_tests.transforms import collect

# the cleaning tests' events; every case here sets its own ind
from pinterest_platform_tests.transforms.test_cleaning import GEO, PIN, USER

BASE = {"pin": PIN, "geo": GEO, "user": USER}
KEY = {"pin": "index", "geo": "ind", "user": "ind"}

# a marker no case otherwise contains, swapped for raw bytes after encoding
MARK = "@@"
# not UTF-8: a lone continuation byte, Latin-1 `ë`, a sequence cut short, an overlong `/`, a UTF-16
# surrogate, a code point past U+10FFFF
INVALID = {"lone byte": b"\xff", "latin-1": b"Zo\xeb", "truncated": b"\xe2\x82", "overlong": b"\xc0\xaf",
           "surrogate": b"\xed\xa0\x80", "past U+10FFFF": b"\xf4\x90\x80\x80"}
TEXT_FIELD = {"pin": "title", "geo": "country", "user": "first_name"}


def event(kind: str, ind: int, /, **changes) -> bytes:
    return json.dumps({**BASE[kind], KEY[kind]: ind, **changes}, ensure_ascii=False).encode()


def with_bytes(kind: str, ind: int, raw: bytes) -> bytes:
    return event(kind, ind, **{TEXT_FIELD[kind]: f"x{MARK}y"}).replace(MARK.encode(), raw)


def duplicated(kind: str, ind: int, field: str, first, last, *, spelled: str | None = None) -> bytes:
    """An event whose `field` appears twice, `first` then `last`, the second time written `spelled`
    (json.dumps cannot write one)."""
    head = json.dumps({**BASE[kind], KEY[kind]: ind, field: first}, ensure_ascii=False)[:-1]
    return f'{head}, "{spelled or field}": {json.dumps(last)}}}'.encode()


def invalid_cases(kind: str, ind: int = 0) -> list[tuple[str, bytes]]:
    """Cases with inds from `ind` on."""
    return [
        ("good", event(kind, ind + 1)),
        # valid UTF-8 that merely looks odd is kept as it is: emoji, and U+FFFD sent as such
        ("emoji and U+FFFD", event(kind, ind + 2, **{TEXT_FIELD[kind]: "🚗 \ufffd ok"})),
        *[(f"invalid {name}", with_bytes(kind, ind + 10 + i, raw)) for i, (name, raw) in enumerate(INVALID.items())],
        # the malformed JSON would be a reason too, but text that is no text is not read at all
        ("invalid and malformed", b'{"ind": \xff'),
    ]


def duplicate_cases(kind: str, ind: int = 0) -> list[tuple[str, bytes]]:
    """Cases with inds from `ind` on."""
    field, text = {"pin": "follower_count", "geo": "latitude", "user": "age"}[kind], TEXT_FIELD[kind]
    first, last = ("26k", "6M") if kind == "pin" else (10, 11)
    return [
        ("good", event(kind, ind + 1)),
        ("duplicate key", duplicated(kind, ind + 2, KEY[kind], ind + 2, ind + 3)),
        ("duplicate field", duplicated(kind, ind + 3, field, first, last)),
        ("duplicate same value", duplicated(kind, ind + 4, text, "a", "a")),
        # the same name written with an escape is the same key
        ("duplicate escaped", duplicated(kind, ind + 5, text, "a", "b", spelled=f"\\u{ord(text[0]):04x}{text[1:]}")),
        ("duplicate nested", event(kind, ind + 6, extra={"a": 1, "b": 2}).replace(b'"b"', b'"a"')),
    ]


RANGE_CASES = {
    "pin": [
        ("ind minus zero", event("pin", 1, index="-0")),
        ("ind negative", event("pin", -1)),
        ("ind negative text", event("pin", 1, index=" -7 ")),
        ("ind negative and bad count", event("pin", -2, follower_count="abc")),
    ],
    "geo": [
        ("bounds", event("geo", 1, latitude=90, longitude=-180)),
        ("other bounds", event("geo", 2, latitude=-90.0, longitude="180.0")),
        ("latitude 95", event("geo", 3, latitude=95)),
        ("latitude -90.5", event("geo", 4, latitude=-90.5)),
        ("longitude 200", event("geo", 5, longitude=200)),
        ("longitude -180.0001", event("geo", 6, longitude=" -180.0001 ")),
        ("latitude exponent", event("geo", 7, latitude="1e3")),
        ("both out of range", event("geo", 8, latitude="95", longitude=200)),
        ("ind negative", event("geo", -3)),
        ("everything wrong", event("geo", -4, latitude=-91, longitude="x", timestamp="never")),
    ],
    "user": [
        ("age 0", event("user", 1, age=0)),
        ("age 150", event("user", 2, age="150")),
        ("age -1", event("user", 3, age=-1)),
        ("age 200", event("user", 4, age=200)),
        ("age 151 text", event("user", 5, age=" 151 ")),
        ("ind negative", event("user", -1)),
        ("ind and age negative", event("user", -5, age=-5)),
    ],
}

SHAPES = ("batch text lines", "stream data as string", "stream data as binary")
Cases = dict[str, list[tuple[str, bytes]]]


def shaped(spark, shape: str, tmp_path, kind: str, cases: list[tuple[str, bytes]]) -> DataFrame:
    """The cases as `clean`'s records in `shape`; `origin` is the case name (the file line's, for batch)."""
    source = f"test.{kind}"
    names = [name for name, _ in cases]
    if shape == "batch text lines":
        # what the batch job does (jobs/batch.py): a raw topic file, one record per line, read as text
        assert not any(b"\n" in v or b"\r" in v for _, v in cases), "a line cannot hold a line break"
        path = tmp_path / kind / contract.raw_file_name(source, 0, 0)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(v + b"\n" for _, v in cases))
        lines = (spark.read.text(str(path))
                 .select(F.col("value"), F.col("_metadata.file_path").alias("origin"))
                 .where(F.trim(F.col("value")) != "").withColumn("source", F.lit(source)))
        # a small file is one partition, in which monotonically_increasing_id numbers the lines 0, 1, ...
        assert lines.rdd.getNumPartitions() == 1
        name = F.element_at(F.array(*map(F.lit, names)), (F.monotonically_increasing_id() + 1).cast("int"))
        return lines.select("value", "source", name.alias("origin"))
    data = spark.createDataFrame([(bytearray(v), source, name) for name, v in cases],
                                 "data binary, stream string, origin string")
    # what the stream job does (jobs/stream.py) with the Kinesis source's `data`, or `data` itself
    value = F.col("data").cast("string") if shape == "stream data as string" else F.col("data")
    return data.select(value.alias("value"), F.col("stream").alias("source"), "origin")


def cleaned_all(spark, shape: str, tmp_path, cases: Cases) -> dict[str, DataFrame]:
    return {kind: clean(kind, shaped(spark, shape, tmp_path, kind, by_kind)) for kind, by_kind in cases.items()}


def outcomes(spark, shape: str, tmp_path, cases: Cases) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """kind -> case -> (reason, raw) of `clean`'s output, raw only for quarantined records (one Spark job)."""
    frames = [df.select(F.lit(kind).alias("kind"), "_origin", "_reason", "_raw")
              for kind, df in cleaned_all(spark, shape, tmp_path, cases).items()]
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    got: dict[str, dict] = {kind: {} for kind in cases}
    for r in collect(union):
        got[r["kind"]][r["_origin"]] = (r["_reason"], r["_raw"] if r["_reason"] else None)
    assert {kind: len(by_case) for kind, by_case in got.items()} == {kind: len(c) for kind, c in cases.items()}
    return got


@pytest.mark.parametrize("shape", SHAPES)
def test_invalid_utf8_is_quarantined_with_its_bytes_in_hex(spark, tmp_path, shape):
    cases = {kind: invalid_cases(kind) for kind in contract.EVENT_KINDS}
    got = outcomes(spark, shape, tmp_path, cases)
    for kind, by_kind in cases.items():
        assert got[kind] == {"good": (None, None), "emoji and U+FFFD": (None, None),
                             **{name: ("invalid UTF-8", raw.hex()) for name, raw in by_kind
                                if name.startswith("invalid")}}, kind
        # the hex gives the bytes back exactly
        assert all(bytes.fromhex(got[kind][name][1]) == raw for name, raw in by_kind if name.startswith("invalid"))
    # before the fix these were cleaned, U+FFFD standing in for the bytes; a U+FFFD that was sent is
    # text like any other
    df = cleaned_all(spark, shape, tmp_path / "pin", {"pin": cases["pin"]})["pin"]
    assert sorted(r["title"] for r in collect(cleaned_rows("pin", df).select("title"))) == [
        "TireBuyer", "🚗 \ufffd ok"]


@pytest.mark.parametrize("allow_duplicate_keys", ["false", "true"])
@pytest.mark.parametrize("shape", SHAPES)
def test_duplicate_keys_are_malformed_json_whatever_the_session_allows(spark, tmp_path, shape, allow_duplicate_keys):
    cases = {kind: duplicate_cases(kind) for kind in contract.EVENT_KINDS}
    # Spark's JSON parser lets a session accept duplicate keys (the last value winning); a cluster
    # setting must not make the batch and streaming jobs disagree on a top-level duplicate
    key = "spark.sql.variant.allowDuplicateKeys"
    before = spark.conf.get(key)
    spark.conf.set(key, allow_duplicate_keys)
    try:
        got = outcomes(spark, shape, tmp_path, cases)
    finally:
        spark.conf.set(key, before)
    for kind, by_kind in cases.items():
        expected = {name: ("malformed JSON", raw.decode()) for name, raw in by_kind if name != "good"}
        if allow_duplicate_keys == "true":
            # a duplicate inside a nested value is the parser's to catch: with duplicates allowed the
            # field is kept as its JSON text (the reference, like Spark's default, rejects it)
            expected["duplicate nested"] = (None, None)
        assert got[kind] == {"good": (None, None), **expected}, kind


@pytest.mark.parametrize("shape", SHAPES)
def test_impossible_values_are_quarantined_with_their_reason(spark, tmp_path, shape):
    got = outcomes(spark, shape, tmp_path, RANGE_CASES)
    reasons = {kind: {case: reason for case, (reason, _) in by_case.items()} for kind, by_case in got.items()}
    assert reasons == {
        "pin": {"ind minus zero": None, "ind negative": "ind '-1' is negative",
                "ind negative text": "ind ' -7 ' is negative",
                "ind negative and bad count": "ind '-2' is negative; follower_count 'abc' is not a count"},
        "geo": {"bounds": None, "other bounds": None,
                "latitude 95": "latitude '95' is outside [-90, 90]",
                "latitude -90.5": "latitude '-90.5' is outside [-90, 90]",
                "longitude 200": "longitude '200' is outside [-180, 180]",
                "longitude -180.0001": "longitude ' -180.0001 ' is outside [-180, 180]",
                "latitude exponent": "latitude '1e3' is outside [-90, 90]",
                "both out of range": "latitude '95' is outside [-90, 90]; longitude '200' is outside [-180, 180]",
                "ind negative": "ind '-3' is negative",
                "everything wrong": "ind '-4' is negative; latitude '-91' is outside [-90, 90]; "
                                    "longitude 'x' is not a number; timestamp 'never' is not a datetime"},
        "user": {"age 0": None, "age 150": None, "age -1": "age '-1' is outside [0, 150]",
                 "age 200": "age '200' is outside [0, 150]", "age 151 text": "age ' 151 ' is outside [0, 150]",
                 "ind negative": "ind '-1' is negative",
                 "ind and age negative": "ind '-5' is negative; age '-5' is outside [0, 150]"},
    }
    # the quarantine keeps the record exactly as it came, nothing clamped
    by_name = {kind: dict(cases) for kind, cases in RANGE_CASES.items()}
    assert all(raw == by_name[kind][case].decode() for kind, by_case in got.items()
               for case, (reason, raw) in by_case.items() if reason)


def mixed_corpus(kind: str) -> list[tuple[str, bytes]]:
    """Good and bad records of every finding, each good one with an ind of its own."""
    named = [(f"utf8 {n}", v) for n, v in invalid_cases(kind, ind=100)]
    named += [(f"dup {n}", v) for n, v in duplicate_cases(kind, ind=200)]
    named += [(f"range {n}", v) for n, v in RANGE_CASES[kind]]
    # and records of the older reasons, to see the new ones slot in among them
    no_key = {k: v for k, v in BASE[kind].items() if k != KEY[kind]}
    named += [("malformed", b'{"ind": '), ("array", b"[1]"), ("missing ind", json.dumps(no_key).encode()),
              ("not an integer", event(kind, 1, **{KEY[kind]: "x"}))]
    return named


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_agrees_on_a_mixed_corpus(spark, tmp_path, shape):
    for kind in contract.EVENT_KINDS:
        corpus = mixed_corpus(kind)
        expected, expected_quarantine = reference.clean_wire_values(kind, [v for _, v in corpus])
        df = clean(kind, shaped(spark, shape, tmp_path, kind, corpus)).persist()
        try:
            got = collect(cleaned_rows(kind, df).orderBy("ind"))
            quarantined = collect(quarantine_rows(kind, df).select("kind", "reason", "raw"))
        finally:
            df.unpersist()
        assert got == expected, kind
        assert sorted(quarantined, key=str) == sorted(expected_quarantine, key=str), kind
        # nothing dropped, nothing doubled: every record is cleaned or quarantined (no ind repeats here)
        assert len(got) + len(quarantined) == len(corpus), kind
        assert {q["reason"] for q in quarantined} >= {"invalid UTF-8", "malformed JSON"}, kind


def test_batch_and_stream_jobs_quarantine_the_same_records_alike(spark, tmp_path):
    """The same bytes through the batch job (a raw topic file) and the stream job's micro-batch (Kinesis
    data): the same cleaned rows, the same quarantine reasons and raw texts, and every record accounted."""
    import datetime as dt

    from pinterest_platform.jobs import batch as batch_jobs
    from pinterest_platform.jobs import stream as stream_job

    lake = tmp_path / "lake"
    corpus = [(f"{kind} {name}", kind, value) for kind in contract.EVENT_KINDS for name, value in mixed_corpus(kind)]
    files = {}
    for kind in contract.EVENT_KINDS:
        topic = f"test.{kind}"
        path = lake / contract.raw_file_name(topic, 0, 0)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(v + b"\n" for _, k, v in corpus if k == kind))
        files[kind] = [{"uri": str(path), "path": str(path.relative_to(lake)), "size": path.stat().st_size,
                        "topic": topic, "day": "2024-01-01", "index_uri": None}]
    result = batch_jobs.clean_batch(spark, {"tables_root": str(lake / "tables"),
                                            "versions_root": str(lake / "_manifests" / "latest"), "files": files})

    stats = stream_job.StreamStats()
    for kind in contract.EVENT_KINDS:
        data = spark.createDataFrame(
            [(bytearray(v), f"stream-{kind}", "shard-0", str(seq), dt.datetime(2024, 1, 1))
             for seq, (_, k, v) in enumerate(corpus) if k == kind],
            "data binary, stream string, shardId string, sequenceNumber string, approximateArrivalTimestamp timestamp")
        seq = F.col("sequenceNumber")
        # the stream job's projection of the Kinesis source (jobs/stream.py, _start_query)
        batch_df = data.select(F.col("data").cast("string").alias("value"), F.col("stream").alias("source"),
                               F.concat_ws(":", F.col("shardId"), seq).alias("origin"),
                               F.col("approximateArrivalTimestamp").alias("_arrival"), F.length(seq).alias("_seq_len"),
                               seq.alias("_seq"))
        stream_job.write_batch(spark, kind, batch_df, 0, table_uri=str(lake / "tables" / f"stream_{kind}"),
                               quarantine_uri=str(lake / "tables" / "stream_quarantine"), app_id=f"test-{kind}",
                               stats=stats)

    def table(name: str) -> list[dict]:
        return collect(spark.read.format("delta").load(str(lake / "tables" / name)))

    def quarantine(name: str) -> list[tuple]:
        return sorted((r["kind"], r["reason"], r["raw"]) for r in table(name))

    for kind in contract.EVENT_KINDS:
        expected, _ = reference.clean_wire_values(kind, [v for _, k, v in corpus if k == kind])
        assert sorted(table(kind), key=lambda r: r["ind"]) == expected, kind
        assert sorted(table(f"stream_{kind}"), key=lambda r: r["ind"]) == expected, kind
        counts = result[kind]
        assert counts["read"] == counts["upserted"] + counts["duplicates"] + counts["quarantined"], kind
    expected_quarantine = sorted(
        (q["kind"], q["reason"], q["raw"]) for kind in contract.EVENT_KINDS
        for q in reference.clean_wire_values(kind, [v for _, k, v in corpus if k == kind])[1])
    assert quarantine(contract.QUARANTINE_TABLE) == quarantine("stream_quarantine") == expected_quarantine
    assert stats.records == stats.clean + stats.quarantined == len(corpus)
    assert {reason for _, reason, _ in expected_quarantine} >= {"invalid UTF-8", "malformed JSON"}
