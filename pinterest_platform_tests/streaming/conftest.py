"""Kinesis helpers for the streaming tests: streams on the session's moto server (the `local_stack`
fixture), each with a unique name so tests never see each other's records."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def kinesis_endpoint(local_stack) -> str:
    return local_stack["aws_endpoint_url"]


@pytest.fixture
def kinesis_client(kinesis_endpoint):
    import boto3

    return boto3.client("kinesis", region_name="us-east-1", endpoint_url=kinesis_endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def make_stream(kinesis_client):
    """make_stream(shards=3, name=None) -> stream name; the streams are deleted afterwards."""
    created = []

    def make(shards: int = 3, name: str | None = None) -> str:
        name = name or f"streaming-t{uuid.uuid4().hex[:10]}"
        kinesis_client.create_stream(StreamName=name, ShardCount=shards)
        kinesis_client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            kinesis_client.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        except Exception:  # noqa: BLE001 - cleanup of an in-memory emulator; nothing to recover
            pass


def put_records(client, stream: str, payloads: list[bytes], keys: list[str] | None = None) -> None:
    """PutRecords in chunks of 500; fails the test if moto rejects any record."""
    keys = keys or [str(i) for i in range(len(payloads))]
    for start in range(0, len(payloads), 500):
        chunk = [{"Data": d, "PartitionKey": k}
                 for d, k in zip(payloads[start:start + 500], keys[start:start + 500], strict=True)]
        answer = client.put_records(StreamName=stream, Records=chunk)
        assert answer.get("FailedRecordCount", 0) == 0, answer
