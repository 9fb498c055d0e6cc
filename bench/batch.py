"""Batch pipeline benchmark: sink, cleaning and analytics for 10k, 100k and 1M events.

For each size: wall time, peak RSS (this process tree, Spark's JVM included) and records/s per step; the
cleaning time as a ratio of a floor measured in the same run (reading and parsing the same raw files with
pyarrow); and the cost of an incremental run that adds 1% new events, as a ratio of the full run.

    .venv/bin/python bench/batch.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_stack, measure, table  # noqa: E402


def pyarrow_floor(lake_root: Path, paths: list[str]) -> float:
    """Read and parse every raw file with pyarrow: the least any cleaning must spend on the same bytes."""
    import pyarrow.json as pj

    started = time.perf_counter()
    rows = 0
    for path in paths:
        rows += pj.read_json(str(lake_root / path)).num_rows
    return time.perf_counter() - started


def run_size(events: int, work: Path) -> dict:
    from pinterest_platform import contract
    from pinterest_platform.datagen import seed_source_database
    from pinterest_platform.ingestion.emulator import emulate
    from pinterest_platform.ingestion.raw_sink import read_raw_files, sink_topics
    from pinterest_platform.jobs.batch import analytics, clean_batch
    from pinterest_platform.resources.kafka import LocalKafkaResource
    from pinterest_platform.resources.lake import LocalLakeResource
    from pinterest_platform.resources.spark import local_spark_session

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    db = f"sqlite:///{work / f'source-{events}.db'}"
    lake_root = work / f"lake-{events}"
    lake = LocalLakeResource(root=str(lake_root))
    kafka = LocalKafkaResource()
    spark = local_spark_session()
    topics = [contract.topic_name(prefix, k) for k in contract.EVENT_KINDS]
    full_events = events
    extra = max(1, events // 100)
    seed_source_database(db, full_events + extra, seed=1, progress=False)

    def post(limit, resume):
        emulate(db, mode="batch", kafka=kafka, kinesis=None, prefix=prefix, limit=limit,
                cursor_path=work / f"cursor-{events}.json", resume=resume, progress=False)

    def new_files(done: set):
        out = {}
        for kind, topic in zip(contract.EVENT_KINDS, topics):
            out[kind] = [{"uri": lake.uri(f.path), "path": f.path, "size": f.size, "topic": topic}
                         for f in read_raw_files(lake, topic) if (f.path, f.size) not in done]
        return out

    def pipeline(done: set):
        with measure() as sink:
            sink_topics(kafka, lake, topics, group_id=f"{prefix}-sink")
        files = new_files(done)
        params = {"tables_root": lake.uri("tables"), "manifest_uri": lake.uri("_manifests/raw_files"), "files": files}
        with measure() as cleaning:
            counts = clean_batch(spark, params)
        with measure() as stats:
            analytics(spark, {"tables_root": lake.uri("tables"), "preview_rows": 0})
        done.update((f["path"], f["size"]) for fs in files.values() for f in fs)
        return sink, cleaning, stats, counts, files

    post(full_events, resume=False)
    done: set = set()
    sink, cleaning, stats, counts, files = pipeline(done)
    floor = pyarrow_floor(lake_root, [f["path"] for fs in files.values() for f in fs])
    post(extra, resume=True)  # 1% new events after the cursor
    inc_sink, inc_clean, inc_stats, _, _ = pipeline(done)
    records = 3 * full_events
    full = sink.seconds + cleaning.seconds + stats.seconds
    incremental = inc_sink.seconds + inc_clean.seconds + inc_stats.seconds
    return {
        "events": events, "records": records,
        "sink": sink, "clean": cleaning, "analytics": stats,
        "floor_s": floor, "full_s": full, "incremental_s": incremental,
        "inc_clean_s": inc_clean.seconds, "upserted": sum(counts[k]["upserted"] for k in contract.EVENT_KINDS),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with bench_stack(), tempfile.TemporaryDirectory(prefix="pinterest-bench-batch-") as tmp:
        from pinterest_platform.resources.spark import local_spark_session

        with measure() as startup:
            local_spark_session()
        print(f"SparkSession start: {startup.seconds:.1f}s (not counted below)", flush=True)
        for events in sizes:
            print(f"running {events} events ...", flush=True)
            results.append(run_size(events, Path(tmp)))
    rows = []
    for r in results:
        for step in ("sink", "clean", "analytics"):
            m = r[step]
            rows.append([r["events"], step, f"{m.seconds:.2f}", f"{r['records'] / m.seconds:,.0f}",
                         f"{m.peak_rss_mb:,.0f}"])
    print()
    print(table(rows, ["events", "step", "seconds", "records/s", "peak RSS MB"]))
    print()
    summary = [[r["events"], f"{r['floor_s']:.2f}", f"{r['clean'].seconds / r['floor_s']:.1f}x",
                f"{r['incremental_s']:.2f}", f"{r['full_s']:.2f}", f"{r['incremental_s'] / r['full_s']:.2f}"]
               for r in results]
    print(table(summary, ["events", "pyarrow floor s", "clean/floor", "incremental +1% s", "full s",
                          "incremental/full"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
