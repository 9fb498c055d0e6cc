"""Analytics (DATA_CONTRACT.md §4) on small hand-made tables whose answers are worked out below, plus a
seeded random cross-check of cleaning and analytics against the plain-Python reference."""

from __future__ import annotations

import datetime as dt
import functools
import random
import uuid

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pinterest_platform import contract
from pinterest_platform.transforms.analytics import compute_all, top_poster_by_country, users_joined_by_year
from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key, quarantine_rows
from pinterest_platform_tests import reference
from pinterest_platform_tests.transforms import collect, records

UTC = dt.timezone.utc


def at(text: str | None) -> dt.datetime | None:
    # aware datetimes: PySpark would read naive ones in the machine's time zone
    return None if text is None else dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def pin(ind, category, poster_name, follower_count):
    return (ind, f"uid-{ind}", "title", "description", follower_count, poster_name, "tags", "image",
            "https://i.pinimg.com/x.jpg", f"/data/{category}", category)


def geo(ind, country, timestamp):
    return (ind, country, [1.5, -2.25], at(timestamp))


def user(ind, user_name, age, date_joined):
    return (ind, user_name, age, at(date_joined))


# posts with a geo row: inds 1-12
GEO_PINS = [
    pin(1, "art", "Amy", 100), pin(2, "art", "Zed", 300), pin(3, "beauty", "Amy", 300), pin(4, "beauty", "Bob", 50),
    pin(5, "travel", "Bob", 500), pin(6, "travel", None, 900), pin(7, None, "Cat", 500), pin(8, "quotes", "Dan", None),
    pin(9, "quotes", "Eve", 200), pin(10, "vehicles", "Fay", None),
    pin(11, "art", "Gus", 10_000),  # no geo row: in no geo output
]
GEOS = [
    geo(1, "A", "2018-01-01 00:00:00"), geo(2, "A", "2018-06-01 00:00:00"), geo(3, "A", "2019-01-01 00:00:00"),
    geo(4, "A", "2022-12-31 23:59:59"), geo(5, "B", "2017-12-31 23:59:59"), geo(6, "B", "2023-01-01 00:00:00"),
    geo(7, "C", "2018-03-03 00:00:00"), geo(8, None, "2018-04-04 00:00:00"), geo(9, None, "2022-01-01 00:00:00"),
    geo(10, "D", None),
    geo(12, "E", "2020-05-05 00:00:00"),  # no pin row: in no output
]
# posts with a user row: inds 21-34; 35 is a user without a post
USER_PINS = [
    pin(21, "art", "p", 100), pin(22, "art", "p", 10), pin(23, "beauty", "p", 20), pin(24, "beauty", "p", 40),
    pin(25, "travel", "p", 5), pin(26, "travel", "p", 8), pin(27, "diy-and-crafts", "p", 1000),
    pin(28, "diy-and-crafts", "p", None), pin(29, "quotes", "p", 8), pin(30, "quotes", "p", None),
    pin(31, "art", "p", None), pin(32, None, "p", 30), pin(33, None, "p", 70), pin(34, "diy-and-crafts", "p", 60),
]
USERS = [
    user(21, "Ann Lee", 17, "2015-01-01 00:00:00"), user(22, "Ben Ng", 18, "2015-03-01 00:00:00"),
    user(23, "Cy Po", 24, "2016-01-01 00:00:00"), user(24, "Di Qu", 24, "2014-12-31 23:59:59"),
    user(25, "Ed Ra", 25, "2020-12-31 23:59:59"), user(26, "Flo Sa", 35, "2021-01-01 00:00:00"),
    user(27, "Gil Ta", 36, "2017-05-05 00:00:00"), user(28, "Gil Ta", 36, "2017-05-05 00:00:00"),
    user(29, "Hal Ub", 50, "2017-05-05 00:00:00"), user(30, "Ida Vo", 51, "2018-01-01 00:00:00"),
    user(31, None, 51, "2018-01-01 00:00:00"), user(32, "Jo Wu", None, "2019-01-01 00:00:00"),
    user(33, "Ann Lee", 17, "2015-01-01 00:00:00"), user(34, "Kim Xi", 40, None),
    user(35, "Hal Ub", 51, "2017-05-05 00:00:00"),
]

