"""Gateway throughput under concurrent clients, against the raw clients in the same run.

    .venv/bin/python bench/gateway.py [--clients 32] [--records 100000] [--batch 100] [--shards 32] [--timeout 900]
    .venv/bin/python bench/gateway.py --records 5000          # a quick run

`--clients` threads post `--records` records in total, `--batch` per request, each record a JSON object
carrying a unique id, through each proxy of a `pinterest-platform gateway` process this bench starts on
127.0.0.1 (a subprocess, so its peak RSS and CPU are its own):

- rest:    `POST /topics/{topic}` (Confluent REST Proxy v2) into a fresh Kafka topic; baseline: the same
           clients producing the same records with one shared confluent_kafka Producer configured as the
           gateway's (idempotent, acks=all, linger.ms=2), each client waiting for its batch's deliveries
           as a REST request waits for its answer;
- kinesis: `PUT /streams/{stream}/records` (PutRecords) into a fresh Kinesis stream on moto; baseline: the
           same clients calling boto3 put_records with the same batches.

Per path: records/s, request latency p50/p99 (ms), the gateway's peak RSS (MB) and CPU seconds. Then every
topic and stream is read back in full (a consumer over every partition, GetRecords over every shard) and
each acknowledged record must be there exactly once: lost and duplicated counts are reported and the exit
code is 1 unless both are 0 (and every record was acknowledged). Failed requests (503, transport errors) and
per-record errors are retried a few times and counted; what the gateway answered is printed.

Kinesis figures are bounded by moto, which the local stack runs one request at a time on purpose
(pinterest_platform/local_stack/moto_server.py): both Kinesis paths queue on that one lock. moto's
PutRecord also costs O(records already in the shard) (moto 5.2: it lists the shard's keys for the last
sequence number), so the streams get `--shards` (default 32) shards: with 2, 100k records take ~400 s per
path in moto alone and the figure says nothing about the gateway.

Uses KAFKA_BOOTSTRAP_SERVERS + AWS_ENDPOINT_URL when both are set, else a throwaway local stack in a
temporary state dir. Everything is bounded by `--timeout`: past it the bench stops and reports failure. The
last line is one JSON object: {"bench": "gateway", "ratios": {...}, "rest": {...}, "kinesis": {...}, ...}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_stack, table, tree_rss_bytes  # noqa: E402

API_KEY = "bench-gateway"
KAFKA_JSON_V2 = "application/vnd.kafka.json.v2+json"
REQUEST_TIMEOUT = 60.0   # over the gateway's own 40 s wait for broker acknowledgements
CLK_TCK = os.sysconf("SC_CLK_TCK")
KINESIS_NOTE = ("note: Kinesis figures are bounded by moto, which the local stack runs one request at a time "
                "(pinterest_platform/local_stack/moto_server.py); both Kinesis paths queue on that lock, and "
                "moto's PutRecord slows down as a shard fills (O(records in the shard)), hence --shards.")


class BenchTimeout(Exception):
    pass


# --- records ----------------------------------------------------------------------------------------


def record_values(run: str, count: int) -> list[bytes]:
    """Compact JSON of every record (the bytes the gateway itself forwards), a unique `id` in each."""
    values = []
    for i in range(count):
        row = {"id": i, "run": run, "unique_id": f"{uuid.UUID(int=i)}", "index": i % 11000,
               "title": f"Bench pin number {i}: a title of a realistic length",
               "description": "A description about as long as the pins of the source database carry, "
                              "with a few words more so the record is a few hundred bytes in all.",
               "poster_name": f"poster {i % 997}", "follower_count": f"{i % 300}k",
               "tag_list": "diy,home,decor,crafts", "is_image_or_video": "image",
               "image_src": f"https://i.pinimg.com/originals/{i:08x}.jpg", "downloaded": 1,
               "save_location": "Local save in /data/home-decor", "category": "home-decor"}
        values.append(json.dumps(row, separators=(",", ":")).encode())
    return values


def rest_body(values: list[bytes], ids) -> bytes:
    # assembled from the pre-serialized values: the harness never re-encodes a record
    return b'{"records":[' + b",".join(b'{"value":' + values[i] + b"}" for i in ids) + b"]}"


def kinesis_body(values: list[bytes], ids) -> bytes:
    return b'{"records":[' + b",".join(b'{"data":' + values[i] + b',"partition-key":"' + str(i).encode() + b'"}'
                                       for i in ids) + b"]}"


# --- the gateway process and its resource use ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(port: int, state_dir: Path, log: Path, deadline: float) -> subprocess.Popen:
    """`pinterest-platform gateway` as the user runs it, on a private state dir (endpoints come from the
    KAFKA_BOOTSTRAP_SERVERS/AWS_ENDPOINT_URL that bench_stack exported)."""
    exe = Path(sys.executable).parent / "pinterest-platform"
    cmd = [str(exe), "gateway", "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY]
    env = {**os.environ, "PINTEREST_ENV": "local", "PINTEREST_STATE_DIR": str(state_dir),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env.pop("PINTEREST_API_KEY", None)
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()  # the child has its own copy
    until = min(deadline, time.monotonic() + 90)
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"gateway did not become healthy:\n{log.read_text()[-2000:]}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # uvicorn shuts down gracefully (the producer is flushed)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime + stime, all threads
    except OSError:
        return 0.0


class Sampler:
    """Peak RSS of one process tree (the gateway) while a phase runs, and the CPU it and we used."""

    def __init__(self, pid: int | None, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self.cpu_s = 0.0
        self.own_cpu_s = 0.0

    def __enter__(self):
        self._stop = threading.Event()
        self._peak = tree_rss_bytes(self.pid) if self.pid else 0
        self._cpu0 = cpu_seconds(self.pid) if self.pid else 0.0
        times = os.times()
        self._own0 = times.user + times.system
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, tree_rss_bytes(self.pid))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.pid:
            self.peak_mb = max(self._peak, tree_rss_bytes(self.pid)) / 2**20
            self.cpu_s = cpu_seconds(self.pid) - self._cpu0
        times = os.times()
        self.own_cpu_s = times.user + times.system - self._own0
        return False


# --- clients -----------------------------------------------------------------------------------------


@dataclass
class Phase:
    proxy: str
    path: str
    count: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    acked: bytearray = field(default_factory=bytearray)
    errors: Counter = field(default_factory=Counter)
    retried: int = 0
    gateway_peak_rss_mb: float | None = None
    gateway_cpu_s: float | None = None
    bench_cpu_s: float = 0.0
    check: dict = field(default_factory=dict)

    @property
    def acknowledged(self) -> int:
        return sum(self.acked)

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Worker:
    """One client thread's state: its own counters (merged afterwards, so no lock per request)."""

    def __init__(self, phase: Phase):
        self.phase = phase
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.retried = 0


