"""The Dagster instance's home: `pinterest-platform run batch|stream` and `make dev` (`dagster dev`) share
DAGSTER_HOME (default `<state dir>/dagster_home`), so CLI runs appear in the UI.

Without a dagster.yaml there Dagster works on its defaults but says so on every command ("No dagster
instance configuration file (dagster.yaml) found"); `ensure_dagster_yaml` writes a minimal one when there
is none, and never touches one that exists: the user may have edited it.

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
"""


def dagster_home() -> Path:
    """DAGSTER_HOME from the settings, absolute (Dagster refuses a relative one)."""
    from pinterest_platform.settings import load_settings

    return load_settings().dagster_home.expanduser().resolve()


def ensure_dagster_yaml(home: Path | None = None) -> tuple[Path, bool]:
    """(path of dagster.yaml, whether it was written now). Creates `home` when missing."""
    home = home if home is not None else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / DAGSTER_YAML
    if path.exists():
        return path, False
    # written aside, then hard-linked into place: the link fails when the file exists (an edited one, or
    # one a concurrent command wrote first), and an interrupted write never leaves half a file behind
    fd, tmp = tempfile.mkstemp(prefix=".dagster.yaml.", dir=home)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; it is a config file like any other
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(DEFAULT_DAGSTER_YAML)
        os.link(tmp, path)
    except FileExistsError:
        return path, False
    finally:
        os.unlink(tmp)
    return path, True


def main() -> int:
    path, created = ensure_dagster_yaml()
    if created:
        print(f"wrote the Dagster instance configuration {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
