"""Kafka: the MSK of production, a single-node KRaft broker locally.

`KafkaResource` is the interface assets type-hint; `LocalKafkaResource` speaks PLAINTEXT to the embedded
broker (or any broker named by KAFKA_BOOTSTRAP_SERVERS); `MskKafkaResource` speaks SASL_SSL with AWS IAM
(OAUTHBEARER tokens signed by aws-msk-iam-sasl-signer) or mutual TLS.

Every client they make logs through the Python logger `pinterest_platform.kafka` (see `kafka_logger`)
instead of librdkafka printing to stderr."""

from __future__ import annotations

import logging
import os
from typing import Any

import dagster as dg
from pydantic import Field

from pinterest_platform.settings import load_settings

KAFKA_LOGGER = "pinterest_platform.kafka"
KAFKA_LOG_LEVEL_ENV = "PINTEREST_KAFKA_LOG_LEVEL"  # e.g. INFO to see librdkafka's retries too
# librdkafka warns about conditions it recovers from by itself, such as a producer asking a broker that is
# still loading its coordinator for an idempotence PID ("... Coordinator load in progress: retrying"); the
# send succeeds moments later, so these are progress, not problems. Only WARNING records with these words
# are demoted (to INFO); errors always pass.
TRANSIENT_KAFKA_WARNINGS = (": retrying", "Coordinator load in progress", "Coordinator not available",
                            "Not coordinator")


class _TransientKafkaWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(t in record.getMessage() for t in TRANSIENT_KAFKA_WARNINGS):
            record.levelno, record.levelname = logging.INFO, "INFO"
            # the logger checked the level before the filter ran: check again for the demoted one
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def kafka_logger() -> logging.Logger:
    """The logger every Kafka client of the platform gets as librdkafka's `logger`.

    WARNING by default (PINTEREST_KAFKA_LOG_LEVEL changes it), with librdkafka's transient retries demoted
    to INFO; records go to stderr prefixed `kafka`. Configure the logger (level, handlers) to route them
    elsewhere: a level or handler set before the first client is kept."""
    logger = logging.getLogger(KAFKA_LOGGER)
    if not any(isinstance(f, _TransientKafkaWarnings) for f in logger.filters):
        logger.addFilter(_TransientKafkaWarnings())
        if logger.level == logging.NOTSET:
            level = os.environ.get(KAFKA_LOG_LEVEL_ENV, "WARNING").strip().upper()
            logger.setLevel(level if isinstance(logging.getLevelName(level), int) else logging.WARNING)
        if not logger.handlers:
            # its own handler, not the root's: a command that configured no logging still shows real
            # errors (stderr, as librdkafka did), and a run's root handlers do not print them twice
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("kafka %(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
    return logger


class KafkaResource(dg.ConfigurableResource):
    """Produces to and consumes from the platform's topics."""

    def client_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def producer(self, **overrides: Any):
        from confluent_kafka import Producer

        # idempotent + acks=all: a retried send never duplicates and an acknowledged one is durable
        config = {"enable.idempotence": True, "acks": "all", "linger.ms": 20, "compression.type": "lz4",
                  "logger": kafka_logger(), **self.client_config(), **overrides}
        return Producer(config)

    def consumer(self, group_id: str, **overrides: Any):
        from confluent_kafka import Consumer

        config = {"group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True, "logger": kafka_logger(), **self.client_config(), **overrides}
        return Consumer(config)

    def admin(self):
        from confluent_kafka.admin import AdminClient

        # librdkafka hands its logs to a `logger` only from poll(): an admin client is rarely polled, so
        # its logs mostly go unshown, but its failures reach the caller as exceptions anyway
        return AdminClient({"logger": kafka_logger(), **self.client_config()})

    def ensure_platform_topics(self, prefix: str) -> list[str]:
        """The platform's three topics (`<prefix>.pin|geo|user`); returns their names."""
        from pinterest_platform.contract import EVENT_KINDS, topic_name

        topics = [topic_name(prefix, k) for k in EVENT_KINDS]
        self.ensure_topics(topics)
        return topics

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


def msk_iam_token(region: str) -> tuple[str, float]:
    """An MSK IAM auth token: a SigV4-presigned `kafka-cluster:Connect` URL signed locally with the default
    AWS credential chain (no network call), and its expiry in epoch seconds."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    return token, expiry_ms / 1000


class MskKafkaResource(KafkaResource):
    """Amazon MSK: SASL_SSL with IAM (default) or TLS.

    IAM: librdkafka's OAUTHBEARER asks `oauth_token()` for a token (and again before it expires); the
    producer, the raw sink's consumer, the gateway and the admin client all get the callback, because they
    all take `client_config()`. librdkafka serves the callback from poll(), so the producer and admin
    client are polled once when made (the consumer's first poll does it)."""

    bootstrap_servers: str = Field(description="MSK bootstrap brokers (the IAM or TLS list)")
    region: str = Field(default="us-east-1")
    auth: str = Field(default="iam", description="iam | tls")
    security_protocol: str | None = Field(
        default=None, description="override librdkafka's security.protocol (default SASL_SSL for iam, SSL for "
                                  "tls); e.g. SASL_PLAINTEXT behind a TLS-terminating proxy")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    def oauth_token(self) -> tuple[str, float]:
        """The OAUTHBEARER token and its expiry (epoch seconds)."""
        return msk_iam_token(self.region)

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        for key, value in (("ssl.ca.location", self.ssl_ca_location),
                           ("ssl.certificate.location", self.ssl_certificate_location),
                           ("ssl.key.location", self.ssl_key_location)):
            if value:
                config[key] = value
        if self.auth == "iam":
            return {**config, "security.protocol": self.security_protocol or "SASL_SSL",
                    "sasl.mechanisms": "OAUTHBEARER", "oauth_cb": lambda _config: self.oauth_token()}
        if self.auth == "tls":
            return {**config, "security.protocol": self.security_protocol or "SSL"}
        raise ValueError(f"MSK auth {self.auth!r}: expected 'iam' or 'tls'")

    def producer(self, **overrides: Any):
        producer = super().producer(**overrides)
        producer.poll(0)  # serves the first token request
        return producer

    def admin(self):
        admin = super().admin()
        admin.poll(0)
        return admin


def msk_resource(settings, bootstrap_servers=None) -> MskKafkaResource:
    """The aws profile's Kafka from the settings (MSK_AUTH and the MSK_SSL_* files)."""
    return MskKafkaResource(bootstrap_servers=bootstrap_servers or settings.kafka_bootstrap_servers,
                            region=settings.aws_region, auth=settings.msk_auth,
                            ssl_ca_location=settings.msk_ssl_ca_location,
                            ssl_certificate_location=settings.msk_ssl_certificate_location,
                            ssl_key_location=settings.msk_ssl_key_location)
