"""One batch at a time: batch runs (tagged `pinterest/lane=batch`) never overlap.

Two guards, one for each way a batch run starts:

- runs the daemon launches from its queue (the schedule, the UI) are held by the run queue: the instance's
  dagster.yaml (pinterest_platform/instance.py) limits the tag to one run at a time. The queue counts every
  started run with the tag, so a CLI run in progress holds the queued ones too;
- `pinterest-platform run batch` executes in its own process (`execute_in_process`), which the queue never
  holds, so it enters `batch_lane(instance)` first. That refuses (`BatchRunInProgress`, whose message says
  which run and what to do) while a batch run is queued or in progress in the instance, and holds an
  exclusive lock on `$DAGSTER_HOME/.batch.lock` for the whole run, so two CLI processes cannot both pass the
  check before either has written its run: the lock does not depend on the lake or on the run storage, and
  the OS releases it when the process ends, however it ends.

A run whose process died stays STARTED in the run storage. For a CLI run that is recognised, and it no longer
blocks: the CLI tags its runs with its pid (`pinterest/cli_pid`, see `BatchLane.tags`), so a run that is
unfinished while the lock is free and whose pid is gone is dead; `batch_lane` marks it failed (which also
frees the run queue, which would otherwise count it forever) and lists it in `BatchLane.reaped`. A run the
daemon or the UI launched always blocks: the daemon's run monitoring owns those, and the UI can cancel one.

What remains is a window of a moment: the daemon may dequeue a batch run between the CLI's check and the
CLI's run being written."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

BATCH_LANE_TAG = ("pinterest/lane", "batch")
CLI_PID_TAG = "pinterest/cli_pid"
LOCK_FILE = ".batch.lock"
UI_URL = "http://127.0.0.1:3000"

# not finished: a queued run will start, the others hold (or are about to hold) the lake
UNFINISHED_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
# the run to name first when several are unfinished: the one that is running
_REPORT_ORDER = {
    dg.DagsterRunStatus.STARTED: 0,
    dg.DagsterRunStatus.STARTING: 1,
    dg.DagsterRunStatus.CANCELING: 2,
    dg.DagsterRunStatus.NOT_STARTED: 3,
    dg.DagsterRunStatus.QUEUED: 4,
}


class BatchRunInProgress(Exception):
    """A batch run is queued or in progress (or another CLI process holds the lane); `message` says which and
    what to do. `run` is that run when the run storage knows it."""

    def __init__(self, message: str, run: DagsterRun | None = None):
        super().__init__(message)
        self.message = message
        self.run = run


@dataclass(frozen=True)
class BatchLane:
    """What `batch_lane` yields. Pass `tags` to `execute_in_process(tags=...)`: they name the lane and this
    process's pid, by which a later command recognises the run as dead if this process dies mid-run."""

    lock_path: Path
    tags: dict[str, str] = field(default_factory=dict)
    reaped: tuple[str, ...] = ()  # ids of dead CLI runs marked failed on the way in


def cli_run_tags() -> dict[str, str]:
    return {BATCH_LANE_TAG[0]: BATCH_LANE_TAG[1], CLI_PID_TAG: str(os.getpid())}


def lock_path(instance: DagsterInstance) -> Path:
    home = instance.root_directory or os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError("the Dagster instance has no home directory to hold the batch lock in")
    return Path(home) / LOCK_FILE


def batch_run_in_progress(instance: DagsterInstance) -> DagsterRun | None:
    """The batch run that is queued or in progress in `instance`, or None. A CLI run whose process is gone
    (and which holds no lock) does not count."""
    blocking, _dead = _unfinished_batch_runs(instance, lane_free=_lane_is_free(lock_path(instance)))
    return blocking[0] if blocking else None


