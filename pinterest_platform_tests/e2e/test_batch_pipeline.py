"""End to end through the CLI a user runs: seed, emulate twice (redelivery), `run batch`, then compare
every cleaned and analytics table with answers computed independently in plain Python from the source
database (pinterest_platform_tests/reference.py). A second `run batch` with nothing new changes nothing."""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from pinterest_platform import contract
from pinterest_platform_tests import reference
from pinterest_platform_tests.compare import normalize

EVENTS = 400


def cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pinterest_platform.cli", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"`pinterest-platform {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}"
    return result


def source_rows(db_url: str) -> dict[str, list[dict]]:
    """The source tables as the emulator posts them (datetimes as ISO-8601 strings)."""
    from sqlalchemy import MetaData, select

    from pinterest_platform.datagen import source_engine, source_tables

    engine = source_engine(db_url)
    tables = source_tables(MetaData())
    out = {}
    with engine.connect() as conn:
        for kind in contract.EVENT_KINDS:
            name = contract.SOURCE_TABLE_OF[kind]
            table = tables[name] if isinstance(tables, dict) else tables.tables[name]
            rows = [dict(r._mapping) for r in conn.execute(select(table))]
            out[kind] = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()}
                         for r in rows]
    engine.dispose()
    return out


def table_rows(lake_root: Path, name: str) -> list[dict]:
    uri = str(lake_root / "tables" / name)
    assert DeltaTable.is_deltatable(uri), f"no Delta table at tables/{name}"
    rows = DeltaTable(uri).to_pyarrow_table().to_pylist()
    return [{k: normalize(v) for k, v in r.items()} for r in rows]


def sort_key(row: dict) -> tuple:
    return tuple("" if v is None else str(v) for v in row.values())


def cli_env(local_stack, home: Path, db: Path, prefix: str = "e2e") -> dict:
    """The environment of a user's shell for a lake, state and instance of their own under `home`."""
    return {
        **os.environ,
        "PINTEREST_ENV": "local",
        "PINTEREST_STATE_DIR": str(home / "state"),
        "PINTEREST_LAKE_ROOT": str(home / "lake"),
        "PINTEREST_SOURCE_DB_URL": f"sqlite:///{db}",
        "PINTEREST_TOPIC_PREFIX": f"{prefix}{uuid.uuid4().hex[:8]}",
        "KAFKA_BOOTSTRAP_SERVERS": local_stack["kafka_bootstrap_servers"],
        "AWS_ENDPOINT_URL": local_stack["aws_endpoint_url"],
        "DAGSTER_HOME": str(home / "dagster_home"),
    }


@pytest.fixture(scope="module")
def pipeline(local_stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e_batch")
    env = cli_env(local_stack, home, home / "source.db")
    cli(env, "seed", "--events", str(EVENTS), "--seed", "11", "--no-progress")
    for _ in range(2):  # the second posting is a redelivery of every event
        cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    first = cli(env, "run", "batch")
    return {"env": env, "lake": home / "lake", "db": env["PINTEREST_SOURCE_DB_URL"], "first": first}


def test_cleaned_tables_match_reference(pipeline):
    source = source_rows(pipeline["db"])
    for kind in contract.EVENT_KINDS:
        expected, quarantined = reference.clean_source_rows(kind, source[kind])
        got = table_rows(pipeline["lake"], kind)
        assert len(got) == EVENTS - len(quarantined), kind
        assert len({r["ind"] for r in got}) == len(got), f"duplicate ind in {kind}"
        expected = [{k: normalize(v) for k, v in r.items()} for r in expected]
        assert [list(r) for r in got[:1]] == [contract.CLEANED_COLUMNS[kind]]
        assert sorted(got, key=sort_key) == sorted(expected, key=sort_key), kind


def test_analytics_tables_match_reference(pipeline):
    source = source_rows(pipeline["db"])
    cleaned = {kind: reference.clean_source_rows(kind, source[kind])[0] for kind in contract.EVENT_KINDS}
    expected = reference.analytics(cleaned["pin"], cleaned["geo"], cleaned["user"])
    for name in contract.ANALYTICS_TABLES:
        got = table_rows(pipeline["lake"], name)
        want = [{k: normalize(v) for k, v in r.items()} for r in expected[name]]
        assert got and list(got[0]) == contract.ANALYTICS_SCHEMAS[name].fieldNames(), name
        assert sorted(got, key=sort_key) == sorted(want, key=sort_key), name
        for row in got:
            for value in row.values():
                assert not (isinstance(value, float) and math.isnan(value)), name


def test_contract_shape_tool_passes(pipeline):
    command = Path(sys.executable).parent / "pinterest-platform"
    result = subprocess.run([str(command), "validate", "--lake", str(pipeline["lake"])], env=pipeline["env"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in (*contract.EVENT_KINDS, *contract.ANALYTICS_TABLES):
        assert f"{name}: ok" in lines, result.stdout + result.stderr


def test_second_run_with_nothing_new_changes_nothing(pipeline):
    versions = {n: DeltaTable(str(pipeline["lake"] / "tables" / n)).version()
                for n in (*contract.EVENT_KINDS, *contract.ANALYTICS_TABLES)}
    second = cli(pipeline["env"], "run", "batch")
    assert "succeeded" in second.stdout
    after = {n: DeltaTable(str(pipeline["lake"] / "tables" / n)).version() for n in versions}
    assert after == versions


def test_redelivery_is_counted_not_duplicated(pipeline):
    """Every event was posted twice: the raw files hold both copies, the cleaned tables one."""
    raw_lines = 0
    for path in (pipeline["lake"] / "topics").rglob("*.json"):
        raw_lines += sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert raw_lines == 2 * EVENTS * len(contract.EVENT_KINDS)
    quarantine = pipeline["lake"] / "tables" / "quarantine"
    quarantined = len(DeltaTable(str(quarantine)).to_pyarrow_table()) if DeltaTable.is_deltatable(str(quarantine)) else 0
    cleaned = sum(len(table_rows(pipeline["lake"], k)) for k in contract.EVENT_KINDS)
    # the synthetic source has no unparseable rows, so everything is cleaned once
    assert quarantined == 0
    assert cleaned == EVENTS * len(contract.EVENT_KINDS)
