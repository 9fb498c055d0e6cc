"""The Databricks path end to end, on real Spark: `databricks deploy` uploads the built wheel and the entry
point to a Unity Catalog volume of the fake workspace (pinterest_platform_tests.fakes.databricks); the batch
assets and the streaming asset then run through `DatabricksSparkResource` on job clusters, serverless and,
for `run stream` under the aws profile, from the CLI. The fake runs each task in a fresh virtualenv holding
only what a Databricks runtime brings plus what the task installs (the wheel, with its own requirements,
and the pinned dagster-pipes), on a real SparkSession at the pinned Spark, against an S3 lake on moto.
Every table is compared with the plain-Python reference; Pipes messages (results, logs) must reach Dagster.

This module starts a stack of its own (Kafka + moto), so its topics hold only what it posts."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest

from pinterest_platform import contract
from pinterest_platform.assets import batch, checks, streaming
from pinterest_platform.datagen import seed_source_database
from pinterest_platform.ingestion.emulator import emulate
from pinterest_platform.local_stack import LocalStack
from pinterest_platform.resources.kafka import LocalKafkaResource
from pinterest_platform.resources.kinesis import LocalKinesisResource
from pinterest_platform.resources.lake import LocalS3LakeResource
from pinterest_platform.resources.spark import DatabricksSparkResource, delta_jars, s3_jars
from pinterest_platform_tests.e2e.test_s3_lake import delta_rows, expected_tables
from pinterest_platform_tests.fakes.databricks import FakeDatabricksWorkspace, FakeRuntime

EVENTS = 200
TOKEN = "dapi-fake-token"
VOLUME = "/Volumes/main/pinterest/platform"
CLI = [sys.executable, "-m", "pinterest_platform.cli"]


def runtime_conf(moto: str) -> dict[str, str]:
    """What a Databricks runtime has built in, played locally: Delta, and S3 reaching the lake (moto here,
    an instance profile there)."""
    classpath = ":".join([*delta_jars(), *s3_jars()])
    return {
        "spark.master": "local[2]",
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        "spark.hadoop.fs.s3a.endpoint": moto,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.access.key": "testing",
        "spark.hadoop.fs.s3a.secret.key": "testing",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("databricks_stack")
    own = LocalStack(state)
    try:
        endpoints = own.up(timeout=90)
    except Exception as exc:  # noqa: BLE001 - a stack that cannot start fails the module
        own.down()
        pytest.fail(f"local stack did not start: {exc}", pytrace=False)
    yield endpoints
    own.down()


@pytest.fixture(scope="module")
def workspace(stack):
    runtime = FakeRuntime(spark_conf=runtime_conf(stack["aws_endpoint_url"]))
    # the clusters' AWS access (an instance profile on Databricks) reaches moto here
    aws = {"AWS_ENDPOINT_URL": stack["aws_endpoint_url"], "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    with FakeDatabricksWorkspace(token=TOKEN, volumes=[VOLUME], runtime=runtime, run_timeout_seconds=600,
                                 pending_seconds=0.1, cluster_env=aws) as fake:
        yield fake


@pytest.fixture(scope="module")
def deployed(workspace, tmp_path_factory):
    """`pinterest-platform databricks deploy`, as a user runs it: the settings it prints."""
    env_file = tmp_path_factory.mktemp("deploy") / "databricks.env"
    env = {**os.environ, "DATABRICKS_HOST": workspace.url, "DATABRICKS_TOKEN": TOKEN, "DATABRICKS_VOLUME": VOLUME}
    first = subprocess.run([*CLI, "databricks", "deploy", "--env-file", str(env_file)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    again = subprocess.run([*CLI, "databricks", "deploy"], env=env, capture_output=True, text=True, timeout=300)
    return {"settings": settings, "first": first, "again": again, "env": env}


def databricks(workspace, deployed, **overrides) -> DatabricksSparkResource:
    return DatabricksSparkResource(host=workspace.url, token=TOKEN, volume=VOLUME,
                                   entrypoint=deployed["settings"]["DATABRICKS_ENTRYPOINT"],
                                   wheel=deployed["settings"]["DATABRICKS_WHEEL"], poll_interval_seconds=0.5,
                                   **overrides)


@pytest.fixture(scope="module")
def posted(stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("databricks_source")
    db_url = f"sqlite:///{home / 'source.db'}"
    seed_source_database(db_url, EVENTS, seed=31, progress=False)
    kafka = LocalKafkaResource(bootstrap_servers=stack["kafka_bootstrap_servers"])
    kinesis = LocalKinesisResource(endpoint=stack["aws_endpoint_url"])
    emulate(db_url, "both", kafka=kafka, kinesis=kinesis, prefix=streaming.PREFIX, progress=False)
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=stack["aws_endpoint_url"], region_name="us-east-1").create_bucket(Bucket=bucket)
    lake = LocalS3LakeResource(bucket=bucket, prefix="lake", endpoint=stack["aws_endpoint_url"])
    return {"db": db_url, "kafka": kafka, "kinesis": kinesis, "lake": lake, "bucket": bucket}


@pytest.fixture(scope="module")
def batch_run(workspace, deployed, posted):
    instance = dg.DagsterInstance.ephemeral()
    # the events were posted now: they are today's partition
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    result = dg.materialize(
        [*batch.BATCH_ASSETS, *checks.BATCH_CHECKS], instance=instance, raise_on_error=False, partition_key=today,
        resources={"kafka": posted["kafka"], "lake": posted["lake"], "spark": databricks(workspace, deployed)})
    return {"result": result, "instance": instance}


def test_deploy_uploads_the_wheel_and_entry_point_to_the_volume_and_never_overwrites(workspace, deployed):
    wheel, entry = deployed["settings"]["DATABRICKS_WHEEL"], deployed["settings"]["DATABRICKS_ENTRYPOINT"]
    assert wheel.startswith(f"{VOLUME}/artifacts/pinterest_platform-0.1.0-") and wheel.endswith("-py3-none-any.whl")
    assert entry.rsplit("/", 1) == [wheel.rsplit("/", 1)[0], "databricks_entry.py"]
    local_entry = workspace.resolve(entry).read_bytes()
    assert local_entry == (Path(contract.__file__).parent / "jobs" / "databricks_entry.py").read_bytes()
    # the same build again: nothing is written (the Files API was never asked to overwrite)
    assert deployed["again"].returncode == 0 and "already deployed" in deployed["again"].stdout
    uploads = [r for r in workspace.requests if r.method == "PUT" and r.path.startswith("/api/2.0/fs/files/")
               and "/artifacts/" in r.path]
    assert len(uploads) == 2 and all(r.query.get("overwrite") in ("False", "false") for r in uploads)


def test_deploy_refuses_dbfs_and_other_bytes_at_its_path(workspace, deployed, tmp_path):
    env = deployed["env"]
    dbfs = subprocess.run([*CLI, "databricks", "deploy", "--to", "dbfs:/pinterest_platform"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert dbfs.returncode == 1 and "DBFS root is disabled" in dbfs.stderr
    entry = deployed["settings"]["DATABRICKS_ENTRYPOINT"]
    original = workspace.resolve(entry).read_bytes()
    workspace.resolve(entry).write_bytes(b"print('someone else')\n")
    try:
        clash = subprocess.run([*CLI, "databricks", "deploy"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        workspace.resolve(entry).write_bytes(original)
    assert clash.returncode == 1 and "exists with other content" in clash.stderr and "never overwrites" in clash.stderr


def test_the_wheel_requires_only_what_a_cluster_needs(workspace, deployed):
    import zipfile

    wheel = workspace.resolve(deployed["settings"]["DATABRICKS_WHEEL"])
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    unconditional = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                     if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert unconditional == ["dagster-pipes>=1.13"]
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"orchestrator", "local", "dev"} <= extras


def test_batch_on_databricks_matches_the_reference(batch_run, posted):
    result = batch_run["result"]
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    cleaned, analytics = expected_tables(posted["db"])
    for kind in contract.EVENT_KINDS:
        assert delta_rows(posted["lake"], kind) == cleaned[kind], kind
    for name in contract.ANALYTICS_TABLES:
        assert delta_rows(posted["lake"], name) == analytics[name], name


def test_pipes_brings_results_logs_and_passing_checks_back(batch_run, workspace):
    result, instance = batch_run["result"], batch_run["instance"]
    [pin] = [m for m in result.get_asset_materialization_events()
             if m.asset_key == batch.cleaned_key("pin")]
    metadata = pin.step_materialization_data.materialization.metadata
    assert metadata["dagster/row_count"].value > 0
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("running clean_batch on Databricks" in m for m in logs)
    assert any("running analytics on Databricks" in m for m in logs)
    evaluations = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert evaluations and all(ev.passed for ev in evaluations), [ev.check_name for ev in evaluations if not ev.passed]
    # two tasks ran, each on a new 17.3 LTS job cluster with the deployed wheel
    submits = workspace.requests_to("POST", "/jobs/runs/submit")
    assert [s.body["tasks"][0]["task_key"] for s in submits] == ["pinterest_platform_clean_batch",
                                                                 "pinterest_platform_analytics"]
    assert {s.body["tasks"][0]["new_cluster"]["spark_version"] for s in submits} == {"17.3.x-scala2.13"}


def test_analytics_again_on_serverless_gives_the_same_tables(batch_run, workspace, deployed, posted):
    before = {name: delta_rows(posted["lake"], name) for name in contract.ANALYTICS_TABLES}
    # analytics skip a run when no cleaned table changed: forget the last inputs so they are computed again
    boto3.client("s3", endpoint_url=posted["lake"].endpoint, region_name="us-east-1").delete_object(
        Bucket=posted["bucket"], Key=f"lake/{batch.ANALYTICS_INPUTS}")
    analytics_only = dg.AssetSelection.assets(batch.analytics_tables)
    result = dg.materialize([*batch.BATCH_ASSETS], selection=analytics_only, raise_on_error=False,
                            resources={"kafka": posted["kafka"], "lake": posted["lake"],
                                       "spark": databricks(workspace, deployed, compute="serverless")})
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    submit = workspace.requests_to("POST", "/jobs/runs/submit")[-1]
    assert submit.body["tasks"][0]["task_key"] == "pinterest_platform_analytics"
    assert submit.body["environments"][0]["spec"]["dependencies"][1] == deployed["settings"]["DATABRICKS_WHEEL"]
    assert {name: delta_rows(posted["lake"], name) for name in contract.ANALYTICS_TABLES} == before


def test_run_stream_under_aws_drains_kinesis_on_databricks(workspace, deployed, posted, stack, tmp_path):
    """`PINTEREST_ENV=aws pinterest-platform run stream --available-now`: the production profile, with AWS
    played by moto (AWS_ENDPOINT_URL) and Databricks by the fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINTEREST_", "KAFKA_"))}
    env.update(deployed["settings"])
    env.update({
        "PINTEREST_ENV": "aws", "PINTEREST_STATE_DIR": str(tmp_path / "state"),
        "PINTEREST_TOPIC_PREFIX": streaming.PREFIX,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "PINTEREST_LAKE_ROOT": f"s3://{posted['bucket']}/streamed",
        "AWS_ENDPOINT_URL": stack["aws_endpoint_url"], "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
        "DATABRICKS_HOST": workspace.url, "DATABRICKS_TOKEN": TOKEN, "DATABRICKS_VOLUME": VOLUME,
    })
    run = subprocess.run([*CLI, "run", "stream", "--available-now"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on Databricks" in run.stdout
    cleaned, _ = expected_tables(posted["db"])
    lake = LocalS3LakeResource(bucket=posted["bucket"], prefix="streamed", endpoint=stack["aws_endpoint_url"])
    for kind in contract.EVENT_KINDS:
        assert delta_rows(lake, contract.streaming_table_name(streaming.PREFIX, kind)) == cleaned[kind], kind
    stream_submit = workspace.requests_to("POST", "/jobs/runs/submit")[-1]
    assert stream_submit.body["tasks"][0]["task_key"] == "pinterest_platform_stream"