def batches(count: int, batch: int) -> list[range]:
    return [range(i, min(i + batch, count)) for i in range(0, count, batch)]


def run_clients(phase: Phase, clients: int, batch: int, deadline: float, retries: int, make_send) -> None:
    """`clients` threads take the next batch of ids until none is left; `make_send()` gives each thread its
    send(worker, ids, first) -> ids still to retry (with its own connection). Retries back off, bounded."""
    phase.acked = bytearray(phase.count)
    jobs = iter(batches(phase.count, batch))
    lock = threading.Lock()
    workers: list[Worker] = []

    def loop(worker: Worker, send) -> None:
        while time.monotonic() < deadline:
            with lock:
                ids = next(jobs, None)
            if ids is None:
                return
            pending = ids
            for attempt in range(retries + 1):
                if attempt:
                    worker.retried += len(pending)
                    time.sleep(min(2.0, 0.05 * 2 ** attempt))
                if time.monotonic() >= deadline:
                    return
                pending = send(worker, pending, attempt == 0)
                if not pending:
                    break

    threads = []
    for _ in range(clients):
        worker = Worker(phase)
        workers.append(worker)
        threads.append(threading.Thread(target=loop, args=(worker, make_send()), daemon=True))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    phase.seconds = time.perf_counter() - started
    for worker in workers:
        phase.latencies += worker.latencies
        phase.errors += worker.errors
        phase.retried += worker.retried
    if any(t.is_alive() for t in threads) or next(jobs, None) is not None:
        raise BenchTimeout(f"{phase.proxy} {phase.path}: not done before the deadline")


