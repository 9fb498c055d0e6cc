"""`LocalStack`: starts, health-checks and stops the embedded Kafka broker and moto server.

State lives in `<state_dir>/stack/state.json` as `{"endpoints": {...}, "components": {...}}`. The endpoints
are what resources fall back to when no endpoint is configured (`Settings.stack_endpoints()`); the
components record ports (stable across down/up), and the PID and start-time fingerprint of every process
the stack started, which is all `down` will ever signal."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from pinterest_platform.local_stack import procs
from pinterest_platform.local_stack.components import (
    WORKERS,
    Component,
    KafkaBroker,
    MotoServer,
    SparkMaster,
    SparkWorker,
    kafka_metadata_error,
)
from pinterest_platform.settings import load_settings

log = logging.getLogger(__name__)

SPARK_COMPONENTS_PREFIX = "spark_"


class LocalStack:
    """The embedded servers of the `local` profile. `up` is idempotent; `down` stops only what `up` started."""

    def __init__(self, state_dir: Path | str | None = None):
        self.state_dir = Path(state_dir).resolve() if state_dir else load_settings().state_dir
        self.stack_dir = self.state_dir / "stack"
        self.state_path = self.stack_dir / "state.json"
        master = SparkMaster(self.stack_dir)
        # start order: moto first (Kafka's one-time log-dir format takes a JVM start, moto boots meanwhile),
        # and a Spark master before its workers
        components: list[Component] = [MotoServer(self.stack_dir), KafkaBroker(self.stack_dir), master,
                                       *(SparkWorker(self.stack_dir, i + 1, master) for i in range(WORKERS))]
        self.components: dict[str, Component] = {c.name: c for c in components}
        self.notes: list[str] = []

    def _wanted(self, state: dict) -> list[Component]:
        """Kafka unless an external broker is set, moto, and the Spark cluster while it is enabled."""
        external = self._external_kafka()
        cluster = bool(state.get("spark_cluster"))
        return [c for c in self.components.values()
                if not (c.name == "kafka" and external)
                and (cluster or not c.name.startswith(SPARK_COMPONENTS_PREFIX))]

    # --- public API ------------------------------------------------------------------------------

    def up(self, timeout: float = 60, spark_cluster: bool = False) -> dict:
        """Start what is not running, wait until everything is healthy, return the endpoints.

        `spark_cluster` also starts a Spark standalone master and two workers; once started, the cluster
        stays part of the stack (later `up`s keep it) until `down`."""
        deadline = time.monotonic() + timeout
        with self._lock():
            state = self._load()
            records = state.setdefault("components", {})
            external = self._external_kafka()
            if spark_cluster:
                state["spark_cluster"] = True
            wanted = self._wanted(state)

            to_start: list[Component] = []
            taken: set[int] = set()  # ports of running components and of those assigned below
            reserved: set[int] = set()  # every recorded port: never handed out fresh to another component
            for comp in wanted:
                record = records.setdefault(comp.name, {})
                ports = {int(v) for k, v in record.items() if k in comp.port_envs and v}
                reserved |= ports
                if procs.is_ours(record):
                    self._check_running_ports(comp, record)
                    taken |= ports
                else:
                    if record.get("pid"):
                        log.info("%s: forgetting stale pid %s (process gone)", comp.name, record["pid"])
                    self._forget_process(record)
                    to_start.append(comp)

            for comp in to_start:
                comp.preflight()
                self._assign_ports(comp, records[comp.name], taken, reserved)

            started: list[Component] = []
            try:
                for comp in to_start:
                    record = records[comp.name]
                    comp.bind(records)
                    comp.prepare(record)
                    cmd = comp.command(record)
                    pid = procs.spawn(cmd, cwd=comp.dir, log_path=comp.console_log, env=comp.env(record))
                    record.update(pid=pid, fingerprint=procs.fingerprint(pid), marker=comp.marker(record),
                                  command=cmd, log=str(comp.log_path), started_at=time.time())
                    started.append(comp)
                    # recorded before waiting, so even if this process dies now `down` can stop it
                    self._save(state)
                self._wait_healthy(wanted, records, deadline, timeout)
            except BaseException:
                for comp in started:
                    procs.stop(records[comp.name]["pid"])
                    self._forget_process(records[comp.name])
                self._save(state)
                raise

            endpoints: dict[str, str] = {}
            for comp in wanted:
                endpoints.update(comp.endpoints(records[comp.name]))
            if external:
                endpoints["kafka_bootstrap_servers"] = external
            state["endpoints"] = endpoints
            self._save(state)
            self.notes = self._ensure_lake_bucket(endpoints) + self._ensure_topics_and_streams(endpoints)
            return dict(endpoints)

    def down(self) -> dict:
        """Stop every process this stack recorded (SIGTERM, then SIGKILL after 10 s). Returns what happened."""
        with self._lock():
            state = self._load()
            records = state.setdefault("components", {})
            result = {}
            for name in self.components:
                record = records.get(name, {})
                pid = record.get("pid")
                if not pid:
                    result[name] = "not running"
                elif procs.is_ours(record):
                    result[name] = f"stopped pid {pid} ({procs.stop(pid)})"
                else:
                    result[name] = f"forgot stale pid {pid} (process gone or no longer ours)"
                self._forget_process(record)
            external = self._external_kafka()
            if external and result.get("kafka") == "not running":
                result["kafka"] = f"external broker {external} left alone"
            if not state.get("spark_cluster"):
                for name in [n for n in result if n.startswith(SPARK_COMPONENTS_PREFIX)]:
                    if result[name] == "not running":
                        result.pop(name)
            state["endpoints"] = {}
            state["spark_cluster"] = False
            if self.state_path.exists() or records:
                self._save(state)
            return result

    def status(self) -> dict:
        """Per component: healthy, pid, endpoint, log (and error when unhealthy)."""
        state = self._load()
        records = state.get("components", {})
        external = self._external_kafka()
        report = {}
        for comp in [c for c in self.components.values() if c.name == "kafka" or c in self._wanted(state)]:
            name = comp.name
            if name == "kafka" and external:
                error = kafka_metadata_error(external, timeout=5.0)
                report[name] = {"healthy": error is None, "pid": None, "endpoint": external, "log": None,
                                "external": True, "error": error}
                continue
            record = records.get(name, {})
            alive = procs.is_ours(record)
            endpoint = comp.endpoint(record) if record.get("port") else None
            error = comp.check_record(record, timeout=5.0) if alive else "not running"
            report[name] = {"healthy": alive and error is None, "pid": record.get("pid") if alive else None,
                            "endpoint": endpoint, "log": str(comp.log_path), "error": error}
            if isinstance(comp, SparkMaster) and record.get("ui_port"):
                report[name]["ui"] = comp.ui_url(record)
        return report

    def endpoints(self) -> dict:
        return dict(self._load().get("endpoints", {}))

    @staticmethod
    def _ensure_topics_and_streams(endpoints: dict) -> list[str]:
        """The platform's three topics and three streams, so any client (kcat, the AWS CLI) can post at once."""
        from pinterest_platform.resources.kafka import LocalKafkaResource
        from pinterest_platform.resources.kinesis import LocalKinesisResource

        settings = load_settings()
        kafka = LocalKafkaResource(bootstrap_servers=endpoints["kafka_bootstrap_servers"])
        kinesis = LocalKinesisResource(region=settings.aws_region,
                                       endpoint=settings.aws_endpoint_url or endpoints["aws_endpoint_url"])
        topics = kafka.ensure_platform_topics(settings.topic_prefix)
        streams = kinesis.ensure_platform_streams(settings.topic_prefix)
        return [f"topics {', '.join(topics)} and streams {', '.join(streams)}: ready"]

    @staticmethod
    def _ensure_lake_bucket(endpoints: dict) -> list[str]:
        """An s3:// lake in the local profile lives on moto: make its bucket, so no step is left to the user."""
        settings = load_settings()
        if settings.env != "local" or not settings.lake_is_s3:
            return []
        from pinterest_platform.resources.lake import LocalS3LakeResource

        endpoint = settings.aws_endpoint_url or endpoints.get("aws_endpoint_url")
        lake = LocalS3LakeResource(bucket=settings.lake_bucket, region=settings.aws_region, endpoint=endpoint)
        created = lake.ensure_bucket()
        return [f"lake bucket s3://{settings.lake_bucket} on {endpoint}: {'created' if created else 'present'}"]

    # --- internals -------------------------------------------------------------------------------

    @staticmethod
    def _external_kafka() -> str | None:
        return load_settings().kafka_bootstrap_servers

    def _load(self) -> dict:
        if not self.state_path.exists():
            return {"endpoints": {}, "components": {}}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{self.state_path} is not valid JSON ({exc}). Stop any stack processes "
                               "listed in it by hand, then delete it.") from exc

    def _save(self, state: dict) -> None:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _lock(self):
        """One `up`/`down` at a time per state dir (two terminals, or tests racing the CLI)."""
        import fcntl

        self.stack_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stack_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _forget_process(record: dict) -> None:
        for key in ("pid", "fingerprint", "started_at"):
            record.pop(key, None)

    @staticmethod
    def _check_running_ports(comp: Component, record: dict) -> None:
        for key, env in comp.port_envs.items():
            wanted = os.environ.get(env)
            if wanted and str(record.get(key)) != wanted:
                raise RuntimeError(
                    f"{comp.name} is already running (pid {record['pid']}) on port {record.get(key)}, but "
                    f"{env}={wanted}. Run `pinterest-platform stack down` first to move it.")

    @staticmethod
    def _port_frees_up(port: int, grace_s: float = 30.0) -> bool:
        """A port our own just-stopped server held can stay bound after its process is gone (closing
        connections of its clients), so wait a little before calling it taken."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if not procs.port_in_use(port):
                return True
        return False

    def _assign_ports(self, comp: Component, record: dict, taken: set[int], reserved: set[int]) -> None:
        for key, (port, source) in comp.resolve_ports(record, taken | reserved).items():
            if port in taken:
                raise RuntimeError(f"{comp.name}: port {port} ({source}) is already assigned to another stack "
                                   f"component; set {comp.port_envs[key]} to a different port.")
            if procs.port_in_use(port) and not self._port_frees_up(port):
                raise RuntimeError(
                    f"{comp.name} cannot start: port {port} on 127.0.0.1 ({source}) is already in use by "
                    f"another process. Free it or set {comp.port_envs[key]} to another port "
                    f"(state: {self.state_path}; log: {comp.log_path}).")
            record[key] = port
            taken.add(port)

    def _wait_healthy(self, comps: list[Component], records: dict, deadline: float, timeout: float) -> None:
        pending = {c.name: c for c in comps}
        errors: dict[str, str] = {}
        while pending:
            for name, comp in list(pending.items()):
                record = records[name]
                if not procs.is_ours(record):
                    code = procs.exit_code(record.get("pid"))
                    raise RuntimeError(
                        f"{name} exited during start-up (pid {record.get('pid')}"
                        f"{'' if code is None else f', exit code {code}'}). See {comp.log_path}.\n"
                        + self._log_tails(comp))
                remaining = deadline - time.monotonic()
                error = comp.check_record(record, timeout=max(0.5, min(3.0, remaining)))
                if error is None:
                    pending.pop(name)
                else:
                    errors[name] = error
            if not pending:
                return
            if time.monotonic() >= deadline:
                name, comp = next(iter(pending.items()))
                raise RuntimeError(
                    f"{name} (pid {records[name].get('pid')}) was not healthy within {timeout:.0f} s: "
                    f"{errors.get(name)}. See {comp.log_path}.\n" + self._log_tails(comp))
            time.sleep(0.25)

    @staticmethod
    def _log_tails(comp: Component) -> str:
        return "\n".join(f"--- last lines of {path} ---\n{procs.tail(path)}" for path in comp.logs())
