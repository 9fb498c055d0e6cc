"""Where the lake and Spark live: batch and streaming wall time on a folder lake, an S3 lake (moto) and the
stack's Spark standalone cluster over the S3 lake, on the same source data, in one run.

Each configuration posts the same events (its own topics and streams) and then times the user's own
commands, `run batch` and `run stream --available-now`, as fresh processes: SparkSession start-up and the
S3A/AWS SDK initialization are part of what a user waits for, so they are counted. Ratios are against the
folder lake measured in the same run (these machines are noisy). Peak RSS is the command's process tree
(its Spark driver JVM included; the cluster's executors run under the workers and are not in it). To say
where the overheads come from it also measures, per configuration, the fixed cost of a Spark start (on the
cluster: until the executors run a task), of the first read through the lake's filesystem (S3A and the AWS
SDK initializing), and counts the S3 requests each command sent (moto's request log).

    .venv/bin/python bench/lake.py [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, tree_rss_bytes  # noqa: E402

ENV_UNSET = ("AWS_ENDPOINT_URL", "KAFKA_BOOTSTRAP_SERVERS", "PINTEREST_SPARK_MASTER", "PINTEREST_LAKE_ROOT",
             "PINTEREST_TOPIC_PREFIX", "PINTEREST_ENV")


def timed(env: dict, *args: str) -> tuple[float, float, str]:
    """Run `pinterest-platform <args>`; wall seconds, peak RSS MB of its process tree, stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pinterest_platform.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_bytes(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"`pinterest-platform {' '.join(args)}` failed ({proc.returncode}):\n{out}\n{err}")
    return seconds, peak[0] / 2**20, out


SPARK_START = """
import time
t = time.perf_counter()
from pinterest_platform.resources.spark import local_spark_session
spark = local_spark_session()
spark.range(8).repartition(2).count()  # on a cluster: waits for executors to launch and register
ready = time.perf_counter() - t
t = time.perf_counter()
spark.read.text({path!r}).count()  # the lake's filesystem, first use, on the driver and the executors
print(ready, time.perf_counter() - t)
"""


