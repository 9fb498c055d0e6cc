"""Session-wide fixtures: one SparkSession per test session (start-up is 7-15 s), and one local stack
(Kafka + moto) in a temporary state dir that every Kafka/Kinesis/S3 test shares."""

from __future__ import annotations

import uuid

import pytest

from pinterest_platform_tests.mariadb import MariaDBUnavailable, start_mariadb

# variables that would make resources bypass the test stack, or pin its ports to a developer's stack
_STACK_ENV_UNSET = ("KAFKA_BOOTSTRAP_SERVERS", "AWS_ENDPOINT_URL", "PINTEREST_KAFKA_PORT",
                    "PINTEREST_KAFKA_CONTROLLER_PORT", "PINTEREST_MOTO_PORT", "AWS_PROFILE")


@pytest.fixture(scope="session")
def spark():
    from pinterest_platform.resources.spark import local_spark_session

    return local_spark_session()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The embedded Kafka broker and moto server, up for the whole session; yields the endpoints dict.

    Resources built without explicit endpoints (LocalKafkaResource(), LocalKinesisResource()) find it
    through PINTEREST_STATE_DIR. A stack that cannot start fails the tests that need it."""
    from pinterest_platform.local_stack import LocalStack

    state_dir = tmp_path_factory.mktemp("stack_state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PINTEREST_STATE_DIR", str(state_dir))
        for name in _STACK_ENV_UNSET:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        stack = LocalStack(state_dir)
        try:
            endpoints = stack.up(timeout=90)
        except Exception as exc:  # noqa: BLE001 - any reason the stack cannot start fails the session's tests
            stack.down()
            pytest.fail(f"local stack did not start: {exc}", pytrace=False)
        try:
            yield endpoints
        finally:
            stack.down()


@pytest.fixture
def kafka(local_stack):
    from pinterest_platform.resources.kafka import LocalKafkaResource

    return LocalKafkaResource()


@pytest.fixture
def kinesis(local_stack):
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    return LocalKinesisResource()


@pytest.fixture
def s3_lake(local_stack):
    """An S3LakeResource on a fresh moto bucket."""
    import boto3
    from dagster_aws.s3 import S3Resource

    from pinterest_platform.resources.lake import S3LakeResource

    endpoint = local_stack["aws_endpoint_url"]
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return S3LakeResource(bucket=bucket, prefix="lake", s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1"))


@pytest.fixture(scope="session")
def mariadb_url(tmp_path_factory):
    """SQLAlchemy URL (mysql+pymysql, password user) of a MariaDB server started for this session.

    A missing server is a failure, never a skip: CI (CI=true) must install it, and so should a developer."""
    try:
        server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    except MariaDBUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server.url
    server.stop()
