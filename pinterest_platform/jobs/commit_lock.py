"""One writer per Delta table on S3: a lease object per table, taken with S3 conditional writes.

Open-source Delta on S3 (`S3SingleDriverLogStore`) is safe only while one Spark driver writes a table: S3
has no atomic rename, so two drivers committing version N at once would both "succeed" and one commit
would be lost. The batch and the streaming job run in different processes and both write `quarantine`, and
two batch runs may overlap, so every Delta write the jobs make on an S3 lake happens inside
`table_write_lock(spark, uri)`:

- the lease is `<table>/_writer.lock` (a leading underscore: Delta and VACUUM ignore it), a small JSON
  document naming its holder and when it expires;
- taking it is a PUT with `If-None-Match: *` (S3 conditional writes, AWS since 2024, moto too), so of two
  writers exactly one gets it; the other waits and retries;
- a holder renews it (PUT `If-Match` its ETag) while it writes; a holder killed with `kill -9` stops
  renewing, and once the lease has expired the next writer replaces it, again with `If-Match`, so two
  writers cannot both take over;
- a writer that cannot get the lease within `wait_s` fails naming the holder.

The lock is used where the SparkSession says so (`spark.pinterest.s3CommitLock=true`, set by the
platform's own session builder); Databricks' commit service makes concurrent writers safe there, so it is
not set on a Databricks cluster. Folders need nothing: a local rename is atomic and Delta relies on it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

LOCK_NAME = "_writer.lock"
LEASE_S = 120.0
RENEW_EVERY_S = 30.0
DEFAULT_WAIT_S = 600.0
CONF_KEY = "spark.pinterest.s3CommitLock"

log = logging.getLogger(__name__)


class TableLockTimeout(RuntimeError):
    """Another writer held the table for longer than we may wait."""


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key.strip("/")


def _s3_client_from_spark(spark):
    """A boto3 client with the session's own S3A endpoint and credentials (one source of truth)."""
    import boto3

    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001
    endpoint = hadoop.get("fs.s3a.endpoint") or None
    kwargs = {"region_name": hadoop.get("fs.s3a.endpoint.region") or os.environ.get("AWS_REGION", "us-east-1")}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if hadoop.get("fs.s3a.access.key"):
        kwargs["aws_access_key_id"] = hadoop.get("fs.s3a.access.key")
        kwargs["aws_secret_access_key"] = hadoop.get("fs.s3a.secret.key")
    return boto3.client("s3", **kwargs)


class TableLease:
    """The lease on one table's `_writer.lock` (see the module docstring)."""

    def __init__(self, client, uri: str, *, lease_s: float = LEASE_S, wait_s: float = DEFAULT_WAIT_S,
                 poll_s: float = 0.5, holder: str | None = None):
        self.client = client
        self.uri = uri.rstrip("/")
        self.bucket, table_key = _split(self.uri)
        self.key = f"{table_key}/{LOCK_NAME}"
        self.lease_s, self.wait_s, self.poll_s = lease_s, wait_s, poll_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: str | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"holder": self.holder, "table": self.uri,
                           "acquired": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                           "expires_epoch": now + self.lease_s}).encode()

    def _put(self, **condition) -> str | None:
        """PUT the lease with a condition; the new ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                          ContentType="application/json", **condition)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the condition failed; 409: a concurrent conditional write to the same key won
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return None
            raise

    def _current(self) -> tuple[dict, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            return json.loads(answer["Body"].read()), answer["ETag"]
        except ValueError:
            return {"holder": "unreadable lease", "expires_epoch": 0}, answer["ETag"]

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        seen: dict = {}
        told = False
        while True:
            self.etag = self._put(IfNoneMatch="*")
            if self.etag is None:
                current = self._current()
                if current is not None:
                    seen, etag = current
                    if float(seen.get("expires_epoch", 0)) < time.time():
                        # the holder stopped renewing (crashed): replace exactly the lease we read
                        self.etag = self._put(IfMatch=etag)
            if self.etag is not None:
                break
            if not told and seen:
                told = True
                expires_in = float(seen.get("expires_epoch", 0)) - time.time()
                log.warning("waiting for %s: another writer, %s, holds it (lease expires in %.0f s unless renewed)",
                            self.uri, seen.get("holder"), max(0.0, expires_in))
            if time.monotonic() >= deadline:
                raise TableLockTimeout(
                    f"Delta table {self.uri} is being written by {seen.get('holder', 'another writer')} "
                    f"(lease s3://{self.bucket}/{self.key}, expires "
                    f"{datetime.fromtimestamp(float(seen.get('expires_epoch', 0)), timezone.utc).isoformat()}); "
                    f"waited {self.wait_s:.0f} s. One writer per table on S3: let it finish, or delete the "
                    "lease if that writer is gone for good.")
            time.sleep(self.poll_s)
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        interval = min(RENEW_EVERY_S, self.lease_s / 4)
        while not self._stop.wait(interval):
            etag = self._put(IfMatch=self.etag)
            if etag is None:
                self.lost = "the lease was replaced by another writer (it had expired)"
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        if self.lost:
            return
        current = self._current()
        # delete only our own lease: one that expired and was taken over is someone else's now
        if current is not None and current[0].get("holder") == self.holder:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def lock_enabled(spark, uri: str) -> bool:
    if not uri.startswith(("s3://", "s3a://")):
        return False
    try:
        return spark.conf.get(CONF_KEY, "false").lower() == "true"
    except Exception:  # noqa: BLE001 - a session that cannot tell has not asked for the lock
        return False


@contextlib.contextmanager
def table_write_lock(spark, uri: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the table's write lease for the duration of the block (a no-op off S3 or when not asked)."""
    if not lock_enabled(spark, uri):
        yield
        return
    wait = wait_s if wait_s is not None else float(os.environ.get("PINTEREST_TABLE_LOCK_WAIT_S", DEFAULT_WAIT_S))
    lease = TableLease(_s3_client_from_spark(spark), uri, wait_s=wait)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()
    if lease.lost:
        raise RuntimeError(f"lost the write lease on {uri} while writing: {lease.lost}")
