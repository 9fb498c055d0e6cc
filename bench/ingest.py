"""Ingestion throughput: the posting emulator next to the raw clients and the original one-request-per-record
approach, in one run on the same machine and stack.

    .venv/bin/python bench/ingest.py [--events 100000] [--baseline 2000]

Measures records/s (3 records per event: pin, geo, user) for
- Kafka:   emulate(batch) (idempotent producer, acks=all, every delivery awaited), a raw confluent Producer
           producing pre-serialized payloads in a tight loop, emulate(batch, via=http) through the gateway,
           and one HTTP request per record through the gateway (the original emulator's way; on a subset);
- Kinesis: emulate(stream) (PutRecords of 500), raw boto3 put_records of 500 pre-serialized records,
           emulate(stream, via=http), one HTTP request per record (PUT .../record) and one boto3 PutRecord
           per record (subset).
Uses the running local stack (or KAFKA_BOOTSTRAP_SERVERS / AWS_ENDPOINT_URL) when healthy, else starts its
own in a temporary state dir and stops it at the end. The gateway runs as a child process on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinterest_platform.contract import EVENT_KINDS, stream_name, topic_name  # noqa: E402
from pinterest_platform.datagen import seed_source_database  # noqa: E402
from pinterest_platform.ingestion.emulator import SourceReader, emulate, encode_row  # noqa: E402
from pinterest_platform.resources.kafka import LocalKafkaResource  # noqa: E402
from pinterest_platform.resources.kinesis import LocalKinesisResource  # noqa: E402
from pinterest_platform.settings import load_settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_endpoints(tmp: Path) -> tuple[dict, object | None]:
    """Endpoints of a healthy running stack, or of one started here (returned so it can be stopped)."""
    from pinterest_platform.local_stack import LocalStack
    from pinterest_platform.local_stack.components import kafka_metadata_error, moto_error

    settings = load_settings()
    known = {**settings.stack_endpoints()}
    if settings.kafka_bootstrap_servers:
        known["kafka_bootstrap_servers"] = settings.kafka_bootstrap_servers
    if settings.aws_endpoint_url:
        known["aws_endpoint_url"] = settings.aws_endpoint_url
    kafka_ok = known.get("kafka_bootstrap_servers") and kafka_metadata_error(known["kafka_bootstrap_servers"]) is None
    moto_ok = known.get("aws_endpoint_url") and moto_error(known["aws_endpoint_url"]) is None
    if kafka_ok and moto_ok:
        print(f"using the running stack: {known}")
        return known, None
    for env in ("KAFKA_BOOTSTRAP_SERVERS", "AWS_ENDPOINT_URL"):
        os.environ.pop(env, None)
    stack = LocalStack(tmp / "stack-state")
    print("no running stack: starting one in a temporary state dir ...", flush=True)
    endpoints = stack.up(timeout=120)
    print(f"  {endpoints}")
    return endpoints, stack


def start_gateway(kafka_servers: str, aws_endpoint: str, port: int, log: Path) -> subprocess.Popen:
    code = (
        "import uvicorn\n"
        "from pinterest_platform.ingestion.gateway import create_app\n"
        "from pinterest_platform.resources.kafka import LocalKafkaResource\n"
        "from pinterest_platform.resources.kinesis import LocalKinesisResource\n"
        f"app = create_app(LocalKafkaResource(bootstrap_servers={kafka_servers!r}), "
        f"LocalKinesisResource(endpoint={aws_endpoint!r}), api_key='bench')\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=handle, stderr=handle)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway did not become healthy; see {log}")


def load_payloads(url: str) -> dict[str, list[tuple[str, bytes]]]:
    """Every record, pre-serialized, per kind: (key, JSON bytes)."""
    reader = SourceReader(url)
    out: dict[str, list[tuple[str, bytes]]] = {k: [] for k in EVENT_KINDS}
    for page in reader.pages():
        for key, rows in page:
            for kind in EVENT_KINDS:
                if rows[kind] is not None:
                    out[kind].append((str(key), encode_row(rows[kind])))
    reader.close()
    return out


def raw_kafka(kafka, prefix: str, payloads) -> tuple[int, float]:
    kafka.ensure_topics([topic_name(prefix, k) for k in EVENT_KINDS])
    producer = kafka.producer()
    delivered = [0]

    def on_delivery(err, _msg):
        if err is None:
            delivered[0] += 1

    started = time.perf_counter()
    for kind in EVENT_KINDS:
        topic = topic_name(prefix, kind)
        for key, value in payloads[kind]:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    producer.flush(120)
    return delivered[0], time.perf_counter() - started


def raw_kinesis(kinesis, prefix: str, payloads) -> tuple[int, float]:
    kinesis.ensure_streams([stream_name(prefix, k) for k in EVENT_KINDS])
    client = kinesis.client()
    sent = 0
    started = time.perf_counter()
    for kind in EVENT_KINDS:
        stream = stream_name(prefix, kind)
        rows = payloads[kind]
        for i in range(0, len(rows), 500):
            answer = client.put_records(StreamName=stream,
                                        Records=[{"Data": v, "PartitionKey": k} for k, v in rows[i:i + 500]])
            sent += len(answer["Records"]) - answer["FailedRecordCount"]
    return sent, time.perf_counter() - started


def per_record_http_kafka(invoke_url: str, prefix: str, payloads, n: int) -> tuple[int, float]:
    """The original batch emulator: one `requests` POST (one new connection) per record."""
    import requests

    headers = {"Content-Type": "application/vnd.kafka.json.v2+json", "x-api-key": "bench"}
    subset = _subset(payloads, n)
    ok = 0
    started = time.perf_counter()
    for kind, _key, value in subset:
        body = json.dumps({"records": [{"value": json.loads(value)}]})
        response = requests.request("POST", f"{invoke_url}/topics/{topic_name(prefix, kind)}", headers=headers,
                                    data=body, timeout=60)
        ok += response.status_code == 200
    return ok, time.perf_counter() - started


def per_record_http_kinesis(invoke_url: str, prefix: str, payloads, n: int) -> tuple[int, float]:
    """The original streaming emulator: one `requests` PUT .../record per record."""
    import requests

    headers = {"Content-Type": "application/json", "x-api-key": "bench"}
    subset = _subset(payloads, n)
    ok = 0
    started = time.perf_counter()
    for kind, key, value in subset:
        stream = stream_name(prefix, kind)
        body = json.dumps({"StreamName": stream, "Data": json.loads(value), "PartitionKey": key})
        response = requests.request("PUT", f"{invoke_url}/streams/{stream}/record", headers=headers, data=body,
                                    timeout=60)
        ok += response.status_code == 200
    return ok, time.perf_counter() - started


def per_record_put_record(kinesis, prefix: str, payloads, n: int) -> tuple[int, float]:
    client = kinesis.client()
    subset = _subset(payloads, n)
    started = time.perf_counter()
    for kind, key, value in subset:
        client.put_record(StreamName=stream_name(prefix, kind), Data=value, PartitionKey=key)
    return len(subset), time.perf_counter() - started


def _subset(payloads, n: int) -> list[tuple[str, str, bytes]]:
    """The first n records in posting order (pin, geo, user of each event in turn)."""
    out = []
    for i in range(len(payloads["pin"])):
        for kind in EVENT_KINDS:
            if len(out) >= n:
                return out
            key, value = payloads[kind][i]
            out.append((kind, key, value))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to post (3 records each)")
    parser.add_argument("--baseline", type=int, default=2_000,
                        help="records for the one-request-per-record baselines")
    parser.add_argument("--only", choices=("kafka", "kinesis"), default=None,
                        help="measure one target only (default: both)")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        endpoints, stack = stack_endpoints(tmp)
        gateway = None
        try:
            kafka = LocalKafkaResource(bootstrap_servers=endpoints["kafka_bootstrap_servers"])
            kinesis = LocalKinesisResource(endpoint=endpoints["aws_endpoint_url"])
            url = f"sqlite:///{tmp / 'source.db'}"
            print(f"seeding {args.events:,} events ...", flush=True)
            seed_source_database(url, args.events, seed=0, progress=False)
            payloads = load_payloads(url)
            records = sum(len(v) for v in payloads.values())
            port = free_port()
            gateway = start_gateway(endpoints["kafka_bootstrap_servers"], endpoints["aws_endpoint_url"], port,
                                    tmp / "gateway.log")
            invoke_url = f"http://127.0.0.1:{port}"
            run = uuid.uuid4().hex[:6]
            results: list[tuple[str, str, int, float]] = []

            def record(target: str, name: str, count: int, seconds: float) -> None:
                results.append((target, name, count, seconds))
                print(f"  {target:<8} {name:<52} {count:>9,} records {seconds:8.2f} s "
                      f"{count / seconds:>10,.0f} records/s", flush=True)

            def emulated(mode: str, via: str, tag: str):
                prefix = f"bench{run}{tag}"
                if via == "http":
                    kafka.ensure_topics([topic_name(prefix, k) for k in EVENT_KINDS])
                    kinesis.ensure_streams([stream_name(prefix, k) for k in EVENT_KINDS])
                report = emulate(url, mode, kafka if via == "direct" else None,
                                 kinesis if via == "direct" else None, prefix, via=via, invoke_url=invoke_url,
                                 api_key="bench", progress=False)
                if not report.ok:
                    raise RuntimeError(report.summary())
                return report.total_sent, report.seconds

            # warm-up: a fresh broker's transaction coordinator (idempotent producer ids) loads on first use
            tiny = {k: [("0", b"{}")] for k in EVENT_KINDS}
            raw_kafka(kafka, f"bench{run}w", tiny)
            raw_kinesis(kinesis, f"bench{run}w", tiny)
            def measure_kafka() -> None:
                record("kafka", "emulate(batch) direct: idempotent, acks=all", *emulated("batch", "direct", "a"))
                record("kafka", "raw confluent Producer, pre-serialized", *raw_kafka(kafka, f"bench{run}b", payloads))
                record("kafka", "emulate(batch, via=http): gateway, 500/request", *emulated("batch", "http", "c"))
                kafka.ensure_topics([topic_name(f"bench{run}d", k) for k in EVENT_KINDS])
                record("kafka", "baseline: 1 HTTP request per record (gateway)",
                       *per_record_http_kafka(invoke_url, f"bench{run}d", payloads, args.baseline))

            def measure_kinesis() -> None:
                record("kinesis", "emulate(stream) direct: PutRecords x500", *emulated("stream", "direct", "e"))
                record("kinesis", "raw boto3 put_records x500, pre-serialized",
                       *raw_kinesis(kinesis, f"bench{run}f", payloads))
                record("kinesis", "emulate(stream, via=http): gateway, 500/request", *emulated("stream", "http", "g"))
                kinesis.ensure_streams([stream_name(f"bench{run}h", k) for k in EVENT_KINDS])
                record("kinesis", "baseline: 1 HTTP request per record (gateway)",
                       *per_record_http_kinesis(invoke_url, f"bench{run}h", payloads, args.baseline))
                record("kinesis", "baseline: 1 boto3 PutRecord per record",
                       *per_record_put_record(kinesis, f"bench{run}h", payloads, args.baseline))

            print("measuring ...", flush=True)
            if args.only != "kinesis":
                measure_kafka()
            if args.only != "kafka":
                measure_kinesis()
        finally:
            if gateway is not None:
                gateway.terminate()
                try:
                    gateway.wait(15)
                except subprocess.TimeoutExpired:
                    gateway.kill()
                    gateway.wait(5)
            if stack is not None:
                stack.down()

    print()
    print(f"ingest benchmark: {args.events:,} events = {records:,} records; baselines on {args.baseline:,} "
          f"records; {os.cpu_count()} CPUs")
    header = f"{'target':<8} {'path':<52} {'records':>9} {'seconds':>8} {'records/s':>11} {'vs raw':>7} " \
             f"{'vs 1/req':>9}"
    print(header)
    print("-" * len(header))
    for target in ("kafka", "kinesis"):
        rows = [r for r in results if r[0] == target]
        if not rows:
            continue
        raw = next(r for r in rows if r[1].startswith("raw"))
        baseline = next(r for r in rows if "HTTP request per record" in r[1])
        raw_rate = raw[2] / raw[3]
        base_rate = baseline[2] / baseline[3]
        for _, name, count, seconds in rows:
            rate = count / seconds
            print(f"{target:<8} {name:<52} {count:>9,} {seconds:>8.2f} {rate:>11,.0f} {rate / raw_rate:>6.2f}x "
                  f"{rate / base_rate:>8.1f}x")

    def rate_of(target: str, prefix: str) -> float | None:
        found = [r for r in results if r[0] == target and r[1].startswith(prefix)]
        return found[0][2] / found[0][3] if found else None

    def ratio(a: str, b: str) -> float | None:
        return round(rates[a] / rates[b], 3) if rates[a] is not None and rates[b] else None

    rates = {
        "emulate_kafka": rate_of("kafka", "emulate(batch) direct"),
        "raw_kafka_producer": rate_of("kafka", "raw confluent Producer"),
        "emulate_kafka_http": rate_of("kafka", "emulate(batch, via=http)"),
        "per_record_http_kafka": rate_of("kafka", "baseline: 1 HTTP request per record"),
        "emulate_kinesis": rate_of("kinesis", "emulate(stream) direct"),
        "raw_kinesis_put_records": rate_of("kinesis", "raw boto3 put_records"),
        "emulate_kinesis_http": rate_of("kinesis", "emulate(stream, via=http)"),
        "per_record_http_kinesis": rate_of("kinesis", "baseline: 1 HTTP request per record"),
        "per_record_put_record": rate_of("kinesis", "baseline: 1 boto3 PutRecord per record"),
    }
    ratios = {
        "emulate_kafka_vs_raw_producer": ratio("emulate_kafka", "raw_kafka_producer"),
        "emulate_kafka_http_vs_raw_producer": ratio("emulate_kafka_http", "raw_kafka_producer"),
        "emulate_kafka_http_vs_per_record_http": ratio("emulate_kafka_http", "per_record_http_kafka"),
        "emulate_kinesis_vs_raw_put_records": ratio("emulate_kinesis", "raw_kinesis_put_records"),
        "emulate_kinesis_http_vs_per_record_http": ratio("emulate_kinesis_http", "per_record_http_kinesis"),
    }
    print(json.dumps({"bench": "ingest", "ratios": {k: v for k, v in ratios.items() if v is not None},
                      "records_per_second": {k: round(v, 1) for k, v in rates.items() if v is not None},
                      "events": args.events, "records": records, "baseline_records": args.baseline,
                      "cpus": os.cpu_count()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
