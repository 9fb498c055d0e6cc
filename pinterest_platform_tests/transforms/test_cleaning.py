"""Cleaning (DATA_CONTRACT.md §3): every placeholder, count format, datetime format and bad record.

Each kind's cases run through Spark once (module fixtures); the tests then look rows up by origin.
The same cases also go through the plain-Python reference, which must agree row for row."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from pinterest_platform import contract
from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key, parse_records, quarantine_rows
from pinterest_platform_tests import reference
from pinterest_platform_tests.transforms import collect, records

PIN = {
    "index": 7528, "unique_id": "fbe53c66-3442-4773-b19e-d3ec6f54dddf", "title": "TireBuyer",
    "description": "Tyres for every road", "poster_name": "Tire Buyer 🚗 | shop ", "follower_count": "26k",
    "tag_list": "tyres,cars", "is_image_or_video": "image", "image_src": "https://i.pinimg.com/x.jpg",
    "downloaded": 1, "save_location": "Local save in /data/vehicles", "category": "vehicles",
}
GEO = {"ind": 7528, "timestamp": "2020-08-28T03:52:47", "latitude": -89.9787, "longitude": -173.293,
       "country": "Cote d'Ivoire"}
USER = {"ind": 7528, "first_name": "Abigail", "last_name": "Ali", "age": 20, "date_joined": "2015-10-24 11:23:51"}


def pin(**changes) -> str:
    return json.dumps({**PIN, **changes}, ensure_ascii=False)


def geo(**changes) -> str:
    return json.dumps({**GEO, **changes}, ensure_ascii=False)


def user(**changes) -> str:
    return json.dumps({**USER, **changes}, ensure_ascii=False)


def without(base: dict, field: str) -> str:
    return json.dumps({k: v for k, v in base.items() if k != field}, ensure_ascii=False)


PIN_STRINGS = ["unique_id", "title", "description", "poster_name", "tag_list", "is_image_or_video", "image_src",
               "save_location", "category"]
FOLLOWER_COUNTS = {
    "0": 0, "437": 437, "26k": 26_000, "6M": 6_000_000, "1.5k": 1_500, "2.5M": 2_500_000, "3K": 3_000,
    "2m": 2_000_000, " 12k\t": 12_000, "1.2345k": 1_235, "1.2344k": 1_234, "1.0005k": 1_001,
    "1.23456789M": 1_234_568, "0.4k": 400, "007": 7,
    "": None, "   ": None, "User Info Error": None, " User Info Error ": None,
}
BAD_FOLLOWER_COUNTS = ["abc", "12kk", "1,234", "-5", "k", "1.k", ".5k", "1e3", "26 k", "9999999999999999999999"]

PIN_CASES = [
    ("typical", pin()),
    *[(f"count {text!r}", pin(follower_count=text)) for text in FOLLOWER_COUNTS],
    ("count JSON number", pin(follower_count=437)),
    ("count missing", without(PIN, "follower_count")),
    ("count null", pin(follower_count=None)),
    *[(f"bad count {text!r}", pin(follower_count=text)) for text in BAD_FOLLOWER_COUNTS],
    ("story row", pin(title="No Title Data Available", description="No description available Story format",
                      poster_name="User Info Error", follower_count="User Info Error",
                      tag_list="N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e", image_src="Image src error.",
                      is_image_or_video="multi-video(story page format)", downloaded=0,
                      save_location="Local save in /data/travel", category="travel")),
    ("description placeholders", pin(description="No description available", title="Untitled")),
    *[(f"placeholder {p!r} everywhere", pin(**{c: p if i % 2 else f" {p}\t" for i, c in enumerate(PIN_STRINGS)}))
      for p in contract.ALL_PLACEHOLDERS],
    ("placeholders in any column", pin(title="Image src error.", category=" Untitled ", unique_id="User Info Error",
                                       tag_list="No Title Data Available")),
    ("blank strings", pin(title="", description=" \t\n ", poster_name="  ", category="")),
    ("placeholder is exact", pin(title="untitled", description="No description available!")),
    ("save location without prefix", pin(save_location="/data/art")),
    ("save location prefix only", pin(save_location="Local save in ")),
    ("ind as string", pin(index=" 12 ")),
    ("ind signed", pin(index="+13")),
    ("ind not integer", pin(index="x")),
    ("ind decimal", pin(index="7.5")),
    ("ind overflow", pin(index=3_000_000_000)),
    ("ind zero", pin(index=0)),
    ("ind negative", pin(index=-4)),
    ("ind missing", without(PIN, "index")),
    ("ind null", pin(index=None)),
    ("ind placeholder", pin(index="User Info Error")),
    ("two problems", pin(index="x", follower_count="abc")),
    ("extra fields", pin(likes=3, nested={"a": [1, 2]})),
    ("malformed", '{"index": 1, "title": '),
    ("malformed empty", ""),
    ("malformed null value", None),
    ("malformed single quotes", "{'index': 1}"),
    ("malformed trailing text", '{"index": 1} junk'),
    ("malformed trailing bracket", '{"index": 1}] junk'),
    ("malformed two objects", '{"index": 1}{"index": 2}'),
    ("malformed duplicate key", '{"index": 1, "index": 2}'),
    ("array", '[{"index": 1}]'),
    ("string", '"index"'),
    ("number", "42"),
    ("json null", "null"),
    ("whitespace around", '  {"index": 5}\n'),
]

GEO_CASES = [
    ("typical", geo()),
    ("space format", geo(timestamp="2020-08-28 03:52:47")),
    ("fraction", geo(timestamp="2020-08-28T03:52:47.5")),
    ("micros", geo(timestamp="2020-08-28 03:52:47.123456")),
    ("nanos truncated", geo(timestamp="2020-08-28 03:52:47.123456789")),
    ("timestamp padded", geo(timestamp=" 2020-08-28 03:52:47 ")),
    ("timestamp blank", geo(timestamp="")),
    ("timestamp missing", without(GEO, "timestamp")),
    ("date only", geo(timestamp="2020-08-28")),
    ("day out of range", geo(timestamp="2020-02-30 00:00:00")),
    ("other format", geo(timestamp="28/08/2020 03:52:47")),
    ("with zone", geo(timestamp="2020-08-28T03:52:47Z")),
    ("year zero", geo(timestamp="0000-01-01 00:00:00")),
    ("numbers as strings", geo(latitude="12.5", longitude=" -7 ")),
    ("exponent", geo(latitude="1.5e1", longitude=0.0001)),
    ("many digits", geo(latitude=12.345678901234567, longitude=-0.1)),
    ("latitude null", geo(latitude=None)),
    ("longitude blank", geo(longitude=" ")),
    ("latitude not number", geo(latitude="abc")),
    ("longitude NaN", geo(longitude="NaN")),
    ("latitude infinity", geo(latitude="Infinity")),
    ("coordinate bounds", geo(latitude=90, longitude=-180.0)),
    ("latitude out of range", geo(latitude=95)),
    ("longitude out of range", geo(longitude="200")),
    ("long country", geo(country="Antarctica (the territory South of 60 deg S)")),
    ("country blank", geo(country="")),
    ("country placeholder", geo(country="User Info Error")),
    ("ind string", geo(ind="8")),
    ("ind missing", without(GEO, "ind")),
    ("three problems", geo(ind="y", latitude="n", timestamp="never")),
]

USER_CASES = [
    ("typical", user()),
    ("T format", user(date_joined="2015-10-24T11:23:51")),
    ("fraction", user(date_joined="2015-10-24 11:23:51.25")),
    ("bad date", user(date_joined="yesterday")),
    ("age string", user(age=" 30 ")),
    ("age placeholder", user(age="User Info Error")),
    ("age null", user(age=None)),
    ("age decimal", user(age=17.5)),
    ("age word", user(age="x")),
    ("age bounds", user(age=150)),
    ("age negative", user(age=-1)),
    ("age too old", user(age=200)),
    ("last name null", user(last_name=None)),
    ("first name placeholder", user(first_name="User Info Error")),
    ("names kept as received", user(first_name=" Zoë", last_name="O'Brien ")),
    ("ind missing", without(USER, "ind")),
]

CASES = {"pin": PIN_CASES, "geo": GEO_CASES, "user": USER_CASES}


@pytest.fixture(scope="module")
def cleaned(spark):
    """kind -> (the records DataFrame, clean's output, clean's rows by origin)."""
    out = {}
    for kind, cases in CASES.items():
        assert len({origin for origin, _ in cases}) == len(cases), "case names must be unique"
        df = clean(kind, records(spark, cases, source=f"test.{kind}"))
        out[kind] = (df, {row["_origin"]: row for row in collect(df)})
    return out


def rows(cleaned, kind):
    return cleaned[kind][1]


def test_clean_output_columns(cleaned):
    for kind in CASES:
        df = cleaned[kind][0]
        assert df.columns == [*contract.CLEANED_COLUMNS[kind], "_reason", "_raw", "_source", "_origin", "_seq"]
        typed = {f.name: f.dataType for f in df.schema}
        assert all(typed[f.name] == f.dataType for f in contract.CLEANED_SCHEMAS[kind])


def test_typical_pin(cleaned):
    row = rows(cleaned, "pin")["typical"]
    assert row == {
        "ind": 7528, "unique_id": PIN["unique_id"], "title": "TireBuyer", "description": "Tyres for every road",
        "follower_count": 26_000, "poster_name": "Tire Buyer 🚗 | shop ", "tag_list": "tyres,cars",
        "is_image_or_video": "image", "image_src": PIN["image_src"], "save_location": "/data/vehicles",
        "category": "vehicles", "_reason": None, "_raw": pin(), "_source": "test.pin", "_origin": "typical",
        "_seq": 0,
    }


def test_follower_counts(cleaned):
    got = rows(cleaned, "pin")
    assert {text: (got[f"count {text!r}"]["follower_count"], got[f"count {text!r}"]["_reason"])
            for text in FOLLOWER_COUNTS} == {text: (count, None) for text, count in FOLLOWER_COUNTS.items()}
    assert {case: (got[case]["follower_count"], got[case]["_reason"])
            for case in ("count JSON number", "count missing", "count null")} == {
        "count JSON number": (437, None), "count missing": (None, None), "count null": (None, None)}


def test_unparseable_follower_counts_are_quarantined_with_reason(cleaned):
    got = rows(cleaned, "pin")
    assert {text: got[f"bad count {text!r}"]["_reason"] for text in BAD_FOLLOWER_COUNTS} == {
        text: f"follower_count '{text}' is not a count" for text in BAD_FOLLOWER_COUNTS}


def test_placeholders_and_blanks_become_null(cleaned):
    got = rows(cleaned, "pin")
    story = got["story row"]
    assert [story[c] for c in ("title", "description", "poster_name", "follower_count", "tag_list", "image_src")] \
        == [None] * 6
    assert (story["is_image_or_video"], story["save_location"], story["category"], story["_reason"]) == (
        "multi-video(story page format)", "/data/travel", "travel", None)
    assert (got["description placeholders"]["description"], got["description placeholders"]["title"]) == (None, None)
    anywhere = got["placeholders in any column"]
    assert [anywhere[c] for c in ("title", "category", "unique_id", "tag_list")] == [None] * 4
    for placeholder in contract.ALL_PLACEHOLDERS:
        row = got[f"placeholder {placeholder!r} everywhere"]
        assert [row[c] for c in PIN_STRINGS] == [None] * len(PIN_STRINGS), placeholder
        assert (row["ind"], row["follower_count"], row["_reason"]) == (7528, 26_000, None)
    blank = got["blank strings"]
    assert [blank[c] for c in ("title", "description", "poster_name", "category")] == [None] * 4
    assert (got["placeholder is exact"]["title"], got["placeholder is exact"]["description"]) == (
        "untitled", "No description available!")
    assert all(got[case]["_reason"] is None for case in (
        "description placeholders", "placeholders in any column", "blank strings", "placeholder is exact"))


def test_save_location(cleaned):
    got = rows(cleaned, "pin")
    assert got["typical"]["save_location"] == "/data/vehicles"
    assert got["save location without prefix"]["save_location"] == "/data/art"
    assert got["save location prefix only"]["save_location"] is None


def test_ind(cleaned):
    got = rows(cleaned, "pin")
    assert {case: (got[case]["ind"], got[case]["_reason"]) for case in (
        "ind as string", "ind signed", "ind not integer", "ind decimal", "ind overflow", "ind zero", "ind negative",
        "ind missing", "ind null", "ind placeholder", "whitespace around",
    )} == {
        "ind as string": (12, None), "ind signed": (13, None),
        "ind not integer": (None, "ind 'x' is not an integer"),
        "ind decimal": (None, "ind '7.5' is not an integer"),
        "ind overflow": (None, "ind '3000000000' is not an integer"),
        "ind zero": (0, None), "ind negative": (-4, "ind '-4' is negative"),
        "ind missing": (None, "missing ind"), "ind null": (None, "missing ind"),
        "ind placeholder": (None, "missing ind"), "whitespace around": (5, None),
    }
    assert got["two problems"]["_reason"] == "ind 'x' is not an integer; follower_count 'abc' is not a count"
    assert (got["extra fields"]["ind"], got["extra fields"]["_reason"]) == (7528, None)


def test_malformed_json_and_non_objects(cleaned):
    got = rows(cleaned, "pin")
    malformed = [case for case, _ in PIN_CASES if case.startswith("malformed")]
    assert {case: got[case]["_reason"] for case in malformed} == {case: "malformed JSON" for case in malformed}
    assert {case: got[case]["_reason"] for case in ("array", "string", "number", "json null")} == {
        case: "not a JSON object" for case in ("array", "string", "number", "json null")}
    # the raw text is kept exactly, for the quarantine
    assert got["malformed trailing text"]["_raw"] == '{"index": 1} junk'
    assert got["malformed null value"]["_raw"] is None


def test_geo(cleaned):
    got = rows(cleaned, "geo")
    stamp = dt.datetime(2020, 8, 28, 3, 52, 47)
    assert got["typical"] == {
        "ind": 7528, "country": "Cote d'Ivoire", "coordinates": [-89.9787, -173.293], "timestamp": stamp,
        "_reason": None, "_raw": geo(), "_source": "test.geo", "_origin": "typical", "_seq": 0}
    timestamps = {case: (got[case]["timestamp"], got[case]["_reason"]) for case in (
        "space format", "fraction", "micros", "nanos truncated", "timestamp padded", "timestamp blank",
        "timestamp missing")}
    assert timestamps == {
        "space format": (stamp, None), "fraction": (stamp.replace(microsecond=500_000), None),
        "micros": (stamp.replace(microsecond=123_456), None),
        "nanos truncated": (stamp.replace(microsecond=123_456), None),
        "timestamp padded": (stamp, None), "timestamp blank": (None, None), "timestamp missing": (None, None)}
    bad = {"date only": "2020-08-28", "day out of range": "2020-02-30 00:00:00",
           "other format": "28/08/2020 03:52:47", "with zone": "2020-08-28T03:52:47Z",
           "year zero": "0000-01-01 00:00:00"}
    assert {case: got[case]["_reason"] for case in bad} == {
        case: f"timestamp '{text}' is not a datetime" for case, text in bad.items()}
    coordinates = {case: (got[case]["coordinates"], got[case]["_reason"]) for case in (
        "numbers as strings", "exponent", "many digits", "latitude null", "longitude blank")}
    assert coordinates == {
        "numbers as strings": ([12.5, -7.0], None), "exponent": ([15.0, 0.0001], None),
        "many digits": ([12.345678901234567, -0.1], None), "latitude null": (None, None),
        "longitude blank": (None, None)}
    assert (got["latitude not number"]["_reason"], got["longitude NaN"]["_reason"],
            got["latitude infinity"]["_reason"]) == (
        "latitude 'abc' is not a number", "longitude 'NaN' is not a number", "latitude 'Infinity' is not a number")
    assert {case: (got[case]["coordinates"], got[case]["_reason"]) for case in (
        "coordinate bounds", "latitude out of range", "longitude out of range")} == {
        "coordinate bounds": ([90.0, -180.0], None),
        # quarantined, never clamped
        "latitude out of range": ([95.0, -173.293], "latitude '95' is outside [-90, 90]"),
        "longitude out of range": ([-89.9787, 200.0], "longitude '200' is outside [-180, 180]")}
    assert got["long country"]["country"] == "Antarctica (the territory South of 60 deg S)"
    assert (got["country blank"]["country"], got["country blank"]["_reason"]) == (None, None)
    assert (got["country placeholder"]["country"], got["country placeholder"]["_reason"]) == (None, None)
    assert (got["ind string"]["ind"], got["ind missing"]["_reason"]) == (8, "missing ind")
    assert got["three problems"]["_reason"] == (
        "ind 'y' is not an integer; latitude 'n' is not a number; timestamp 'never' is not a datetime")


def test_user(cleaned):
    got = rows(cleaned, "user")
    joined = dt.datetime(2015, 10, 24, 11, 23, 51)
    assert {case: (got[case]["user_name"], got[case]["age"], got[case]["date_joined"], got[case]["_reason"])
            for case, _ in USER_CASES} == {
        "typical": ("Abigail Ali", 20, joined, None),
        "T format": ("Abigail Ali", 20, joined, None),
        "fraction": ("Abigail Ali", 20, joined.replace(microsecond=250_000), None),
        "bad date": ("Abigail Ali", 20, None, "date_joined 'yesterday' is not a datetime"),
        "age string": ("Abigail Ali", 30, joined, None),
        "age placeholder": ("Abigail Ali", None, joined, None),
        "age null": ("Abigail Ali", None, joined, None),
        "age decimal": ("Abigail Ali", None, joined, "age '17.5' is not an integer"),
        "age word": ("Abigail Ali", None, joined, "age 'x' is not an integer"),
        "age bounds": ("Abigail Ali", 150, joined, None),
        "age negative": ("Abigail Ali", -1, joined, "age '-1' is outside [0, 150]"),
        "age too old": ("Abigail Ali", 200, joined, "age '200' is outside [0, 150]"),
        "last name null": (None, 20, joined, None),
        "first name placeholder": (None, 20, joined, None),
        "names kept as received": (" Zoë O'Brien ", 20, joined, None),
        "ind missing": ("Abigail Ali", 20, joined, "missing ind"),
    }


def test_reference_agrees_on_every_case(cleaned):
    for kind, cases in CASES.items():
        expected, quarantined = reference.clean_wire_values(kind, [value for _, value in cases])
        df = cleaned[kind][0]
        # the reference keeps the last clean row per ind, as latest_per_key does ordered by arrival
        got_latest = collect(cleaned_rows(kind, latest_per_key(df.where(F.col("_reason").isNull()),
                                                               order_by=["_seq"])).orderBy("ind"))
        assert got_latest == expected, kind
        got_quarantine = collect(quarantine_rows(kind, df).select("kind", "reason", "raw"))
        assert sorted(got_quarantine, key=str) == sorted(quarantined, key=str), kind


def test_cleaned_rows_have_exactly_the_contract_schema(cleaned):
    for kind in CASES:
        df = cleaned_rows(kind, cleaned[kind][0])
        assert df.schema == contract.CLEANED_SCHEMAS[kind]


def test_quarantine_rows(cleaned):
    df = quarantine_rows("pin", cleaned["pin"][0])
    assert df.schema == contract.QUARANTINE_SCHEMA
    got = {r["origin"]: r for r in collect(df)}
    bad = {case for case, _ in PIN_CASES if rows(cleaned, "pin")[case]["_reason"] is not None}
    assert set(got) == bad
    row = got["bad count 'abc'"]
    assert (row["source"], row["kind"], row["reason"], row["raw"]) == (
        "test.pin", "pin", "follower_count 'abc' is not a count", pin(follower_count="abc"))
    assert all(isinstance(r["quarantined_at"], dt.datetime) for r in got.values())
    # nothing is lost: every record is either cleaned or quarantined
    assert cleaned_rows("pin", cleaned["pin"][0]).count() + len(got) == len(PIN_CASES)


def test_parse_records_keeps_fields_as_received(spark):
    df = parse_records("pin", records(spark, [("o", pin(follower_count=" 26k ", index=12)), ("bad", "{")]))
    assert df.columns == [*contract.SOURCE_COLUMNS[contract.SOURCE_PIN_TABLE], "_reason", "_raw", "_source",
                          "_origin", "_seq"]
    got = {r["_origin"]: r for r in collect(df)}
    assert (got["o"]["index"], got["o"]["follower_count"], got["o"]["downloaded"], got["o"]["_reason"]) == (
        "12", " 26k ", "1", None)
    assert got["bad"]["_reason"] == "malformed JSON"


def test_parse_records_rejects_clashing_columns(spark):
    df = records(spark, [("o", pin())]).withColumn("_reason", F.lit("x"))
    with pytest.raises(ValueError, match="_reason"):
        parse_records("pin", df)


def test_clean_is_independent_of_the_session_time_zone(spark):
    df = records(spark, [("t", geo(timestamp="2022-12-31T23:30:00"))])
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        got = collect(clean("geo", df).select("timestamp"))
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert got == [{"timestamp": dt.datetime(2022, 12, 31, 23, 30)}]


def test_latest_per_key_orders_then_breaks_ties_on_the_whole_row(spark):
    df = spark.createDataFrame(
        [(1, "a", 1), (1, "b", 3), (1, "c", 2),      # seq 3 wins
         (2, "z", 5), (2, "y", 5), (2, "x", None),   # tie on seq: smallest row wins; null seq loses
         (3, "only", None)],
        "ind int, v string, seq int")
    want = [{"ind": 1, "v": "b", "seq": 3}, {"ind": 2, "v": "y", "seq": 5}, {"ind": 3, "v": "only", "seq": None}]
    for variant in (df, df.repartition(3, "v"), df.orderBy(F.col("v").desc()).coalesce(1)):
        assert collect(latest_per_key(variant, order_by=["seq"]).orderBy("ind")) == want
    # without an ordering, the whole row decides
    assert collect(latest_per_key(df).orderBy("ind")) == [
        {"ind": 1, "v": "a", "seq": 1}, {"ind": 2, "v": "x", "seq": None}, {"ind": 3, "v": "only", "seq": None}]
    by_v = collect(latest_per_key(df, key="v", order_by=[F.col("ind")]).orderBy("v"))
    assert [r["v"] for r in by_v] == ["a", "b", "c", "only", "x", "y", "z"]