EXPECTED = {
    # A: art 2 and beauty 2 tie -> art; C's only post has no category; null country left out
    "popular_category_by_country": [
        {"country": "A", "category": "art", "category_count": 2},
        {"country": "B", "category": "travel", "category_count": 2},
        {"country": "D", "category": "vehicles", "category_count": 1}],
    # 2017 (ind 5) and 2023 (ind 6) are outside 2018..2022; 2022: beauty 1 and quotes 1 tie -> beauty
    "popular_category_by_year": [
        {"post_year": 2018, "category": "art", "category_count": 2},
        {"post_year": 2019, "category": "beauty", "category_count": 1},
        {"post_year": 2022, "category": "beauty", "category_count": 1}],
    # A: Amy 300 and Zed 300 tie -> Amy; B: the 900 poster has no name; D: Fay's count is unknown
    "top_poster_by_country": [
        {"country": "A", "poster_name": "Amy", "follower_count": 300},
        {"country": "B", "poster_name": "Bob", "follower_count": 500},
        {"country": "C", "poster_name": "Cat", "follower_count": 500}],
    # B and C tie at 500 -> B; Gus (10,000) has no geo row
    "top_country_by_followers": [{"country": "B", "follower_count": 500}],
    # ages 17 and null have no group; 36-50 counts the post of the user whose date_joined is unknown too
    "popular_category_by_age_group": [
        {"age_group": "+50", "category": "art", "category_count": 1},
        {"age_group": "18-24", "category": "beauty", "category_count": 2},
        {"age_group": "25-35", "category": "travel", "category_count": 2},
        {"age_group": "36-50", "category": "diy-and-crafts", "category_count": 3}],
    # 18-24: 10, 20, 40 (odd); 25-35: 5, 8 (even); 36-50: 8, 60, 1000 (1 null); +50: only nulls -> no row
    "median_followers_by_age_group": [
        {"age_group": "18-24", "median_follower_count": 20.0},
        {"age_group": "25-35", "median_follower_count": 6.5},
        {"age_group": "36-50", "median_follower_count": 60.0}],
    # distinct (user_name, age, date_joined): Ann Lee and Gil Ta twice count once, Hal Ub at two ages twice;
    # 2014 and 2021 are outside 2015..2020, Kim Xi has no date
    "users_joined_by_year": [
        {"post_year": 2015, "number_users_joined": 2}, {"post_year": 2016, "number_users_joined": 1},
        {"post_year": 2017, "number_users_joined": 3}, {"post_year": 2018, "number_users_joined": 2},
        {"post_year": 2019, "number_users_joined": 1}, {"post_year": 2020, "number_users_joined": 1}],
    # 2015: 10, 70, 100; 2017: 8, 1000 (and a null); 2018: only nulls -> no row
    "median_followers_by_join_year": [
        {"post_year": 2015, "median_follower_count": 70.0}, {"post_year": 2016, "median_follower_count": 20.0},
        {"post_year": 2017, "median_follower_count": 504.0}, {"post_year": 2019, "median_follower_count": 30.0},
        {"post_year": 2020, "median_follower_count": 5.0}],
    "median_followers_by_join_year_and_age_group": [
        {"age_group": "18-24", "post_year": 2015, "median_follower_count": 10.0},
        {"age_group": "18-24", "post_year": 2016, "median_follower_count": 20.0},
        {"age_group": "25-35", "post_year": 2020, "median_follower_count": 5.0},
        {"age_group": "36-50", "post_year": 2017, "median_follower_count": 504.0}],
}


def cleaned_tables(spark, pins, geos, users):
    return (spark.createDataFrame(pins, contract.CLEANED_SCHEMAS["pin"]),
            spark.createDataFrame(geos, contract.CLEANED_SCHEMAS["geo"]),
            spark.createDataFrame(users, contract.CLEANED_SCHEMAS["user"]))


@pytest.fixture(scope="module")
def tables(spark):
    return cleaned_tables(spark, GEO_PINS + USER_PINS, GEOS, USERS)


def by_key(df: DataFrame) -> list[dict]:
    """An output's rows sorted by its key columns, as the reference lists them."""
    keys = [c for c in df.columns if c in ("age_group", "post_year", "country")]
    return sorted(collect(df), key=lambda row: tuple(row[k] for k in keys))


@pytest.fixture(scope="module")
def outputs(tables):
    return {name: by_key(df) for name, df in compute_all(*tables).items()}


