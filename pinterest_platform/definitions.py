"""The one place the code location is assembled: assets, checks, jobs, schedules, sensors, and the
resource set of the deployment profile chosen by PINTEREST_ENV (`local`, the default, or `aws`).

Both profiles bind the same resource keys (kafka, kinesis, lake, source_db, spark); only the
implementations differ. Secrets are `dg.EnvVar`s resolved at run time, so definitions load without them."""

from __future__ import annotations

import dagster as dg
from dagster_aws.s3 import S3Resource

from pinterest_platform.assets import batch, checks, ingestion, source, streaming
from pinterest_platform.resources.kafka import LocalKafkaResource, MskKafkaResource
from pinterest_platform.resources.kinesis import AwsKinesisResource, LocalKinesisResource
from pinterest_platform.resources.lake import LocalLakeResource, S3LakeResource
from pinterest_platform.resources.source_db import MySqlSourceDatabase, SqliteSourceDatabase
from pinterest_platform.resources.spark import DatabricksSparkResource, LocalSparkResource
from pinterest_platform.settings import Settings, load_settings


def _s3_lake(root: str, settings: Settings) -> S3LakeResource:
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return S3LakeResource(bucket=bucket, prefix=prefix,
                          s3=S3Resource(region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url))


def local_resources(settings: Settings) -> dict:
    lake = (_s3_lake(settings.lake_root, settings) if settings.lake_root.startswith("s3://")
            else LocalLakeResource(root=settings.lake_root))
    source_db = (MySqlSourceDatabase(url=settings.source_db_url) if settings.source_db_url.startswith("mysql")
                 else SqliteSourceDatabase(url=settings.source_db_url))
    return {
        "kafka": LocalKafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
        "kinesis": LocalKinesisResource(region=settings.aws_region, endpoint=settings.aws_endpoint_url),
        "lake": lake,
        "source_db": source_db,
        "spark": LocalSparkResource(),
    }


def aws_resources(settings: Settings) -> dict:
    lake = (_s3_lake(settings.lake_root, settings) if settings.lake_root.startswith("s3://")
            else S3LakeResource(bucket=dg.EnvVar("PINTEREST_S3_BUCKET"), prefix="pinterest",
                                s3=S3Resource(region_name=settings.aws_region)))
    return {
        "kafka": MskKafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS"),
                                  region=settings.aws_region, auth=settings.msk_auth),
        "kinesis": AwsKinesisResource(region=settings.aws_region),
        "lake": lake,
        "source_db": MySqlSourceDatabase(url=dg.EnvVar("PINTEREST_SOURCE_DB_URL")),
        "spark": DatabricksSparkResource(
            host=dg.EnvVar("DATABRICKS_HOST"), token=dg.EnvVar("DATABRICKS_TOKEN"),
            wheel=settings.databricks_wheel, existing_cluster_id=settings.databricks_cluster_id,
        ),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    resources = aws_resources(settings) if settings.env == "aws" else local_resources(settings)
    return dg.Definitions(
        assets=[
            *source.SOURCE_TABLE_SPECS, source.source_seed,
            *ingestion.KAFKA_TOPIC_SPECS, *ingestion.KINESIS_STREAM_SPECS, ingestion.post_events,
            *batch.BATCH_ASSETS,
            *streaming.STREAMING_ASSETS,
        ],
        asset_checks=[*checks.BATCH_CHECKS, *streaming.STREAMING_CHECKS],
        jobs=[batch.batch_job, *getattr(streaming, "STREAMING_JOBS", [])],
        schedules=[batch.daily_batch_schedule],
        sensors=[*streaming.STREAMING_SENSORS],
        resources=resources,
    )


defs = build_definitions()
