"""Streaming benchmark: Kinesis (moto) -> Structured Streaming -> Delta.

1. Drain throughput (availableNow): `--events` events (three records each, one per stream) are put first,
   then drained three ways, each as records/s and as a ratio of the first:
   - baseline: raw boto3 GetRecords over every shard of the three streams (the floor: moto's read cost);
   - source only: the `kinesis-local` source into a counting foreachBatch (planning + reading + Arrow);
   - stream job: `jobs.stream.stream` with an availableNow trigger (source + cleaning + MERGE + quarantine).
2. End-to-end latency (processing-time trigger, `--interval`): a producer puts `--rate` events/s for
   `--duration` s; a poller reads the pin table with delta-rs and stamps each ind when it becomes visible.
   Latency = visible - put, p50/p95/max; baseline: the same records read by a raw boto3 consumer polling
   the tip (put -> readable in Kinesis), and the trigger interval itself.

    .venv/bin/python bench/stream.py [--events 100000] [--rate 200] [--duration 30] [--interval 1s]
                                     [--endpoint http://127.0.0.1:PORT]   (default: a private moto server)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure, table  # noqa: E402

REGION = "us-east-1"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pinterest_platform.local_stack.moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"moto did not start; see {log}")


def client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint,
                        config=Config(max_pool_connections=16, retries={"max_attempts": 5, "mode": "standard"}))


def make_streams(kinesis, prefix: str, shards: int) -> dict[str, str]:
    from pinterest_platform import contract

    streams = {kind: contract.stream_name(prefix, kind) for kind in contract.EVENT_KINDS}
    for name in streams.values():
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    for name in streams.values():
        kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    return streams


def event_records(events: int, start: int = 0):
    """(ind, {kind: JSON bytes}) for synthetic events, as the posting emulator sends them."""
    from pinterest_platform import contract
    from pinterest_platform.datagen import generate_events
    from pinterest_platform.ingestion.emulator import encode_row

    def jsonable(row):
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}

    for i, triple in enumerate(generate_events(start + events, seed=2)):
        if i < start:
            continue
        ind = triple[0]["index"]
        yield ind, {kind: encode_row(jsonable(row)) for kind, row in zip(contract.EVENT_KINDS, triple, strict=True)}


def put_all(kinesis, streams: dict[str, str], records: list[tuple[int, dict]]) -> None:
    # one writer per stream: moto numbers a shard's records without a lock, so concurrent PutRecords to
    # one stream can hand out a sequence number twice and silently drop a record
    def put_stream(kind):
        for i in range(0, len(records), 500):
            answer = kinesis.put_records(StreamName=streams[kind], Records=[
                {"Data": payloads[kind], "PartitionKey": str(ind)} for ind, payloads in records[i:i + 500]])
            if answer.get("FailedRecordCount"):
                raise RuntimeError(f"{answer['FailedRecordCount']} records rejected")

    with ThreadPoolExecutor(len(streams)) as pool:
        list(pool.map(put_stream, streams))


# --- drain throughput ---------------------------------------------------------------------------------

def boto3_drain(kinesis, streams: dict[str, str]) -> int:
    total = 0
    for name in streams.values():
        for shard in kinesis.list_shards(StreamName=name)["Shards"]:
            iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while iterator:
                answer = kinesis.get_records(ShardIterator=iterator, Limit=10000)
                total += len(answer["Records"])
                if not answer["Records"] or answer.get("MillisBehindLatest", 0) == 0 and len(answer["Records"]) < 10000:
                    break
                iterator = answer.get("NextShardIterator")
    return total


def source_only_drain(spark, streams: dict[str, str], endpoint: str, checkpoint_root: Path) -> int:
    """The source as the stream job reads it: one availableNow query over the three streams, into a counter."""
    from pinterest_platform.streaming.kinesis_source import FORMAT_NAME, register

    register(spark)
    counted = [0]

    def count(df, _batch_id):
        counted[0] += df.count()

    reader = (spark.readStream.format(FORMAT_NAME).option("streamName", ",".join(streams.values()))
              .option("region", REGION).option("endpoint", endpoint).option("availableNow", "true")
              .option("awsAccessKey", "testing").option("awsSecretKey", "testing"))
    query = (reader.load().writeStream.foreachBatch(count)
             .option("checkpointLocation", str(checkpoint_root / "source"))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    if query.exception():
        raise query.exception()
    return counted[0]


def warm_up(spark, endpoint: str, shards: int, work: Path) -> float:
    """A small drain through both Spark paths first, so the measured runs do not pay for cold start-up
    (Python workers, code generation, Delta's first commits)."""
    from pinterest_platform.jobs.stream import stream

    kinesis = client(endpoint)
    prefix = f"bw{uuid.uuid4().hex[:6]}"
    streams = make_streams(kinesis, prefix, shards)
    put_all(kinesis, streams, list(event_records(200)))
    with measure() as m:
        source_only_drain(spark, streams, endpoint, work / f"cp-{prefix}")
        stream(spark, {"prefix": prefix, "lake_tables_root": str(work / f"lake-{prefix}" / "tables"),
                       "region": REGION, "endpoint": endpoint})
    return m.seconds


def drain_benchmark(spark, endpoint: str, events: int, shards: int, work: Path) -> tuple[list[list], dict]:
    from pinterest_platform.jobs.stream import stream

    kinesis = client(endpoint)
    prefix = f"bd{uuid.uuid4().hex[:6]}"
    streams = make_streams(kinesis, prefix, shards)
    records = list(event_records(events))
    with measure() as put_time:
        put_all(kinesis, streams, records)
    total = events * len(streams)
    print(f"put {total} records into {len(streams)} streams x {shards} shards in {put_time.seconds:.1f}s", flush=True)

    with measure() as raw:
        read = boto3_drain(kinesis, streams)
    assert read == total, (read, total)
    with measure() as source:
        read = source_only_drain(spark, streams, endpoint, work / f"cp-{prefix}")
    assert read == total, (read, total)
    with measure() as job:
        result = stream(spark, {"prefix": prefix, "lake_tables_root": str(work / f"lake-{prefix}" / "tables"),
                                "region": REGION, "endpoint": endpoint})
    assert sum(e["records"] for e in result["streams"].values()) == total, result
    rows = {k: e["rows_in_table"] for k, e in result["streams"].items()}
    assert all(n == events for n in rows.values()), rows
    batches = sum(e["batches"] for e in result["streams"].values())

    def row(name, m, extra=""):
        rate = total / m.seconds
        return [name, f"{m.seconds:.1f}", f"{rate:,.0f}", f"{raw.seconds / m.seconds:.2f}",
                f"{m.peak_rss_mb:,.0f}", extra]

    appended = sum(e.get("appended", 0) for e in result["streams"].values())
    merged = sum(e.get("merged", 0) for e in result["streams"].values())
    return [row("raw boto3 GetRecords (baseline)", raw), row("kinesis-local source only", source),
            row("stream job (clean + write)", job, f"{batches} batches, {appended} rows appended, {merged} merged")], {
        "drain_vs_raw_getrecords": raw.seconds / job.seconds, "source_vs_raw_getrecords": raw.seconds / source.seconds,
        "peak_rss_mb": max(source.peak_rss_mb, job.peak_rss_mb)}


# --- end-to-end latency -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def latency_benchmark(spark, endpoint: str, rate: float, duration: float, interval: str, shards: int,
                      work: Path) -> tuple[list[list], dict]:
    from deltalake import DeltaTable

    from pinterest_platform import contract
    from pinterest_platform.jobs.stream import stream

    kinesis = client(endpoint)
    prefix = f"bl{uuid.uuid4().hex[:6]}"
    streams = make_streams(kinesis, prefix, shards)
    lake = work / f"lake-{prefix}"
    pin_table = str(lake / "tables" / contract.streaming_table_name(prefix, "pin"))
    records = list(event_records(int(rate * duration)))
    put_at: dict[int, float] = {}
    seen_raw: dict[int, float] = {}
    visible_at: dict[int, float] = {}
    done = threading.Event()

    warmup = list(event_records(20, start=len(records)))
    warm = {}

    def visible_count() -> int:
        if not DeltaTable.is_deltatable(pin_table):
            return 0
        return DeltaTable(pin_table).to_pyarrow_dataset().count_rows()

    def producer():
        # the query's first batch is cold (tens of seconds here): wait for it before measuring
        started = time.monotonic()
        put_all(kinesis, streams, warmup)
        while visible_count() < len(warmup):
            time.sleep(0.1)
        warm["first_batch_s"] = round(time.monotonic() - started, 1)
        tick = 0.2
        per_tick = max(1, round(rate * tick))
        started = time.monotonic()
        for i in range(0, len(records), per_tick):
            chunk = records[i:i + per_tick]
            now = time.monotonic()
            put_all(kinesis, streams, chunk)
            for ind, _ in chunk:
                put_at[ind] = now
            time.sleep(max(0.0, started + (i // per_tick + 1) * tick - time.monotonic()))
        done.set()

    def raw_consumer():
        # the floor: how soon a record put to moto can be read back by a plain consumer at the tip
        own = client(endpoint)
        iterators = {s["ShardId"]: own.get_shard_iterator(StreamName=streams["pin"], ShardId=s["ShardId"],
                                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                     for s in own.list_shards(StreamName=streams["pin"])["Shards"]}
        while len(seen_raw) < len(records) + len(warmup):
            for shard, iterator in iterators.items():
                answer = own.get_records(ShardIterator=iterator, Limit=10000)
                now = time.monotonic()
                for r in answer["Records"]:
                    seen_raw.setdefault(json.loads(r["Data"])["index"], now)
                iterators[shard] = answer["NextShardIterator"]
            time.sleep(0.05)

    def poller():
        deadline = None
        while True:
            if DeltaTable.is_deltatable(pin_table):
                inds = DeltaTable(pin_table).to_pyarrow_table(columns=["ind"]).column("ind").to_pylist()
                now = time.monotonic()
                for ind in inds:
                    visible_at.setdefault(ind, now)
            if done.is_set():
                deadline = deadline or time.monotonic() + 120
                if len(visible_at) >= len(records) + len(warmup) or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # what a user does to stop `run stream --continuous`

    threads = [threading.Thread(target=f, daemon=True) for f in (producer, raw_consumer, poller)]
    for thread in threads:
        thread.start()
    with measure() as run:
        result = stream(spark, {"prefix": prefix, "lake_tables_root": str(lake / "tables"), "region": REGION,
                                "endpoint": endpoint, "trigger": "processing_time", "interval": interval,
                                "timeout_s": duration + 300})
    for thread in threads:
        thread.join(10)
    latencies = [visible_at[i] - put_at[i] for i in put_at if i in visible_at]
    raw = [seen_raw[i] - put_at[i] for i in put_at if i in seen_raw]
    missing = len(records) - len(latencies)
    rows = [
        ["raw boto3 consumer (baseline)", len(raw), f"{percentile(raw, .5):.2f}", f"{percentile(raw, .95):.2f}",
         f"{max(raw):.2f}", "1.0"],
        [f"stream job, trigger {interval}", len(latencies), f"{percentile(latencies, .5):.2f}",
         f"{percentile(latencies, .95):.2f}", f"{max(latencies):.2f}",
         f"{statistics.median(latencies) / max(statistics.median(raw), 1e-3):.0f}"],
    ]
    info = {**warm, "p50": percentile(latencies, .5), "p95": percentile(latencies, .95), "missing": missing, "stopped_by": result["stopped_by"], "seconds": round(run.seconds, 1),
            "batches": {k: e["batches"] for k, e in result["streams"].items()}, "peak_rss_mb": round(run.peak_rss_mb)}
    return rows, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the drain benchmark")
    parser.add_argument("--shards", type=int, default=2, help="shards per stream (the emulator's default is 2)")
    parser.add_argument("--rate", type=float, default=200, help="events/s in the latency benchmark")
    parser.add_argument("--duration", type=float, default=30, help="seconds of production in the latency benchmark")
    parser.add_argument("--interval", default="1s", help="processing-time trigger of the latency benchmark")
    parser.add_argument("--endpoint", default=None, help="an existing moto/Kinesis endpoint (default: start one)")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from pinterest_platform.resources.spark import local_spark_session

    with tempfile.TemporaryDirectory(prefix="pinterest-bench-stream-") as tmp:
        work = Path(tmp)
        moto = None
        endpoint = args.endpoint
        if endpoint is None:
            moto, endpoint = start_moto(work / "moto.log")
        try:
            with measure() as startup:
                # a loaded machine starts Python workers slowly: give them longer than 15 s to connect back
                spark = local_spark_session({"spark.python.authenticate.socketTimeout": "120s"})
            print(f"Spark session in {startup.seconds:.1f}s; moto at {endpoint}", flush=True)
            print(f"warm-up (200 events through both Spark paths, cold): {warm_up(spark, endpoint, args.shards, work):.1f}s",
                  flush=True)
            drain, drained = drain_benchmark(spark, endpoint, args.events, args.shards, work)
            print(f"\nDrain, availableNow: {args.events} events = {args.events * 3} records\n")
            print(table(drain, ["path", "seconds", "records/s", "x baseline speed", "peak RSS MB", ""]), flush=True)
            summary = {"bench": "stream", "ratios": {"drain_vs_raw_getrecords": round(drained["drain_vs_raw_getrecords"], 2)},
                       "latency_s": {"p50": None, "p95": None}, "peak_rss_gb": round(drained["peak_rss_mb"] / 1024, 2)}
            if not args.skip_latency:
                latency, info = latency_benchmark(spark, endpoint, args.rate, args.duration, args.interval,
                                                  args.shards, work)
                print(f"\nEnd-to-end latency, continuous: {args.rate:g} events/s for {args.duration:g}s "
                      f"(put -> row visible in Delta, seconds)\n")
                print(table(latency, ["path", "records", "p50", "p95", "max", "p50 x baseline"]))
                print(f"  {json.dumps(info)}", flush=True)
                summary["latency_s"] = {"p50": round(info["p50"], 2), "p95": round(info["p95"], 2)}
                summary["peak_rss_gb"] = round(max(drained["peak_rss_mb"], info["peak_rss_mb"]) / 1024, 2)
            # the machine is shared: the load says how much the absolute figures can be trusted
            print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores",
                  flush=True)
            print(json.dumps(summary), flush=True)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
