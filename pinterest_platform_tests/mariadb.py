"""A throwaway MariaDB server for tests: own datadir, unix socket and free 127.0.0.1 port, stopped by PID.

Uses Debian's `mariadb-server` binaries (`mariadb-install-db`, `mariadbd`); the server is up in well under
a second. Root authenticates over the unix socket only to create a password user, whose TCP URL the tests get.
The server keeps MariaDB's stock latin1 default charset on purpose: code under test must ask for utf8mb4
itself, as it would have to on a stock MySQL/RDS instance."""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

APT_PACKAGES = ("mariadb-server",)  # brings mariadb-server-core (mariadbd, mariadb-install-db) and the client
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin"])
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes


class MariaDBUnavailable(RuntimeError):
    """The MariaDB server binaries are not installed."""


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name, path=_SEARCH_PATH)
        if found:
            return found
    return None


def mariadb_binaries() -> tuple[str, str]:
    """(server, install_db) paths; MariaDBUnavailable with the fix when they are missing."""
    server = _which("mariadbd", "mysqld")
    install_db = _which("mariadb-install-db", "mysql_install_db")
    if not server or not install_db:
        raise MariaDBUnavailable(
            "MariaDB server binaries (mariadbd, mariadb-install-db) not found: "
            f"install them with `apt-get install -y {' '.join(APT_PACKAGES)}` "
            "(CI must install them before the tests; MySQL tests never skip)."
        )
    return server, install_db


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MariaDBServer:
    base_dir: Path
    port: int
    socket_path: Path
    process: subprocess.Popen
    database: str
    user: str
    password: str = field(repr=False)
    _socket_dir: Path | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}?charset=utf8mb4"

    def root_connection(self):
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)

    def stop(self, remove: bool = True) -> None:
        """Clean shutdown (SIGTERM to our PID), SIGKILL after 30 s; then drop the datadir."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if remove:
            shutil.rmtree(self.base_dir / "data", ignore_errors=True)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_mariadb(base_dir: Path | str, database: str = "pinterest", user: str = "pinterest",
                  timeout: float = 30.0) -> MariaDBServer:
    """Initialise a datadir under `base_dir`, start mariadbd on a free port, create `database` and `user`."""
    import pymysql

    server_bin, install_db = mariadb_binaries()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    datadir = base_dir / "data"
    log = base_dir / "mariadb.log"
    socket_dir: Path | None = None
    socket_path = base_dir / "mysqld.sock"
    if len(str(socket_path)) > _SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.mkdtemp(prefix="mdb-"))
        socket_path = socket_dir / "mysqld.sock"
    # mariadbd refuses to run as root unless told to; as any other user --user only draws a warning
    as_user = ["--user=root"] if os.geteuid() == 0 else []

    install = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
         "--skip-test-db", "--skip-name-resolve", *as_user],
        capture_output=True, text=True, timeout=120,
    )
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({install.returncode}):\n{install.stdout}\n{install.stderr}")

    last_error: Exception | None = None
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        process = subprocess.Popen(
            [server_bin, "--no-defaults", f"--datadir={datadir}", f"--socket={socket_path}", f"--port={port}",
             "--bind-address=127.0.0.1", f"--pid-file={base_dir / 'mariadbd.pid'}", f"--log-error={log}",
             "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=128M",
             # a throwaway server: durability is not worth the fsyncs
             "--innodb-flush-log-at-trx-commit=0", "--max-allowed-packet=64M", *as_user],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            try:
                conn = pymysql.connect(unix_socket=str(socket_path), user="root", autocommit=True, connect_timeout=2)
                break
            except pymysql.err.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
        else:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
                raise RuntimeError(f"mariadbd not ready after {timeout} s:\n{_log_tail(log)}")
            continue  # exited: most likely the port was taken; try another
        password = secrets.token_hex(12)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@'%%'", (user,))
        conn.close()
        return MariaDBServer(base_dir=base_dir, port=port, socket_path=socket_path, process=process,
                             database=database, user=user, password=password, _socket_dir=socket_dir)
    raise RuntimeError(f"mariadbd did not start (last error {last_error}):\n{_log_tail(log)}\n"
                       f"running as {getpass.getuser()}")
