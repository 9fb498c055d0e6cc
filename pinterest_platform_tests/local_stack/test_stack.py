"""The local stack against real processes: health, idempotence, persistence, clean shutdown, clear errors.

These tests run their own stacks in their own state dirs, so the session `local_stack` is never disturbed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import KafkaError

from pinterest_platform.local_stack import LocalStack, procs
from pinterest_platform.resources.kafka import LocalKafkaResource


@pytest.fixture(scope="module")
def stack_env():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "AWS_ENDPOINT_URL", "PINTEREST_KAFKA_PORT",
                     "PINTEREST_KAFKA_CONTROLLER_PORT", "PINTEREST_MOTO_PORT"):
            mp.delenv(name, raising=False)
        yield mp


@pytest.fixture(scope="module")
def stack(stack_env, tmp_path_factory):
    stack = LocalStack(tmp_path_factory.mktemp("own_stack"))
    yield stack
    stack.down()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone for every purpose but still answers signal 0
    return procs.fingerprint(pid) is None


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    kafka = LocalKafkaResource(bootstrap_servers=bootstrap)
    kafka.ensure_topics([topic], partitions=1)
    producer = kafka.producer()
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def _consume_all(bootstrap: str, topic: str, group: str) -> list[bytes]:
    consumer = LocalKafkaResource(bootstrap_servers=bootstrap).consumer(group)
    consumer.subscribe([topic])
    values, deadline = [], time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(msg.error())
            values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_up_is_healthy_and_idempotent(stack):
    started = time.monotonic()
    endpoints = stack.up(timeout=60)
    print(f"\ncold stack up took {time.monotonic() - started:.1f} s")
    assert endpoints["kafka_bootstrap_servers"].startswith("127.0.0.1:")
    assert endpoints["aws_endpoint_url"].startswith("http://127.0.0.1:")

    status = stack.status()
    assert set(status) == {"kafka", "moto"}
    for name, item in status.items():
        assert item["healthy"], (name, item)
        assert item["pid"] and item["log"] and item["endpoint"]
    assert status["kafka"]["endpoint"] == endpoints["kafka_bootstrap_servers"]
    assert status["moto"]["endpoint"] == endpoints["aws_endpoint_url"]

    state = json.loads(stack.state_path.read_text())
    assert state["endpoints"] == endpoints
    assert (stack.stack_dir / "kafka" / "kafka.log").exists()

    pids = {name: item["pid"] for name, item in status.items()}
    started = time.monotonic()
    assert stack.up(timeout=60) == endpoints
    print(f"warm stack up (already running) took {time.monotonic() - started:.2f} s")
    assert {name: item["pid"] for name, item in stack.status().items()} == pids


def test_up_leaves_topics_and_streams_ready_for_any_client(stack, monkeypatch):
    import boto3

    from pinterest_platform import contract
    from pinterest_platform.resources.kafka import LocalKafkaResource

    prefix = f"ready{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("PINTEREST_TOPIC_PREFIX", prefix)
    endpoints = stack.up(timeout=60)
    assert any(note.endswith(": ready") for note in stack.notes)
    metadata = LocalKafkaResource(bootstrap_servers=endpoints["kafka_bootstrap_servers"]).admin().list_topics(timeout=10)
    for kind in contract.EVENT_KINDS:
        assert len(metadata.topics[contract.topic_name(prefix, kind)].partitions) == 3
    # a plain AWS client, nothing of ours: the stream takes a record right away
    kinesis = boto3.client("kinesis", endpoint_url=endpoints["aws_endpoint_url"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    answer = kinesis.put_record(StreamName=contract.stream_name(prefix, "pin"), Data=b'{"index": 1}',
                                PartitionKey="1")
    assert answer["SequenceNumber"]


def test_kafka_data_persists_across_down_and_up(stack):
    endpoints = stack.up()
    topic = f"persist-{uuid.uuid4().hex[:8]}"
    values = [f'{{"n": {i}}}'.encode() for i in range(50)]
    _produce(endpoints["kafka_bootstrap_servers"], topic, values)

    old_pids = [item["pid"] for item in stack.status().values()]
    outcome = stack.down()
    assert all(text.startswith("stopped pid") for text in outcome.values()), outcome
    assert all(_pid_gone(pid) for pid in old_pids)

    started = time.monotonic()
    assert stack.up() == endpoints  # same ports after a restart
    print(f"\nstack up after down (formatted data dir) took {time.monotonic() - started:.1f} s")
    assert _consume_all(endpoints["kafka_bootstrap_servers"], topic, f"g-{uuid.uuid4().hex[:6]}") == values


def test_down_stops_exactly_our_processes(stack):
    stack.up()
    pids = [item["pid"] for item in stack.status().values()]
    # a live process that is not ours, recorded as if it were (a reused PID): down must leave it alone
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = json.loads(stack.state_path.read_text())
        state["components"]["ghost"] = {"pid": bystander.pid, "fingerprint": "0", "marker": "moto.server"}
        stack.state_path.write_text(json.dumps(state))

        outcome = stack.down()
        assert set(outcome) == {"kafka", "moto"}
        assert all(_pid_gone(pid) for pid in pids)
        assert bystander.poll() is None
        status = stack.status()
        assert not any(item["healthy"] or item["pid"] for item in status.values())
        assert json.loads(stack.state_path.read_text())["endpoints"] == {}
        assert stack.down() == {"kafka": "not running", "moto": "not running"}
    finally:
        bystander.kill()
        bystander.wait()


def test_stale_pid_is_cleaned_on_up(stack):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = json.loads(stack.state_path.read_text())
    state["components"]["moto"].update(pid=dead.pid, fingerprint="12345")
    stack.state_path.write_text(json.dumps(state))
    assert not stack.status()["moto"]["healthy"]
    stack.up()
    status = stack.status()
    assert status["moto"]["healthy"] and status["moto"]["pid"] != dead.pid
    stack.down()


def test_port_in_use_is_a_clear_error(stack_env, monkeypatch, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("PINTEREST_MOTO_PORT", str(port))
        clash = LocalStack(tmp_path)
        with pytest.raises(RuntimeError, match=rf"port {port} .*already in use") as err:
            clash.up(timeout=30)
        assert "PINTEREST_MOTO_PORT" in str(err.value) and "moto.log" in str(err.value)
        # nothing was left running: the ports are checked before anything starts
        state = json.loads(clash.state_path.read_text()) if clash.state_path.exists() else {}
        assert not any(c.get("pid") for c in state.get("components", {}).values())
        clash.down()


def test_crash_during_start_names_the_log(stack_env, tmp_path):
    crashing = LocalStack(tmp_path)
    data = crashing.stack_dir / "kafka" / "data"
    data.mkdir(parents=True)
    # a log dir formatted for another node: the broker refuses to start
    (data / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    with pytest.raises(RuntimeError) as err:
        crashing.up(timeout=60)
    message = str(err.value)
    print(f"\n{message[:600]}")
    assert "kafka" in message and str(crashing.stack_dir / "kafka" / "kafka.log") in message
    assert "last lines of" in message
    state = json.loads(crashing.state_path.read_text())
    assert not any(c.get("pid") for c in state["components"].values())
    crashing.down()


def test_external_kafka_is_left_alone(stack, monkeypatch, tmp_path):
    endpoints = stack.up()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", endpoints["kafka_bootstrap_servers"])
    other = LocalStack(tmp_path)
    try:
        got = other.up(timeout=60)
        assert got["kafka_bootstrap_servers"] == endpoints["kafka_bootstrap_servers"]
        status = other.status()
        assert status["kafka"]["external"] and status["kafka"]["healthy"] and status["kafka"]["pid"] is None
        assert "left alone" in other.down()["kafka"]
        assert stack.status()["kafka"]["healthy"]
    finally:
        other.down()
    stack.down()


def test_stack_command_prints_status_and_exit_code(stack, tmp_path, capsys):
    import argparse

    from pinterest_platform.local_stack import stack_command

    assert stack_command(argparse.Namespace(action="up", state_dir=stack.state_dir)) == 0
    out = capsys.readouterr().out
    assert "kafka_bootstrap_servers = 127.0.0.1:" in out and "stack up in" in out
    assert stack_command(argparse.Namespace(action="status", state_dir=stack.state_dir)) == 0
    assert "kafka" in capsys.readouterr().out
    assert stack_command(argparse.Namespace(action="status", state_dir=tmp_path)) == 1
    assert "not running" in capsys.readouterr().out
    assert stack_command(argparse.Namespace(action="down", state_dir=stack.state_dir)) == 0
    assert "stopped pid" in capsys.readouterr().out


def test_missing_java_is_a_clear_error(stack_env, monkeypatch, tmp_path):
    from pinterest_platform.local_stack.components import java_executable

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="Java 17 is required"):
        java_executable()
    with pytest.raises(RuntimeError, match="Java 17 is required"):
        LocalStack(tmp_path / "state").up(timeout=10)


def test_cluster_ids_never_look_like_options():
    from pinterest_platform.local_stack.components import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