class Http:
    """One keep-alive connection per client thread: no connection set-up per request."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)

    def call(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body, headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            raise
        if response.will_close:
            self.conn.close()
        return response.status, data


def gateway_send(port: int, method: str, path: str, content_type: str, values: list[bytes], build, on_ok,
                 batch: int):
    """A send() for the gateway: on_ok(worker, ids, answer) -> ids to retry. Every first attempt's body is
    built here, before the clock starts; only retries (of some records) build one on the way."""
    headers = {"Content-Type": content_type, "x-api-key": API_KEY}
    bodies = {ids.start: build(values, ids) for ids in batches(len(values), batch)}

    def make():
        client = Http(port)

        def send(worker: Worker, ids, first: bool):
            body = bodies[ids.start] if first else build(values, ids)
            started = time.perf_counter()
            try:
                status, data = client.call(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                worker.errors[f"transport {type(exc).__name__}"] += 1
                return ids
            elapsed = time.perf_counter() - started
            if status == 200:
                worker.latencies.append(elapsed)
                return on_ok(worker, ids, json.loads(data))
            try:
                code = json.loads(data).get("error_code")
            except ValueError:
                code = "non-JSON"
            worker.errors[f"HTTP {status} {code}"] += 1
            # 503 (broker/Kinesis busy) and 500 may succeed on retry; any other status will not
            return ids if status >= 500 or status == 429 else []

        return send

    return make


def rest_ok(worker: Worker, ids, answer: dict) -> list[int]:
    failed = []
    acked = worker.phase.acked
    for rid, offset in zip(ids, answer["offsets"]):
        if offset["error_code"] is None:
            acked[rid] = 1
        else:
            worker.errors[f"record error_code {offset['error_code']}: {str(offset['error'])[:60]}"] += 1
            failed.append(rid)
    return failed


def kinesis_ok(worker: Worker, ids, answer: dict) -> list[int]:
    failed = []
    acked = worker.phase.acked
    for rid, entry in zip(ids, answer["Records"]):
        if "ErrorCode" in entry:
            worker.errors[f"record {entry['ErrorCode']}"] += 1
            failed.append(rid)
        else:
            acked[rid] = 1
    return failed


def producer_send(producer, topic: str, values: list[bytes]):
    """A send() for the raw Producer: produce the batch, wait for all its deliveries (a REST request's wait)."""

    def make():
        def send(worker: Worker, ids, first: bool):
            remaining = [len(ids)]
            failed: list[int] = []
            done = threading.Event()
            acked = worker.phase.acked

            def delivered(err, _msg, rid):
                # called on the poll thread only, so the counter needs no lock
                if err is None:
                    acked[rid] = 1
                else:
                    worker.errors[f"delivery {err.name()}"] += 1
                    failed.append(rid)
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

            started = time.perf_counter()
            for rid in ids:
                while True:
                    try:
                        producer.produce(topic, value=values[rid],
                                         on_delivery=lambda err, msg, rid=rid: delivered(err, msg, rid))
                        break
                    except BufferError:  # local queue full: the poll thread drains it
                        time.sleep(0.01)
            if not done.wait(REQUEST_TIMEOUT):
                worker.errors["delivery wait timed out"] += 1
                return []  # outcome unknown: not retried (a retry could duplicate)
            worker.latencies.append(time.perf_counter() - started)
            return failed

        return send

    return make


def put_records_send(client, stream: str, values: list[bytes], batch: int):
    from botocore.exceptions import BotoCoreError, ClientError

    # built before the clock starts, as the gateway's bodies are
    entries = {ids.start: [{"Data": values[i], "PartitionKey": str(i)} for i in ids]
               for ids in batches(len(values), batch)}

    def make():
        def send(worker: Worker, ids, first: bool):
            records = entries[ids.start] if first else [{"Data": values[i], "PartitionKey": str(i)} for i in ids]
            started = time.perf_counter()
            try:
                answer = client.put_records(StreamName=stream, Records=records)
            except (BotoCoreError, ClientError) as exc:
                worker.errors[f"boto3 {type(exc).__name__}"] += 1
                return ids
            worker.latencies.append(time.perf_counter() - started)
            return kinesis_ok(worker, ids, answer)

        return send

    return make


# --- read back ---------------------------------------------------------------------------------------


def count_ids(values, count: int, run: str) -> tuple[array, int]:
    seen = array("I", bytes(4 * count))
    foreign = 0
    for raw in values:
        row = json.loads(raw)
        rid = row.get("id")
        if row.get("run") == run and isinstance(rid, int) and 0 <= rid < count:
            seen[rid] += 1
        else:
            foreign += 1
    return seen, foreign


def topic_values(kafka, topic: str, deadline: float):
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = kafka.consumer(f"bench-gateway-check-{uuid.uuid4().hex[:8]}")
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        # every record was acknowledged before this runs, so the end of each partition is the end
        while len(at_end) < len(partitions):
            if time.monotonic() >= deadline:
                raise BenchTimeout(f"reading topic {topic}: not done before the deadline")
            for msg in consumer.consume(10000, 1.0):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                yield msg.value()
    finally:
        consumer.close()


def stream_values(client, stream: str, deadline: float):
    shards = []
    kwargs = {"StreamName": stream}
    while True:
        answer = client.list_shards(**kwargs)
        shards += [s["ShardId"] for s in answer["Shards"]]
        if not answer.get("NextToken"):
            break
        kwargs = {"NextToken": answer["NextToken"]}
    for shard in shards:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard,
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            if time.monotonic() >= deadline:
                raise BenchTimeout(f"reading stream {stream}: not done before the deadline")
            answer = client.get_records(ShardIterator=iterator, Limit=10000)
            for rec in answer["Records"]:
                yield rec["Data"]
            # every put was acknowledged before this runs: an empty answer is the shard's end
            if not answer["Records"]:
                break
            iterator = answer.get("NextShardIterator")


def check(phase: Phase, values, run: str) -> None:
    seen, foreign = count_ids(values, phase.count, run)
    acked = phase.acked
    lost = sum(1 for i in range(phase.count) if acked[i] and not seen[i])
    duplicated = sum(n - 1 for n in seen if n > 1)
    phase.check = {"found": sum(seen), "lost": lost, "duplicated": duplicated,
                   "unacknowledged": phase.count - phase.acknowledged,
                   # a record whose request failed but which got in anyway (not lost, not a duplicate)
                   "unacknowledged_present": sum(1 for i in range(phase.count) if seen[i] and not acked[i]),
                   "foreign": foreign}


# --- main --------------------------------------------------------------------------------------------


def summary(phase: Phase) -> dict:
    def r(x, nd=1):
        return None if x is None else round(x, nd)

    return {"records": phase.count, "acknowledged": phase.acknowledged, "seconds": r(phase.seconds, 2),
            "records_per_s": r(phase.rate), "p50_ms": r(phase.pct(0.50), 2), "p99_ms": r(phase.pct(0.99), 2),
            "requests": len(phase.latencies), "gateway_peak_rss_mb": r(phase.gateway_peak_rss_mb),
            "gateway_cpu_s": r(phase.gateway_cpu_s, 2), "bench_cpu_s": r(phase.bench_cpu_s, 2),
            "retried_records": phase.retried, "errors": dict(phase.errors), **phase.check}


def run_bench(args, deadline: float, tmp: Path) -> dict:
    from pinterest_platform.resources.kafka import LocalKafkaResource
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    run = uuid.uuid4().hex[:8]
    values = record_values(run, args.records)
    with bench_stack() as endpoints:
        print(f"stack: {endpoints}", flush=True)
        kafka = LocalKafkaResource(bootstrap_servers=endpoints["kafka_bootstrap_servers"])
        kinesis = LocalKinesisResource(endpoint=endpoints["aws_endpoint_url"])
        names = {k: f"bench-gateway-{run}-{k}" for k in ("warm", "rest", "producer")}
        streams = {k: f"bench-gateway-{run}-{k}" for k in ("warm", "kinesis", "put-records")}
        kafka.ensure_topics(list(names.values()))
        kinesis.ensure_streams(list(streams.values()), shards=args.shards)
        port = free_port()
        (tmp / "gateway-state").mkdir()
        gateway = start_gateway(port, tmp / "gateway-state", tmp / "gateway.log", deadline)
        producer = poller = None
        stop_poll = threading.Event()
        sends: dict = {}
        try:
            idle_mb = tree_rss_bytes(gateway.pid) / 2**20
            print(f"gateway pid {gateway.pid} on 127.0.0.1:{port}, idle RSS {idle_mb:.1f} MB", flush=True)
            # a producer shared by the direct clients, configured as the gateway's own (KafkaBackend.start)
            producer = kafka.producer(**{"linger.ms": 2, "message.timeout.ms": 30_000,
                                         "message.max.bytes": 1_000_000})

            def poll():
                while not stop_poll.is_set():
                    producer.poll(0.05)

            poller = threading.Thread(target=poll, name="bench-producer-poll", daemon=True)
            poller.start()
            client = kinesis.client()  # as the gateway's KinesisBackend makes it, shared by all threads

            # warm-up, not measured: the broker loads its producer-id state, moto and the gateway their code
            warm_values = record_values(run, 10)
            for warm in (gateway_send(port, "POST", f"/topics/{names['warm']}", KAFKA_JSON_V2, warm_values,
                                      rest_body, rest_ok, 5),
                         gateway_send(port, "PUT", f"/streams/{streams['warm']}/records", "application/json",
                                      warm_values, kinesis_body, kinesis_ok, 5),
                         producer_send(producer, names["warm"], warm_values),
                         put_records_send(client, streams["warm"], warm_values, 5)):
                run_clients(Phase("warm", "warm", 10), 2, 5, deadline, args.retries, warm)

            phases = {
                "producer": Phase("kafka", "direct: confluent Producer (shared, acks=all)", args.records),
                "rest": Phase("kafka", "gateway: POST /topics/{t} (REST Proxy v2)", args.records),
                "put_records": Phase("kinesis", "direct: boto3 put_records", args.records),
                "kinesis": Phase("kinesis", "gateway: PUT /streams/{s}/records", args.records),
            }
            sends.update({
                "producer": producer_send(producer, names["producer"], values),
                "rest": gateway_send(port, "POST", f"/topics/{names['rest']}", KAFKA_JSON_V2, values, rest_body,
                                     rest_ok, args.batch),
                "put_records": put_records_send(client, streams["put-records"], values, args.batch),
                "kinesis": gateway_send(port, "PUT", f"/streams/{streams['kinesis']}/records", "application/json",
                                        values, kinesis_body, kinesis_ok, args.batch),
            })
            for key, phase in phases.items():
                print(f"measuring {phase.proxy} {phase.path}: {args.records:,} records, {args.clients} clients, "
                      f"{args.batch}/request ...", flush=True)
                gateway_phase = key in ("rest", "kinesis")
                with Sampler(gateway.pid) as sampler:
                    run_clients(phase, args.clients, args.batch, deadline, args.retries, sends[key])
                phase.bench_cpu_s = sampler.own_cpu_s
                phase.gateway_cpu_s = sampler.cpu_s
                if gateway_phase:
                    phase.gateway_peak_rss_mb = sampler.peak_mb
                print(f"  {phase.acknowledged:,} acknowledged in {phase.seconds:.2f} s = {phase.rate:,.0f} "
                      f"records/s; errors {dict(phase.errors) or 'none'}", flush=True)
                if gateway.poll() is not None:
                    raise RuntimeError(f"gateway died ({gateway.returncode}); see {tmp / 'gateway.log'}")

            print("reading everything back ...", flush=True)
            started = time.perf_counter()
            check(phases["producer"], topic_values(kafka, names["producer"], deadline), run)
            check(phases["rest"], topic_values(kafka, names["rest"], deadline), run)
            check(phases["put_records"], stream_values(client, streams["put-records"], deadline), run)
            check(phases["kinesis"], stream_values(client, streams["kinesis"], deadline), run)
            print(f"  read back in {time.perf_counter() - started:.1f} s", flush=True)
            log_tail = [line for line in (tmp / "gateway.log").read_text(errors="replace").splitlines()
                        if "Traceback" in line or "ERROR" in line or "WARNING" in line][-10:]
            return {"phases": phases, "idle_mb": idle_mb, "gateway_log_problems": log_tail}
        finally:
            # cleanup is bounded on its own (SIGTERM, then SIGKILL): the hard stop must not cut it short
            signal.alarm(0)
            stop_poll.set()
            if poller is not None:
                poller.join(5)
            if producer is not None:
                producer.flush(10)
            # drop every reference to the producer now, so it is destroyed before the stack stops and does
            # not spend the shutdown reconnecting to a broker that is gone
            sends.clear()
            warm = producer = None  # noqa: F841
            stop_process(gateway)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--records", type=int, default=100_000, help="records per path, in total")
    parser.add_argument("--batch", type=int, default=100, help="records per request (1..500)")
    parser.add_argument("--shards", type=int, default=32,
                        help="shards per Kinesis stream: moto's PutRecord costs O(records already in the shard) "
                             "(it lists the shard's keys to find the last sequence number), so few large shards "
                             "make a 100k run quadratic in moto rather than a measure of the gateway")
    parser.add_argument("--retries", type=int, default=5, help="retries of a failed request or record")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole bench")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 500 or args.clients < 1 or args.records < 1 or args.shards < 1:
        parser.error("need --clients, --records, --shards >= 1 and --batch in 1..500 (PutRecords' limit)")

    deadline = time.monotonic() + args.timeout

    def hard_stop(_signum, _frame):
        # every loop checks the deadline; this is for a call that blocks past it anyway
        raise BenchTimeout(f"hard stop {args.timeout + 30:.0f} s after the start")

    signal.signal(signal.SIGALRM, hard_stop)
    signal.alarm(int(args.timeout) + 30)
    failure = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            result = run_bench(args, deadline, Path(tmp))
    except BenchTimeout as exc:
        failure = f"timeout: {exc} (--timeout {args.timeout:.0f} s)"
    finally:
        signal.alarm(0)
    if failure:
        print(f"FAILED: {failure}", flush=True)
        print(json.dumps({"bench": "gateway", "ok": False, "error": failure, "ratios": None}))
        return 1

    phases = result["phases"]
    ratios = {"rest_vs_producer": round(phases["rest"].rate / phases["producer"].rate, 3),
              "kinesis_vs_put_records": round(phases["kinesis"].rate / phases["put_records"].rate, 3)}
    base = {"producer": "producer", "rest": "producer", "put_records": "put_records", "kinesis": "put_records"}

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    rows = [[p.proxy, p.path, f"{p.acknowledged:,}", f"{p.seconds:.2f}", f"{p.rate:,.0f}",
             fmt(p.pct(0.5), ".1f"), fmt(p.pct(0.99), ".1f"), fmt(p.gateway_peak_rss_mb, ".1f"),
             fmt(p.gateway_cpu_s, ".1f"), f"{p.bench_cpu_s:.1f}", f"{p.rate / phases[base[k]].rate:.2f}x"]
            for k, p in phases.items()]
    checks = [[p.proxy, p.path, f"{p.check['found']:,}", p.check["lost"], p.check["duplicated"],
               p.check["unacknowledged"], p.check["unacknowledged_present"], p.retried,
               ", ".join(f"{k} x{v}" for k, v in p.errors.items()) or "none"] for p in phases.values()]
    print()
    print(f"gateway benchmark: {args.records:,} records per path, {args.clients} clients, {args.batch} records per "
          f"request; {args.shards} shards per stream; {os.cpu_count()} CPUs; gateway idle RSS {result['idle_mb']:.1f} MB")
    print(table(rows, ["proxy", "path", "acked", "seconds", "records/s", "p50 ms", "p99 ms", "gw peak RSS MB",
                       "gw CPU s", "bench CPU s", "vs direct"]))
    print()
    print(table(checks, ["proxy", "path", "read back", "lost", "duplicated", "unacked", "unacked present",
                         "retried", "errors"]))
    print()
    print(KINESIS_NOTE)
    if result["gateway_log_problems"]:
        print("gateway log:", *result["gateway_log_problems"], sep="\n  ")

    gateway_phases = (phases["rest"], phases["kinesis"])
    lost = sum(p.check["lost"] for p in gateway_phases)
    duplicated = sum(p.check["duplicated"] for p in gateway_phases)
    ok = all(p.check["lost"] == 0 and p.check["duplicated"] == 0 and p.check["unacknowledged"] == 0
             and p.check["foreign"] == 0 for p in phases.values())
    print(json.dumps({"bench": "gateway", "ratios": ratios,
                      "rest": {**summary(phases["rest"]), "direct": summary(phases["producer"])},
                      "kinesis": {**summary(phases["kinesis"]), "direct": summary(phases["put_records"]),
                                  "note": "bounded by moto, which serves one request at a time"},
                      "lost": lost, "duplicated": duplicated, "ok": ok, "clients": args.clients,
                      "batch": args.batch, "shards": args.shards, "gateway_idle_rss_mb": round(result["idle_mb"], 1)}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
