"""The s3:// lake's wiring: which endpoint it talks to in each profile, the bucket `stack up` makes, the one
line a missing bucket gives, and the S3A settings Spark gets (moto locally, the default chain on AWS)."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.stub import Stubber

from pinterest_platform.definitions import build_definitions
from pinterest_platform.resources.lake import LakeAccessError, LocalS3LakeResource, S3LakeResource
from pinterest_platform.resources.spark import (
    check_lake_visible_to_executors,
    executors_share_this_filesystem,
    s3a_conf,
    spark_master,
)
from pinterest_platform.settings import load_settings


def test_local_s3_lake_finds_the_stacks_moto_without_aws_endpoint_url(local_stack, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", "s3://some-bucket/lake")
    lake = build_definitions(load_settings()).resources["lake"]
    assert isinstance(lake, LocalS3LakeResource)
    assert lake.root_uri() == "s3://some-bucket/lake"
    assert lake.s3_resource().endpoint_url == local_stack["aws_endpoint_url"]
    assert lake.storage_options()["AWS_ENDPOINT_URL"] == local_stack["aws_endpoint_url"]


def test_an_explicit_aws_endpoint_url_wins(local_stack, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", "s3://some-bucket/lake")
    lake = build_definitions(load_settings()).resources["lake"]
    assert lake.s3_resource().endpoint_url == "http://127.0.0.1:1"


def test_no_stack_and_no_endpoint_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PINTEREST_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(LakeAccessError, match="run `pinterest-platform stack up`"):
        LocalS3LakeResource(bucket="b").s3_resource()


def test_stack_up_creates_the_lake_bucket(local_stack, monkeypatch):
    from pinterest_platform.local_stack.stack import LocalStack

    bucket = f"made-by-up-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", f"s3://{bucket}/lake")
    client = boto3.client("s3", endpoint_url=local_stack["aws_endpoint_url"], region_name="us-east-1")
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    stack = LocalStack()
    stack.up(timeout=60)  # everything already runs: this only makes the bucket
    assert stack.notes[0] == f"lake bucket s3://{bucket} on {local_stack['aws_endpoint_url']}: created"
    assert stack.notes[1].endswith(": ready")
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    stack.up(timeout=60)
    assert stack.notes[0].endswith("present")


def test_missing_bucket_names_the_bucket_and_the_operation(local_stack):
    lake = LocalS3LakeResource(bucket=f"absent-{uuid.uuid4().hex[:8]}", prefix="lake")
    with pytest.raises(LakeAccessError) as error:
        lake.check_access()
    message = str(error.value)
    assert "HeadBucket" in message and lake.bucket in message and "does not exist" in message
    assert "\n" not in message


def test_check_access_writes_only_its_own_marker(s3_lake):
    s3_lake.check_access(write=True)
    assert [f.path for f in s3_lake.list_files("")] == ["_platform/access-check"]


_STUBBED_CLIENT = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


class _StubbedS3Lake(S3LakeResource):
    def client(self):
        return _STUBBED_CLIENT


def test_denied_permission_names_the_operation():
    # moto does not enforce IAM, so the refusal AWS would send is played back by botocore's Stubber
    lake = _StubbedS3Lake(bucket="prod-lake", prefix="pinterest")
    with Stubber(_STUBBED_CLIENT) as stub:
        stub.add_response("head_bucket", {}, {"Bucket": "prod-lake"})
        stub.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(LakeAccessError, match=r"ListObjectsV2 on bucket 'prod-lake' failed: permission denied"):
            lake.check_access()


def test_s3a_conf_local_uses_moto_path_style_and_dummy_keys(local_stack, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    conf = s3a_conf(load_settings())
    assert conf["spark.hadoop.fs.s3a.endpoint"] == local_stack["aws_endpoint_url"]
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("SimpleAWSCredentialsProvider")
    assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"


def test_s3a_conf_aws_uses_the_default_chain_and_no_keys(monkeypatch):
    monkeypatch.setenv("PINTEREST_ENV", "aws")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    conf = s3a_conf(load_settings())
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == (
        "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider")
    assert not any(k.endswith(("access.key", "secret.key", "fs.s3a.endpoint")) for k in conf)


def test_spark_master_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("PINTEREST_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PINTEREST_SPARK_MASTER", raising=False)
    assert spark_master() == "local[2]"
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "state.json").write_text('{"endpoints": {"spark_master_url": "spark://127.0.0.1:7077"}}')
    assert spark_master() == "spark://127.0.0.1:7077"
    monkeypatch.setenv("PINTEREST_SPARK_MASTER", "spark://spark.internal:7077")
    assert spark_master() == "spark://spark.internal:7077"


def test_folder_lake_with_a_remote_master_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", str(tmp_path / "lake"))
    settings = load_settings()
    assert executors_share_this_filesystem("spark://127.0.0.1:7077")
    check_lake_visible_to_executors(settings, "spark://127.0.0.1:7077")
    assert not executors_share_this_filesystem("spark://10.0.0.5:7077")
    with pytest.raises(RuntimeError, match="executors elsewhere, which cannot see it"):
        check_lake_visible_to_executors(settings, "spark://10.0.0.5:7077")
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", "s3://bucket/lake")
    check_lake_visible_to_executors(load_settings(), "spark://10.0.0.5:7077")
