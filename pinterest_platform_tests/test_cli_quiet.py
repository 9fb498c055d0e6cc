"""A newcomer's commands say what matters and nothing else: the instance's dagster.yaml is written once and
never overwritten, librdkafka's self-healing retries stay out of the terminal while its errors show, and
`run batch` with nothing posted says so (exit 0) instead of listing every check as failed."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from pinterest_platform import contract
from pinterest_platform.instance import DEFAULT_DAGSTER_YAML, ensure_dagster_yaml
from pinterest_platform.resources.kafka import KAFKA_LOGGER, kafka_logger

NO_INSTANCE_CONFIG = "No dagster instance configuration file"
LIBRDKAFKA_STDERR_LINE = re.compile(r"^%\d\|", re.MULTILINE)  # librdkafka's own log format, e.g. %4|...|GETPID|


# --- dagster.yaml -------------------------------------------------------------------------------------------


def test_dagster_yaml_is_created_when_missing_and_dagster_accepts_it(tmp_path):
    import dagster as dg

    home = tmp_path / "dagster_home"
    path, created = ensure_dagster_yaml(home)
    assert created and path == home / "dagster.yaml"
    assert path.read_text() == DEFAULT_DAGSTER_YAML
    config = yaml.safe_load(path.read_text())
    assert config["telemetry"] == {"enabled": False}
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
    finally:
        instance.dispose()
    assert [p.name for p in home.iterdir() if p.name.startswith(".dagster.yaml")] == []  # no temp file left


def test_an_existing_dagster_yaml_is_never_overwritten(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    edited = "# mine\nrun_monitoring:\n  enabled: true\n"
    (home / "dagster.yaml").write_text(edited)
    path, created = ensure_dagster_yaml(home)
    assert not created
    assert path.read_text() == edited


def test_cli_instance_writes_dagster_yaml_in_dagster_home(tmp_path, monkeypatch):
    from pinterest_platform.cli import _dagster_instance

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = _dagster_instance()
    try:
        assert (home / "dagster.yaml").read_text() == DEFAULT_DAGSTER_YAML
        assert os.environ["DAGSTER_HOME"] == str(home.resolve())
    finally:
        instance.dispose()


def test_make_dev_helper_writes_it_once(tmp_path):
    """`make dev` runs `python -m pinterest_platform.instance` before `dagster dev`."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dev_home"), "PINTEREST_STATE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "pinterest_platform.instance"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "wrote the Dagster instance configuration" in first.stdout
    (tmp_path / "dev_home" / "dagster.yaml").write_text("# edited\n")
    second = subprocess.run([sys.executable, "-m", "pinterest_platform.instance"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0 and second.stdout == ""
    assert (tmp_path / "dev_home" / "dagster.yaml").read_text() == "# edited\n"


# --- Kafka client logs -----------------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def kafka_records():
    """The records the platform's Kafka logger lets through, at its default level."""
    logger = kafka_logger()
    handler = Collect()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # the default, whatever PINTEREST_KAFKA_LOG_LEVEL this session has
    try:
        yield logger, handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize(("setting", "level"), [(None, logging.WARNING), ("info", logging.INFO),
                                                 ("nonsense", logging.WARNING)])
def test_kafka_log_level_defaults_to_warning(setting, level):
    env = {k: v for k, v in os.environ.items() if k != "PINTEREST_KAFKA_LOG_LEVEL"}
    if setting is not None:
        env["PINTEREST_KAFKA_LOG_LEVEL"] = setting
    result = subprocess.run([sys.executable, "-c", "from pinterest_platform.resources.kafka import kafka_logger; "
                             "print(kafka_logger().level)"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == level


def rdkafka_log(logger: logging.Logger, level: int, fac: str, message: str) -> None:
    # what confluent_kafka calls for each librdkafka log line
    logger.log(level, "%s [%s] %s", fac, "rdkafka#producer-1", message)


def test_transient_retries_are_hidden_and_errors_show(kafka_records):
    logger, records = kafka_records
    assert logger.name == KAFKA_LOGGER
    rdkafka_log(logger, logging.WARNING, "GETPID", "[thrd:main]: Failed to acquire idempotence PID from broker "
                "127.0.0.1:9092/1: Broker: Coordinator load in progress: retrying")
    rdkafka_log(logger, logging.INFO, "BGQUEUE", "[thrd:background]: Purging 1 unserved events")
    rdkafka_log(logger, logging.WARNING, "REQTMOUT", "Timed out 1 in-flight requests")
    rdkafka_log(logger, logging.ERROR, "FAIL", "Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    assert [(r.levelname, r.args[0]) for r in records] == [("WARNING", "REQTMOUT"), ("ERROR", "FAIL")]


def test_retries_show_as_info_when_asked(kafka_records):
    logger, records = kafka_records
    logger.setLevel(logging.INFO)
    rdkafka_log(logger, logging.WARNING, "GETPID", "Failed to acquire idempotence PID: Coordinator load in "
                "progress: retrying")
    assert [(r.levelname, r.args[0]) for r in records] == [("INFO", "GETPID")]


def test_clients_log_through_python_logging(kafka_records):
    """A real librdkafka producer to a closed port: its connection errors arrive as ERROR records."""
    from pinterest_platform.resources.kafka import LocalKafkaResource

    _, records = kafka_records
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    producer = LocalKafkaResource(bootstrap_servers=f"127.0.0.1:{port}").producer()
    deadline = time.monotonic() + 20
    while not records and time.monotonic() < deadline:
        producer.poll(0.2)  # librdkafka hands log lines to Python from poll()
    assert records, "no librdkafka log record reached pinterest_platform.kafka"
    assert all(r.levelno >= logging.WARNING for r in records)
    assert any(r.levelno == logging.ERROR and "Connect to" in r.getMessage() for r in records)


# --- run batch with nothing posted, then something, then nothing new ------------------------------------------


def cli(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pinterest_platform.cli", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"`pinterest-platform {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}"
    return result


def assert_quiet(result: subprocess.CompletedProcess) -> None:
    assert NO_INSTANCE_CONFIG not in result.stderr, result.stderr
    assert "UserWarning" not in result.stderr, result.stderr
    assert not LIBRDKAFKA_STDERR_LINE.search(result.stderr), result.stderr
    assert "Coordinator load in progress" not in result.stderr, result.stderr


def wait_for_group_coordinator(kafka, topic: str, timeout: float = 90) -> None:
    """A broker that just started answers NOT_COORDINATOR until its offsets topic is loaded; the raw sink
    does not retry that, so wait here for the stack, not for the code under test."""
    from confluent_kafka import KafkaException, TopicPartition

    consumer = kafka.consumer(f"warmup-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                consumer.committed([TopicPartition(topic, 0)], timeout=10)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def runs(local_stack, tmp_path_factory):
    from pinterest_platform.resources.kafka import LocalKafkaResource

    home = tmp_path_factory.mktemp("cli_quiet")
    prefix = f"quiet{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PINTEREST_ENV": "local",
        "PINTEREST_STATE_DIR": str(home / "state"),
        "PINTEREST_LAKE_ROOT": str(home / "lake"),
        "PINTEREST_SOURCE_DB_URL": f"sqlite:///{home / 'source.db'}",
        "PINTEREST_TOPIC_PREFIX": prefix,
        "KAFKA_BOOTSTRAP_SERVERS": local_stack["kafka_bootstrap_servers"],
        "AWS_ENDPOINT_URL": local_stack["aws_endpoint_url"],
        "DAGSTER_HOME": str(home / "dagster_home"),  # not created: the first command must write dagster.yaml
    }
    env.pop("PINTEREST_KAFKA_LOG_LEVEL", None)
    kafka = LocalKafkaResource(bootstrap_servers=local_stack["kafka_bootstrap_servers"])
    topics = kafka.ensure_platform_topics(prefix)  # what `stack up` does for its prefix
    wait_for_group_coordinator(kafka, topics[0])
    out = {"env": env, "home": home, "topics": topics}
    out["empty"] = cli(env, "run", "batch")
    cli(env, "seed", "--events", "30", "--seed", "5", "--no-progress")
    out["emulate"] = cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    out["first"] = cli(env, "run", "batch")
    out["again"] = cli(env, "run", "batch")
    return out


def test_nothing_posted_says_so_and_what_to_run(runs):
    out = runs["empty"].stdout
    assert "nothing has arrived" in out, out
    for topic in runs["topics"]:
        assert topic in out
    assert "pinterest-platform emulate --mode batch --all" in out
    assert "your own client" in out
    assert re.search(r"batch runs \S+ and \S+ succeeded in [\d.]+s: nothing has arrived yet\n", out), out
    # absent tables are not data failures, and a table listing of dashes says nothing
    assert "failed checks" not in out
    assert "tables/pin" not in out and " - rows" not in out


def test_the_first_command_wrote_dagster_yaml(runs):
    assert (runs["home"] / "dagster_home" / "dagster.yaml").read_text() == DEFAULT_DAGSTER_YAML


def test_commands_print_no_instance_warning_userwarning_or_librdkafka_lines(runs):
    for name in ("empty", "emulate", "first", "again"):
        assert_quiet(runs[name])


def test_a_run_with_events_lists_the_tables(runs):
    out = runs["first"].stdout
    assert "nothing" not in out, out
    for kind in contract.EVENT_KINDS:
        assert re.search(rf"tables/{kind}\s+[1-9]\d* rows", out), out
    assert re.search(r"batch runs \S+ and \S+ succeeded in [\d.]+s\n", out), out
    assert "failed checks" not in out


def test_a_run_with_nothing_new_says_so(runs):
    out = runs["again"].stdout
    assert re.search(r"batch runs \S+ and \S+ succeeded in [\d.]+s: nothing new since the last run\n", out), out
    for kind in contract.EVENT_KINDS:
        assert re.search(rf"tables/{kind}\s+[1-9]\d* rows", out), out
    assert "failed checks" not in out
