"""The lake: a local folder by default, an S3 bucket (through dagster-aws' `S3Resource`) in production.

Everything the platform keeps lives under one root: raw topic files under `topics/`, Delta tables under
`tables/<name>`. Paths passed around are relative to that root ("topics/pinterest.pin/...")."""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from pinterest_platform.contract import TABLES_DIR
from pinterest_platform.settings import load_settings


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

    def check_access(self, write: bool = True) -> None:
        """Raise LakeAccessError (one line) when the lake cannot be read, or written, as configured."""


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
        """Files whose relative path starts with `prefix`, as an S3 listing would: `a/b/` is a folder,
        `a/b` also matches `a/bc/...`."""
        base = Path(self.root_uri())
        start = base / prefix
        if prefix.endswith("/") or start.is_dir():
            starts = [start] if start.is_dir() else []
        else:
            parent, stem = start.parent, start.name
            starts = sorted(p for p in parent.glob(f"{glob.escape(stem)}*")) if parent.is_dir() else []
        files = []
        for top in starts:
            for p in ([top] if top.is_file() else sorted(top.rglob("*"))):
                if p.is_file() and not p.name.startswith(".tmp-"):
                    stat = p.stat()
                    files.append(LakeFile(str(p.relative_to(base)), stat.st_size, stat.st_mtime))
        return sorted(files, key=lambda f: f.path)


class LakeS3Resource(dg.ConfigurableResource):
    """The S3 connection of an S3 lake: the configuration of dagster-aws' `S3Resource`, field for field (same
    names, defaults and meaning), whose client is made by that very `S3Resource` when first asked for.

    dagster_aws.s3 imports boto3 and botocore, which loading the code location must not (the UI, sensors and
    schedules start without them): it is imported here only by `get_client`, at run time."""

    use_unsigned_session: bool = Field(default=False, description="Specifies whether to use an unsigned S3 session.")
    region_name: str | None = Field(default=None, description="Specifies a custom region for the S3 session.")
    endpoint_url: str | None = Field(default=None, description="Specifies a custom endpoint for the S3 session.")
    max_attempts: int = Field(
        default=5,
        description=("This provides Boto3's retry handler with a value of maximum retry attempts, where the"
                     " initial call counts toward the max_attempts value that you provide."))
    profile_name: str | None = Field(default=None, description="Specifies a profile to connect that session.")
    use_ssl: bool = Field(default=True, description="Whether or not to use SSL. By default, SSL is used.")
    verify: bool | None = Field(
        default=None,
        description="Whether or not to verify SSL certificates. By default SSL certificates are verified.")
    aws_access_key_id: str | None = Field(
        default=None, description="AWS access key ID to use when creating the boto3 session.")
    aws_secret_access_key: str | None = Field(
        default=None, description="AWS secret access key to use when creating the boto3 session.")
    aws_session_token: str | None = Field(
        default=None, description="AWS session token to use when creating the boto3 session.")

    def s3_resource(self):
        """The dagster-aws `S3Resource` of this configuration (imports boto3)."""
        from dagster_aws.s3 import S3Resource

        return S3Resource(**{name: getattr(self, name) for name in type(self).model_fields})

    def get_client(self):
        return self.s3_resource().get_client()


class LakeAccessError(RuntimeError):
    """The lake cannot be used as configured (no bucket, no permission, no endpoint): one line saying which."""


