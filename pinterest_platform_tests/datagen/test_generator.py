"""The synthetic source database holds everything DATA_CONTRACT.md §1 promises, on SQLite and on MariaDB."""

from __future__ import annotations

import argparse
import collections
import re
import sqlite3
import time
import uuid
from datetime import datetime

import pytest
import sqlalchemy as sa

from pinterest_platform import contract
from pinterest_platform.datagen import (
    SourceNotEmptyError,
    generator,
    seed_source_database,
    source_engine,
    source_tables,
)
from pinterest_platform.datagen.generator import generate_events

PIN, GEO, USER = contract.SOURCE_PIN_TABLE, contract.SOURCE_GEO_TABLE, contract.SOURCE_USER_TABLE
STORY_ROW = {
    "title": "No Title Data Available",
    "description": "No description available Story format",
    "poster_name": "User Info Error",
    "follower_count": "User Info Error",
    "tag_list": "N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e",
    "is_image_or_video": "multi-video(story page format)",
    "image_src": "Image src error.",
    "downloaded": 0,
}
FOLLOWERS = re.compile(r"^(0|[1-9]\d{0,2}|[1-9]\d{0,2}(\.\d)?[kM])$")
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")


def read_tables(url: str) -> dict[str, list[dict]]:
    """Every row of the three tables, in key order, as dicts (how the emulator reads them)."""
    tables = source_tables()
    engine = source_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: [dict(r._mapping) for r in conn.execute(
                    sa.select(table).order_by(table.c[contract.SOURCE_KEY[name]]))]
                for name, table in tables.items()
            }
    finally:
        engine.dispose()


def seeded(tmp_path, events: int, seed: int = 0, name: str = "source.db") -> tuple[str, dict[str, list[dict]]]:
    url = f"sqlite:///{tmp_path / name}"
    counts = seed_source_database(url, events, seed=seed, progress=False)
    assert counts == {PIN: events, GEO: events, USER: events}
    return url, read_tables(url)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """200 events: the smallest size at which every special case must already be present."""
    return seeded(tmp_path_factory.mktemp("small"), 200)[1]


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    return seeded(tmp_path_factory.mktemp("medium"), 3_000, seed=11)[1]


def check_faithful(rows: dict[str, list[dict]], events: int) -> None:
    """Every §1 property that must hold at any size from 200 events up (shared by SQLite and MariaDB)."""
    pins, geos, users = rows[PIN], rows[GEO], rows[USER]
    assert len(pins) == len(geos) == len(users) == events
    assert [list(r) for r in pins[:1]] == [contract.SOURCE_COLUMNS[PIN]]
    assert [list(r) for r in geos[:1]] == [contract.SOURCE_COLUMNS[GEO]]
    assert [list(r) for r in users[:1]] == [contract.SOURCE_COLUMNS[USER]]

    # every placeholder in its column
    for column, placeholders in contract.PLACEHOLDERS.items():
        values = {r[column] for r in pins}
        for placeholder in placeholders:
            assert placeholder in values, (column, placeholder)

    # all-placeholder story rows, exactly
    stories = [r for r in pins if r["downloaded"] == 0]
    assert stories
    for row in stories:
        assert {k: row[k] for k in STORY_ROW} == STORY_ROW
        assert row["category"] in contract.CATEGORIES
        assert row["save_location"] == f"Local save in /data/{row['category']}"
    assert all(r["downloaded"] == 1 for r in pins if r["title"] != STORY_ROW["title"]
               or r["image_src"] != STORY_ROW["image_src"])

    # pin columns
    assert {r["is_image_or_video"] for r in pins} == set(contract.MEDIA_TYPES)
    assert {r["category"] for r in pins} <= set(contract.CATEGORIES)
    for row in pins:
        assert row["save_location"] == f"{contract.SAVE_LOCATION_PREFIX}/data/{row['category']}"
        assert row["image_src"] == "Image src error." or row["image_src"].startswith("https://i.pinimg.com/")
        assert uuid.UUID(row["unique_id"]).version == 4 and str(uuid.UUID(row["unique_id"])) == row["unique_id"]
        assert row["follower_count"] == "User Info Error" or FOLLOWERS.match(row["follower_count"]), row
        assert (row["poster_name"] == "User Info Error") == (row["follower_count"] == "User Info Error")
        assert row["downloaded"] in (0, 1)
    assert len({r["unique_id"] for r in pins}) == events
    counts = {r["follower_count"] for r in pins}
    assert "0" in counts
    assert any(re.fullmatch(r"[1-9]\d{0,2}", c) for c in counts)       # like 437
    assert any(re.fullmatch(r"\d+k", c) for c in counts)               # like 26k
    assert any(re.fullmatch(r"\d+M", c) for c in counts)               # like 6M
    assert any(re.fullmatch(r"\d+\.\d[kM]", c) for c in counts)        # like 1.5k
    names = {r["poster_name"] for r in pins}
    assert any(n.endswith(" ") for n in names)
    assert any(EMOJI.search(n) for n in names)
    assert any("|" in n for n in names)
    assert max(len(r["description"]) for r in pins) >= 500

    # the same poster (name + follower count) posts several events
    posters = collections.Counter((r["poster_name"], r["follower_count"]) for r in pins
                                  if r["poster_name"] != "User Info Error")
    assert posters.most_common(1)[0][1] >= 2
    assert sum(1 for n in posters.values() if n >= 2) >= 3

    # geolocation
    lo, hi = datetime(2017, 10, 1), datetime(2022, 11, 1)
    for row in geos:
        assert isinstance(row["timestamp"], datetime) and lo <= row["timestamp"] < hi
        assert row["timestamp"].microsecond == 0
        assert -90 <= row["latitude"] <= 90 and -180 <= row["longitude"] <= 180
        assert row["country"]
    countries = {r["country"] for r in geos}
    assert {"Cote d'Ivoire", "Antarctica (the territory South of 60 deg S)"} <= countries
    # full double precision: not rounded to a handful of decimals
    assert sum(1 for r in geos if len(repr(r["latitude"]).split(".")[-1]) >= 10) > events // 2

    # users: the same person under several ind values, one user row per event
    lo, hi = datetime(2015, 10, 1), datetime(2017, 11, 1)
    for row in users:
        assert 20 <= row["age"] <= 59
        assert isinstance(row["date_joined"], datetime) and lo <= row["date_joined"] < hi
    people = collections.Counter((r["first_name"], r["last_name"], r["age"], r["date_joined"]) for r in users)
    assert people.most_common(1)[0][1] >= 3
    assert sum(1 for n in people.values() if n >= 2) >= 3

    # one key per event, shared by the three tables, increasing with gaps
    keys = [r["index"] for r in pins]
    assert keys == [r["ind"] for r in geos] == [r["ind"] for r in users]
    assert keys == sorted(set(keys)) and keys[0] >= 1
    assert keys[-1] > events  # not contiguous


