"""The Dagster instance's home: `pinterest-platform run batch|stream` and `make dev` (`dagster dev`) share
DAGSTER_HOME (default `<state dir>/dagster_home`), so CLI runs appear in the UI.

Without a dagster.yaml there Dagster works on its defaults but says so on every command ("No dagster
instance configuration file (dagster.yaml) found"); `ensure_dagster_yaml` writes a minimal one when there
is none. One that exists is left alone (the user may have edited it), with a single exception: a file
byte-for-byte equal to a default an older version of the platform wrote (`PREVIOUS_DEFAULT_DAGSTER_YAMLS`)
was never edited, and is upgraded in place to the current default (so an existing instance gets, e.g., the
one-batch-at-a-time run limit). Any other content, even one changed character, is never touched.

`python -m pinterest_platform.instance` does it from the Makefile, before `dagster dev`."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DAGSTER_YAML = "dagster.yaml"

# Storage stays Dagster's default (SQLite under DAGSTER_HOME), which is what a laptop wants; the file
# names the settings both entry points share so they can be found and changed in one place.
DEFAULT_DAGSTER_YAML = """\
# The Dagster instance of pinterest_platform, shared by `pinterest-platform run batch|stream` and
# `make dev` (dagster dev). Written because it was missing; once you edit it the platform never
# overwrites it (only an unedited copy of a default is upgraded to the next one), so edit it freely.
# Storage is Dagster's default: SQLite under this folder.
# Reference: https://docs.dagster.io/deployment/oss/dagster-yaml

concurrency:
  runs:
    # runs the daemon launches from its queue (the daily batch schedule, the streaming sensor's checks,
    # the UI): each run is a process and a batch run starts a Spark JVM, so a laptop runs a few at a time
    # rather than Dagster's default 10. CLI runs are not held by this queue (they start at once, in
    # their own process), but while they run they count against its limits.
    max_concurrent_runs: 4
    # one batch at a time: runs tagged pinterest/lane=batch (batch_job) never overlap, two batches would
    # write the same lake tables. The queue counts every started run with the tag, a CLI
    # `pinterest-platform run batch` included, and holds the next batch run until it ends; the CLI in
    # turn refuses to start while a batch run is queued or in progress (pinterest_platform/run_guard.py).
    tag_concurrency_limits:
      - key: pinterest/lane
        value: batch
        limit: 1

telemetry:
  # a local development instance: no usage statistics, and no telemetry banner on the first command
  enabled: false
"""

# Every default an older version of the platform wrote, exactly: a dagster.yaml byte-equal to one of them
# was never edited and `ensure_dagster_yaml` upgrades it to DEFAULT_DAGSTER_YAML. Append the current
# default here whenever it changes.
PREVIOUS_DEFAULT_DAGSTER_YAMLS: tuple[str, ...] = (
    # until the one-batch-at-a-time limit (tag_concurrency_limits on pinterest/lane=batch)
    """\
# The Dagster instance of pinterest_platform, shared by `pinterest-platform run batch|stream` and
# `make dev` (dagster dev). Written once because it was missing; the platform never overwrites it, so
# edit it freely. Storage is Dagster's default: SQLite under this folder.
# Reference: https://docs.dagster.io/deployment/oss/dagster-yaml

concurrency:
  runs:
    # runs the daemon launches from its queue (the daily batch schedule, the streaming sensor's checks,
    # the UI): each run is a process and a batch run starts a Spark JVM, so a laptop runs a few at a time
    # rather than Dagster's default 10. CLI runs execute in their own process, outside this queue.
    max_concurrent_runs: 4

telemetry:
  # a local development instance: no usage statistics, and no telemetry banner on the first command
  enabled: false
""",
)


def dagster_home() -> Path:
    """DAGSTER_HOME from the settings, absolute (Dagster refuses a relative one)."""
    from pinterest_platform.settings import load_settings

    return load_settings().dagster_home.expanduser().resolve()


def ensure_dagster_yaml(home: Path | None = None) -> tuple[Path, bool]:
    """(path of dagster.yaml, whether it was written now: created, or upgraded from an unedited previous
    default). Creates `home` when missing."""
    path, action = write_dagster_yaml(home)
    return path, action is not None


def write_dagster_yaml(home: Path | None = None) -> tuple[Path, str | None]:
    """(path of dagster.yaml, "created" | "upgraded" | None when left as it was)."""
    home = home if home is not None else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / DAGSTER_YAML
    if path.exists():
        if _is_previous_default(path) and _replace_previous_default(home, path):
            return path, "upgraded"
        return path, None
    # written aside, then hard-linked into place: the link fails when the file exists (an edited one, or
    # one a concurrent command wrote first), and an interrupted write never leaves half a file behind
    tmp = _write_aside(home)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path, None
    finally:
        os.unlink(tmp)
    return path, "created"


def _is_previous_default(path: Path) -> bool:
    try:
        content = path.read_bytes()
    except OSError:
        return False
    return any(content == old.encode("utf-8") for old in PREVIOUS_DEFAULT_DAGSTER_YAMLS)


def _replace_previous_default(home: Path, path: Path) -> bool:
    """Renames the new default over the old one; False (nothing changed) when the file stopped being a
    previous default meanwhile. A rename is atomic: readers see the old file or the new, never half of one."""
    tmp = _write_aside(home)
    try:
        if not _is_previous_default(path):  # edited (or upgraded by a concurrent command) since we looked
            return False
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_aside(home: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".dagster.yaml.", dir=home)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; it is a config file like any other
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(DEFAULT_DAGSTER_YAML)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def main() -> int:
    path, action = write_dagster_yaml()
    if action == "created":
        print(f"wrote the Dagster instance configuration {path}")
    elif action == "upgraded":
        print(f"wrote the Dagster instance configuration {path} (upgraded the unedited previous default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
