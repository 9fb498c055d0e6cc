"""The two servers of the local stack: a single-node KRaft Kafka broker and a moto server (S3 + Kinesis).

Each component knows its ports, how to prepare its files, the command that runs it, and how to tell it
is healthy. Starting, recording and stopping processes is `LocalStack`'s job (stack.py)."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from pinterest_platform.local_stack import procs
from pinterest_platform.resources.spark import jars_dir
from pinterest_platform.settings import project_root

LOOPBACK = "127.0.0.1"


class Component:
    name: str = ""
    # the key under which the stack publishes this component's endpoint (None: it publishes none)
    endpoint_key: str | None = None
    # record key -> environment variable that pins it (absent: a free port picked once and persisted)
    port_envs: dict[str, str] = {}

    def __init__(self, stack_dir: Path):
        self.dir = stack_dir / self.name

    @property
    def log_path(self) -> Path:
        """The log a user should read first."""
        return self.console_log

    @property
    def console_log(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.dir / f"{self.name}.log"

    def logs(self) -> list[Path]:
        return [self.log_path] if self.log_path == self.console_log else [self.log_path, self.console_log]

    def resolve_ports(self, record: dict, taken: set[int]) -> dict[str, tuple[int, str]]:
        """Port per record key with where it came from; env beats persisted beats a fresh free port."""
        resolved: dict[str, tuple[int, str]] = {}
        for key, env in self.port_envs.items():
            value = os.environ.get(env)
            if value:
                try:
                    port = int(value)
                except ValueError:
                    raise RuntimeError(f"{env}={value!r} is not a port number") from None
                resolved[key] = (port, env)
            elif record.get(key):
                resolved[key] = (int(record[key]), "persisted in state.json")
            else:
                port = procs.free_port(taken | {p for p, _ in resolved.values()})
                resolved[key] = (port, "picked at first start")
        return resolved

    def preflight(self) -> None:
        """Checks that need no process (tools installed); raise RuntimeError with the fix."""

    def prepare(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def bind(self, records: dict) -> None:
        """Learn what this component needs from the others' records (a worker: its master's URL)."""

    def env(self, record: dict) -> dict[str, str] | None:
        """The process environment (None: inherit this one)."""
        return None

    def endpoints(self, record: dict) -> dict[str, str]:
        """What the stack publishes in state.json for resources and users to find."""
        return {self.endpoint_key: self.endpoint(record)} if self.endpoint_key else {}

    def command(self, record: dict) -> list[str]:
        raise NotImplementedError

    def marker(self, record: dict) -> str:
        """A string in the process's command line that identifies it as this stack's component."""
        raise NotImplementedError

    def endpoint(self, record: dict) -> str:
        raise NotImplementedError

    def check(self, endpoint: str, timeout: float = 3.0) -> str | None:
        """None when healthy, else why not."""
        raise NotImplementedError

    def check_record(self, record: dict, timeout: float = 3.0) -> str | None:
        """Health from the component's record (components whose health is more than one endpoint)."""
        return self.check(self.endpoint(record), timeout)


# --- Kafka -------------------------------------------------------------------------------------------

_LOG4J2 = """\
# written by pinterest_platform.local_stack: the broker's own log, WARN, plus the server's started/stopped lines
status = warn
name = pinterest-local-kafka
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.raft_server.name = kafka.server.KafkaRaftServer
logger.raft_server.level = INFO
"""

_SERVER_PROPERTIES = """\
# written by pinterest_platform.local_stack on every start (ports come from state.json); edits are lost
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
# one broker: every internal topic must live with a single replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# no other member is coming: a new consumer group should not wait 3 s for one
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# Kafka deletes records by their timestamp: with the default 7 days, history replayed with
# `emulate --posted-at` (an older day) would be deleted before the sink reads it. A laptop's stack keeps
# everything (its data lives in the stack folder, .pinterest/stack).
log.retention.ms=-1
"""


