"""Process and port primitives for the local stack: start detached, recognise our own PIDs, stop them.

The stack only ever signals a PID it recorded itself, and only after checking that the process behind
that PID is still the one it started (same start time, same command marker): PIDs get reused, and a
stale state file must never make `down` kill an unrelated process."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Popen objects of children started by this interpreter, kept so they are reaped (no zombies, no
# "still running" ResourceWarning when a LocalStack object goes away while its servers keep running)
_children: dict[int, subprocess.Popen] = {}
_exit_codes: dict[int, int] = {}
_HAS_PROC = sys.platform.startswith("linux") and Path("/proc/self/stat").exists()


def spawn(cmd: list[str], *, cwd: Path, log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start `cmd` detached (own session, so a Ctrl-C in the caller's terminal does not reach it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate(log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)
    _children[proc.pid] = proc
    return proc.pid


def rotate(path: Path) -> None:
    """Keep one previous generation of a console log so each start's output is easy to find."""
    if path.exists() and path.stat().st_size > 0:
        os.replace(path, path.with_name(path.name + ".1"))


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _exit_codes[pid] = proc.returncode
            _children.pop(pid, None)
        return
    # a child of ours started by another LocalStack object in this interpreter, Popen object gone
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def exit_code(pid: int | None) -> int | None:
    """The exit status of a child this interpreter started and saw exit, else None."""
    if not pid:
        return None
    _reap(pid)
    return _exit_codes.get(pid)


def fingerprint(pid: int) -> str | None:
    """An identity for a live process (its start time), None if it is gone or a zombie."""
    if not pid or pid <= 0:
        return None
    _reap(pid)
    if _HAS_PROC:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError, OSError):
            return None
        # fields[0] is the state (3rd field of stat), fields[19] the start time in clock ticks (22nd)
        if fields[0] in ("Z", "X"):
            return None
        return fields[19]
    try:  # macOS and other Unixes: ps gives the start time
        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True,
                             check=False).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else out


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
        return out.stdout.strip()


def is_ours(record: dict) -> bool:
    """True when the process recorded in `record` (pid, fingerprint, marker) is still alive and ours."""
    pid = record.get("pid")
    if not pid:
        return False
    current = fingerprint(pid)
    if current is None or current != record.get("fingerprint"):
        return False
    marker = record.get("marker")
    if not marker:
        return True
    # the command line reads empty for a moment while the JVM launcher re-executes itself (and while a
    # process exits): only a readable command line without the marker means the PID went to someone else
    cmdline = command_line(pid)
    return not cmdline.strip() or marker in cmdline


def stop(pid: int, grace_s: float = 10.0) -> str:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns how it ended: terminated | killed | gone."""
    start_print = fingerprint(pid)
    if start_print is None:
        return "gone"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    if _wait_gone(pid, start_print, grace_s):
        return "terminated"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, start_print, 5.0)
    return "killed"


def _wait_gone(pid: int, start_print: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fingerprint(pid) != start_print:
            return True
        time.sleep(0.1)
    return fingerprint(pid) != start_print


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind host:port now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # servers (the JVM, werkzeug) bind with SO_REUSEADDR, so must the probe to agree with them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port(exclude: set[int] | frozenset[int] = frozenset(), host: str = "127.0.0.1") -> int:
    """A free port below the usual ephemeral range, so outgoing connections never occupy it later."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port not in exclude and not port_in_use(port, host):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, or a note that it is empty or missing."""
    try:
        data = path.read_bytes()[-64_000:]
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = data.decode(errors="replace").rstrip()
    if not text:
        return f"({path} is empty)"
    return "\n".join(text.splitlines()[-lines:])
