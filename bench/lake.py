"""Where the lake and Spark live: batch and streaming wall time on a folder lake, an S3 lake (moto) and the
stack's Spark standalone cluster over the S3 lake, on the same source data, in one run.

Each configuration posts the same events (its own topics and streams) and then times the user's own
commands, `run batch` and `run stream --available-now`, as fresh processes: SparkSession start-up and the
S3A/AWS SDK initialization are part of what a user waits for, so they are counted. Ratios are against the
folder lake measured in the same run (these machines are noisy). Peak RSS is the command's process tree
(its Spark driver JVM included; the cluster's executors run under the workers and are not in it).

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
                batch_s, batch_mb, batch_out = timed(env, "run", "batch")
                stream_s, stream_mb, _ = timed(env, "run", "stream", "--available-now")
                if "succeeded" not in batch_out:
                    raise SystemExit(f"{name}: run batch did not succeed:\n{batch_out}")
                results[name] = {"batch_s": batch_s, "stream_s": stream_s, "batch_mb": batch_mb,
                                 "stream_mb": stream_mb}
                print(f"  batch {batch_s:.1f}s, stream {stream_s:.1f}s", flush=True)
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
    ratios = {}
    for name, r in results.items():
        key = name.replace(", ", "_").replace(" ", "_")
        ratios[f"{key}_batch_vs_folder"] = round(r["batch_s"] / folder["batch_s"], 3)
        ratios[f"{key}_stream_vs_folder"] = round(r["stream_s"] / folder["stream_s"], 3)
    print(json.dumps({"bench": "lake", "events": args.events, "ratios": ratios,
                      "seconds": {n: {"batch": round(r["batch_s"], 2), "stream": round(r["stream_s"], 2)}
                                  for n, r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