class S3LakeResource(LakeResource):
    """An S3 bucket and key prefix, through dagster-aws' S3Resource and the default credential chain.

    `s3` is a `LakeS3Resource` (the default) or a dagster-aws `S3Resource`: anything with their fields and
    `get_client()`."""

    bucket: str
    prefix: str = ""
    s3: dg.ConfigurableResource = Field(default_factory=LakeS3Resource)

    def s3_resource(self) -> LakeS3Resource:
        """The S3Resource requests go through (the local lake resolves its endpoint here, at run time)."""
        return self.s3

    def client(self):
        return self.s3_resource().get_client()

    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), path.lstrip("/")) if p)

    def storage_options(self) -> dict[str, str]:
        s3 = self.s3_resource()
        options = {"AWS_REGION": s3.region_name or os.environ.get("AWS_REGION", "us-east-1")}
        if s3.endpoint_url:
            options["AWS_ENDPOINT_URL"] = s3.endpoint_url
            # delta-rs refuses plain-HTTP endpoints (moto) unless told otherwise
            if s3.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        for option, value in (("AWS_ACCESS_KEY_ID", s3.aws_access_key_id),
                              ("AWS_SECRET_ACCESS_KEY", s3.aws_secret_access_key),
                              ("AWS_SESSION_TOKEN", s3.aws_session_token)):
            if value:
                options[option] = value
        # delta-rs only reads here; every Delta commit is Spark's, under the platform's one-writer-per-table
        # lock (jobs/commit_lock.py), so delta-rs needs no locking provider of its own
        options["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
        return options

    def check_access(self, write: bool = True) -> None:
        """Fail with one line naming the bucket and the refused operation before any data moves.

        HeadBucket (the bucket exists and is ours to use), ListObjectsV2 under the prefix (the sink and the
        cleaning list raw files) and, for writers, a PutObject of the platform's own marker object."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        marker = self._key("_platform/access-check")
        steps = [("HeadBucket", lambda: client.head_bucket(Bucket=self.bucket)),
                 ("ListObjectsV2", lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""),
                                                                  MaxKeys=1))]
        if write:
            steps.append(("PutObject", lambda: client.put_object(Bucket=self.bucket, Key=marker,
                                                                 Body=b"written by pinterest_platform\n")))
        where = f"s3://{self.bucket}" + (f"/{self.prefix.strip('/')}" if self.prefix.strip("/") else "")
        endpoint = self.s3_resource().endpoint_url
        for operation, call in steps:
            try:
                call()
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
                if code in ("404", "NoSuchBucket"):
                    why = "the bucket does not exist"
                elif code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                              "SignatureDoesNotMatch", "ExpiredToken"):
                    why = f"permission denied ({code}) for the current AWS credentials"
                else:
                    why = f"{code}: {error.get('Message', exc)}"
                raise LakeAccessError(f"lake {where}: {operation} on bucket {self.bucket!r} failed: {why}") from None
            except BotoCoreError as exc:
                raise LakeAccessError(f"lake {where}: {operation} on bucket {self.bucket!r} failed: {exc}"
                                      + (f" (endpoint {endpoint})" if endpoint else "")) from None

    def write_bytes(self, path: str, data: bytes) -> None:
        # a PUT is atomic: readers see the whole object or none
        self.client().put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def read_bytes(self, path: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()

    def list_files(self, prefix: str) -> list[LakeFile]:
        client = self.client()
        base = self._key("")
        files = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base):].lstrip("/") if base else obj["Key"]
                files.append(LakeFile(rel, obj["Size"], obj["LastModified"].timestamp()))
        return sorted(files, key=lambda f: f.path)


class LocalS3LakeResource(S3LakeResource):
    """An `s3://` lake in the local profile: the stack's moto (an explicit AWS_ENDPOINT_URL wins), with
    dummy credentials unless some are set, so no request can reach real AWS by accident."""

    endpoint: str | None = Field(default=None, description="empty: AWS_ENDPOINT_URL, else the stack's moto")
    region: str = "us-east-1"

    def s3_resource(self) -> LakeS3Resource:
        endpoint = self.endpoint or load_settings().s3_endpoint_url()
        if not endpoint:
            raise LakeAccessError(
                f"lake s3://{self.bucket}: no S3 endpoint in the local profile: run `pinterest-platform stack up` "
                "(it serves S3 with moto and creates the bucket) or set AWS_ENDPOINT_URL")
        return LakeS3Resource(endpoint_url=endpoint, region_name=self.region,
                              aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "testing",
                              aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "testing",
                              aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None)

    def ensure_bucket(self) -> bool:
        """Create the bucket on moto when it is missing (local profile only). True when it was created."""
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
            return False
        except client.exceptions.ClientError:
            location = {} if self.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": self.region}}
            client.create_bucket(Bucket=self.bucket, **location)
            return True
