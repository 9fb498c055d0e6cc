"""A fake Databricks workspace: the REST endpoints `PipesDatabricksClient`, `PipesDatabricksServerlessClient`
and databricks-sdk call, for real.

`FakeDatabricksWorkspace` is an HTTP server on 127.0.0.1 (stdlib `http.server`, a free port) that

* checks `Authorization: Bearer <token>` on every request (401 UNAUTHENTICATED otherwise) and records every
  request (method, path, query, headers, JSON body, status, response) in `requests`;
* serves Unity Catalog volumes through the Files API (`/api/2.0/fs/files{path}` PUT|GET|HEAD|DELETE,
  `/api/2.0/fs/directories{path}` PUT|GET|HEAD|DELETE) for the volumes it was given (any other
  `/Volumes/...` path is 404), workspace files (`/api/2.0/workspace/import` (multipart, as the SDK
  uploads), `export`, `mkdirs`, `get-status`), and DBFS (`/api/2.0/dbfs/...`, with DBFS's error codes), each
  from a temporary directory;
* serves Jobs (`/api/2.{1,2}/jobs/runs/submit|get|get-output|cancel`) and `clusters/get` for the clusters it
  was given. `runs/submit` checks the body against the Databricks SDK's own dataclasses (every task must
  round-trip through `jobs.SubmitTask`, every environment through `jobs.JobEnvironment`, and only
  `JobsAPI.submit`'s fields may appear), then the semantics: one task type (spark_python_task), exactly
  one compute (new_cluster, existing_cluster_id or a serverless environment_key naming one of the run's
  environments), no task libraries on serverless; 400 INVALID_PARAMETER_VALUE otherwise;
* runs a submitted `spark_python_task`, in one of two ways:
  - stub clusters (the default): the libraries are only checked (a wheel must exist where its path says,
    a `pypi` package must be installed in this venv) and the task runs in `<python> -m
    pinterest_platform_tests.fakes.databricks` with the project on PYTHONPATH and a SparkSession stub
    without a JVM (`conf.get` answers the cluster usage tags; anything else raises), for fast protocol tests;
  - a real runtime (`runtime=FakeRuntime(...)`): the cluster is a fresh virtualenv that sees only what a
    Databricks runtime brings (pyspark, delta-spark, pyarrow, pandas, boto3, ... linked from this venv;
    not dagster, not the project), into which the task's libraries (classic) or its environment's
    dependencies (serverless) are pip-installed: the deployed wheel with its own requirements and the
    pinned dagster-pipes. The deployed entry point then runs by its path, on a real local SparkSession
    with the runtime's Spark conf (Delta, S3A on moto), under Pipes. The runtime's built-in `kinesis`
    format is played by the project's `kinesis-local` source registered under that name.
  Either way the environment is the new cluster's `spark_env_vars` (where Pipes puts DAGSTER_PIPES_CONTEXT
  and DAGSTER_PIPES_MESSAGES; inherited DAGSTER_PIPES_* are removed so only the request can provide them)
  or the existing cluster's, and the task parameters become `sys.argv[1:]` (where Pipes puts its CLI
  bootstrap arguments for existing clusters and serverless). The driver shim mounts /Volumes, /Workspace
  and /dbfs the way Databricks' FUSE mounts do (paths opened with `open`, `os.makedirs`, `os.listdir`,
  `os.path.exists|isdir|isfile` go to the temporary directories). The run moves PENDING -> RUNNING ->
  TERMINATING -> TERMINATED with result_state SUCCESS or FAILED from the exit code (INTERNAL_ERROR when a
  library cannot be installed, CANCELED after runs/cancel).

Not emulated: cluster log delivery, notebook/wheel/jar tasks, job clusters shared by key, task
dependencies (tasks of one run execute in submission order), DBFS `move`, Files API multipart uploads.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import importlib.metadata
import inspect
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
from urllib.parse import parse_qs, unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIM_MODULE = "pinterest_platform_tests.fakes.databricks"

# stub clusters run the entry point as the project's module when a task names it at any of these paths
DEFAULT_ENTRYPOINTS = {"databricks_entry.py": "pinterest_platform.jobs.databricks_entry"}

# Jobs for tests: they run on the fake cluster without touching Spark (no JVM start per test).
TEST_JOBS = {
    "fake_echo": f"{SHIM_MODULE}:echo_job",
    "fake_fail": f"{SHIM_MODULE}:failing_job",
}

CLUSTER_ID_CONF = "spark.databricks.clusterUsageTags.clusterId"

_ENV_MOUNTS = "FAKE_DATABRICKS_MOUNTS"
_ENV_SPARK_CONF = "FAKE_DATABRICKS_SPARK_CONF"
_ENV_EXTRA_JOBS = "FAKE_DATABRICKS_EXTRA_JOBS"
_ENV_CLUSTER_ID = "FAKE_DATABRICKS_CLUSTER_ID"

MAX_BLOCK_BYTES = 1 << 20  # put contents, add-block data and read length are capped at 1 MB
DEFAULT_READ_BYTES = 512 * 1024

_TASK_KEY = re.compile(r"^[\w\-.]{1,100}$")
_TASK_TYPES = ("spark_python_task", "notebook_task", "python_wheel_task", "spark_jar_task", "spark_submit_task",
               "pipeline_task", "sql_task", "dbt_task", "run_job_task", "condition_task", "for_each_task")
_COMPUTE_KEYS = ("new_cluster", "existing_cluster_id", "job_cluster_key", "environment_key")
_DATA_SECURITY_MODES = ("SINGLE_USER", "USER_ISOLATION", "DATA_SECURITY_MODE_DEDICATED", "DATA_SECURITY_MODE_STANDARD",
                        "DATA_SECURITY_MODE_AUTO")
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
    body: Any = None  # parsed JSON (the raw text if it was not JSON; "<N bytes>" for a file's bytes)
    raw: bytes = b""  # the body as sent
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


# what a Databricks runtime brings with it: linked from this venv into every real fake cluster
RUNTIME_DISTRIBUTIONS = ("pyspark", "py4j", "delta-spark", "importlib-metadata", "zipp", "pyarrow", "numpy",
                         "pandas", "python-dateutil", "pytz", "tzdata", "six", "boto3", "botocore", "s3transfer",
                         "jmespath", "urllib3")


@dataclass
class FakeRuntime:
    """A Databricks runtime for real execution: the Spark conf every cluster's session starts with (what a
    runtime has built in: Delta, S3 access to the lake) and extra pip arguments for installing libraries."""

    spark_conf: dict[str, str]
    distributions: tuple[str, ...] = RUNTIME_DISTRIBUTIONS
    pip_args: tuple[str, ...] = ()


@dataclass
class _Response:
    status: int
    payload: Any = None  # JSON answer
    raw: bytes | None = None  # a file's bytes (Files API, workspace export)
    headers: dict[str, str] = field(default_factory=dict)


class FakeDatabricksWorkspace:
    """A Databricks workspace on 127.0.0.1: start() / stop(), or use it as a context manager.

    Args:
        token: the only token accepted (as `Authorization: Bearer <token>`).
        clusters: existing all-purpose clusters by id (spec dict, e.g. {"spark_version": ..., "spark_env_vars":
            {...}}); a task naming any other existing_cluster_id is rejected.
        entrypoints: spark_python_task python_file -> module run in its place (default: our entry point).
        extra_jobs: job name -> "module:function" added to pinterest_platform.jobs.JOBS on stub clusters.
        volumes: Unity Catalog volumes that exist, as /Volumes/<catalog>/<schema>/<volume>.
        runtime: run tasks for real on this runtime (see FakeRuntime) instead of stub clusters.
        cluster_env: environment variables every fake cluster has (under the task's spark_env_vars).
        pending_seconds / terminating_seconds: how long a run stays PENDING / TERMINATING.
        run_timeout_seconds: a task still running after this is killed and FAILED.
    """

    def __init__(self, *, token: str = "t0k3n", clusters: dict[str, dict[str, Any]] | None = None,
                 entrypoints: dict[str, str] | None = None, extra_jobs: dict[str, str] | None = None,
                 cluster_env: dict[str, str] | None = None, pending_seconds: float = 0.3,
                 terminating_seconds: float = 0.2, run_timeout_seconds: float = 120.0,
                 python: str = sys.executable, volumes: list[str] | None = None, runtime: FakeRuntime | None = None):
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
        self.volumes_root = self._tmp / "volumes"
        self.workspace_root = self._tmp / "workspace"
        self.workspace_root.mkdir()
        self.volumes = [v.rstrip("/") for v in (volumes or [])]
        for volume in self.volumes:
            parts = volume.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "Volumes":
                raise ValueError(f"{volume!r}: a volume is /Volumes/<catalog>/<schema>/<volume>")
            (self.volumes_root / "/".join(parts[1:])).mkdir(parents=True)
        self.runtime = runtime
        self._cluster_envs: dict[str, Path] = {}
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
        self._routes.update({
            "/api/2.0/workspace/mkdirs": ("POST", self._workspace_mkdirs),
            "/api/2.0/workspace/get-status": ("GET", self._workspace_get_status),
        })

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

    def put_file(self, remote_path: str, data: bytes) -> None:
        """Write a file at a DBFS, /Volumes/... or /Workspace/... path."""
        path = self.resolve(remote_path) if remote_path.startswith(("/Volumes/", "/Workspace/")) \
            else self.local_path(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def resolve(self, remote_path: str) -> Path:
        """Where a /Volumes/..., /Workspace/... or dbfs: path lives on this machine (404 ApiError if nowhere)."""
        if remote_path.startswith("/Volumes/"):
            parts = remote_path.strip("/").split("/")
            if "/".join(parts[:4]) not in {v.strip("/") for v in self.volumes} or ".." in parts:
                raise ApiError(404, "NOT_FOUND", f"The volume of {remote_path} does not exist")
            return self.volumes_root.joinpath(*parts[1:])
        if remote_path.startswith("/Workspace/") or remote_path == "/Workspace":
            parts = remote_path.strip("/").split("/")[1:]
            if ".." in parts:
                raise _bad(f"bad path {remote_path}")
            return self.workspace_root.joinpath(*parts)
        return self.local_path(remote_path)

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

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> _Response:
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = RecordedRequest(method=method, path=split.path, query=query, headers=dict(handler.headers.items()),
                                 raw=raw)
        with self._lock:
            self.requests.append(record)
        # the Files API and workspace import carry bytes, everything else JSON
        binary = split.path.startswith(("/api/2.0/fs/", "/api/2.0/workspace/import", "/api/2.0/workspace/export"))
        malformed = False
        if raw and not binary:
            try:
                record.body = json.loads(raw)
            except ValueError:
                record.body, malformed = raw.decode("utf-8", errors="replace"), True
        elif raw:
            record.body = f"<{len(raw)} bytes>"
        try:
            if handler.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
            if malformed:
                raise ApiError(400, "MALFORMED_REQUEST", "Could not parse request object: invalid JSON")
            if split.path.startswith("/api/2.0/fs/"):
                response = self._files_api(method, split.path, query, raw)
            elif split.path == "/api/2.0/workspace/import":
                if method != "POST":
                    raise ApiError(405, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {split.path}'")
                response = _Response(200, self._workspace_import(handler.headers.get("Content-Type", ""), raw))
            elif split.path == "/api/2.0/workspace/export":
                response = self._workspace_export(query)
            else:
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
                response = _Response(200, func(args))
        except ApiError as exc:
            response = _Response(exc.status, {"error_code": exc.error_code, "message": exc.message})
        except Exception as exc:  # a bug in the fake: answer it loudly rather than hang the client
            response = _Response(500, {"error_code": "INTERNAL_ERROR", "message": f"fake Databricks bug: {exc!r}"})
        record.status = response.status
        record.response = response.payload if response.raw is None else f"<{len(response.raw)} bytes>"
        return response

    # ---- Files API (Unity Catalog volumes) -------------------------------------------------------------

    def _files_api(self, method: str, path: str, query: dict[str, str], raw: bytes) -> _Response:
        if path.startswith("/api/2.0/fs/files/"):
            kind, remote = "file", path[len("/api/2.0/fs/files"):]
        elif path.startswith("/api/2.0/fs/directories/"):
            kind, remote = "directory", path[len("/api/2.0/fs/directories"):]
        else:
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        remote = unquote(remote)
        if not remote.startswith("/Volumes/"):
            raise _bad(f"{remote}: the Files API serves /Volumes/<catalog>/<schema>/<volume>/... paths")
        local = self.resolve(remote)
        if kind == "file":
            if method == "PUT":
                if local.is_dir():
                    raise ApiError(409, "ALREADY_EXISTS", f"{remote} is a directory")
                if local.exists() and str(query.get("overwrite", "true")).lower() == "false":
                    raise ApiError(409, "ALREADY_EXISTS", f"The file being created already exists: {remote}")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(raw)
                return _Response(204)
            if not local.is_file():
                raise ApiError(404, "NOT_FOUND", f"The file {remote} does not exist")
            if method == "GET":
                return _Response(200, raw=local.read_bytes(), headers={"Content-Type": "application/octet-stream"})
            if method == "HEAD":
                return _Response(200, raw=b"", headers={"Content-Length": str(local.stat().st_size),
                                                        "Content-Type": "application/octet-stream",
                                                        "Last-Modified": time.strftime(
                                                            "%a, %d %b %Y %H:%M:%S GMT",
                                                            time.gmtime(local.stat().st_mtime))})
            if method == "DELETE":
                local.unlink()
                return _Response(204)
        else:
            if method == "PUT":
                if local.is_file():
                    raise ApiError(409, "ALREADY_EXISTS", f"{remote} is a file")
                local.mkdir(parents=True, exist_ok=True)
                return _Response(204)
            if not local.is_dir():
                raise ApiError(404, "NOT_FOUND", f"The directory {remote} does not exist")
            if method == "HEAD":
                return _Response(200, raw=b"")
            if method == "GET":
                contents = []
                for child in sorted(local.iterdir()):
                    entry = {"path": f"{remote.rstrip('/')}/{child.name}", "name": child.name,
                             "is_directory": child.is_dir()}
                    if child.is_file():
                        entry.update(file_size=child.stat().st_size, last_modified=int(child.stat().st_mtime * 1000))
                    contents.append(entry)
                return _Response(200, {"contents": contents})
            if method == "DELETE":
                if any(local.iterdir()):
                    raise ApiError(409, "DIRECTORY_NOT_EMPTY", f"The directory {remote} is not empty")
                local.rmdir()
                return _Response(204)
        raise ApiError(405, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    # ---- workspace files -------------------------------------------------------------------------------

    def _workspace_path(self, path: Any) -> tuple[str, Path]:
        if not isinstance(path, str) or not path.startswith("/"):
            raise _bad(f"path must be absolute, got {path!r}")
        shown = path if path.startswith("/Workspace") else f"/Workspace{path}"
        return path, self.resolve(shown)

    def _workspace_mkdirs(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._workspace_path(args.get("path"))
        if local.is_file():
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"{shown} exists and is not a directory")
        local.mkdir(parents=True, exist_ok=True)
        return {}

    def _workspace_get_status(self, args: dict[str, Any]) -> dict[str, Any]:
        shown, local = self._workspace_path(args.get("path"))
        if not local.exists():
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Path ({shown}) doesn't exist.")
        return {"path": shown, "object_type": "DIRECTORY" if local.is_dir() else "FILE"}

    def _workspace_import(self, content_type: str, raw: bytes) -> dict[str, Any]:
        if not content_type.startswith("multipart/form-data"):
            raise _bad("workspace/import: expected a multipart/form-data upload")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields: dict[str, bytes] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = part.get_payload(decode=True) or b""
        if "path" not in fields or "content" not in fields:
            raise _bad("workspace/import needs path and content")
        shown, local = self._workspace_path(fields["path"].decode())
        if fields.get("format", b"SOURCE").decode() not in ("AUTO", "SOURCE", "RAW"):
            raise _bad(f"workspace/import: format {fields['format'].decode()} is not supported by the fake")
        if local.exists() and fields.get("overwrite", b"false").decode().lower() != "true":
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Path ({shown}) already exists.")
        if not local.parent.is_dir():
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"The parent folder of {shown} does not exist.")
        local.write_bytes(fields["content"])
        return {}

    def _workspace_export(self, query: dict[str, str]) -> _Response:
        shown, local = self._workspace_path(query.get("path"))
        if not local.is_file():
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Path ({shown}) doesn't exist.")
        if query.get("direct_download") == "true":
            return _Response(200, raw=local.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        return _Response(200, {"content": base64.b64encode(local.read_bytes()).decode(), "file_type": "py"})

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

    def _check_against_sdk(self, body: dict[str, Any]) -> dict[str, dict]:
        """The body as the Databricks SDK models it: unknown or mistyped fields are refused, as the service
        would. Returns the run's environments by key."""
        from databricks.sdk.service import jobs

        allowed = set(inspect.signature(jobs.JobsAPI.submit).parameters) - {"self"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _bad(f"runs/submit: unknown field(s) {', '.join(unknown)}")
        for task in body.get("tasks") or []:
            if isinstance(task, dict) and jobs.SubmitTask.from_dict(task).as_dict() != task:
                raise _bad(f"runs/submit: task {task.get('task_key')!r} does not match the SubmitTask model: "
                           f"{json.dumps(task, sort_keys=True)}")
        environments: dict[str, dict] = {}
        raw_environments = body.get("environments", [])
        if not isinstance(raw_environments, list):
            raise _bad("environments must be a list")
        for environment in raw_environments:
            if not isinstance(environment, dict) or jobs.JobEnvironment.from_dict(environment).as_dict() != environment:
                raise _bad(f"runs/submit: environment {environment!r} does not match the JobEnvironment model")
            spec = environment.get("spec") or {}
            if not (spec.get("environment_version") or spec.get("client")):
                raise _bad(f"environment {environment.get('environment_key')!r}: spec.environment_version is required")
            dependencies = spec.get("dependencies", [])
            if not all(isinstance(d, str) and d for d in dependencies):
                raise _bad(f"environment {environment.get('environment_key')!r}: dependencies must be strings")
            environments[environment["environment_key"]] = spec
        return environments

    def _validate_task(self, task: Any, seen_keys: set[str], environments: dict[str, dict]) -> None:
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
        if compute == ["environment_key"]:
            if task["environment_key"] not in environments:
                raise _bad(f"Task {key}: environment_key {task['environment_key']!r} is not one of the run's "
                           f"environments {sorted(environments)}")
            if task.get("libraries"):
                raise _bad(f"Task {key}: Libraries field is not supported for serverless task, please specify "
                           "libraries in environment.")
        elif compute == ["existing_cluster_id"]:
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
            mode = cluster.get("data_security_mode")
            if mode is not None and mode not in _DATA_SECURITY_MODES:
                raise _bad(f"Task {key}: new_cluster.data_security_mode {mode!r} is not one of {_DATA_SECURITY_MODES}")
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
        environments = self._check_against_sdk(body)
        keys: set[str] = set()
        for task in tasks:
            self._validate_task(task, keys, environments)
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

    def _local_file(self, remote: str) -> Path | None:
        """The file at a /Volumes, /Workspace or dbfs: path, or None when there is none."""
        try:
            local = self.resolve(remote)
        except ApiError:
            return None
        return local if local.is_file() else None

    def _requirements(self, run: _Run, spec: dict[str, Any]) -> tuple[list[str], str | None]:
        """What the task installs: pip requirements (a wheel as its local path), or the problem that stops it."""
        if "environment_key" in spec:
            environment = next(e for e in run.request.get("environments", [])
                               if e["environment_key"] == spec["environment_key"])
            wanted = [("whl", d) if d.startswith(("/", "dbfs:")) else ("pypi", d)
                      for d in environment["spec"].get("dependencies", [])]
        else:
            wanted = [(kind, value["package"] if kind == "pypi" else value)
                      for library in spec.get("libraries", []) for kind, value in library.items()]
        requirements = []
        for kind, value in wanted:
            if kind == "pypi":
                if self.runtime is None:
                    # a stub cluster "has" what this venv has
                    name = re.split(r"[\s<>=!~\[;@]", value, maxsplit=1)[0]
                    try:
                        importlib.metadata.distribution(name)
                    except importlib.metadata.PackageNotFoundError:
                        return [], f"Could not find a version that satisfies the requirement {value}"
                requirements.append(value)
            elif kind == "whl":
                local = self._local_file(value)
                if local is None:
                    return [], f"java.io.FileNotFoundException: {value} (No such file or directory)"
                requirements.append(str(local))
            else:
                return [], f"the fake Databricks workspace cannot install {kind} libraries"
        return requirements, None

    def _runtime_dir(self) -> Path:
        """The packages a Databricks runtime brings, linked from this venv (once per fake workspace)."""
        assert self.runtime is not None
        folder = self._tmp / "runtime"
        if folder.exists():
            return folder
        staging = self._tmp / "runtime.partial"
        staging.mkdir()
        for name in self.runtime.distributions:
            dist = importlib.metadata.distribution(name)
            base = Path(str(dist.locate_file("")))
            for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
                if top in ("..", "bin", "__pycache__") or (staging / top).exists() or not (base / top).exists():
                    continue
                (staging / top).symlink_to(base / top)
        staging.rename(folder)
        return folder

    def _cluster_python(self, requirements: list[str]) -> tuple[str | None, str | None]:
        """A fresh virtualenv with the runtime's packages and these requirements: (its python, problem)."""
        identity = hashlib.sha256()
        for requirement in requirements:
            path = Path(requirement)
            identity.update(path.read_bytes() if path.is_file() else requirement.encode())
        key = identity.hexdigest()[:16]
        with self._lock:
            if key in self._cluster_envs:
                return str(self._cluster_envs[key] / "bin" / "python"), None
        venv = self._tmp / "clusters" / key
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        python = venv / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "_databricks_runtime.pth").write_text(f"{self._runtime_dir()}\n")
        if requirements:
            result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                     "--disable-pip-version-check", *self.runtime.pip_args, *requirements],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                return None, _tail(result.stderr.strip() or result.stdout.strip(), 4000)
        with self._lock:
            self._cluster_envs[key] = venv
        return str(python), None

    def _target(self, python_file: str) -> str | None:
        local = self._local_file(python_file)
        if self.runtime is not None:
            return f"path:{local}" if local is not None else None
        module = self.entrypoints.get(python_file) or self.entrypoints.get(python_file.rsplit("/", 1)[-1])
        if module is not None:
            return f"module:{module}"
        return f"path:{local}" if local is not None else None

    def _run_task(self, run: _Run, task: _TaskRun) -> None:
        spec = task.spec
        if "new_cluster" in spec:
            cluster = spec["new_cluster"]
            cluster_id = time.strftime("%m%d-%H%M%S-") + f"fake{task.run_id}"
        elif "existing_cluster_id" in spec:
            cluster = self.clusters[spec["existing_cluster_id"]]
            cluster_id = cluster["cluster_id"]
        else:  # serverless
            cluster = {"spark_version": "serverless"}
            cluster_id = f"serverless-{task.run_id}"
        with self._lock:
            task.cluster_id, task.start_time = cluster_id, _now_ms()
            task.life_cycle_state, task.state_message = "RUNNING", "In run"

        requirements, problem = self._requirements(run, spec)
        python = self.python
        if problem is None and self.runtime is not None:
            python, problem = self._cluster_python(requirements)
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
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DAGSTER_PIPES_", "FAKE_DATABRICKS_", "PYSPARK_", "SPARK_"))
               and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        if self.runtime is None:
            env["PYTHONPATH"] = str(PROJECT_ROOT)
            env[_ENV_EXTRA_JOBS] = json.dumps(self.extra_jobs)
            shim = ["-m", SHIM_MODULE, "stub"]
        else:
            # the driver script runs from the run's folder, so nothing of this checkout is importable there
            shutil.copy(Path(__file__), workdir / "fake_databricks_driver.py")
            env[_ENV_SPARK_CONF] = json.dumps(self.runtime.spark_conf)
            shim = [str(workdir / "fake_databricks_driver.py"), "real"]
        env["PYTHONUNBUFFERED"] = "1"
        env["DATABRICKS_RUNTIME_VERSION"] = ".".join(str(cluster.get("spark_version", "")).split(".")[:2])
        env["DB_CLUSTER_ID"] = cluster_id
        env.update(self.cluster_env)
        env.update(cluster.get("spark_env_vars") or {})
        env[_ENV_MOUNTS] = json.dumps({"/dbfs": str(self.dbfs_root), "/Volumes": str(self.volumes_root),
                                       "/Workspace": str(self.workspace_root)})
        env[_ENV_CLUSTER_ID] = cluster_id
        command = [python, *shim, target, python_file, *spec["spark_python_task"].get("parameters", [])]
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
        response = self.fake._handle(self, method)
        headers = dict(response.headers)
        if response.raw is not None:
            data = response.raw
        elif response.payload is None:
            data = b""
        else:
            data = json.dumps(response.payload).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(data)))
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD" and response.status != 204:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

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


