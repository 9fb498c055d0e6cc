"""Kinesis: Amazon Kinesis in production, moto server locally (same boto3 client, other endpoint)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from pinterest_platform.settings import load_settings


class KinesisResource(dg.ConfigurableResource):
    """A boto3 Kinesis client for the platform's streams."""

    region: str = Field(default="us-east-1")

    def endpoint_url(self) -> str | None:
        return None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("kinesis", region_name=self.region, endpoint_url=self.endpoint_url(),
                            config=Config(retries={"max_attempts": 10, "mode": "adaptive"}))

    def ensure_platform_streams(self, prefix: str) -> list[str]:
        """The platform's three streams (`streaming-<prefix>-pin|geo|user`); returns their names."""
        from pinterest_platform.contract import EVENT_KINDS, stream_name

        streams = [stream_name(prefix, k) for k in EVENT_KINDS]
        self.ensure_streams(streams)
        return streams

    def ensure_streams(self, streams: list[str], shards: int = 2, timeout: float = 60.0) -> None:
        """Create missing streams and wait until they are ACTIVE."""
        client = self.client()
        existing = set()
        for page in client.get_paginator("list_streams").paginate():
            existing.update(page["StreamNames"])
        for stream in streams:
            if stream not in existing:
                try:
                    client.create_stream(StreamName=stream, ShardCount=shards)
                except client.exceptions.ResourceInUseException:
                    pass
        waiter = client.get_waiter("stream_exists")
        for stream in streams:
            waiter.wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": int(timeout)})


class LocalKinesisResource(KinesisResource):
    """moto's Kinesis from the local stack (or AWS_ENDPOINT_URL), with dummy credentials."""

    endpoint: str | None = Field(default=None, description="empty means moto from the local stack")

    def endpoint_url(self) -> str | None:
        if self.endpoint:
            return self.endpoint
        settings = load_settings()
        endpoint = settings.aws_endpoint_url or settings.stack_endpoints().get("aws_endpoint_url")
        if not endpoint:
            raise RuntimeError("No Kinesis endpoint: set AWS_ENDPOINT_URL or run `pinterest-platform stack up`.")
        return endpoint

    def client(self):
        import os

        # moto accepts any credentials; set harmless ones so no real profile is ever used locally
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        return super().client()


class AwsKinesisResource(KinesisResource):
    """Amazon Kinesis with the default AWS credential chain."""

    endpoint: str | None = Field(default=None, description="optional VPC endpoint")

    def endpoint_url(self) -> str | None:
        return self.endpoint or None