# --- SQLite ---------------------------------------------------------------------------------------

def test_small_data_set_is_faithful(small):
    check_faithful(small, 200)


def test_medium_data_set_is_faithful(medium):
    check_faithful(medium, 3_000)
    assert {r["category"] for r in medium[PIN]} == set(contract.CATEGORIES)
    stories = sum(1 for r in medium[PIN] if r["downloaded"] == 0)
    assert 0.003 < stories / 3_000 < 0.05


@pytest.mark.parametrize("seed", range(8))
def test_every_seed_is_faithful_at_200_events(seed):
    generated = list(generate_events(200, seed=seed))
    check_faithful({PIN: [p for p, _, _ in generated], GEO: [g for _, g, _ in generated],
                    USER: [u for _, _, u in generated]}, 200)


@pytest.mark.parametrize("events", [1, 10, 57])
def test_counts_match_events_at_tiny_sizes(tmp_path, events):
    _, rows = seeded(tmp_path, events)
    assert {name: len(r) for name, r in rows.items()} == {PIN: events, GEO: events, USER: events}


def test_zero_events_leaves_empty_tables(tmp_path):
    _, rows = seeded(tmp_path, 0)
    assert rows == {PIN: [], GEO: [], USER: []}


def test_schema_follows_the_contract(tmp_path):
    url, _ = seeded(tmp_path, 5)
    inspector = sa.inspect(source_engine(url))
    for table, columns in contract.SOURCE_COLUMNS.items():
        described = inspector.get_columns(table)
        assert [c["name"] for c in described] == columns
    types = {c["name"]: str(c["type"]) for c in inspector.get_columns(PIN)}
    assert types["follower_count"] == "TEXT" and types["index"] == "INTEGER"
    geo_types = {c["name"]: str(c["type"]) for c in inspector.get_columns(GEO)}
    assert geo_types["timestamp"] == "DATETIME" and geo_types["latitude"] == "DOUBLE"


def test_sqlite_uses_wal_and_stores_wire_format_datetimes(tmp_path):
    seeded(tmp_path, 20)
    with sqlite3.connect(tmp_path / "source.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stamp = conn.execute("SELECT timestamp FROM geolocation_data LIMIT 1").fetchone()[0]
        joined = conn.execute("SELECT date_joined FROM user_data LIMIT 1").fetchone()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", stamp)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", joined)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    _, first = seeded(tmp_path, 400, seed=5, name="a.db")
    _, again = seeded(tmp_path, 400, seed=5, name="b.db")
    _, other = seeded(tmp_path, 400, seed=6, name="c.db")
    assert first == again
    assert first[PIN] != other[PIN] and first[GEO] != other[GEO] and first[USER] != other[USER]
    assert not {r["unique_id"] for r in first[PIN]} & {r["unique_id"] for r in other[PIN]}