def java_executable() -> str:
    """The `java` to run Kafka with (JAVA_HOME first), checked to be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise RuntimeError(
            "Java 17 is required to run the local Kafka broker (and Spark) but `java` was not found. "
            "Install a JDK 17 (e.g. `apt-get install openjdk-17-jre-headless`, `brew install openjdk@17`) "
            "or set JAVA_HOME; or point KAFKA_BOOTSTRAP_SERVERS at a broker you already run.")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"could not run `{java} -version`: {exc}") from exc
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise RuntimeError(f"could not tell the Java version of {java}:\n{text.strip()}")
    major = int(match.group(1))
    if major == 1:  # "1.8.0_x" style
        major = int(match.group(2) or 0)
    if major < 17:
        raise RuntimeError(f"{java} is Java {major}; Kafka 4 needs Java 17 or newer (install a JDK 17, set JAVA_HOME).")
    return java


def kafka_jars_dir() -> Path:
    return jars_dir() / "kafka"


def ensure_kafka_jars() -> Path:
    """The folder of broker jars, fetched with jvm/fetch.sh (Maven) when missing."""
    folder = kafka_jars_dir()
    if any(folder.glob("kafka_2.13-*.jar")):
        return folder
    fetch = project_root() / "jvm" / "fetch.sh"
    hint = f"Kafka broker jars not found in {folder}: run `make install` (or `jvm/fetch.sh`) once to fetch them."
    if not fetch.exists() or not shutil.which("mvn"):
        raise RuntimeError(hint + (" Maven (mvn) is needed for that." if fetch.exists() else ""))
    print(f"Kafka broker jars missing: fetching them with {fetch} ...", file=sys.stderr)
    out = subprocess.run(["bash", str(fetch)], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not any(folder.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"{hint}\n{fetch} failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return folder


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every refused connection to stderr; while we poll a starting broker that is noise
    logger = logging.getLogger("pinterest_platform.local_stack.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


def kafka_metadata_error(bootstrap_servers: str, timeout: float = 3.0) -> str | None:
    """None when a metadata request to the broker succeeds, else the error."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": _quiet_logger(),
                         "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000))})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"metadata request to {bootstrap_servers} failed: {exc.args[0] if exc.args else exc}"
    if not metadata.brokers:
        return f"{bootstrap_servers} answered without brokers"
    return None