def refuse_message(run: DagsterRun, instance: DagsterInstance | None = None) -> str:
    """Which batch run is in the way (id, status, since when: from `instance`'s run record when given), and
    what to do about it."""
    status = run.status.value
    when = ""
    if instance is not None:
        record = instance.get_run_record_by_id(run.run_id)
        if record is not None:
            if record.start_time is not None:
                when = f", started {_local_time(record.start_time)}"
            else:
                when = f", created {_local_time(record.create_timestamp.timestamp())}"
    pid = run.tags.get(CLI_PID_TAG)
    by = f" by `pinterest-platform run batch` (pid {pid})" if pid else ""
    url = f"{UI_URL}/runs/{run.run_id}"
    return (
        f"batch run {run.run_id} ({run.job_name}{by}) is {status}{when}. Batch runs never overlap, so this one"
        f" does not start. Wait for that run to finish and run this again, or look at it in the UI"
        f" ({url}, with `make dev` running) and cancel it there if it is stuck."
    )


@contextlib.contextmanager
def batch_lane(instance: DagsterInstance) -> Iterator[BatchLane]:
    """Holds the batch lane for a CLI batch run: raises BatchRunInProgress when another process holds it or
    a batch run is queued or in progress in `instance`; otherwise yields a BatchLane and keeps the lock
    until the block ends."""
    path = lock_path(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _lane_held(instance, path, _read_holder(fd)) from None
        blocking, dead = _unfinished_batch_runs(instance, lane_free=True)
        if blocking:
            raise BatchRunInProgress(refuse_message(blocking[0], instance), blocking[0])
        for run in dead:
            instance.report_run_failed(
                run,
                message=(
                    f"marked failed by a later `pinterest-platform run batch`: the process that ran it "
                    f"(pid {run.tags.get(CLI_PID_TAG)}) is gone and no longer holds {path}"
                ),
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield BatchLane(lock_path=path, tags=cli_run_tags(), reaped=tuple(run.run_id for run in dead))
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


# --- internals ---------------------------------------------------------------------------------------------


def _unfinished_batch_runs(
    instance: DagsterInstance, *, lane_free: bool
) -> tuple[list[DagsterRun], list[DagsterRun]]:
    """(unfinished batch runs that block, most running first; CLI runs whose process is gone). A run is only
    judged dead when the lane is free: a CLI process holding the lock may be running it."""
    key, value = BATCH_LANE_TAG
    runs = instance.get_runs(filters=dg.RunsFilter(tags={key: value}, statuses=list(UNFINISHED_STATUSES)))
    blocking: list[DagsterRun] = []
    dead: list[DagsterRun] = []
    for run in runs:
        if lane_free and _cli_process_is_gone(run):
            dead.append(run)
        else:
            blocking.append(run)
    blocking.sort(key=lambda run: _REPORT_ORDER.get(run.status, len(_REPORT_ORDER)))
    return blocking, dead


def _cli_process_is_gone(run: DagsterRun) -> bool:
    """True only for a CLI run (tagged with its pid) whose process no longer exists."""
    tag = run.tags.get(CLI_PID_TAG)
    if tag is None or not tag.isdigit():
        return False  # launched by the daemon or the UI: theirs to monitor
    return not _pid_alive(int(tag))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    try:  # a zombie has exited, only its parent has not collected it yet
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _lane_is_free(path: Path) -> bool:
    """Whether no process holds the lock now (probes it: takes it and lets go at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _read_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _lane_held(instance: DagsterInstance, path: Path, holder: int | None) -> BatchRunInProgress:
    who = f"pid {holder}" if holder is not None else "another process"
    blocking, _ = _unfinished_batch_runs(instance, lane_free=False)
    mine = [run for run in blocking if holder is not None and run.tags.get(CLI_PID_TAG) == str(holder)]
    run = (mine or blocking or [None])[0]
    if run is not None:
        return BatchRunInProgress(refuse_message(run, instance), run)
    return BatchRunInProgress(
        f"another `pinterest-platform run batch` ({who}) holds the batch lane ({path}) and is starting its run."
        f" Batch runs never overlap, so this one does not start: wait for that command to finish and run this"
        f" again.",
    )


def _local_time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(sep=" ", timespec="seconds")