def s3_requests(moto_log: Path, bucket: str | None) -> int:
    """Requests moto logged so far for the bucket (one werkzeug line per request)."""
    if bucket is None or not moto_log.exists():
        return 0
    needle = f'/{bucket}'
    with open(moto_log, errors="replace") as handle:
        return sum(1 for line in handle if needle in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pinterest-bench-lake-") as tmp:
        state = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ENV_UNSET}
        base.update(PINTEREST_STATE_DIR=str(state), DAGSTER_HOME=str(state / "dagster_home"),
                    PINTEREST_SOURCE_DB_URL=f"sqlite:///{state / 'source.db'}")
        subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "stack", "up", "--spark-cluster"],
                       env=base, check=True, capture_output=True, text=True, timeout=300)
        try:
            subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "seed", "--events", str(args.events),
                            "--no-progress"], env=base, check=True, capture_output=True, timeout=1800)
            configs = {
                "folder lake, in-process": {"PINTEREST_LAKE_ROOT": str(state / "lake"),
                                            "PINTEREST_SPARK_MASTER": "local[2]"},
                "s3 lake, in-process": {"PINTEREST_LAKE_ROOT": f"s3://bench-{uuid.uuid4().hex[:8]}/lake",
                                        "PINTEREST_SPARK_MASTER": "local[2]"},
                # no master named: the stack's cluster is used, as a user would get it
                "s3 lake, cluster": {"PINTEREST_LAKE_ROOT": f"s3://bench-{uuid.uuid4().hex[:8]}/lake"},
            }
            results = {}
            for name, extra in configs.items():
                env = {**base, **extra, "PINTEREST_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:6]}"}
                # `stack up` again: the running stack is kept, and the s3:// lake's bucket gets made
                subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "stack", "up"], env=env,
                               check=True, capture_output=True, timeout=300)
                print(f"{name}: posting {args.events} events ...", flush=True)
                subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "emulate", "--all", "--mode",
                                "both", "--no-progress"], env=env, check=True, capture_output=True, timeout=3600)
                lake_root = extra["PINTEREST_LAKE_ROOT"]
                bucket = lake_root.split("/")[2] if lake_root.startswith("s3://") else None
                moto_log = state / "stack" / "moto" / "moto.log"
                before = s3_requests(moto_log, bucket)
                batch_s, batch_mb, batch_out = timed(env, "run", "batch")
                after_batch = s3_requests(moto_log, bucket)
                stream_s, stream_mb, _ = timed(env, "run", "stream", "--available-now")
                after_stream = s3_requests(moto_log, bucket)
                if "succeeded" not in batch_out:
                    raise SystemExit(f"{name}: run batch did not succeed:\n{batch_out}")
                # fixed costs a user pays on every command: Spark start (executors on a cluster) and the
                # first read through the lake's filesystem (S3A and the AWS SDK initializing)
                raw = f"{lake_root}/topics/{env['PINTEREST_TOPIC_PREFIX']}.pin"
                probe = subprocess.run([sys.executable, "-c", SPARK_START.format(path=raw)], env=env,
                                       check=True, capture_output=True, text=True, timeout=600)
                spark_start_s, first_read_s = (float(x) for x in probe.stdout.split()[-2:])
                results[name] = {"batch_s": batch_s, "stream_s": stream_s, "batch_mb": batch_mb,
                                 "stream_mb": stream_mb, "batch_requests": after_batch - before,
                                 "stream_requests": after_stream - after_batch,
                                 "spark_start_s": spark_start_s, "first_read_s": first_read_s}
                print(f"  batch {batch_s:.1f}s, stream {stream_s:.1f}s, spark start {spark_start_s:.1f}s, "
                      f"first lake read {first_read_s:.1f}s", flush=True)
        finally:
            subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "stack", "down"], env=base,
                           capture_output=True, timeout=120)
    folder = results["folder lake, in-process"]
    rows = [[name, f"{r['batch_s']:.1f}", f"{r['batch_s'] / folder['batch_s']:.2f}x", f"{r['batch_mb']:,.0f}",
             f"{r['stream_s']:.1f}", f"{r['stream_s'] / folder['stream_s']:.2f}x", f"{r['stream_mb']:,.0f}"]
            for name, r in results.items()]
    print()
    print(f"{args.events:,} events ({3 * args.events:,} records), wall time of each command incl. Spark start-up")
    print(table(rows, ["configuration", "run batch s", "vs folder", "peak MB", "run stream s", "vs folder",
                       "peak MB"]))
    print()
    print("fixed costs and S3 traffic")
    costs = [[name, f"{r['spark_start_s']:.1f}", f"{r['first_read_s']:.1f}", f"{r['batch_requests']:,}",
              f"{r['stream_requests']:,}"] for name, r in results.items()]
    print(table(costs, ["configuration", "Spark start s", "first lake read s", "S3 requests, batch",
                        "S3 requests, stream"]))
    ratios = {}
    for name, r in results.items():
        key = name.replace(", ", "_").replace(" ", "_")
        ratios[f"{key}_batch_vs_folder"] = round(r["batch_s"] / folder["batch_s"], 3)
        ratios[f"{key}_stream_vs_folder"] = round(r["stream_s"] / folder["stream_s"], 3)
    print(json.dumps({"bench": "lake", "events": args.events, "ratios": ratios,
                      "seconds": {n: {"batch": round(r["batch_s"], 2), "stream": round(r["stream_s"], 2),
                                      "spark_start": round(r["spark_start_s"], 2),
                                      "first_lake_read": round(r["first_read_s"], 2)}
                                  for n, r in results.items()},
                      "s3_requests": {n: {"batch": r["batch_requests"], "stream": r["stream_requests"]}
                                      for n, r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
