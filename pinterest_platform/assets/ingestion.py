"""Ingestion in the asset graph: the Kafka topics and Kinesis streams (external: written by the posting
emulator or by the real producers behind API Gateway) and the emulator itself as an asset."""

# no `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime
from typing import Literal

import dagster as dg
from pydantic import Field

from pinterest_platform.assets.metadata import OWNERS
from pinterest_platform.contract import EVENT_KINDS, SOURCE_TABLE_OF, stream_name, topic_name
from pinterest_platform.ingestion.emulator import default_cursor_path, emulate
from pinterest_platform.resources.kafka import KafkaResource
from pinterest_platform.resources.kinesis import KinesisResource
from pinterest_platform.resources.source_db import SourceDatabaseResource
from pinterest_platform.settings import load_settings

_PREFIX = load_settings().topic_prefix


def _source_key(kind: str) -> dg.AssetKey:
    return dg.AssetKey(["source", SOURCE_TABLE_OF[kind]])


KAFKA_TOPIC_SPECS: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key=dg.AssetKey(["kafka", kind]),
        deps=[_source_key(kind)],
        group_name="kafka",
        kinds={"kafka"},
        owners=OWNERS,
        description=f"Kafka topic `{topic_name(_PREFIX, kind)}`: one JSON {SOURCE_TABLE_OF[kind]} row per "
                    "posting event, keyed by ind.",
        metadata={"topic": topic_name(_PREFIX, kind)},
    )
    for kind in EVENT_KINDS
]

KINESIS_STREAM_SPECS: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key=dg.AssetKey(["kinesis", kind]),
        deps=[_source_key(kind)],
        group_name="kinesis",
        kinds={"kinesis"},
        owners=OWNERS,
        description=f"Kinesis stream `{stream_name(_PREFIX, kind)}`: one JSON {SOURCE_TABLE_OF[kind]} row per "
                    "posting event, partition key ind.",
        metadata={"stream": stream_name(_PREFIX, kind)},
    )
    for kind in EVENT_KINDS
]


class PostEventsConfig(dg.Config):
    mode: Literal["batch", "stream", "both"] = Field(
        default="both", description="batch: Kafka topics; stream: Kinesis streams; both")
    limit: int | None = Field(default=None, description="post at most this many events (empty: all)")
    rate: float | None = Field(default=None, description="at most this many events per second (empty: no cap)")
    via: Literal["direct", "http"] = Field(
        default="direct", description="direct: Kafka/Kinesis clients; http: the gateway (PINTEREST_GATEWAY_URL)")


@dg.asset(
    key=["ingestion", "posted_events"],
    group_name="ingestion",
    kinds={"python", "kafka", "kinesis"},
    owners=OWNERS,
    deps=[_source_key(kind) for kind in EVENT_KINDS],
)
def post_events(context: dg.AssetExecutionContext, config: PostEventsConfig, kafka: KafkaResource,
                kinesis: KinesisResource, source_db: SourceDatabaseResource) -> dg.MaterializeResult:
    """Replays the source database's posting events into the Kafka topics and/or Kinesis streams."""
    settings = load_settings()
    report = emulate(
        source_db.url, config.mode, kafka=kafka, kinesis=kinesis, prefix=settings.topic_prefix,
        limit=config.limit, rate=config.rate, via=config.via, invoke_url=settings.gateway_url,
        api_key=settings.gateway_api_key,
        cursor_path=default_cursor_path(settings.state_dir, settings.topic_prefix, config.mode),
        progress=False)
    context.log.info(report.summary())
    metadata = {
        "events_read": dg.MetadataValue.int(report.events_read),
        "records_sent": dg.MetadataValue.int(report.total_sent),
        "records_failed": dg.MetadataValue.int(report.total_failed),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "records_per_second": dg.MetadataValue.float(round(report.records_per_second, 1)),
        "sent_by_destination": dg.MetadataValue.json(report.sent),
        "failed_by_destination": dg.MetadataValue.json(report.failed),
        "source": dg.MetadataValue.text(source_db.display_url()),
        "mode": dg.MetadataValue.text(config.mode),
        "via": dg.MetadataValue.text(config.via),
    }
    if report.last_key is not None:
        metadata["last_key"] = dg.MetadataValue.int(report.last_key)
    if not report.ok:
        raise dg.Failure(
            description=f"{report.total_failed} records were not delivered"
                        + (" (stopped early)" if report.stopped_early else ""),
            metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


__all__ = ["KAFKA_TOPIC_SPECS", "KINESIS_STREAM_SPECS", "PostEventsConfig", "post_events"]
