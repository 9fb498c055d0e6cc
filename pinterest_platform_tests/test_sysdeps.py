"""`make sysdeps` (the first step of `make install`, so of `make test` and `make demo`): a quick check when
the system packages are there, apt-get when they are not and the user may install, else the exact command.

apt is never run for real here: each case runs the Makefile target with PATH limited to a folder of stand-in
tools (a fake `java -version`, a fake `id` for a user that is not root, a fake `sudo` and `apt-get` that
record their arguments), so every branch of scripts/install_system_deps.sh is exercised on any machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pinterest_platform_tests import mariadb

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_system_deps.sh"
MAKE = shutil.which("make")
# what the script and the Makefile recipe call besides the tools under test
UTILITIES = ("bash", "sed", "head", "env", "readlink", "true", "chmod")



@pytest.fixture(autouse=True)
def make_is_there():
    # `make test` is the README's test command: a machine without make fails here rather than skipping
    assert MAKE is not None, "make is not installed (apt-get install make)"


def write_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH folder where every required tool is present (Java 17), the user is uid 1000 without sudo,
    and apt-get / apt-cache / sudo log their calls to `calls.log` instead of doing anything."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in UTILITIES:
        os.symlink(shutil.which(name), folder / name)
    log = tmp_path / "calls.log"
    write_tool(folder, "java", """echo 'openjdk version "17.0.2" 2022-01-18' >&2""")
    for name in ("mvn", "openssl", "mariadbd", "mariadb-install-db", "chromium"):
        write_tool(folder, name, "exit 0")
    write_tool(folder, "id", 'echo "${FAKE_UID:-1000}"')
    # an install puts the tool of each package it was given in place, as apt would
    write_tool(folder, "apt-get", f'echo "apt-get $*" >> {log}; for p in "$@"; do case "$p" in '
                                  'maven) tool=mvn;; openssl) tool=openssl;; chromium) tool=chromium;; *) continue;; esac; '
                                  f'printf "#!/bin/bash\\n" > {folder}/$tool; chmod +x {folder}/$tool; done')
    write_tool(folder, "apt-cache", f'echo "apt-cache $*" >> {log}; [ "$2" = openjdk-17-jre-headless ]')
    return folder


def run_sysdeps(fake_bin: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": str(fake_bin), "HOME": os.environ.get("HOME", "/tmp"),
                   # the real /usr/sbin would find this machine's mariadbd: only the fake folder counts
                   "SYSDEPS_SBIN_DIRS": "", **env}
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(REPO), "sysdeps"], env=environment,
                          capture_output=True, text=True, timeout=60)


def calls(fake_bin: Path) -> str:
    log = fake_bin.parent / "calls.log"
    return log.read_text() if log.exists() else ""


def test_this_machine_passes_fast_without_apt():
    """What CI and a set-up laptop see on every `make test`: one line, well under a second of work."""
    started = time.monotonic()
    result = subprocess.run([MAKE, "--no-print-directory", "-C", str(REPO), "sysdeps"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "system packages present: java" in result.stdout
    assert "installing" not in result.stdout
    assert time.monotonic() - started < 10


def test_everything_present_exits_0_and_never_calls_apt(fake_bin):
    result = run_sysdeps(fake_bin)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "system packages present: java 17, maven, mariadb-server, openssl, chromium" in result.stdout
    assert calls(fake_bin) == ""


def test_missing_tool_without_rights_prints_the_exact_command(fake_bin):
    (fake_bin / "mvn").unlink()
    write_tool(fake_bin, "sudo", "exit 1")  # sudo -n: a password would be needed
    result = run_sysdeps(fake_bin)
    assert result.returncode != 0
    assert "missing system packages: maven" in result.stderr
    assert "sudo apt-get update && sudo apt-get install -y --no-install-recommends maven\n" in result.stderr
    assert "then run the make command again" in result.stderr
    assert "apt-get update" not in calls(fake_bin) and "apt-get install" not in calls(fake_bin)


def test_missing_chromium_is_installed_for_the_browser_test(fake_bin):
    """pinterest_platform_tests/ui drives the `chromium` in PATH (Debian's package, not a browser download)."""
    (fake_bin / "chromium").unlink()
    write_tool(fake_bin, "sudo", "exit 1")
    result = run_sysdeps(fake_bin)
    assert result.returncode != 0
    assert "sudo apt-get install -y --no-install-recommends chromium\n" in result.stderr
    result = run_sysdeps(fake_bin, FAKE_UID="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "apt-get install -y -qq --no-install-recommends chromium" in calls(fake_bin)
    assert (fake_bin / "chromium").exists()


def test_old_java_and_missing_mariadb_name_their_packages(fake_bin):
    write_tool(fake_bin, "java", """echo 'java version "1.8.0_292"' >&2""")
    (fake_bin / "mariadbd").unlink()
    result = run_sysdeps(fake_bin)  # no sudo at all
    assert result.returncode != 0
    assert "missing system packages: Java 17+ mariadb-server" in result.stderr
    assert ("sudo apt-get install -y --no-install-recommends openjdk-17-jre-headless mariadb-server\n"
            in result.stderr)


def test_unreadable_java_version_counts_as_missing(fake_bin):
    write_tool(fake_bin, "java", "echo 'Unable to locate a Java Runtime.' >&2; exit 1")
    result = run_sysdeps(fake_bin)
    assert result.returncode != 0
    assert "openjdk-17-jre-headless" in result.stderr


def test_root_installs_the_missing_packages_with_apt(fake_bin):
    (fake_bin / "openssl").unlink()
    result = run_sysdeps(fake_bin, FAKE_UID="0")
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(fake_bin)
    assert "apt-get update -qq" in log
    assert "apt-get install -y -qq --no-install-recommends openssl" in log
    assert "installing: openssl" in result.stdout
    assert "system packages present" in result.stdout  # checked again after the install


def test_an_install_that_leaves_a_tool_missing_fails(fake_bin):
    (fake_bin / "mariadbd").unlink()  # the fake apt-get installs no mariadb binaries
    result = run_sysdeps(fake_bin, FAKE_UID="0")
    assert result.returncode != 0
    assert "still missing after apt-get install: mariadb-server" in result.stderr


def test_passwordless_sudo_installs_through_sudo(fake_bin):
    (fake_bin / "mvn").unlink()
    write_tool(fake_bin, "sudo", f'echo "sudo $*" >> {fake_bin.parent / "calls.log"}; '
                                 '[ "$1" = -n ] && shift; exec "$@"')
    result = run_sysdeps(fake_bin)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(fake_bin)
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends maven" in log
    assert "apt-get install -y -qq --no-install-recommends maven" in log  # and sudo ran it


def test_mariadb_is_found_where_the_tests_look_for_it(fake_bin, tmp_path):
    """mysqld and mysql_install_db in an sbin folder outside PATH count, as in mariadb.py."""
    (fake_bin / "mariadbd").unlink()
    (fake_bin / "mariadb-install-db").unlink()
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    write_tool(sbin, "mysqld", "exit 0")
    write_tool(sbin, "mysql_install_db", "exit 0")
    assert run_sysdeps(fake_bin, SYSDEPS_SBIN_DIRS=str(sbin)).returncode == 0
    (sbin / "mysql_install_db").unlink()  # mariadb.py needs both the server and install_db
    result = run_sysdeps(fake_bin, SYSDEPS_SBIN_DIRS=str(sbin))
    assert result.returncode != 0 and "mariadb-server" in result.stderr


def test_script_searches_the_folders_mariadb_py_searches():
    default = re.search(r'SYSDEPS_SBIN_DIRS="\$\{SYSDEPS_SBIN_DIRS-([^}]*)\}"', SCRIPT.read_text()).group(1)
    extra = mariadb._SEARCH_PATH.split(os.pathsep)[-3:]  # the folders after the caller's PATH
    assert default.split() == extra