@pytest.mark.parametrize("name", contract.ANALYTICS_TABLES)
def test_output(outputs, name):
    assert outputs[name] == EXPECTED[name]


def test_outputs_have_exactly_the_contract_schemas(tables):
    results = compute_all(*tables)
    assert list(results) == list(contract.ANALYTICS_TABLES)
    for name, df in results.items():
        assert df.schema == contract.ANALYTICS_SCHEMAS[name], name


def as_dicts(kind: str, rows: list[tuple]) -> list[dict]:
    """Hand-made rows as the reference takes them: dicts, naive UTC datetimes."""
    def plain(value):
        return value.replace(tzinfo=None) if isinstance(value, dt.datetime) else value

    return [{c: plain(v) for c, v in zip(contract.CLEANED_COLUMNS[kind], row, strict=True)} for row in rows]


def test_reference_agrees_on_the_hand_made_tables(outputs):
    want = reference.analytics(as_dicts("pin", GEO_PINS + USER_PINS), as_dicts("geo", GEOS), as_dicts("user", USERS))
    assert want == outputs == EXPECTED


def test_top_posters_order_the_whole_bigint_range(spark):
    """The one aggregation ranks posters by the bitwise-not of their count: exact from the least bigint to
    the greatest, with ties to the name first in ascending order, as the per-output window ranks them."""
    least, greatest = -(2 ** 63), 2 ** 63 - 1
    pins = [pin(1, "art", "Low", least), pin(2, "art", "High", greatest), pin(3, "art", "Aaa", greatest),
            pin(4, "art", "Zero", 0), pin(5, "art", "Minus", -1), pin(6, "art", "Least", least),
            pin(7, "art", "Abe", least)]
    geos = [geo(1, "A", "2019-01-01 00:00:00"), geo(2, "A", "2019-01-01 00:00:00"),
            geo(3, "A", "2019-01-01 00:00:00"), geo(4, "B", "2019-01-01 00:00:00"),
            geo(5, "B", "2019-01-01 00:00:00"), geo(6, "C", "2019-01-01 00:00:00"),
            geo(7, "C", "2019-01-01 00:00:00")]
    tables = cleaned_tables(spark, pins, geos, [])
    results = compute_all(*tables)
    assert by_key(results["top_poster_by_country"]) == [
        {"country": "A", "poster_name": "Aaa", "follower_count": greatest},
        {"country": "B", "poster_name": "Zero", "follower_count": 0},
        {"country": "C", "poster_name": "Abe", "follower_count": least}]
    assert collect(results["top_country_by_followers"]) == [{"country": "A", "follower_count": greatest}]
    assert by_key(results["top_poster_by_country"]) == by_key(top_poster_by_country(tables[0], tables[1]))


def test_empty_inputs_give_empty_outputs(spark):
    results = compute_all(*cleaned_tables(spark, [], [], []))
    assert all(df.schema == contract.ANALYTICS_SCHEMAS[name] for name, df in results.items())
    # one Spark job for all nine: the names of the outputs that have rows
    names = functools.reduce(DataFrame.unionAll, [df.select(F.lit(name)) for name, df in results.items()])
    assert names.collect() == []


def test_years_are_utc_whatever_the_session_time_zone(spark, tables):
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        got = by_key(users_joined_by_year(tables[2]))
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert got == EXPECTED["users_joined_by_year"]


# --- seeded random cross-check against the reference ------------------------------------------------

COUNTRIES = ["Cote d'Ivoire", "Antarctica (the territory South of 60 deg S)", "Albania", "Chile", "Fiji", "Peru"]
POSTERS = ["Tire Buyer", "Bob ", "🎨 Art | Co", "Ann", "Zed", "User Info Error", "", "  "]
FOLLOWERS = ["0", "437", "26k", "6M", "1.5k", "2.5M", "3K", "2m", " 12k ", "1.2345k", "", "User Info Error",
             "abc", "1,234"]
FIRST = ["Abigail", "Ben", "Zoë", "User Info Error", ""]
LAST = ["Ali", "Ng", "O'Brien ", "Lee"]


def _moment(rng: random.Random, first_year: int, last_year: int):
    start = dt.datetime(first_year, 1, 1)
    moment = start + dt.timedelta(seconds=rng.randrange(int((dt.datetime(last_year + 1, 1, 1) - start).total_seconds())))
    style = rng.random()
    if style < 0.4:
        return moment  # a datetime object: sent as `2020-08-28T03:52:47`
    if style < 0.8:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if style < 0.95:
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{rng.randrange(1000):03d}"
    return rng.choice(["", "User Info Error", "not a date", "2020-02-30 00:00:00"])


