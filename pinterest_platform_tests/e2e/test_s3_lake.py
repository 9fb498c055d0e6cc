"""Production parity on one machine: the whole batch and streaming pipeline over an `s3://` lake on the
stack's moto, through the CLI a user runs, once with in-process Spark and once on the stack's Spark
standalone cluster (a master and two workers, executors in their own JVMs and Python workers).

The user sets only `PINTEREST_LAKE_ROOT=s3://<bucket>/lake`: no AWS_ENDPOINT_URL, no bucket made by hand.
Every table is compared with the plain-Python reference, the raw topic files and Delta logs are listed in
the bucket with boto3, and the streaming sensor and the data-quality checks read the tables from S3 with
delta-rs. A stack or cluster that cannot start fails these tests; nothing here skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest
from deltalake import DeltaTable

from pinterest_platform import contract
from pinterest_platform.assets import checks, streaming
from pinterest_platform.resources.lake import LocalS3LakeResource
from pinterest_platform_tests import reference
from pinterest_platform_tests.compare import normalize
from pinterest_platform_tests.e2e.test_batch_pipeline import cli, sort_key, source_rows

EVENTS = 250
# variables that would point the pipeline somewhere else than the stack this module starts
_UNSET = ("AWS_ENDPOINT_URL", "KAFKA_BOOTSTRAP_SERVERS", "PINTEREST_SPARK_MASTER", "PINTEREST_KAFKA_PORT",
          "PINTEREST_KAFKA_CONTROLLER_PORT", "PINTEREST_MOTO_PORT", "PINTEREST_LAKE_ROOT", "AWS_PROFILE",
          "PINTEREST_TOPIC_PREFIX", "PINTEREST_ENV")


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    """A state dir of its own: this module starts (and stops) its own stack, cluster included."""
    state = tmp_path_factory.mktemp("s3_lake_state")
    base = {k: v for k, v in os.environ.items() if k not in _UNSET}
    base.update(PINTEREST_STATE_DIR=str(state), DAGSTER_HOME=str(state / "dagster_home"))
    yield state, base
    subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "stack", "down"], env=base,
                   capture_output=True, text=True, timeout=120)


def endpoints(state: Path) -> dict:
    return json.loads((state / "stack" / "state.json").read_text())["endpoints"]


def run_pipeline(state: Path, base: dict, *, prefix: str, spark_cluster: bool) -> dict:
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    env = {**base, "PINTEREST_LAKE_ROOT": f"s3://{bucket}/lake", "PINTEREST_TOPIC_PREFIX": prefix,
           "PINTEREST_SOURCE_DB_URL": f"sqlite:///{state / f'{prefix}.db'}"}
    up = cli(env, "stack", "up", *(["--spark-cluster"] if spark_cluster else []))
    assert f"lake bucket s3://{bucket}" in up.stdout and "created" in up.stdout, up.stdout
    cli(env, "seed", "--events", str(EVENTS), "--seed", "23", "--no-progress")
    cli(env, "emulate", "--all", "--mode", "both", "--no-progress")
    batch = cli(env, "run", "batch")
    stream = cli(env, "run", "stream", "--available-now")
    moto = endpoints(state)["aws_endpoint_url"]
    lake = LocalS3LakeResource(bucket=bucket, prefix="lake", endpoint=moto)
    return {"env": env, "bucket": bucket, "prefix": prefix, "lake": lake, "moto": moto,
            "batch": batch, "stream": stream, "db": env["PINTEREST_SOURCE_DB_URL"]}


@pytest.fixture(scope="module")
def in_process(stack_dir):
    state, base = stack_dir
    # the streaming sensor and checks of this process name tables with its own prefix: use that one here
    return run_pipeline(state, base, prefix=streaming.PREFIX, spark_cluster=False)


@pytest.fixture(scope="module")
def on_cluster(stack_dir, in_process):
    state, base = stack_dir
    return run_pipeline(state, base, prefix=f"cl{uuid.uuid4().hex[:6]}", spark_cluster=True)


def delta_rows(lake: LocalS3LakeResource, name: str) -> list[dict]:
    uri = lake.table_uri(name)
    assert DeltaTable.is_deltatable(uri, storage_options=lake.storage_options()), f"no Delta table at {uri}"
    rows = DeltaTable(uri, storage_options=lake.storage_options()).to_pyarrow_table().to_pylist()
    return sorted(({k: normalize(v) for k, v in r.items()} for r in rows), key=sort_key)


def expected_tables(db_url: str) -> tuple[dict, dict]:
    source = source_rows(db_url)
    cleaned = {kind: reference.clean_source_rows(kind, source[kind])[0] for kind in contract.EVENT_KINDS}
    analytics = reference.analytics(cleaned["pin"], cleaned["geo"], cleaned["user"])

    def norm(rows):
        return sorted(({k: normalize(v) for k, v in r.items()} for r in rows), key=sort_key)

    return ({k: norm(v) for k, v in cleaned.items()}, {k: norm(v) for k, v in analytics.items()})


def assert_tables_match_reference(pipeline: dict) -> None:
    cleaned, analytics = expected_tables(pipeline["db"])
    lake = pipeline["lake"]
    for kind in contract.EVENT_KINDS:
        assert len(cleaned[kind]) == EVENTS
        assert delta_rows(lake, kind) == cleaned[kind], f"batch {kind}"
        name = contract.streaming_table_name(pipeline["prefix"], kind)
        assert delta_rows(lake, name) == cleaned[kind], f"streaming {name}"
    for name in contract.ANALYTICS_TABLES:
        got = delta_rows(lake, name)
        assert got and list(got[0]) == contract.ANALYTICS_SCHEMAS[name].fieldNames(), name
        assert got == analytics[name], name


def assert_objects_in_bucket(pipeline: dict) -> None:
    client = boto3.client("s3", endpoint_url=pipeline["moto"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=pipeline["bucket"])
            for obj in page.get("Contents", [])]
    raw_lines = 0
    for kind in contract.EVENT_KINDS:
        topic = contract.topic_name(pipeline["prefix"], kind)
        raw = [k for k in keys if k.startswith(f"lake/topics/{topic}/year=") and k.endswith(".json")]
        assert raw, f"no raw topic files for {topic} in s3://{pipeline['bucket']}"
        for key in raw:
            body = client.get_object(Bucket=pipeline["bucket"], Key=key)["Body"].read().decode()
            raw_lines += sum(1 for line in body.splitlines() if line.strip())
    assert raw_lines == EVENTS * len(contract.EVENT_KINDS)
    tables = [*contract.EVENT_KINDS, contract.QUARANTINE_TABLE, *contract.ANALYTICS_TABLES,
              *(contract.streaming_table_name(pipeline["prefix"], k) for k in contract.EVENT_KINDS)]
    for name in tables:
        assert f"lake/tables/{name}/_delta_log/00000000000000000000.json" in keys, f"no Delta log for {name}"
    checkpoints = [k for k in keys if k.startswith(f"lake/checkpoints/{pipeline['prefix']}_")]
    assert any("/offsets/" in k for k in checkpoints), "streaming checkpoints are not in the bucket"
    # no writer still holds a table, and nothing was written to this machine's disk instead
    assert not [k for k in keys if k.endswith("_writer.lock")]


def test_in_process_spark_over_s3_matches_the_reference(in_process):
    assert_tables_match_reference(in_process)
    assert_objects_in_bucket(in_process)
    assert "batch run" in in_process["batch"].stdout and "succeeded" in in_process["batch"].stdout


def test_sensor_and_checks_read_the_s3_tables_with_delta_rs(in_process):
    lake = in_process["lake"]
    with dg.build_sensor_context(cursor=None, resources={"lake": lake}) as context:
        result = streaming.streaming_tables_sensor(context)
    assert isinstance(result, dg.SensorResult)
    keys = {event.asset_key for event in result.asset_events}
    assert keys == {streaming.streaming_table_key(k) for k in contract.EVENT_KINDS}
    counts = [e.metadata["dagster/row_count"].value for e in result.asset_events if "dagster/row_count" in e.metadata]
    assert counts == [EVENTS] * 3
    for check in [*checks.BATCH_CHECKS, *streaming.STREAMING_CHECKS]:
        evaluation = check(lake=lake)
        assert evaluation.passed, (check.check_key, evaluation.metadata)


def test_spark_cluster_over_s3_matches_the_reference(on_cluster):
    assert_tables_match_reference(on_cluster)
    assert_objects_in_bucket(on_cluster)


def test_the_work_really_ran_on_the_cluster(on_cluster, stack_dir):
    state, base = stack_dir
    status = cli(base, "stack", "status").stdout
    for component in ("spark_master", "spark_worker_1", "spark_worker_2"):
        assert component in status
    ui = endpoints(state)["spark_master_ui"]
    assert f"Spark master UI: {ui}" in status
    with urllib.request.urlopen(f"{ui}/json/", timeout=10) as response:
        master = json.loads(response.read())
    assert master["status"] == "ALIVE"
    assert len([w for w in master["workers"] if w["state"] == "ALIVE"]) == 2
    # the cluster pipeline's `run batch` and `run stream` are two applications, finished, with executors
    apps = [a for a in master["completedapps"] if a["name"] == "pinterest_platform"]
    assert len(apps) >= 2, master["completedapps"]
    work = [p for p in (state / "stack").glob("spark_worker_*/work/app-*/*/stderr")]
    assert work, "no executor ran in a worker"


def test_stack_down_stops_the_cluster(on_cluster, stack_dir):
    state, base = stack_dir
    records = json.loads((state / "stack" / "state.json").read_text())["components"]
    pids = [records[name]["pid"] for name in ("spark_master", "spark_worker_1", "spark_worker_2")]
    down = cli(base, "stack", "down").stdout
    assert "spark_worker_2: stopped" in down
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not json.loads((state / "stack" / "state.json").read_text()).get("spark_cluster")
