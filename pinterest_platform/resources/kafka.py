"""Kafka: the MSK of production, a single-node KRaft broker locally.

`KafkaResource` is the interface assets type-hint; `LocalKafkaResource` speaks PLAINTEXT to the embedded
broker (or any broker named by KAFKA_BOOTSTRAP_SERVERS); `MskKafkaResource` speaks SASL_SSL with AWS IAM
(OAUTHBEARER tokens signed by aws-msk-iam-sasl-signer) or mutual TLS."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from pinterest_platform.settings import load_settings


class KafkaResource(dg.ConfigurableResource):
    """Produces to and consumes from the platform's topics."""

    def client_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def producer(self, **overrides: Any):
        from confluent_kafka import Producer

        # idempotent + acks=all: a retried send never duplicates and an acknowledged one is durable
        config = {"enable.idempotence": True, "acks": "all", "linger.ms": 20, "compression.type": "lz4",
                  **self.client_config(), **overrides}
        return Producer(config)

    def consumer(self, group_id: str, **overrides: Any):
        from confluent_kafka import Consumer

        config = {"group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True, **self.client_config(), **overrides}
        return Consumer(config)

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.client_config())

    def ensure_topics(self, topics: list[str], partitions: int = 3, replication: int = 1,
                      timeout: float = 30.0) -> None:
        """Create missing topics (an existing topic is fine)."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic

        admin = self.admin()
        existing = set(admin.list_topics(timeout=timeout).topics)
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in missing],
            operation_timeout=timeout)
        for topic, future in futures.items():
            try:
                future.result(timeout)
            except Exception as exc:  # an already-created topic (a racing creator) is not an error
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {topic}: {exc}") from exc


class LocalKafkaResource(KafkaResource):
    """PLAINTEXT Kafka: the embedded broker from `pinterest-platform stack up`, or KAFKA_BOOTSTRAP_SERVERS."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port list; empty means the embedded broker of the local stack")

    def resolved_bootstrap_servers(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        settings = load_settings()
        if settings.kafka_bootstrap_servers:
            return settings.kafka_bootstrap_servers
        endpoint = settings.stack_endpoints().get("kafka_bootstrap_servers")
        if not endpoint:
            raise RuntimeError(
                "No Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or start the embedded one with "
                "`pinterest-platform stack up`.")
        return endpoint

    def client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.resolved_bootstrap_servers(), "security.protocol": "PLAINTEXT"}


def _msk_iam_token(region: str):
    """OAUTHBEARER callback: a SigV4-signed token from the default AWS credential chain."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    def callback(_config: str):
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return token, expiry_ms / 1000

    return callback


class MskKafkaResource(KafkaResource):
    """Amazon MSK: SASL_SSL with IAM (default) or mutual TLS."""

    bootstrap_servers: str = Field(description="MSK bootstrap brokers (the IAM or TLS list)")
    region: str = Field(default="us-east-1")
    auth: str = Field(default="iam", description="iam | tls")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    def client_config(self) -> dict[str, Any]:
        if self.auth == "iam":
            return {"bootstrap.servers": self.bootstrap_servers, "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "OAUTHBEARER", "oauth_cb": _msk_iam_token(self.region)}
        if self.auth == "tls":
            config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": "SSL"}
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location)):
                if value:
                    config[key] = value
            return config
        raise ValueError(f"MSK auth {self.auth!r}: expected 'iam' or 'tls'")
