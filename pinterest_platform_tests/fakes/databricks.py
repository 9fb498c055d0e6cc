"""A fake Databricks workspace: the REST endpoints `PipesDatabricksClient` and databricks-sdk call, for real.

`FakeDatabricksWorkspace` is an HTTP server on 127.0.0.1 (stdlib `http.server`, a free port) that

* checks `Authorization: Bearer <token>` on every request (401 UNAUTHENTICATED otherwise) and records every
  request (method, path, query, headers, JSON body, status, response) in `requests`;
* serves DBFS (`/api/2.0/dbfs/mkdirs|put|create|add-block|close|read|get-status|list|delete`) from a
  temporary directory, with DBFS's error codes (404 RESOURCE_DOES_NOT_EXIST, RESOURCE_ALREADY_EXISTS,
  MAX_BLOCK_SIZE_EXCEEDED, IO_ERROR for a non-recursive delete of a non-empty directory, ...);
* serves Jobs (`/api/2.{1,2}/jobs/runs/submit|get|get-output|cancel`) and `clusters/get` for the clusters it
  was given. `runs/submit` validates each task (task_key, exactly one compute spec, spark_python_task,
  libraries) and answers 400 INVALID_PARAMETER_VALUE on a malformed one;
* "runs" a submitted `spark_python_task` on a fake cluster: the task's libraries are checked (a `dbfs:/` wheel
  must exist in the fake DBFS, a `pypi` package must be installed in this venv, the cluster's image), then
  `<python> -m pinterest_platform_tests.fakes.databricks <target> <python_file> <parameters...>` runs in a
  subprocess. Its environment is the new cluster's `spark_env_vars` (where Pipes puts DAGSTER_PIPES_CONTEXT
  and DAGSTER_PIPES_MESSAGES; inherited DAGSTER_PIPES_* are removed so only the request can provide them)
  or the existing cluster's, and the task parameters become `sys.argv[1:]` (where Pipes puts its CLI
  bootstrap arguments for existing clusters). The run moves PENDING -> RUNNING -> TERMINATING ->
  TERMINATED with result_state SUCCESS or FAILED from the exit code (INTERNAL_ERROR when a library cannot be
  installed, CANCELED after runs/cancel).

The subprocess shim (`_cluster_main`, this module's `__main__`) plays the Databricks driver: it mounts the
fake DBFS at `/dbfs` the way the FUSE mount does (paths under `/dbfs/` opened with `open`, `os.makedirs`,
`os.listdir`, `os.path.exists|isdir|isfile` go to the temp directory, which is all `PipesDbfsContextLoader`
and `PipesDbfsMessageWriter` use), installs the cluster's pre-created SparkSession (a stub without a JVM:
`SparkSession.getActiveSession()` and `SparkSession.builder.getOrCreate()` return it, its `conf` carries the
`spark.databricks.clusterUsageTags.*` keys, any other use raises a clear error), registers the test's extra
jobs in `pinterest_platform.jobs.JOBS` and runs the entry point, mapped from its `dbfs:/` path to a module
(`entrypoints`) or, failing that, a file uploaded to the fake DBFS. A real Spark job cannot run here.

Not emulated: cluster log delivery (`cluster_log_conf`), notebook/wheel/jar tasks, job clusters, serverless
environments, task dependencies (tasks of one run execute in submission order), DBFS `move`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIM_MODULE = "pinterest_platform_tests.fakes.databricks"

DEFAULT_ENTRYPOINTS = {"dbfs:/pinterest_platform/databricks_entry.py": "pinterest_platform.jobs.databricks_entry"}

# Jobs for tests: they run on the fake cluster without touching Spark (no JVM start per test).
TEST_JOBS = {
    "fake_echo": f"{SHIM_MODULE}:echo_job",
    "fake_fail": f"{SHIM_MODULE}:failing_job",
}

CLUSTER_ID_CONF = "spark.databricks.clusterUsageTags.clusterId"

_ENV_DBFS_ROOT = "FAKE_DATABRICKS_DBFS_ROOT"
_ENV_EXTRA_JOBS = "FAKE_DATABRICKS_EXTRA_JOBS"
_ENV_CLUSTER_ID = "FAKE_DATABRICKS_CLUSTER_ID"

MAX_BLOCK_BYTES = 1 << 20  # put contents, add-block data and read length are capped at 1 MB
DEFAULT_READ_BYTES = 512 * 1024

_TASK_KEY = re.compile(r"^[\w\-.]{1,100}$")
_TASK_TYPES = ("spark_python_task", "notebook_task", "python_wheel_task", "spark_jar_task", "spark_submit_task",
               "pipeline_task", "sql_task", "dbt_task", "run_job_task", "condition_task", "for_each_task")
_COMPUTE_KEYS = ("new_cluster", "existing_cluster_id", "job_cluster_key", "environment_key")
_LIBRARY_KINDS = ("pypi", "whl", "jar", "egg", "maven", "cran", "requirements")
_TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")


# ----------------------------------------------------------------------------------------------------------
# jobs for tests (run inside the fake cluster's subprocess)


def echo_job(spark, params: dict) -> dict:
    """Returns its params, and the id of the cluster whose SparkSession it was given."""
    return {"echo": params, "rows": 3, "cluster_id": spark.conf.get(CLUSTER_ID_CONF)}


def failing_job(spark, params: dict) -> dict:
    raise ValueError(f"fake_fail refuses params {params!r}")


# ----------------------------------------------------------------------------------------------------------
# the server


class ApiError(Exception):
    """An error answered the Databricks way: HTTP status + {"error_code", "message"}."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None  # parsed JSON (the raw text if it was not JSON)
    status: int | None = None
    response: Any = None