def random_source_rows(seed: int, events: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    rows = {"pin": [], "geo": [], "user": []}
    for ind in range(1, events + 1):
        category = rng.choice(contract.CATEGORIES)
        story = rng.random() < 0.05
        rows["pin"].append({
            "index": ind if rng.random() < 0.9 else str(ind),
            "unique_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "title": "No Title Data Available" if story else rng.choice(["TireBuyer", "Untitled", " ", "Cakes"]),
            "description": rng.choice(["No description available Story format", "No description available",
                                       "Nice", ""]),
            "poster_name": "User Info Error" if story else rng.choice(POSTERS),
            "follower_count": "User Info Error" if story else rng.choice(
                [*FOLLOWERS, f"{rng.randrange(1000)}", f"{rng.randrange(100)}k"]),
            "tag_list": "N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e" if story else "a,b",
            "is_image_or_video": "multi-video(story page format)" if story else rng.choice(["image", "video"]),
            "image_src": "Image src error." if story else "https://i.pinimg.com/x.jpg",
            "downloaded": 0 if story else 1,
            "save_location": f"Local save in /data/{category}",
            "category": category if rng.random() < 0.95 else rng.choice(["", "Untitled"]),
        })
        latitude, longitude = rng.uniform(-90, 90), rng.uniform(-180, 180)
        rows["geo"].append({
            "ind": ind, "timestamp": _moment(rng, 2016, 2024),
            "latitude": rng.choice([latitude, latitude, str(latitude), None, "north"]),
            "longitude": longitude if rng.random() < 0.97 else rng.choice(["", None]),
            "country": rng.choice([*COUNTRIES, ""]) if rng.random() < 0.95 else None,
        })
        rows["user"].append({
            "ind": ind, "first_name": rng.choice(FIRST), "last_name": rng.choice(LAST),
            "age": rng.choice([rng.randint(15, 60), rng.randint(15, 60), str(rng.randint(15, 60)), None, "x"]),
            "date_joined": _moment(rng, 2013, 2022),
        })
    return rows


def wire_texts(rng: random.Random, rows: list[dict]) -> list[str]:
    """The rows as received: shuffled, 10% redelivered, 5% re-posted changed, a few malformed."""
    texts = [reference.to_wire(r) for r in rows]
    texts += rng.sample(texts, len(texts) // 10)
    reposted = rng.sample(rows, len(rows) // 20)
    texts += [reference.to_wire({**r, rng.choice([k for k in r if k not in ("index", "ind")]): "  "})
              for r in reposted]
    texts += ['{"ind": 1', "", "[]", '{"a": 1} {"b": 2}']
    rng.shuffle(texts)
    return texts


def test_random_source_rows_match_the_reference(spark):
    rng = random.Random(7)
    source = random_source_rows(seed=7, events=100)
    spark_clean, reference_clean = {}, {}
    try:
        for kind in contract.EVENT_KINDS:
            texts = wire_texts(rng, source[kind])
            cleaned = clean(kind, records(spark, [(f"{kind}-{i}", t) for i, t in enumerate(texts)]))
            rows = cleaned_rows(kind, latest_per_key(cleaned.where(F.col("_reason").isNull()), order_by=["_seq"]))
            spark_clean[kind] = rows.cache()
            expected, quarantined = reference.clean_wire_values(kind, texts)
            reference_clean[kind] = expected
            assert collect(rows.orderBy("ind")) == expected, kind
            got_quarantine = collect(quarantine_rows(kind, cleaned).select("kind", "reason", "raw"))
            assert sorted(got_quarantine, key=str) == sorted(quarantined, key=str), kind
            assert 50 < len(expected) < 100 and len(quarantined) > 4, kind  # the data exercises both paths
        got = {name: by_key(df) for name, df in
               compute_all(spark_clean["pin"], spark_clean["geo"], spark_clean["user"]).items()}
    finally:
        for df in spark_clean.values():
            df.unpersist()
    want = reference.analytics(reference_clean["pin"], reference_clean["geo"], reference_clean["user"])
    assert got == want
    assert all(want[name] for name in contract.ANALYTICS_TABLES)
