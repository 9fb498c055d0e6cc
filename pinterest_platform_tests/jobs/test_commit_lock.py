"""The one-writer-per-table lease on a real S3 API (moto from the session stack): exclusive, released,
taken over only once expired, never deleted by a writer who no longer holds it."""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest

from pinterest_platform.jobs.commit_lock import LOCK_NAME, TableLease, TableLockTimeout


@pytest.fixture
def s3(local_stack):
    client = boto3.client("s3", endpoint_url=local_stack["aws_endpoint_url"], region_name="us-east-1")
    bucket = f"locks-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    return client, f"s3://{bucket}/lake/tables/pin"


def lease(client, uri: str, **kwargs) -> TableLease:
    return TableLease(client, uri, poll_s=0.05, **{"wait_s": 1.0, **kwargs})


def run_concurrently(target, names: list[str]) -> None:
    threads = [threading.Thread(target=target, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_second_writer_waits_then_fails_naming_the_holder(s3):
    client, uri = s3
    first = lease(client, uri, holder="writer-one")
    first.acquire()
    try:
        with pytest.raises(TableLockTimeout, match="writer-one"):
            lease(client, uri, wait_s=0.5).acquire()
    finally:
        first.release()
    second = lease(client, uri, holder="writer-two")
    second.acquire()
    second.release()
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/{LOCK_NAME}")


def test_an_expired_lease_is_taken_over_exactly_once(s3):
    client, uri = s3
    crashed = lease(client, uri, holder="crashed", lease_s=0.3)
    crashed.acquire()
    crashed._stop.set()  # a `kill -9`: it never renews and never releases
    time.sleep(0.5)
    winners, errors = [], []

    def take(name: str) -> None:
        try:
            contender = lease(client, uri, holder=name, wait_s=0.4)
            contender.acquire()
            winners.append(contender)
        except TableLockTimeout as exc:
            errors.append(exc)

    run_concurrently(take, [f"taker-{i}" for i in range(4)])
    assert len(winners) == 1, (winners, errors)
    assert len(errors) == 3
    # the crashed holder coming back must not delete the new holder's lease
    crashed.release()
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = json.loads(client.get_object(Bucket=bucket, Key=f"{key}/{LOCK_NAME}")["Body"].read())
    assert body["holder"] == winners[0].holder
    winners[0].release()


def test_writers_under_the_lease_never_overlap(s3):
    client, uri = s3
    inside, overlaps, done = [0], [], []

    def write(name: str) -> None:
        for _ in range(3):
            held = lease(client, uri, holder=name, wait_s=30)
            held.acquire()
            inside[0] += 1
            if inside[0] != 1:
                overlaps.append(name)
            time.sleep(0.02)
            inside[0] -= 1
            held.release()
        done.append(name)

    run_concurrently(write, [f"w{i}" for i in range(3)])
    assert sorted(done) == ["w0", "w1", "w2"]
    assert overlaps == []