def test_rows_read_back_equal_the_generated_ones(tmp_path):
    _, rows = seeded(tmp_path, 1_500, seed=2)
    generated = list(generate_events(1_500, seed=2))
    assert rows[PIN] == [p for p, _, _ in generated]
    assert rows[GEO] == [g for _, g, _ in generated]
    assert rows[USER] == [u for _, _, u in generated]


def test_generation_is_prefix_stable():
    shorter = list(generate_events(1_234, seed=3))
    longer = list(generate_events(2_600, seed=3))
    assert shorter == longer[:1_234]


def test_insert_chunking_does_not_change_the_data(tmp_path, monkeypatch):
    _, default = seeded(tmp_path, 700, seed=4, name="default.db")
    monkeypatch.setattr(generator, "CHUNK_SIZE", 33)
    _, chunked = seeded(tmp_path, 700, seed=4, name="chunked.db")
    assert chunked == default


def test_twenty_thousand_events_in_chunks_are_fast(tmp_path):
    started = time.monotonic()
    counts = seed_source_database(f"sqlite:///{tmp_path / 'big.db'}", 20_000, seed=9, progress=False)
    elapsed = time.monotonic() - started
    assert counts == {PIN: 20_000, GEO: 20_000, USER: 20_000}
    assert 20_000 > generator.CHUNK_SIZE  # really several chunks
    assert elapsed < 20, f"20,000 events took {elapsed:.1f} s"


def test_replace_recreates_and_no_replace_refuses_to_append(tmp_path):
    url, _ = seeded(tmp_path, 50, seed=1)
    with pytest.raises(SourceNotEmptyError, match="already holds rows .*left untouched"):
        seed_source_database(url, 10, progress=False)  # never replaced unless asked
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 50, GEO: 50, USER: 50}
    assert seed_source_database(url, 30, seed=2, progress=False, replace=True) == {PIN: 30, GEO: 30, USER: 30}
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 30, GEO: 30, USER: 30}


def test_negative_events_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        seed_source_database(f"sqlite:///{tmp_path / 'x.db'}", -1, progress=False)


def test_seed_command_prints_a_summary(tmp_path, capsys):
    from pinterest_platform.datagen.cli_seed import seed_command

    url = f"sqlite:///{tmp_path / 'cli' / 'source.db'}"  # parent folder does not exist yet
    args = argparse.Namespace(events=120, seed=3, db_url=url, no_progress=True)
    assert seed_command(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "120 events" in out[0] and url in out[0] and "pinterest_data=120" in out[0]


def test_seed_command_masks_the_password_of_an_unreachable_server(capsys):
    from pinterest_platform.datagen.cli_seed import seed_command

    args = argparse.Namespace(events=10, seed=0, db_url="mysql+pymysql://u:s3cret@127.0.0.1:1/db",
                              no_progress=True)
    assert seed_command(args) == 1
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err and "***" in captured.err


def test_source_seed_asset_reports_counts(tmp_path):
    import dagster as dg

    from pinterest_platform.assets.source import SOURCE_TABLE_SPECS, SourceSeedConfig, source_seed
    from pinterest_platform.resources.source_db import SqliteSourceDatabase

    url = f"sqlite:///{tmp_path / 'asset.db'}"
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [source_seed, *SOURCE_TABLE_SPECS], selection=[source_seed], instance=instance,
        resources={"source_db": SqliteSourceDatabase(url=url)},
        run_config=dg.RunConfig({"source__seed": SourceSeedConfig(events=250, seed=1)}),
    )
    assert result.success
    metadata = {m.asset_key: m.materialization.metadata for m in result.get_asset_materialization_events()}
    seed_meta = metadata[dg.AssetKey(["source", "seed"])]
    assert seed_meta["dagster/row_count"].value == 750
    assert seed_meta[f"rows/{PIN}"].value == 250
    for table in contract.SOURCE_COLUMNS:
        assert metadata[dg.AssetKey(["source", table])]["dagster/row_count"].value == 250
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 250, GEO: 250, USER: 250}
    assert [s.key for s in SOURCE_TABLE_SPECS] == [dg.AssetKey(["source", t]) for t in contract.SOURCE_COLUMNS]
    assert all(s.group_name == "source" for s in SOURCE_TABLE_SPECS)


