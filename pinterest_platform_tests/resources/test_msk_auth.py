"""MSK authentication for real: the embedded Kafka broker started with an OAUTHBEARER listener (Kafka's
unsecured-token validator) and a TLS listener with a self-signed certificate, then the platform's own
MskKafkaResource producing through the producer, the raw sink's consumer and the gateway; and the IAM token
provider signing offline with fake credentials.

MSK itself cannot run here: what differs is only who validates the token (MSK checks the SigV4 signature;
this broker checks an unsigned JWT), so the test swaps the token, never the wiring."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest

from pinterest_platform import contract
from pinterest_platform.ingestion.gateway import KAFKA_JSON_V2, create_app
from pinterest_platform.ingestion.raw_sink import sink_topics
from pinterest_platform.local_stack import procs
from pinterest_platform.local_stack.components import KafkaBroker
from pinterest_platform.resources.kafka import MskKafkaResource, msk_iam_token
from pinterest_platform.resources.kinesis import LocalKinesisResource
from pinterest_platform.resources.lake import LocalLakeResource
from pinterest_platform_tests.ingestion.test_gateway import RunningGateway


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def unsecured_jwt(subject: str = "platform-test", lifetime_s: float = 600) -> tuple[str, float]:
    now = time.time()
    token = f"{_b64({'alg': 'none'})}.{_b64({'sub': subject, 'iat': now, 'exp': now + lifetime_s})}."
    return token, now + lifetime_s


class CountingTokenMsk(MskKafkaResource):
    """The production resource with the broker's kind of token; counts how often librdkafka asked."""

    def oauth_token(self) -> tuple[str, float]:
        TOKENS_ISSUED.append(time.time())
        return unsecured_jwt()


TOKENS_ISSUED: list[float] = []


