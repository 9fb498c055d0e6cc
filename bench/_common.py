"""Shared bench helpers: a peak-RSS sampler over this process tree (the Spark JVM is a child; the local
stack's services are not counted), timers, and a throwaway local stack so a benchmark never touches the
user's data."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            kids = [int(p) for p in handle.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


# the local stack's services (Kafka, moto) when a bench started them as its children: they serve the
# pipeline but are not it, so the peak RSS figures leave them (and their children) out
SERVICE_PIDS: set[int] = set()


def tree_rss_bytes(pid: int | None = None) -> int:
    pid = pid or os.getpid()
    total = 0
    services = {s for p in SERVICE_PIDS for s in (p, *_children(p))}
    for p in [pid, *_children(pid)]:
        if p in services:
            continue
        try:
            with open(f"/proc/{p}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    extra: dict = field(default_factory=dict)


@contextlib.contextmanager
def measure(interval: float = 0.1):
    """Wall time and peak RSS of this process tree while the block runs."""
    result = Measurement()
    stop = threading.Event()
    peak = [tree_rss_bytes()]

    def sample():
        while not stop.wait(interval):
            peak[0] = max(peak[0], tree_rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - started
        stop.set()
        thread.join()
        result.peak_rss_mb = max(peak[0], tree_rss_bytes()) / 2**20


@contextlib.contextmanager
def bench_stack():
    """Use KAFKA_BOOTSTRAP_SERVERS/AWS_ENDPOINT_URL if given, else a LocalStack in a temp state dir."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("AWS_ENDPOINT_URL"):
        yield {"kafka_bootstrap_servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
               "aws_endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
        return
    from pinterest_platform.local_stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="pinterest-bench-") as state:
        stack = LocalStack(Path(state))
        endpoints = stack.up()
        SERVICE_PIDS.update(report["pid"] for report in stack.status().values() if report.get("pid"))
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = endpoints["kafka_bootstrap_servers"]
        os.environ["AWS_ENDPOINT_URL"] = endpoints["aws_endpoint_url"]
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        try:
            yield endpoints
        finally:
            SERVICE_PIDS.clear()
            stack.down()


def table(rows: list[list], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
