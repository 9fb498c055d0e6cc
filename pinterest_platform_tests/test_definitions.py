"""The code location loads in both profiles with no credentials, binds the same resource keys, and
declares the schedule and sensors running by default."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from pinterest_platform.definitions import build_definitions
from pinterest_platform.settings import load_settings

RESOURCE_KEYS = {"kafka", "kinesis", "lake", "source_db", "spark"}
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DATABRICKS_HOST", "DATABRICKS_TOKEN",
               "KAFKA_BOOTSTRAP_SERVERS", "PINTEREST_SOURCE_DB_URL", "PINTEREST_S3_BUCKET", "PINTEREST_LAKE_ROOT")


@pytest.mark.parametrize("profile", ["local", "aws"])
def test_definitions_load_without_credentials(profile, monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PINTEREST_ENV", profile)
    defs = build_definitions(load_settings())
    assert set(defs.resources) >= RESOURCE_KEYS
    repo = defs.get_repository_def()
    assert repo.has_job("batch_job")
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"raw/pin", "cleaned/pin", "cleaned/quarantine", "analytics/popular_category_by_country"} <= keys


def test_profiles_pick_their_implementations(monkeypatch):
    monkeypatch.setenv("PINTEREST_ENV", "aws")
    aws = build_definitions(load_settings()).resources
    monkeypatch.setenv("PINTEREST_ENV", "local")
    local = build_definitions(load_settings()).resources
    assert type(aws["spark"]).__name__ == "DatabricksSparkResource"
    assert type(local["spark"]).__name__ == "LocalSparkResource"
    assert type(aws["kafka"]).__name__ == "MskKafkaResource"
    assert type(local["kafka"]).__name__ == "LocalKafkaResource"


def test_aws_profile_has_no_asset_that_writes_the_source(monkeypatch):
    monkeypatch.setenv("PINTEREST_ENV", "aws")
    graph = build_definitions(load_settings()).get_repository_def().asset_graph
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "source/seed" not in keys
    source_keys = [k for k in graph.get_all_asset_keys() if k.path[0] == "source"]
    assert source_keys and all(graph.get(k).is_external for k in source_keys)
    assert all(not graph.get(k).parent_keys for k in source_keys)


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PINTEREST_ENV", "staging")
    with pytest.raises(ValueError, match="PINTEREST_ENV='staging'"):
        load_settings()


def test_every_asset_has_docs_kinds_and_owners():
    defs = build_definitions(load_settings())
    graph = defs.get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_external:
            assert node.description, key
            continue
        assert node.description, f"{key} has no description"
        assert node.kinds, f"{key} has no kinds"
        assert node.owners, f"{key} has no owners"


def test_schedule_and_sensors_run_by_default():
    defs = build_definitions(load_settings())
    schedule = defs.get_schedule_def("daily_batch")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    for sensor in defs.get_repository_def().sensor_defs:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name


@pytest.mark.parametrize("profile", ["local", "aws"])
def test_dagster_cli_validates_with_an_empty_environment(profile, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PINTEREST_ENV": profile}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dagster"), "definitions", "validate",
                             "-m", "pinterest_platform.definitions"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed validation" in (result.stdout + result.stderr).lower()