class SecureKafkaBroker(KafkaBroker):
    """The stack's broker component plus SASL_PLAINTEXT/OAUTHBEARER and SSL listeners."""

    name = "kafka"
    port_envs = {"port": "PINTEREST_TEST_UNUSED_1", "controller_port": "PINTEREST_TEST_UNUSED_2",
                 "sasl_port": "PINTEREST_TEST_UNUSED_3", "ssl_port": "PINTEREST_TEST_UNUSED_4"}

    def __init__(self, stack_dir: Path, keystore: Path):
        super().__init__(stack_dir)
        self.keystore = keystore

    def prepare(self, record: dict) -> None:
        super().prepare(record)
        host, port, sasl, ssl, ctl = "127.0.0.1", record["port"], record["sasl_port"], record["ssl_port"], \
            record["controller_port"]
        # later keys win in a Java properties file: these replace the template's listener lines
        with open(self.properties, "a") as handle:
            handle.write(f"""
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl},SASL_PLAINTEXT://{host}:{sasl},SSL://{host}:{ssl}
advertised.listeners=PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl},SSL://{host}:{ssl}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
sasl.enabled.mechanisms=OAUTHBEARER
listener.name.sasl_plaintext.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.sasl_plaintext.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location={self.keystore}
""")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and the PEM keystore the broker reads."""
    folder = tmp_path_factory.mktemp("tls")
    assert shutil.which("openssl"), "openssl is needed to make the test certificate"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    keystore = folder / "keystore.pem"
    keystore.write_text((folder / "key.pem").read_text() + (folder / "cert.pem").read_text())
    return {"ca": folder / "cert.pem", "keystore": keystore}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory, certificate):
    broker = SecureKafkaBroker(tmp_path_factory.mktemp("secure_kafka"), certificate["keystore"])
    record: dict = {}
    for key, (port, _source) in broker.resolve_ports(record, set()).items():
        record[key] = port
    broker.prepare(record)
    pid = procs.spawn(broker.command(record), cwd=broker.dir, log_path=broker.console_log)
    try:
        deadline = time.monotonic() + 90
        error = broker.check(broker.endpoint(record))
        while error is not None:
            if time.monotonic() > deadline or procs.fingerprint(pid) is None:
                pytest.fail(f"secure broker did not start: {error}\n{procs.tail(broker.log_path)}", pytrace=False)
            time.sleep(0.5)
            error = broker.check(broker.endpoint(record))
        yield {"sasl": f"127.0.0.1:{record['sasl_port']}", "ssl": f"127.0.0.1:{record['ssl_port']}"}
    finally:
        procs.stop(pid)


def consume_values(kafka: MskKafkaResource, topic: str, expected: int) -> list[bytes]:
    consumer = kafka.consumer(f"reader-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    values, deadline = [], time.monotonic() + 60
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value())
    finally:
        consumer.close()
    return values


def test_oauthbearer_producer_sink_and_gateway(secure_broker, tmp_path, local_stack):
    kafka = CountingTokenMsk(bootstrap_servers=secure_broker["sasl"], auth="iam", security_protocol="SASL_PLAINTEXT")
    assert kafka.client_config()["sasl.mechanisms"] == "OAUTHBEARER"
    prefix = f"oauth{uuid.uuid4().hex[:6]}"
    topic = contract.topic_name(prefix, "pin")
    kafka.ensure_topics([topic], partitions=1)
    before = len(TOKENS_ISSUED)

    producer = kafka.producer()
    for i in range(5):
        producer.produce(topic, value=json.dumps({"index": i}).encode())
    assert producer.flush(30) == 0
    assert len(TOKENS_ISSUED) > before, "the producer never asked for a token"

    # the gateway's producer: one REST Proxy request, acknowledged by the broker
    gateway = RunningGateway(create_app(kafka, LocalKinesisResource(), api_key=None))
    try:
        answer = httpx.post(f"{gateway.url}/topics/{topic}", headers={"Content-Type": KAFKA_JSON_V2},
                            content=json.dumps({"records": [{"value": {"index": 5}}]}), timeout=60)
    finally:
        gateway.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["offsets"][0]["error"] is None

    # the raw sink's consumer reads all six over OAUTHBEARER and lands them
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    report = sink_topics(kafka, lake, [topic], group_id=f"{prefix}-raw-sink")
    assert report[topic]["records"] == 6
    lines = [json.loads(line) for f in lake.list_files("topics") for line in lake.read_bytes(f.path).splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(6))


def test_a_rejected_token_fails_rather_than_hangs(secure_broker):
    class ExpiredTokenMsk(MskKafkaResource):
        def oauth_token(self):
            return unsecured_jwt(lifetime_s=-60)

    kafka = ExpiredTokenMsk(bootstrap_servers=secure_broker["sasl"], security_protocol="SASL_PLAINTEXT")
    from confluent_kafka import KafkaException

    with pytest.raises((KafkaException, RuntimeError)):
        kafka.admin().list_topics(timeout=10)


def test_tls_with_a_ca_file(secure_broker, certificate):
    kafka = MskKafkaResource(bootstrap_servers=secure_broker["ssl"], auth="tls",
                             ssl_ca_location=str(certificate["ca"]))
    topic = f"tls{uuid.uuid4().hex[:6]}.pin"
    kafka.ensure_topics([topic], partitions=1)
    producer = kafka.producer()
    producer.produce(topic, value=b'{"index": 1}')
    assert producer.flush(30) == 0
    assert consume_values(kafka, topic, 1) == [b'{"index": 1}']


def test_tls_refuses_an_untrusted_broker(secure_broker, tmp_path):
    from confluent_kafka import KafkaException

    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
                    str(tmp_path / "k.pem"), "-out", str(other), "-subj", "/CN=someone-else"],
                   check=True, capture_output=True, timeout=60)
    kafka = MskKafkaResource(bootstrap_servers=secure_broker["ssl"], auth="tls", ssl_ca_location=str(other))
    with pytest.raises(KafkaException):
        kafka.admin().list_topics(timeout=10)


def test_iam_token_is_signed_offline_with_the_default_chain(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FAKEKEYIDFORTESTS000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    token, expiry = msk_iam_token("eu-west-1")
    url = urllib.parse.urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    query = urllib.parse.parse_qs(url.query)
    assert url.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("FAKEKEYIDFORTESTS000/")
    assert len(query["X-Amz-Signature"][0]) == 64
    assert 0 < expiry - time.time() <= 900
    # and it is what the resource hands librdkafka
    callback = MskKafkaResource(bootstrap_servers="b-1.msk:9098", region="eu-west-1").client_config()["oauth_cb"]
    assert callback("")[0].startswith("aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEu")  # base64url of "https://kafka.eu-west-1."