def _mount(mounts: dict[str, str]) -> None:
    """Emulate Databricks' FUSE mounts (/dbfs, /Volumes, /Workspace): their paths go to the fake's folders."""
    import builtins
    import os.path

    def fuse(path: Any) -> Any:
        if isinstance(path, int):
            return path
        text = os.fspath(path)
        if isinstance(text, str):
            for prefix, root in mounts.items():
                if text == prefix or text.startswith(prefix + "/"):
                    return root + text[len(prefix):]
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


def _start_runtime_session(cluster_id: str, conf: dict[str, str]) -> None:
    """The session a Databricks driver has before the task starts: Spark with the runtime's conf, and the
    runtime's built-in `kinesis` format."""
    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors' Python workers: this cluster's venv
    from pyspark.sql import SparkSession

    conf = dict(conf)
    builder = SparkSession.builder.master(conf.pop("spark.master", "local[2]")).appName(f"fake-databricks-{cluster_id}")
    for key, value in {**conf, CLUSTER_ID_CONF: cluster_id}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        from pinterest_platform.streaming.kinesis_source import KinesisDataSource
    except ImportError:
        return

    class DatabricksKinesis(KinesisDataSource):
        @classmethod
        def name(cls) -> str:
            return "kinesis"

    spark.dataSource.register(DatabricksKinesis)


def _cluster_main(argv: list[str]) -> None:
    """`stub|real <target> <python_file> <parameters...>`: run the task like a Databricks driver would."""
    import runpy

    mode, target, python_file, *parameters = argv
    _mount(json.loads(os.environ.pop(_ENV_MOUNTS)))
    cluster_id = os.environ.pop(_ENV_CLUSTER_ID)
    if mode == "stub":
        _install_cluster_session(cluster_id)
        extra_jobs = json.loads(os.environ.pop(_ENV_EXTRA_JOBS, "{}"))
        if extra_jobs:
            from pinterest_platform.jobs import JOBS

            JOBS.update(extra_jobs)
    else:
        _start_runtime_session(cluster_id, json.loads(os.environ.pop(_ENV_SPARK_CONF)))
    kind, _, what = target.partition(":")
    sys.argv = [python_file, *parameters]
    if kind == "module":
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(what, run_name="__main__")


if __name__ == "__main__":
    _cluster_main(sys.argv[1:])