def new_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's Uuid.randomUuid, never one starting with '-': the storage tool's argument parser would
    take it for an option (one start in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker(Component):
    """Apache Kafka, one combined broker+controller (KRaft) on loopback, data under `<stack>/kafka/data`."""

    name = "kafka"
    endpoint_key = "kafka_bootstrap_servers"
    port_envs = {"port": "PINTEREST_KAFKA_PORT", "controller_port": "PINTEREST_KAFKA_CONTROLLER_PORT"}

    @property
    def log_path(self) -> Path:
        return self.dir / "kafka.log"

    @property
    def console_log(self) -> Path:
        # JVM-level failures (bad flags, missing classes) print to stderr before log4j is configured
        return self.dir / "console.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.dir / "log4j2.properties"

    _java: str | None = None
    _jars: Path | None = None

    def preflight(self) -> None:
        if self._java is None:
            self._java = java_executable()
            self._jars = ensure_kafka_jars()

    def prepare(self, record: dict) -> None:
        super().prepare(record)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log4j.write_text(_LOG4J2.format(log=self.log_path))
        self.properties.write_text(_SERVER_PROPERTIES.format(
            host=LOOPBACK, port=record["port"], controller_port=record["controller_port"], data=self.data_dir))
        if (self.data_dir / "meta.properties").exists():
            return
        self.preflight()
        record.setdefault("cluster_id", new_cluster_id())
        cmd = [self._java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.log4j}", "-cp", f"{self._jars}/*",
               "kafka.tools.StorageTool", "format", "-t", record["cluster_id"], "-c", str(self.properties)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"formatting the Kafka log dir {self.data_dir} failed (exit {out.returncode}):\n"
                               f"{(out.stdout + out.stderr).strip()[-3000:]}")

    def command(self, record: dict) -> list[str]:
        self.preflight()
        return [
            self._java, "-Xmx512m", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}", f"-Dkafka.logs.dir={self.dir}",
            "-cp", f"{self._jars}/*", "kafka.Kafka", str(self.properties),
        ]

    def marker(self, record: dict) -> str:
        return str(self.properties)

    def endpoint(self, record: dict) -> str:
        return f"{LOOPBACK}:{record['port']}"

    def check(self, endpoint: str, timeout: float = 3.0) -> str | None:
        return kafka_metadata_error(endpoint, timeout)


# --- moto ----------------------------------------------------------------------------------------------

def moto_error(endpoint: str, timeout: float = 3.0) -> str | None:
    """None when moto answers its API page and a Kinesis ListStreams, else the error."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=timeout) as response:
            if response.status != 200:
                return f"GET {endpoint}/moto-api/ returned {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"GET {endpoint}/moto-api/ failed: {exc}"
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 0}))
    try:
        client.list_streams(Limit=1)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return f"Kinesis ListStreams on {endpoint} failed: {exc}"
    return None


class MotoServer(Component):
    """moto in server mode (S3, Kinesis and the rest of its AWS mocks) on loopback; state is in memory."""

    name = "moto"
    endpoint_key = "aws_endpoint_url"
    port_envs = {"port": "PINTEREST_MOTO_PORT"}

    def command(self, record: dict) -> list[str]:
        # this interpreter is the project's venv python, which has moto[server]; requests are serialized
        # because moto's backends are not safe under concurrent writes (see moto_server.py)
        return [sys.executable, "-m", "pinterest_platform.local_stack.moto_server", "-H", LOOPBACK,
                "-p", str(record["port"])]

    def marker(self, record: dict) -> str:
        return "pinterest_platform.local_stack.moto_server"

    def endpoint(self, record: dict) -> str:
        return f"http://{LOOPBACK}:{record['port']}"

    def check(self, endpoint: str, timeout: float = 3.0) -> str | None:
        return moto_error(endpoint, timeout)


# --- Spark standalone cluster (stack up --spark-cluster) ------------------------------------------------

WORKERS = 2


def spark_home() -> Path:
    """The installed pyspark: its jars/ run the master and workers (pip's pyspark has no sbin/ scripts)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def scala_version() -> str:
    """The Scala binary version of the installed pyspark ("2.13"), from its scala-library jar."""
    jars = sorted((spark_home() / "jars").glob("scala-library-*.jar"))
    match = re.match(r"scala-library-(\d+\.\d+)", jars[0].name) if jars else None
    if not match:
        raise RuntimeError(f"cannot tell the Scala version of pyspark from {spark_home() / 'jars'}")
    return match.group(1)


def spark_master_status(ui_url: str, timeout: float = 3.0) -> tuple[dict | None, str | None]:
    """The master's /json/ document, or why it could not be read."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{ui_url}/json/", timeout=timeout) as response:
            return json.loads(response.read()), None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"GET {ui_url}/json/ failed: {exc}"


class _SparkDaemon(Component):
    """A Spark standalone daemon: the pyspark jars on a JVM of their own, state and logs in the stack dir."""

    main_class = ""

    def java_command(self, *args: str, heap: str = "512m") -> list[str]:
        home = spark_home()
        return [java_executable(), f"-Xmx{heap}", "-Djava.awt.headless=true",
                f"-Dspark.pinterest.component={self.name}",
                "-cp", f"{home / 'conf'}:{home / 'jars'}/*", self.main_class, *args]

    def env(self, record: dict) -> dict[str, str]:
        return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": LOOPBACK,
                # what bin/load-spark-env.sh would export: the worker's launcher needs it to build executors
                "SPARK_SCALA_VERSION": scala_version(),
                "SPARK_LOG_DIR": str(self.dir), "SPARK_WORKER_DIR": str(self.dir / "work"),
                # executors' Python workers: this interpreter (the project's venv)
                "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}

    def preflight(self) -> None:
        java_executable()

    def marker(self, record: dict) -> str:
        return f"-Dspark.pinterest.component={self.name}"


class SparkMaster(_SparkDaemon):
    """The standalone master on loopback; its web UI lists workers and applications."""

    name = "spark_master"
    endpoint_key = "spark_master_url"
    main_class = "org.apache.spark.deploy.master.Master"
    port_envs = {"port": "PINTEREST_SPARK_MASTER_PORT", "ui_port": "PINTEREST_SPARK_MASTER_UI_PORT"}

    def command(self, record: dict) -> list[str]:
        return self.java_command("--host", LOOPBACK, "--port", str(record["port"]),
                                 "--webui-port", str(record["ui_port"]))

    def endpoint(self, record: dict) -> str:
        return f"spark://{LOOPBACK}:{record['port']}"

    def ui_url(self, record: dict) -> str:
        return f"http://{LOOPBACK}:{record['ui_port']}"

    def endpoints(self, record: dict) -> dict[str, str]:
        return {"spark_master_url": self.endpoint(record), "spark_master_ui": self.ui_url(record)}

    def check_record(self, record: dict, timeout: float = 3.0) -> str | None:
        status, error = spark_master_status(self.ui_url(record), timeout)
        if error:
            return error
        if status.get("status") != "ALIVE":
            return f"master status {status.get('status')!r}"
        return None


class SparkWorker(_SparkDaemon):
    """One standalone worker (1 core) registered with the stack's master."""

    main_class = "org.apache.spark.deploy.worker.Worker"

    def __init__(self, stack_dir: Path, index: int, master: SparkMaster):
        self.index = index
        self.name = f"spark_worker_{index}"
        self.port_envs = {"port": f"PINTEREST_SPARK_WORKER_{index}_PORT",
                          "ui_port": f"PINTEREST_SPARK_WORKER_{index}_UI_PORT"}
        self.master = master
        super().__init__(stack_dir)

    def bind(self, records: dict) -> None:
        master = records.get(self.master.name, {})
        records[self.name]["master_url"] = self.master.endpoint(master)
        records[self.name]["master_ui"] = self.master.ui_url(master)

    def command(self, record: dict) -> list[str]:
        memory = os.environ.get("PINTEREST_SPARK_WORKER_MEMORY", "2g")
        return self.java_command("--host", LOOPBACK, "--port", str(record["port"]),
                                 "--webui-port", str(record["ui_port"]), "--cores", "1", "--memory", memory,
                                 "--work-dir", str(self.dir / "work"), record["master_url"], heap="256m")

    def endpoint(self, record: dict) -> str:
        return f"{LOOPBACK}:{record['port']}"

    def check_record(self, record: dict, timeout: float = 3.0) -> str | None:
        status, error = spark_master_status(record.get("master_ui", ""), timeout)
        if error:
            return f"master not answering: {error}"
        for worker in status.get("workers", []):
            if int(worker.get("port", -1)) == int(record["port"]) and worker.get("state") == "ALIVE":
                return None
        return f"not registered with the master at {record.get('master_url')}"