@dataclass
class _TaskRun:
    run_id: int
    spec: dict[str, Any]
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = ""
    cluster_id: str | None = None
    start_time: int = 0
    end_time: int = 0
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    process: subprocess.Popen | None = None
    workdir: Path | None = None  # the driver's working directory, with its stdout and stderr files

    @property
    def key(self) -> str:
        return self.spec["task_key"]


@dataclass
class _Run:
    run_id: int
    job_id: int
    run_name: str
    request: dict[str, Any]
    tasks: list[_TaskRun]
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    user_cancelled: bool = False
    start_time: int = field(default_factory=lambda: _now_ms())
    running_since: int = 0
    end_time: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _b64decode(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{name} is not valid base64") from None


def _tail(text: str, limit: int = 20_000) -> str:
    return text if len(text) <= limit else text[-limit:]


class FakeDatabricksWorkspace:
    """A Databricks workspace on 127.0.0.1: start() / stop(), or use it as a context manager.

    Args:
        token: the only token accepted (as `Authorization: Bearer <token>`).
        clusters: existing all-purpose clusters by id (spec dict, e.g. {"spark_version": ..., "spark_env_vars":
            {...}}); a task naming any other existing_cluster_id is rejected.
        entrypoints: spark_python_task python_file -> module run in its place (default: our entry point).
        extra_jobs: job name -> "module:function" added to pinterest_platform.jobs.JOBS on the cluster.
        cluster_env: environment variables every fake cluster has (under the task's spark_env_vars).
        pending_seconds / terminating_seconds: how long a run stays PENDING / TERMINATING.
        run_timeout_seconds: a task still running after this is killed and FAILED.
    """

    def __init__(self, *, token: str = "t0k3n", clusters: dict[str, dict[str, Any]] | None = None,
                 entrypoints: dict[str, str] | None = None, extra_jobs: dict[str, str] | None = None,
                 cluster_env: dict[str, str] | None = None, pending_seconds: float = 0.3,
                 terminating_seconds: float = 0.2, run_timeout_seconds: float = 120.0,
                 python: str = sys.executable):
        self.token = token
        self.clusters = {cid: {"cluster_id": cid, "cluster_name": cid, "state": "RUNNING", **spec}
                         for cid, spec in (clusters or {}).items()}
        self.entrypoints = dict(DEFAULT_ENTRYPOINTS if entrypoints is None else entrypoints)
        self.extra_jobs = dict(extra_jobs or {})
        self.cluster_env = dict(cluster_env or {})
        self.pending_seconds = pending_seconds
        self.terminating_seconds = terminating_seconds
        self.run_timeout_seconds = run_timeout_seconds
        self.python = python
        self.requests: list[RecordedRequest] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-databricks-"))
        self.dbfs_root = self._tmp / "dbfs"
        self.dbfs_root.mkdir()
        self._lock = threading.RLock()
        self._ids = itertools.count(1001)
        self._runs: dict[int, _Run] = {}
        self._task_runs: dict[int, tuple[_Run, _TaskRun]] = {}
        self._handles: dict[int, Path] = {}
        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopped = False
        self._routes: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
            "/api/2.0/dbfs/mkdirs": ("POST", self._dbfs_mkdirs),
            "/api/2.0/dbfs/put": ("POST", self._dbfs_put),
            "/api/2.0/dbfs/create": ("POST", self._dbfs_create),
            "/api/2.0/dbfs/add-block": ("POST", self._dbfs_add_block),
            "/api/2.0/dbfs/close": ("POST", self._dbfs_close),
            "/api/2.0/dbfs/read": ("GET", self._dbfs_read),
            "/api/2.0/dbfs/get-status": ("GET", self._dbfs_get_status),
            "/api/2.0/dbfs/list": ("GET", self._dbfs_list),
            "/api/2.0/dbfs/delete": ("POST", self._dbfs_delete),
        }
        for version in ("2.1", "2.2"):
            self._routes.update({
                f"/api/{version}/jobs/runs/submit": ("POST", self._runs_submit),
                f"/api/{version}/jobs/runs/get": ("GET", self._runs_get),
                f"/api/{version}/jobs/runs/get-output": ("GET", self._runs_get_output),
                f"/api/{version}/jobs/runs/cancel": ("POST", self._runs_cancel),
            })
        for version in ("2.0", "2.1"):
            self._routes[f"/api/{version}/clusters/get"] = ("GET", self._clusters_get)

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Databricks workspace is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeDatabricksWorkspace:
        handler = type("FakeDatabricksHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._serve_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name="fake-databricks", daemon=True)
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Cancel unfinished runs (killing their processes), stop the server, delete the temp directory."""
        if self._stopped:
            return
        self._stopped = True
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self._cancel(run)
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=30)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=10)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeDatabricksWorkspace:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---- helpers for tests -----------------------------------------------------------------------------

    def requests_to(self, method: str, path_suffix: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path ends with path_suffix (e.g. "/jobs/runs/submit")."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def local_path(self, dbfs_path: str) -> Path:
        """Where a DBFS path (`dbfs:/x` or `/x`) lives on this machine."""
        rel = self._dbfs_rel(dbfs_path)
        return self.dbfs_root / rel if rel else self.dbfs_root

    def put_file(self, dbfs_path: str, data: bytes) -> None:
        path = self.local_path(dbfs_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def run_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._runs)

    def run_view(self, run_id: int) -> dict[str, Any]:
        """The runs/get answer for a run."""
        with self._lock:
            return self._run_view(self._get_run(run_id))

    def task_output(self, run_id: int) -> dict[str, Any]:
        """Exit code (None until it exits), stdout and stderr so far of each task of a run, by task_key."""
        with self._lock:
            run = self._get_run(run_id)
            tasks = [(t.key, t.exit_code, t.workdir) for t in run.tasks]
        return {key: {"exit_code": code,
                      "stdout": (workdir / "stdout").read_text(errors="replace") if workdir else "",
                      "stderr": (workdir / "stderr").read_text(errors="replace") if workdir else ""}
                for key, code, workdir in tasks}

    # ---- HTTP dispatch ---------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> tuple[int, dict[str, Any]]:
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = RecordedRequest(method=method, path=split.path, query=query, headers=dict(handler.headers.items()))
        with self._lock:
            self.requests.append(record)
        malformed = False
        if raw:
            try:
                record.body = json.loads(raw)
            except ValueError:
                record.body, malformed = raw.decode("utf-8", errors="replace"), True
        try:
            if handler.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
            if malformed:
                raise ApiError(400, "MALFORMED_REQUEST", "Could not parse request object: invalid JSON")
            route = self._routes.get(split.path)
            if route is None:
                raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {split.path}'")
            expected, func = route
            if method != expected:
                raise ApiError(405, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {split.path}'")
            args = record.body if method == "POST" else query
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ApiError(400, "MALFORMED_REQUEST", "Request body must be a JSON object")
            status, payload = 200, func(args)
        except ApiError as exc:
            status, payload = exc.status, {"error_code": exc.error_code, "message": exc.message}
        except Exception as exc:  # a bug in the fake: answer it loudly rather than hang the client
            status, payload = 500, {"error_code": "INTERNAL_ERROR", "message": f"fake Databricks bug: {exc!r}"}
        record.status, record.response = status, payload
        return status, payload

    # ---- DBFS ------------------------------------------------------------------------------------------

    def _dbfs_rel(self, path: Any) -> str:
        if not isinstance(path, str) or not path:
            raise _bad("path must be a non-empty string")
        bare = path[len("dbfs:"):] if path.startswith("dbfs:") else path
        if not bare.startswith("/"):
            raise _bad(f"Path must be absolute: {path}")
        parts = [p for p in bare.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _bad(f"Path must not contain '..': {path}")
        return "/".join(parts)

    def _dbfs_local(self, args: dict[str, Any]) -> tuple[str, Path]:
        rel = self._dbfs_rel(args.get("path"))
        return "/" + rel, (self.dbfs_root / rel if rel else self.dbfs_root)

    def _file_info(self, local: Path) -> dict[str, Any]:
        stat = local.stat()
        rel = local.relative_to(self.dbfs_root).as_posix()
        return {"path": "/" + ("" if rel == "." else rel), "is_dir": local.is_dir(),
                "file_size": 0 if local.is_dir() else stat.st_size, "modification_time": int(stat.st_mtime * 1000)}

    def _make_parents(self, shown: str, local: Path) -> None:
        for parent in reversed(local.parents):
            if parent.is_relative_to(self.dbfs_root) and parent.exists() and not parent.is_dir():
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS",
                               f"A file or directory already exists at the input path {shown}.")
        local.parent.mkdir(parents=True, exist_ok=True)

    def _check_writable(self, shown: str, local: Path, overwrite: Any) -> None:
        if local.is_dir() or (local.exists() and overwrite is not True):
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS",
                           f"A file or directory already exists at the input path {shown}.")
        self._make_parents(shown, local)

    def _dbfs_mkdirs(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._dbfs_local(args)
        for candidate in [local, *local.parents]:
            if candidate.is_relative_to(self.dbfs_root) and candidate.exists() and not candidate.is_dir():
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS",
                               f"A file or directory already exists at the input path {shown}.")
        local.mkdir(parents=True, exist_ok=True)
        return {}

    def _dbfs_put(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._dbfs_local(args)
        if "contents" not in args:
            raise _bad("put without contents (multipart upload) is not supported by the fake")
        data = _b64decode(args["contents"], "contents")
        if len(data) > MAX_BLOCK_BYTES:
            raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "The contents of put must be at most 1 MB; use create/add-block/close.")
        self._check_writable(shown, local, args.get("overwrite"))
        partial = local.with_name(f".{local.name}.put-{threading.get_ident()}")
        partial.write_bytes(data)
        partial.replace(local)  # a reader on the "FUSE mount" never sees half a file
        return {}

    def _dbfs_create(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._dbfs_local(args)
        self._check_writable(shown, local, args.get("overwrite"))
        local.write_bytes(b"")
        with self._lock:
            handle = next(self._ids)
            self._handles[handle] = local
        return {"handle": handle}

    def _handle_path(self, args: dict[str, Any]) -> Path:
        with self._lock:
            local = self._handles.get(args.get("handle"))  # type: ignore[arg-type]
        if local is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"There is no open handle {args.get('handle')!r}")
        return local

    def _dbfs_add_block(self, args: dict[str, Any]) -> dict[str, Any]:
        local = self._handle_path(args)
        data = _b64decode(args.get("data"), "data")
        if len(data) > MAX_BLOCK_BYTES:
            raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "A block must be at most 1 MB.")
        with local.open("ab") as f:
            f.write(data)
        return {}

    def _dbfs_close(self, args: dict[str, Any]) -> dict[str, Any]:
        self._handle_path(args)
        with self._lock:
            self._handles.pop(args["handle"], None)
        return {}

    def _existing(self, args: dict[str, Any]) -> tuple[str, Path]:
        shown, local = self._dbfs_local(args)
        if not local.exists():
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {shown}.")
        return shown, local

    def _int_arg(self, args: dict[str, Any], name: str, default: int) -> int:
        value = args.get(name, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _bad(f"{name} must be an integer, got {value!r}") from None

    def _dbfs_read(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._existing(args)
        if local.is_dir():
            raise _bad(f"Cannot read a directory: {shown}")
        offset = self._int_arg(args, "offset", 0)
        length = self._int_arg(args, "length", DEFAULT_READ_BYTES)
        if offset < 0 or length < 0:
            raise _bad("offset and length must not be negative")
        if length > MAX_BLOCK_BYTES:
            raise ApiError(400, "MAX_READ_SIZE_EXCEEDED", "Cannot read more than 1 MB at once.")
        with local.open("rb") as f:
            f.seek(offset)
            data = f.read(length)
        return {"bytes_read": len(data), "data": base64.b64encode(data).decode("ascii")}

    def _dbfs_get_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._file_info(self._existing(args)[1])

    def _dbfs_list(self, args: dict[str, Any]) -> dict[str, Any]:
        _, local = self._existing(args)
        entries = sorted(local.iterdir()) if local.is_dir() else [local]
        files = [self._file_info(p) for p in entries if not p.name.startswith(".")]
        return {"files": files} if files else {}

    def _dbfs_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._dbfs_local(args)
        if local == self.dbfs_root:
            raise _bad("Cannot delete the root directory")
        if local.is_dir():
            if any(local.iterdir()) and args.get("recursive") is not True:
                raise ApiError(400, "IO_ERROR", f"Directory {shown} is not empty; delete it with recursive=true.")
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        return {}

    # ---- clusters --------------------------------------------------------------------------------------

    def _clusters_get(self, args: dict[str, Any]) -> dict[str, Any]:
        cluster = self.clusters.get(args.get("cluster_id"))  # type: ignore[arg-type]
        if cluster is None:
            raise _bad(f"Cluster {args.get('cluster_id')} does not exist")
        return dict(cluster)

    # ---- jobs ------------------------------------------------------------------------------------------

    def _validate_task(self, task: Any, seen_keys: set[str]) -> None:
        if not isinstance(task, dict):
            raise _bad("each task must be an object")
        key = task.get("task_key")
        if not isinstance(key, str) or not _TASK_KEY.match(key):
            raise _bad(f"task_key must match {_TASK_KEY.pattern}, got {key!r}")
        if key in seen_keys:
            raise _bad(f"Duplicate task_key {key!r}")
        seen_keys.add(key)

        task_types = [t for t in _TASK_TYPES if t in task]
        if len(task_types) != 1:
            raise _bad(f"Task {key}: exactly one task type must be set, got {task_types}")
        if task_types != ["spark_python_task"]:
            raise _bad(f"Task {key}: the fake Databricks workspace only runs spark_python_task, got {task_types[0]}")
        python_task = task["spark_python_task"]
        if not isinstance(python_task, dict) or not isinstance(python_task.get("python_file"), str):
            raise _bad(f"Task {key}: spark_python_task.python_file is required")
        parameters = python_task.get("parameters", [])
        if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
            raise _bad(f"Task {key}: spark_python_task.parameters must be a list of strings")
        if python_task.get("source", "WORKSPACE") != "WORKSPACE":
            raise _bad(f"Task {key}: only source=WORKSPACE python files are supported by the fake")

        compute = [c for c in _COMPUTE_KEYS if c in task]
        if len(compute) != 1:
            raise _bad(f"Task {key}: exactly one of {', '.join(_COMPUTE_KEYS)} must be set, got {compute}")
        if compute == ["existing_cluster_id"]:
            if task["existing_cluster_id"] not in self.clusters:
                raise _bad(f"Cluster {task['existing_cluster_id']} does not exist")
        elif compute == ["new_cluster"]:
            cluster = task["new_cluster"]
            if not isinstance(cluster, dict) or not isinstance(cluster.get("spark_version"), str):
                raise _bad(f"Task {key}: new_cluster.spark_version is required")
            if not (isinstance(cluster.get("node_type_id"), str) or isinstance(cluster.get("instance_pool_id"), str)):
                raise _bad(f"Task {key}: new_cluster needs node_type_id or instance_pool_id")
            workers = cluster.get("num_workers")
            if "autoscale" not in cluster and not (isinstance(workers, int) and workers >= 0):
                raise _bad(f"Task {key}: new_cluster needs num_workers >= 0 or autoscale")
            env = cluster.get("spark_env_vars", {})
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
                raise _bad(f"Task {key}: new_cluster.spark_env_vars must map names to strings")
        else:
            raise _bad(f"Task {key}: {compute[0]} is not supported by the fake Databricks workspace")

        libraries = task.get("libraries", [])
        if not isinstance(libraries, list):
            raise _bad(f"Task {key}: libraries must be a list")
        for library in libraries:
            kinds = [k for k in _LIBRARY_KINDS if isinstance(library, dict) and k in library]
            if len(kinds) != 1 or len(library) != 1:
                raise _bad(f"Task {key}: each library must set exactly one of {', '.join(_LIBRARY_KINDS)}: {library!r}")
            if kinds == ["pypi"] and not isinstance(library["pypi"].get("package") if isinstance(library["pypi"], dict) else None, str):
                raise _bad(f"Task {key}: pypi library needs a package: {library!r}")
            if kinds[0] in ("whl", "jar", "egg", "requirements") and not isinstance(library[kinds[0]], str):
                raise _bad(f"Task {key}: {kinds[0]} library must be a path: {library!r}")

    def _runs_submit(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise _bad("tasks must be a non-empty list")
        keys: set[str] = set()
        for task in tasks:
            self._validate_task(task, keys)
        with self._lock:
            if self._stopped:
                raise ApiError(503, "TEMPORARILY_UNAVAILABLE", "the fake workspace is shutting down")
            run_id = next(self._ids)
            run = _Run(run_id=run_id, job_id=run_id + 500_000, run_name=body.get("run_name") or "Untitled",
                       request=body, tasks=[_TaskRun(run_id=next(self._ids), spec=t) for t in tasks])
            self._runs[run_id] = run
            for task_run in run.tasks:
                self._task_runs[task_run.run_id] = (run, task_run)
            run.thread = threading.Thread(target=self._execute, args=(run,), name=f"fake-databricks-run-{run_id}",
                                          daemon=True)
            run.thread.start()
        return {"run_id": run_id}

    def _get_run(self, run_id: Any) -> _Run:
        try:
            run = self._runs.get(int(run_id))
        except (TypeError, ValueError):
            raise _bad(f"run_id must be an integer, got {run_id!r}") from None
        if run is None:
            raise _bad(f"Run {run_id} does not exist.")
        return run

    def _runs_get(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._run_view(self._get_run(args.get("run_id")))

    def _runs_cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            run = self._get_run(body.get("run_id"))
        self._cancel(run)
        return {}

    def _runs_get_output(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                found = self._task_runs.get(int(args.get("run_id")))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise _bad(f"run_id must be an integer, got {args.get('run_id')!r}") from None
            if found is None:
                if self._runs.get(int(args["run_id"])) is not None:
                    raise _bad("Retrieving the output of runs with multiple tasks is not supported. "
                               "Please retrieve the output of each individual task run instead.")
                raise _bad(f"Run {args.get('run_id')} does not exist.")
            run, task = found
            output: dict[str, Any] = {"metadata": self._task_view(run, task), "logs": _tail(task.stdout),
                                      "logs_truncated": len(task.stdout) > 20_000}
            if task.error is not None:
                output["error"] = task.error
                output["error_trace"] = _tail(task.stderr)
            return output

    def _state(self, life_cycle: str, result: str | None, message: str, cancelled: bool = False) -> dict[str, Any]:
        state: dict[str, Any] = {"life_cycle_state": life_cycle, "state_message": message,
                                 "user_cancelled_or_timedout": cancelled}
        if result is not None:
            state["result_state"] = result
        return state

    def _page_url(self, run: _Run) -> str:
        return f"{self.url}/?o=0#job/{run.job_id}/run/{run.run_id}"

    def _task_view(self, run: _Run, task: _TaskRun) -> dict[str, Any]:
        view = {**task.spec, "run_id": task.run_id, "attempt_number": 0,
                "state": self._state(task.life_cycle_state, task.result_state, task.state_message,
                                     run.user_cancelled),
                "start_time": task.start_time, "end_time": task.end_time, "run_page_url": self._page_url(run)}
        if task.cluster_id is not None:
            view["cluster_instance"] = {"cluster_id": task.cluster_id}
        return view

    def _run_view(self, run: _Run) -> dict[str, Any]:
        end = run.end_time or 0
        return {
            "job_id": run.job_id,
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "run_name": run.run_name,
            "run_type": "SUBMIT_RUN",
            "format": "MULTI_TASK",
            "creator_user_name": "fake-user@example.com",
            "state": self._state(run.life_cycle_state, run.result_state, run.state_message, run.user_cancelled),
            "tasks": [self._task_view(run, t) for t in run.tasks],
            "start_time": run.start_time,
            "end_time": end,
            "setup_duration": max(0, (run.running_since or end or _now_ms()) - run.start_time) if run.running_since else 0,
            "execution_duration": max(0, end - run.running_since) if end and run.running_since else 0,
            "cleanup_duration": 0,
            "run_page_url": self._page_url(run),
        }

    # ---- the fake cluster ------------------------------------------------------------------------------

    def _cancel(self, run: _Run) -> None:
        with self._lock:
            if run.life_cycle_state in _TERMINAL:
                return
            run.cancel_requested.set()
            processes = [t.process for t in run.tasks if t.process is not None]
        for process in processes:
            _kill_group(process)

    def _set(self, run: _Run, life_cycle: str, message: str, result: str | None = None) -> None:
        with self._lock:
            run.life_cycle_state, run.state_message, run.result_state = life_cycle, message, result
            if life_cycle == "RUNNING" and not run.running_since:
                run.running_since = _now_ms()
            if life_cycle in _TERMINAL:
                run.end_time = _now_ms()

    def _execute(self, run: _Run) -> None:
        try:
            self._execute_tasks(run)
        except Exception as exc:  # never leave a run hanging in RUNNING because of a bug here
            self._set(run, "INTERNAL_ERROR", f"fake Databricks bug: {exc!r}", "FAILED")

    def _execute_tasks(self, run: _Run) -> None:
        if run.cancel_requested.wait(self.pending_seconds):
            return self._finish_cancelled(run)
        self._set(run, "RUNNING", "In run")
        failed: _TaskRun | None = None
        for task in run.tasks:
            if failed is not None or run.cancel_requested.is_set():
                with self._lock:
                    task.life_cycle_state, task.result_state = "SKIPPED", "UPSTREAM_FAILED" if failed else "CANCELED"
                    task.state_message = "Upstream task failed" if failed else "Run cancelled."
                continue
            self._run_task(run, task)
            if task.result_state != "SUCCESS":
                failed = task
        if run.cancel_requested.is_set():
            return self._finish_cancelled(run)
        self._set(run, "TERMINATING", "Cleaning up")
        time.sleep(self.terminating_seconds)
        if failed is None:
            self._set(run, "TERMINATED", "", "SUCCESS")
        elif failed.life_cycle_state == "INTERNAL_ERROR":
            self._set(run, "INTERNAL_ERROR", failed.state_message, "FAILED")
        else:
            self._set(run, "TERMINATED",
                      f"Task {failed.key} failed with message: {failed.state_message}. "
                      "This caused all downstream tasks to get skipped.", "FAILED")

    def _finish_cancelled(self, run: _Run) -> None:
        with self._lock:
            run.user_cancelled = True
            for task in run.tasks:
                if task.life_cycle_state not in _TERMINAL:
                    task.life_cycle_state, task.result_state, task.state_message = "TERMINATED", "CANCELED", "Run cancelled."
                    task.end_time = _now_ms()
        self._set(run, "TERMINATED", "Run cancelled.", "CANCELED")

    def _fail_task(self, task: _TaskRun, life_cycle: str, message: str, error: str | None = None) -> None:
        with self._lock:
            task.life_cycle_state, task.result_state, task.state_message = life_cycle, "FAILED", message
            task.error = message if error is None else error
            task.end_time = _now_ms()

    def _library_problem(self, library: dict[str, Any]) -> str | None:
        kind, value = next(iter(library.items()))
        if kind == "pypi":
            package = value["package"]
            name = re.split(r"[\s<>=!~\[;@]", package, maxsplit=1)[0]
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                return f"Could not find a version that satisfies the requirement {package}"
            return None
        if isinstance(value, str) and value.startswith("dbfs:/") and not self.local_path(value).is_file():
            return f"java.io.FileNotFoundException: {value} (No such file or directory)"
        return None

    def _target(self, python_file: str) -> str | None:
        if python_file in self.entrypoints:
            return f"module:{self.entrypoints[python_file]}"
        if python_file.startswith("dbfs:/") and self.local_path(python_file).is_file():
            return f"path:{self.local_path(python_file)}"
        return None

    def _run_task(self, run: _Run, task: _TaskRun) -> None:
        spec = task.spec
        if "new_cluster" in spec:
            cluster = spec["new_cluster"]
            cluster_id = time.strftime("%m%d-%H%M%S-") + f"fake{task.run_id}"
        else:
            cluster = self.clusters[spec["existing_cluster_id"]]
            cluster_id = cluster["cluster_id"]
        with self._lock:
            task.cluster_id, task.start_time = cluster_id, _now_ms()
            task.life_cycle_state, task.state_message = "RUNNING", "In run"

        for library in spec.get("libraries", []):
            problem = self._library_problem(library)
            if problem is not None:
                return self._fail_task(task, "INTERNAL_ERROR",
                                       f"Library installation failed for library due to user error. Error messages:\n{problem}")
        python_file = spec["spark_python_task"]["python_file"]
        target = self._target(python_file)
        if target is None:
            return self._fail_task(task, "INTERNAL_ERROR", f"Python file {python_file} does not exist")

        workdir = self._tmp / "runs" / str(task.run_id)
        workdir.mkdir(parents=True)
        (workdir / "stdout").touch()
        (workdir / "stderr").touch()
        task.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_PIPES_", "FAKE_DATABRICKS_"))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["DATABRICKS_RUNTIME_VERSION"] = ".".join(str(cluster.get("spark_version", "")).split(".")[:2])
        env["DB_CLUSTER_ID"] = cluster_id
        env.update(self.cluster_env)
        env.update(cluster.get("spark_env_vars") or {})
        env[_ENV_DBFS_ROOT] = str(self.dbfs_root)
        env[_ENV_CLUSTER_ID] = cluster_id
        env[_ENV_EXTRA_JOBS] = json.dumps(self.extra_jobs)
        command = [self.python, "-m", SHIM_MODULE, target, python_file, *spec["spark_python_task"].get("parameters", [])]
        out_path, err_path = workdir / "stdout", workdir / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err, self._lock:
            if run.cancel_requested.is_set():
                return
            task.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            exit_code = task.process.wait(timeout=self.run_timeout_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(task.process)
            exit_code, timed_out = task.process.wait(), True
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        with self._lock:
            task.exit_code, task.stdout, task.stderr, task.end_time = exit_code, stdout, stderr, _now_ms()
            task.process = None
            if run.cancel_requested.is_set():
                return
            if exit_code == 0:
                task.life_cycle_state, task.result_state, task.state_message = "TERMINATED", "SUCCESS", ""
                return
        lines = [line for line in stderr.splitlines() if line.strip()]
        error = (f"Timed out after {self.run_timeout_seconds} s" if timed_out
                 else lines[-1] if lines else f"exit code {exit_code}")
        self._fail_task(task, "TERMINATED", "Workload failed, see run output for details", error)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDatabricksWorkspace  # set on the subclass made by start()
    server_version = "FakeDatabricks/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def _serve(self, method: str) -> None:
        status, payload = self.fake._handle(self, method)
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr lines
        pass


# ----------------------------------------------------------------------------------------------------------
# the driver shim (runs in the fake cluster's subprocess)


class ClusterSparkSession:
    """The SparkSession a Databricks driver has before the task starts, minus the JVM.

    Only `conf.get` works (the cluster usage tags PipesDbfsMessageWriter reads); anything else is a clear
    error, because the fake cluster cannot run Spark."""

    class _Conf:
        def __init__(self, values: dict[str, str]):
            self._values = values

        def get(self, key: str, default: str | None = None) -> str | None:
            return self._values.get(key, default)

    def __init__(self, conf: dict[str, str]):
        self.conf = self._Conf(conf)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"spark.{name}: the fake Databricks cluster has no Spark; jobs run through "
                           "FakeDatabricksWorkspace must not use their SparkSession")


def _mount_dbfs(root: str) -> None:
    """Emulate the /dbfs FUSE mount: paths under /dbfs go to the fake DBFS directory."""
    import builtins
    import os.path

    def fuse(path: Any) -> Any:
        if isinstance(path, int):
            return path
        text = os.fspath(path)
        if isinstance(text, str) and (text == "/dbfs" or text.startswith("/dbfs/")):
            return root + text[len("/dbfs"):]
        return path

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        def mounted(path: Any, *args: Any, **kwargs: Any) -> Any:
            return func(fuse(path), *args, **kwargs)

        mounted.__name__ = func.__name__
        return mounted

    builtins.open = wrap(builtins.open)
    os.makedirs = wrap(os.makedirs)
    os.listdir = wrap(os.listdir)
    os.path.exists = wrap(os.path.exists)
    os.path.isdir = wrap(os.path.isdir)
    os.path.isfile = wrap(os.path.isfile)


def _install_cluster_session(cluster_id: str) -> None:
    from pyspark.sql import SparkSession

    session = ClusterSparkSession({CLUSTER_ID_CONF: cluster_id})
    SparkSession.getActiveSession = classmethod(lambda cls: session)  # type: ignore[method-assign, assignment]
    SparkSession.Builder.getOrCreate = lambda self: session  # type: ignore[method-assign, assignment]


def _cluster_main(argv: list[str]) -> None:
    """`<target> <python_file> <parameters...>`: run the task like a Databricks driver would."""
    import runpy

    target, python_file, *parameters = argv
    _mount_dbfs(os.environ.pop(_ENV_DBFS_ROOT))
    _install_cluster_session(os.environ.pop(_ENV_CLUSTER_ID))
    extra_jobs = json.loads(os.environ.pop(_ENV_EXTRA_JOBS, "{}"))
    if extra_jobs:
        from pinterest_platform.jobs import JOBS

        JOBS.update(extra_jobs)
    kind, _, what = target.partition(":")
    sys.argv = [python_file, *parameters]
    if kind == "module":
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(what, run_name="__main__")


if __name__ == "__main__":
    _cluster_main(sys.argv[1:])
