"""Faults, as a user's machine meets them: `kill -9` of `run batch` while the raw sink writes and while
cleaning writes Delta, `kill -9` of `run stream` during a micro-batch, and the Kafka broker killed while
`emulate` posts. Each is followed by the recovery a user would do (run the same command again, `stack up`,
`emulate --resume`) and a comparison of every table with the plain-Python reference computed from the
source database: the result a clean run on the same data gives. No loss, no duplicate.

Every step is a CLI subprocess with a bounded timeout; the tests run in CI (`-m faults` selects them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pinterest_platform import contract
from pinterest_platform_tests import reference
from pinterest_platform_tests.compare import normalize
from pinterest_platform_tests.e2e.test_batch_pipeline import cli, sort_key, source_rows, table_rows

pytestmark = pytest.mark.faults

EVENTS = 1500
CLI = [sys.executable, "-m", "pinterest_platform.cli"]


def environment(home: Path, stack: dict | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINTEREST_")}
    env.update({
        "PINTEREST_ENV": "local", "PINTEREST_STATE_DIR": str(home / "state"),
        "PINTEREST_LAKE_ROOT": str(home / "lake"), "PINTEREST_SOURCE_DB_URL": f"sqlite:///{home / 'source.db'}",
        "PINTEREST_TOPIC_PREFIX": f"f{uuid.uuid4().hex[:8]}", "DAGSTER_HOME": str(home / "dagster_home"),
        **extra,
    })
    if stack is not None:
        env.update(KAFKA_BOOTSTRAP_SERVERS=stack["kafka_bootstrap_servers"], AWS_ENDPOINT_URL=stack["aws_endpoint_url"])
    return env


def kill_when(command: list[str], env: dict, ready, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Start `command`, SIGKILL its whole process group (Spark's JVM too) once `ready()` is true."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"{' '.join(command[3:])} ended (exit {process.returncode}) before {what}:\n"
                            f"{process.stdout.read()}")
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"not killed mid-way (exit {process.returncode}):\n{output}"
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def assert_batch_tables_match_reference(env: dict) -> None:
    lake = Path(env["PINTEREST_LAKE_ROOT"])
    source = source_rows(env["PINTEREST_SOURCE_DB_URL"])
    cleaned = {kind: reference.clean_source_rows(kind, source[kind])[0] for kind in contract.EVENT_KINDS}
    analytics = reference.analytics(cleaned["pin"], cleaned["geo"], cleaned["user"])

    def norm(rows):
        return sorted(({k: normalize(v) for k, v in r.items()} for r in rows), key=sort_key)

    for kind in contract.EVENT_KINDS:
        assert sorted(table_rows(lake, kind), key=sort_key) == norm(cleaned[kind]), kind
    for name in contract.ANALYTICS_TABLES:
        assert sorted(table_rows(lake, name), key=sort_key) == norm(analytics[name]), name


def raw_files(env: dict) -> list[Path]:
    return sorted((Path(env["PINTEREST_LAKE_ROOT"]) / contract.TOPICS_DIR).rglob("*.json"))


def test_kill_9_while_the_raw_sink_writes(local_stack, tmp_path):
    # small files, so the sink is still writing when the first one lands
    env = environment(tmp_path, local_stack, PINTEREST_RAW_FLUSH_SIZE="10")
    cli(env, "seed", "--events", str(EVENTS), "--seed", "41", "--no-progress")
    cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    kill_when([*CLI, "run", "batch"], env, lambda: len(raw_files(env)) >= 3, "the third raw file")
    partial = len(raw_files(env))
    again = cli(env, "run", "batch")
    assert "succeeded" in again.stdout
    assert len(raw_files(env)) > partial
    assert_batch_tables_match_reference(env)
    lines = sum(p.read_bytes().count(b"\n") for p in raw_files(env))
    assert lines == 3 * EVENTS  # every record landed once, none twice


def test_kill_9_while_cleaning_writes_delta(local_stack, tmp_path):
    env = environment(tmp_path, local_stack)
    cli(env, "seed", "--events", str(EVENTS), "--seed", "42", "--no-progress")
    cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    lake = Path(env["PINTEREST_LAKE_ROOT"]) / contract.TABLES_DIR
    # the kinds are cleaned at once; pin's first table commit means the cleaning job is writing
    first_commit = lake / "pin" / "_delta_log" / "00000000000000000000.json"
    kill_when([*CLI, "run", "batch"], env, first_commit.exists, "the first commit of pin")
    # killed inside the cleaning job: its files are not recorded as cleaned, the analytics never ran
    assert not list((lake.parent / "_manifests" / "raw_files").rglob("*.json"))
    assert not (lake / "median_followers_by_age_group").exists()
    again = cli(env, "run", "batch")
    assert "succeeded" in again.stdout
    assert_batch_tables_match_reference(env)


def test_kill_9_during_a_streaming_micro_batch(local_stack, tmp_path):
    env = environment(tmp_path, local_stack)
    cli(env, "seed", "--events", str(EVENTS), "--seed", "43", "--no-progress")
    cli(env, "emulate", "--mode", "stream", "--all", "--no-progress")
    prefix = env["PINTEREST_TOPIC_PREFIX"]
    tables = Path(env["PINTEREST_LAKE_ROOT"]) / contract.TABLES_DIR
    checkpoints = Path(env["PINTEREST_LAKE_ROOT"]) / "checkpoints"

    def a_batch_is_in_flight() -> bool:
        # a logged offset without its commit: Spark is inside a micro-batch
        return any(p.parent.name == "offsets" and p.name.isdigit()
                   and not (p.parent.parent / "commits" / p.name).exists()
                   for p in checkpoints.rglob("*") if p.is_file())

    kill_when([*CLI, "run", "stream", "--available-now"], env, a_batch_is_in_flight, "a micro-batch in flight")
    cli(env, "run", "stream", "--available-now")
    source = source_rows(env["PINTEREST_SOURCE_DB_URL"])
    for kind in contract.EVENT_KINDS:
        expected = reference.clean_source_rows(kind, source[kind])[0]
        got = table_rows(tables.parent, contract.streaming_table_name(prefix, kind))
        assert sorted(got, key=sort_key) == sorted(({k: normalize(v) for k, v in r.items()} for r in expected),
                                                   key=sort_key), kind


def test_broker_killed_while_emulate_posts(tmp_path):
    """The broker of a stack of this test's own dies mid-post and `stack up` brings it back on its own log;
    emulate either rides it out (its producer retries) or fails and is resumed with `--resume`. The batch
    tables are then exact: nothing acknowledged was lost, and a record posted twice is collapsed."""
    env = environment(tmp_path, None)
    cli(env, "stack", "up")
    try:
        cli(env, "seed", "--events", str(EVENTS), "--seed", "44", "--no-progress")
        state = json.loads((tmp_path / "state" / "stack" / "state.json").read_text())
        broker_pid = state["components"]["kafka"]["pid"]
        cursor = tmp_path / "state" / "emulator" / f"cursor-{env['PINTEREST_TOPIC_PREFIX']}-batch.json"
        emulate = subprocess.Popen([*CLI, "emulate", "--mode", "batch", "--all", "--rate", "300", "--no-progress"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not cursor.exists():  # a page has been acknowledged
            assert emulate.poll() is None, emulate.stdout.read()
            assert time.monotonic() < deadline, "emulate acknowledged nothing"
            time.sleep(0.05)
        os.kill(broker_pid, signal.SIGKILL)
        time.sleep(3)
        assert emulate.poll() is None or emulate.returncode != 0, "emulate finished while its broker was dead"
        cli(env, "stack", "up")  # the broker restarts on its own log
        output, _ = emulate.communicate(timeout=400)
        if emulate.returncode != 0:
            cli(env, "emulate", "--mode", "batch", "--all", "--resume", "--no-progress")
        assert "succeeded" in cli(env, "run", "batch").stdout
        assert_batch_tables_match_reference(env)
    finally:
        subprocess.run([*CLI, "stack", "down"], env=env, capture_output=True, timeout=120)