def test_seed_asset_keeps_a_source_that_holds_rows(tmp_path):
    """"Materialize all" runs the seed with its default config: it must never erase what is there."""
    import dagster as dg

    from pinterest_platform.assets.source import SOURCE_TABLE_SPECS, SourceSeedConfig, source_seed
    from pinterest_platform.resources.source_db import SqliteSourceDatabase

    url, _ = seeded(tmp_path, 40, seed=4)
    before = read_tables(url)

    def materialize(config: SourceSeedConfig):
        result = dg.materialize([source_seed, *SOURCE_TABLE_SPECS], selection=[source_seed],
                                instance=dg.DagsterInstance.ephemeral(),
                                resources={"source_db": SqliteSourceDatabase(url=url)},
                                run_config=dg.RunConfig({"source__seed": config}))
        assert result.success
        return result.asset_materializations_for_node("source__seed")[-1].metadata

    kept = materialize(SourceSeedConfig(events=10, seed=9))
    assert kept["seeded"].value is False and kept["dagster/row_count"].value == 120
    assert read_tables(url) == before
    replaced = materialize(SourceSeedConfig(events=10, seed=9, replace=True))
    assert replaced["seeded"].value is True
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 10, GEO: 10, USER: 10}


def test_seed_command_refuses_a_non_empty_source_unless_replace(tmp_path, capsys):
    from pinterest_platform.datagen.cli_seed import seed_command

    url, _ = seeded(tmp_path, 30, seed=1)
    args = argparse.Namespace(events=5, seed=0, db_url=url, no_progress=True, replace=False)
    assert seed_command(args) == 1
    err = capsys.readouterr().err
    assert "already holds rows" in err and "--replace" in err
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 30, GEO: 30, USER: 30}
    args.replace = True
    assert seed_command(args) == 0
    assert {n: len(r) for n, r in read_tables(url).items()} == {PIN: 5, GEO: 5, USER: 5}


def test_seed_command_refuses_the_aws_profiles_source(monkeypatch, capsys):
    from pinterest_platform.datagen.cli_seed import seed_command

    monkeypatch.setenv("PINTEREST_ENV", "aws")
    monkeypatch.setenv("PINTEREST_SOURCE_DB_URL", "mysql+pymysql://u:p@127.0.0.1:1/prod")
    args = argparse.Namespace(events=5, seed=0, db_url=None, no_progress=True, replace=True)
    assert seed_command(args) == 2
    assert "refusing under PINTEREST_ENV=aws" in capsys.readouterr().err


# --- MariaDB --------------------------------------------------------------------------------------

@pytest.mark.mysql
def test_mariadb_data_set_is_faithful(mariadb_url):
    counts = seed_source_database(mariadb_url, 500, seed=0, progress=False, replace=True)
    assert counts == {PIN: 500, GEO: 500, USER: 500}
    rows = read_tables(mariadb_url)
    check_faithful(rows, 500)
    # exact round trip: emoji (4-byte UTF-8), trailing blanks, doubles and datetimes all survive
    generated = list(generate_events(500, seed=0))
    assert rows[PIN] == [p for p, _, _ in generated]
    assert rows[GEO] == [g for _, g, _ in generated]
    assert rows[USER] == [u for _, _, u in generated]
    assert any(EMOJI.search(r["poster_name"]) for r in rows[PIN])


@pytest.mark.mysql
def test_mariadb_schema_and_reseed(mariadb_url):
    seed_source_database(mariadb_url, 40, seed=1, progress=False, replace=True)
    assert seed_source_database(mariadb_url, 25, seed=2, progress=False, replace=True) == {PIN: 25, GEO: 25, USER: 25}
    engine = source_engine(mariadb_url.replace("?charset=utf8mb4", ""))
    try:
        assert engine.url.query["charset"] == "utf8mb4"  # added when the URL lacks it
        inspector = sa.inspect(engine)
        for table, columns in contract.SOURCE_COLUMNS.items():
            assert [c["name"] for c in inspector.get_columns(table)] == columns
        types = {c["name"]: str(c["type"]) for c in inspector.get_columns(PIN)}
        assert types["follower_count"] == "TEXT"
        geo_types = {c["name"]: str(c["type"]) for c in inspector.get_columns(GEO)}
        assert geo_types["latitude"] == "DOUBLE" and geo_types["timestamp"] == "DATETIME"
        with engine.connect() as conn:
            charsets = conn.execute(sa.text(
                "SELECT table_name, table_collation FROM information_schema.tables WHERE table_schema = DATABASE()"
            )).all()
        assert len(charsets) == 3 and all(c.startswith("utf8mb4") for _, c in charsets)
    finally:
        engine.dispose()
