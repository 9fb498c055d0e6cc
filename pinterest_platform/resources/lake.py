"""The lake: a local folder by default, an S3 bucket (dagster-aws `S3Resource`) in production.

Everything the platform keeps lives under one root: raw topic files under `topics/`, Delta tables under
`tables/<name>`. Paths passed around are relative to that root ("topics/pinterest.pin/...")."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from pinterest_platform.contract import TABLES_DIR


@dataclass(frozen=True)
class LakeFile:
    path: str  # relative to the lake root
    size: int
    modified: float  # epoch seconds


class LakeResource(dg.ConfigurableResource):
    """Reads and writes files and locates Delta tables under the lake root."""

    def root_uri(self) -> str:
        raise NotImplementedError

    def uri(self, path: str) -> str:
        return f"{self.root_uri().rstrip('/')}/{path.lstrip('/')}"

    def table_uri(self, name: str) -> str:
        return self.uri(f"{TABLES_DIR}/{name}")

    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs (deltalake) to reach this lake."""
        return {}

    def write_bytes(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def list_files(self, prefix: str) -> list[LakeFile]:
        raise NotImplementedError


class LocalLakeResource(LakeResource):
    """A folder on this machine."""

    root: str = Field(description="absolute folder path")

    def root_uri(self) -> str:
        return str(Path(self.root).resolve())

    def write_bytes(self, path: str, data: bytes) -> None:
        target = Path(self.uri(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: a crash never leaves a half-written topic file under its final name
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def read_bytes(self, path: str) -> bytes:
        return Path(self.uri(path)).read_bytes()

    def list_files(self, prefix: str) -> list[LakeFile]:
        base = Path(self.root_uri())
        start = base / prefix
        if not start.exists():
            return []
        files = []
        for p in sorted(start.rglob("*")):
            if p.is_file() and not p.name.startswith(".tmp-"):
                stat = p.stat()
                files.append(LakeFile(str(p.relative_to(base)), stat.st_size, stat.st_mtime))
        return files


class S3LakeResource(LakeResource):
    """An S3 bucket and key prefix, through dagster-aws' S3Resource (moto in tests)."""

    bucket: str
    prefix: str = ""
    s3: S3Resource = Field(default_factory=S3Resource)

    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), path.lstrip("/")) if p)

    def storage_options(self) -> dict[str, str]:
        options = {"AWS_REGION": self.s3.region_name or os.environ.get("AWS_REGION", "us-east-1")}
        if self.s3.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.s3.endpoint_url
            # delta-rs refuses plain-HTTP endpoints (moto) unless told otherwise
            if self.s3.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        for option, value in (("AWS_ACCESS_KEY_ID", self.s3.aws_access_key_id),
                              ("AWS_SECRET_ACCESS_KEY", self.s3.aws_secret_access_key),
                              ("AWS_SESSION_TOKEN", self.s3.aws_session_token)):
            if value:
                options[option] = value
        # one writer per table (the platform's own runs) means no DynamoDB lock is needed
        options["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
        return options

    def write_bytes(self, path: str, data: bytes) -> None:
        # a PUT is atomic: readers see the whole object or none
        self.s3.get_client().put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def read_bytes(self, path: str) -> bytes:
        return self.s3.get_client().get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()

    def list_files(self, prefix: str) -> list[LakeFile]:
        client = self.s3.get_client()
        base = self._key("")
        files = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base):].lstrip("/") if base else obj["Key"]
                files.append(LakeFile(rel, obj["Size"], obj["LastModified"].timestamp()))
        return sorted(files, key=lambda f: f.path)
