"""`pinterest-platform databricks deploy`: build the job artifact and put it where Databricks runs it.

The artifact is the project wheel (its only requirement is dagster-pipes: the runtime brings Spark and
Delta) and the Pipes entry point `jobs/databricks_entry.py`. Both go to a Unity Catalog volume
(`/Volumes/<catalog>/<schema>/<volume>/...`, Files API) or to workspace files (`/Workspace/...`), never
to DBFS root. Each deploy writes a new folder named after the version and the content's hash, so it never
overwrites anything: deploying the same build twice reuses the folder, and a folder of that name holding
other bytes is refused. The command ends by printing the DATABRICKS_WHEEL and DATABRICKS_ENTRYPOINT
settings that point `DatabricksSparkResource` at what it uploaded."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pinterest_platform.settings import project_root

ENTRYPOINT_NAME = "databricks_entry.py"


class DeployError(RuntimeError):
    """The artifact could not be built or uploaded; the message says what to change."""


@dataclass(frozen=True)
class Artifact:
    wheel: Path
    entrypoint: Path

    def digest(self) -> str:
        sha = hashlib.sha256()
        for path in (self.wheel, self.entrypoint):
            sha.update(path.name.encode() + b"\0" + path.read_bytes())
        return sha.hexdigest()[:12]

    def version(self) -> str:
        # pinterest_platform-<version>-py3-none-any.whl
        return self.wheel.name.split("-")[1]


def entrypoint_file() -> Path:
    from pinterest_platform.jobs import databricks_entry

    return Path(databricks_entry.__file__)


def build_wheel(out_dir: Path, source: Path | None = None) -> Path:
    """`pip wheel --no-deps` of the source checkout: the wheel a cluster installs."""
    source = source or project_root()
    if not (source / "pyproject.toml").exists():
        raise DeployError(f"no pyproject.toml in {source}: run deploy from a source checkout, or pass --wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
               str(source), "-w", str(out_dir)]
    # a fixed timestamp makes the same source give the same bytes, so a re-deploy finds its folder again
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")})
    if result.returncode != 0:
        raise DeployError(f"building the wheel failed ({' '.join(command)}):\n{result.stderr.strip()}")
    wheels = sorted(out_dir.glob("pinterest_platform-*.whl"))
    if not wheels:
        raise DeployError(f"pip wheel wrote no pinterest_platform wheel into {out_dir}")
    return wheels[-1]


class _Target:
    """Where artifacts go: a Unity Catalog volume (Files API) or workspace files (Workspace API)."""

    def __init__(self, client, root: str):
        root = root.rstrip("/")
        if root.startswith("dbfs:") or root.startswith("/dbfs"):
            raise DeployError(f"{root}: DBFS root is disabled in new workspaces; deploy to /Volumes/... or "
                              "/Workspace/...")
        if root.startswith("/Volumes/"):
            if len(root.strip("/").split("/")) < 4:
                raise DeployError(f"{root}: a volume path is /Volumes/<catalog>/<schema>/<volume>[/folder]")
            self.kind = "volume"
        elif root.startswith("/Workspace/"):
            self.kind = "workspace"
        else:
            raise DeployError(f"{root!r}: expected a /Volumes/<catalog>/<schema>/<volume>/... or /Workspace/... path")
        self.client, self.root = client, root
        from databricks.sdk.service import files

        self.files = files.FilesAPI(client.api_client)

    def mkdirs(self, folder: str) -> None:
        if self.kind == "volume":
            self.files.create_directory(folder)
        else:
            self.client.workspace.mkdirs(folder)

    def read(self, path: str) -> bytes | None:
        from databricks.sdk.errors import NotFound

        try:
            if self.kind == "volume":
                return self.files.download(path).contents.read()
            from databricks.sdk.service.workspace import ExportFormat

            return self.client.workspace.download(path, format=ExportFormat.AUTO).read()
        except NotFound:
            return None

    def write(self, path: str, data: bytes) -> None:
        if self.kind == "volume":
            self.files.upload(path, io.BytesIO(data), overwrite=False)
        else:
            from databricks.sdk.service.workspace import ImportFormat

            self.client.workspace.upload(path, io.BytesIO(data), format=ImportFormat.AUTO, overwrite=False)


def deploy(client, root: str, artifact: Artifact, log=print) -> dict[str, str]:
    """Upload `artifact` below `root`; returns the settings that point the platform at it."""
    target = _Target(client, root)
    folder = f"{target.root}/pinterest_platform-{artifact.version()}-{artifact.digest()}"
    target.mkdirs(folder)
    paths = {}
    for setting, local, name in (("DATABRICKS_WHEEL", artifact.wheel, artifact.wheel.name),
                                 ("DATABRICKS_ENTRYPOINT", artifact.entrypoint, ENTRYPOINT_NAME)):
        remote = f"{folder}/{name}"
        data = local.read_bytes()
        existing = target.read(remote)
        if existing is None:
            target.write(remote, data)
            log(f"  uploaded {remote} ({len(data):,} bytes)")
        elif existing == data:
            log(f"  {remote} is already deployed")
        else:
            raise DeployError(f"{remote} exists with other content ({len(existing):,} bytes); deploy never "
                              "overwrites: remove it yourself if it is not needed")
        paths[setting] = remote
    return paths


def deploy_command(args: argparse.Namespace) -> int:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import DatabricksError

    root = args.to or os.environ.get("DATABRICKS_ARTIFACTS")
    if not root:
        volume = os.environ.get("DATABRICKS_VOLUME")
        root = f"{volume.rstrip('/')}/artifacts" if volume else None
    if not root:
        print("error: say where to deploy: --to /Volumes/<catalog>/<schema>/<volume>/artifacts (or /Workspace/...), "
              "or set DATABRICKS_VOLUME", file=sys.stderr)
        return 2
    missing = [name for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN") if not os.environ.get(name)]
    if missing:
        print(f"error: {' and '.join(missing)} not set (see .env.example)", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = Path(args.wheel) if args.wheel else build_wheel(Path(tmp))
            artifact = Artifact(wheel=wheel, entrypoint=entrypoint_file())
            print(f"deploying {wheel.name} and {ENTRYPOINT_NAME} to {root}", flush=True)
            client = WorkspaceClient(host=os.environ["DATABRICKS_HOST"], token=os.environ["DATABRICKS_TOKEN"])
            settings = deploy(client, root, artifact)
    except (DeployError, DatabricksError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = [f"{name}={value}" for name, value in settings.items()]
    if args.env_file:
        Path(args.env_file).write_text("\n".join(lines) + "\n")
    print("deployed; point the platform at it with:")
    for line in lines:
        print(f"  export {line}")
    return 0
