"""The one place the code location is assembled: assets, checks, jobs, schedules, sensors, and the
resource set of the deployment profile chosen by PINTEREST_ENV (`local`, the default, or `aws`).

Both profiles bind the same resource keys (kafka, kinesis, lake, source_db, spark); only the
implementations differ. Secrets are `dg.EnvVar`s resolved at run time, so definitions load without them."""

from __future__ import annotations

import dagster as dg

from pinterest_platform.assets import batch, checks, ingestion, source, streaming
from pinterest_platform.resources.kafka import LocalKafkaResource, msk_resource
from pinterest_platform.resources.kinesis import AwsKinesisResource, LocalKinesisResource
from pinterest_platform.resources.lake import (
    LakeResource,
    LakeS3Resource,
    LocalLakeResource,
    LocalS3LakeResource,
    S3LakeResource,
)
from pinterest_platform.resources.source_db import MySqlSourceDatabase, SqliteSourceDatabase
from pinterest_platform.resources.spark import DatabricksSparkResource, LocalSparkResource
from pinterest_platform.settings import Settings, load_settings


def _bucket_and_prefix(root: str) -> tuple[str, str]:
    bucket, _, prefix = root.split("://", 1)[1].partition("/")
    return bucket, prefix.strip("/")


def local_lake(settings: Settings) -> LakeResource:
    """A folder, or an s3:// lake on the stack's moto (resolved at run time; AWS_ENDPOINT_URL wins)."""
    if not settings.lake_is_s3:
        return LocalLakeResource(root=settings.lake_root)
    bucket, prefix = _bucket_and_prefix(settings.lake_root)
    return LocalS3LakeResource(bucket=bucket, prefix=prefix, region=settings.aws_region,
                               endpoint=settings.aws_endpoint_url)


def local_resources(settings: Settings) -> dict:
    lake = local_lake(settings)
    source_db = (MySqlSourceDatabase(url=settings.source_db_url) if settings.source_db_url.startswith("mysql")
                 else SqliteSourceDatabase(url=settings.source_db_url))
    return {
        "kafka": LocalKafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
        "kinesis": kinesis_resource(settings),
        "lake": lake,
        "source_db": source_db,
        "spark": spark_resource(settings),
    }


def aws_lake(settings: Settings) -> S3LakeResource:
    """The production lake: PINTEREST_LAKE_ROOT=s3://bucket/prefix, or PINTEREST_S3_BUCKET under `pinterest/`."""
    if settings.lake_is_s3:
        bucket, prefix = _bucket_and_prefix(settings.lake_root)
        return S3LakeResource(bucket=bucket, prefix=prefix,
                              s3=LakeS3Resource(region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url))
    return S3LakeResource(bucket=dg.EnvVar("PINTEREST_S3_BUCKET"), prefix="pinterest",
                          s3=LakeS3Resource(region_name=settings.aws_region))


def lake_resource(settings: Settings) -> LakeResource:
    """The lake of the settings' profile (for commands that need only the lake)."""
    return aws_lake(settings) if settings.env == "aws" else local_lake(settings)


def databricks_resource(settings: Settings) -> DatabricksSparkResource:
    """Databricks from the environment: secrets and deployed paths resolved at run time (`dg.EnvVar`)."""
    return DatabricksSparkResource(
        host=dg.EnvVar("DATABRICKS_HOST"), token=dg.EnvVar("DATABRICKS_TOKEN"),
        volume=dg.EnvVar("DATABRICKS_VOLUME"), entrypoint=dg.EnvVar("DATABRICKS_ENTRYPOINT"),
        wheel=dg.EnvVar("DATABRICKS_WHEEL"), compute=settings.databricks_compute,
        existing_cluster_id=settings.databricks_cluster_id, **settings.databricks_overrides,
    )


def spark_resource(settings: Settings) -> LocalSparkResource | DatabricksSparkResource:
    """Where Spark jobs run: this process's Spark locally; under aws open-source Spark over the S3 lake (EMR,
    Kubernetes, standalone) when PINTEREST_SPARK_MASTER names a master, else Databricks."""
    if settings.env == "local" or settings.spark_master:
        return LocalSparkResource()
    return databricks_resource(settings)


def kinesis_resource(settings: Settings) -> LocalKinesisResource | AwsKinesisResource:
    if settings.env == "local":
        return LocalKinesisResource(region=settings.aws_region, endpoint=settings.aws_endpoint_url)
    return AwsKinesisResource(region=settings.aws_region)


def aws_resources(settings: Settings) -> dict:
    lake = aws_lake(settings)
    return {
        "kafka": msk_resource(settings, bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
        "kinesis": kinesis_resource(settings),
        "lake": lake,
        "source_db": MySqlSourceDatabase(url=dg.EnvVar("PINTEREST_SOURCE_DB_URL")),
        "spark": spark_resource(settings),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    resources = aws_resources(settings) if settings.env == "aws" else local_resources(settings)
    # the synthetic source is a local-profile feature: under aws the source tables are production data
    source_assets = ([*source.SOURCE_TABLE_SPECS, source.source_seed] if settings.env == "local"
                     else source.source_table_specs(seeded_by_platform=False))
    return dg.Definitions(
        assets=[
            *source_assets,
            *ingestion.KAFKA_TOPIC_SPECS, *ingestion.KINESIS_STREAM_SPECS, ingestion.post_events,
            *batch.BATCH_ASSETS,
            *streaming.STREAMING_ASSETS,
        ],
        asset_checks=[*checks.BATCH_CHECKS, *streaming.STREAMING_CHECKS],
        jobs=[batch.batch_job, *getattr(streaming, "STREAMING_JOBS", [])],
        schedules=[batch.daily_batch_schedule],
        sensors=[batch.batch_automation_sensor, *streaming.STREAMING_SENSORS],
        resources=resources,
    )


defs = build_definitions()
