"""Batch pipeline benchmark: sink, cleaning and analytics for 10k, 100k and 1M events.

For each size: wall time, peak RSS (this process tree, Spark's JVM included) and records/s per step; the
cleaning time as a ratio of a floor measured in the same run (reading and parsing the same raw files with
pyarrow); the cleaning time of the original notebooks' way on the same files and session (bench/
notebook_baseline.py) over ours; and the cost of an incremental run that adds 1% new events, as a ratio
of the full run.

    .venv/bin/python bench/batch.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_stack, measure, table  # noqa: E402
from notebook_baseline import clean_like_the_notebooks  # noqa: E402


def pyarrow_floor(lake_root: Path, paths: list[str]) -> float:
    """Read and parse every raw file with pyarrow: the least any cleaning must spend on the same bytes."""
    import pyarrow.json as pj

    started = time.perf_counter()
    rows = 0
    for path in paths:
        rows += pj.read_json(str(lake_root / path)).num_rows
    return time.perf_counter() - started


def post_rows(kafka, db: str, prefix: str, first: int, count: int, posted_at: dt.datetime | None) -> None:
    """Post source events first..first+count-1 straight to Kafka (as a plain client would), stamped posted_at."""
    import json

    import sqlalchemy as sa

    from pinterest_platform import contract
    from pinterest_platform.datagen import source_engine, source_tables

    engine = source_engine(db)
    tables = source_tables(sa.MetaData())
    producer = kafka.producer()
    failed = []

    def report(err, _msg):
        if err:
            failed.append(err)

    stamp = None if posted_at is None else int(posted_at.timestamp() * 1000)
    with engine.connect() as conn:
        for kind in contract.EVENT_KINDS:
            name = contract.SOURCE_TABLE_OF[kind]
            table = tables[name]
            key = table.c[contract.SOURCE_KEY[name]]
            rows = conn.execute(sa.select(table).where(key >= first, key < first + count).order_by(key))
            topic = contract.topic_name(prefix, kind)
            for row in rows:
                value = json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                    for k, v in row._mapping.items()}).encode()
                if stamp is None:
                    producer.produce(topic, value, on_delivery=report)
                else:
                    producer.produce(topic, value, timestamp=stamp, on_delivery=report)
                producer.poll(0)
    assert producer.flush(120) == 0
    assert not failed, f"{len(failed)} records not delivered, the first: {failed[0]}"
    engine.dispose()


class Batch:
    """One lake and topic prefix, run the way the assets run: land (sink + pending days), clean the pending
    days (per-day bookkeeping), analytics."""

    def __init__(self, work: Path, name: str):
        from pinterest_platform import contract
        from pinterest_platform.resources.kafka import LocalKafkaResource
        from pinterest_platform.resources.lake import LocalLakeResource
        from pinterest_platform.resources.spark import local_spark_session

        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.lake_root = work / f"lake-{name}"
        self.lake = LocalLakeResource(root=str(self.lake_root))
        self.kafka = LocalKafkaResource()
        self.kafka.ensure_topics([contract.topic_name(self.prefix, k) for k in contract.EVENT_KINDS])
        self.spark = local_spark_session()
        self.topics = [contract.topic_name(self.prefix, k) for k in contract.EVENT_KINDS]

    def run(self) -> dict:
        from pinterest_platform.assets.batch import clean_days, land
        from pinterest_platform.ingestion.raw_days import pending_days
        from pinterest_platform.jobs import batch as jobs

        with measure() as sink:
            land(self.kafka, self.lake, self.topics, group_id=f"{self.prefix}-sink")
        with measure() as cleaning:
            days = pending_days(self.lake, self.topics)
            counts, _ = clean_days(self.lake, lambda job, params: getattr(jobs, job)(self.spark, params), days,
                                   prefix=self.prefix, log=lambda _line: None)
        with measure() as stats:
            jobs.analytics(self.spark, {"tables_root": self.lake.uri("tables"), "preview_rows": 0})
        return {"sink": sink, "clean": cleaning, "analytics": stats, "counts": counts, "days": days}


def run_size(events: int, work: Path) -> dict:
    from pinterest_platform import contract
    from pinterest_platform.datagen import seed_source_database
    from pinterest_platform.ingestion.emulator import emulate
    from pinterest_platform.ingestion.raw_sink import read_raw_files

    db = f"sqlite:///{work / f'source-{events}.db'}"
    batch = Batch(work, str(events))
    full_events = events
    extra = max(1, events // 100)
    seed_source_database(db, full_events + extra, seed=1, progress=False)

    def post(limit, resume):
        emulate(db, mode="batch", kafka=batch.kafka, kinesis=None, prefix=batch.prefix, limit=limit,
                cursor_path=work / f"cursor-{events}.json", resume=resume, progress=False)

    post(full_events, resume=False)
    full = batch.run()
    print("  full run: " + ", ".join(f"{k} {full[k].seconds:.1f}s (peak RSS {full[k].peak_rss_mb:,.0f} MB)"
                                     for k in ("sink", "clean", "analytics")), flush=True)
    paths = {kind: [f.path for f in read_raw_files(batch.lake, contract.topic_name(batch.prefix, kind))]
             for kind in contract.EVENT_KINDS}
    floor = pyarrow_floor(batch.lake_root, [p for of_kind in paths.values() for p in of_kind])
    # the peer: the same raw files cleaned the way the original notebooks do, on the same SparkSession
    by_kind = {kind: [str(batch.lake_root / p) for p in of_kind] for kind, of_kind in paths.items()}
    with measure() as peer:
        clean_like_the_notebooks(batch.spark, by_kind, str(work / f"notebook-{events}"))
    print(f"  notebook-style clean: {peer.seconds:.1f}s", flush=True)
    post(extra, resume=True)  # 1% new events after the cursor
    inc = batch.run()
    print("  +1% run: " + ", ".join(f"{k} {inc[k].seconds:.1f}s" for k in ("sink", "clean", "analytics")), flush=True)
    records = 3 * full_events
    full_s = sum(full[k].seconds for k in ("sink", "clean", "analytics"))
    inc_s = sum(inc[k].seconds for k in ("sink", "clean", "analytics"))
    return {
        "events": events, "records": records, **{k: full[k] for k in ("sink", "clean", "analytics")},
        "floor_s": floor, "peer": peer, "full_s": full_s, "incremental_s": inc_s, "inc": inc,
        "upserted": sum(full["counts"][k]["upserted"] for k in contract.EVENT_KINDS),
    }


def history_ratio(work: Path, history_days: int, per_day: int) -> dict:
    """The run that cleans one new day, on a lake with 1 day of history and on one with `history_days`: the
    sink and cleaning must cost the same (the analytics read every day by definition: shown apart)."""
    from pinterest_platform.datagen import seed_source_database

    db = f"sqlite:///{work / 'source-history.db'}"
    seed_source_database(db, (history_days + 1) * per_day, seed=2, progress=False)
    # a minute ago, not a fixed hour of today: the broker refuses timestamps too far in the future
    today = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    out = {}
    for days in (1, history_days):
        batch = Batch(work, f"history-{days}")
        for n in range(days):
            post_rows(batch.kafka, db, batch.prefix, 1 + n * per_day, per_day, today - dt.timedelta(days=days - n))
        batch.run()
        post_rows(batch.kafka, db, batch.prefix, 1 + history_days * per_day, per_day, today)
        out[days] = batch.run()
    return out


def print_sizes(results: list[dict]) -> None:
    rows = []
    for r in results:
        for step in ("sink", "clean", "analytics"):
            m = r[step]
            rows.append([r["events"], step, f"{m.seconds:.2f}", f"{r['records'] / m.seconds:,.0f}",
                         f"{m.peak_rss_mb:,.0f}"])
    print()
    print(table(rows, ["events", "step", "seconds", "records/s", "peak RSS MB"]))
    print()
    inc_rows = [[r["events"], *(f"{r['inc'][step].seconds:.2f}" for step in ("sink", "clean", "analytics"))]
                for r in results]
    print(table(inc_rows, ["events", "+1% sink s", "+1% clean s", "+1% analytics s"]))
    print()
    summary = [[r["events"], f"{r['floor_s']:.2f}", f"{r['clean'].seconds / r['floor_s']:.1f}x",
                f"{r['incremental_s']:.2f}", f"{r['full_s']:.2f}", f"{r['incremental_s'] / r['full_s']:.2f}"]
               for r in results]
    print(table(summary, ["events", "pyarrow floor s", "clean/floor", "incremental +1% s", "full s",
                          "incremental/full"]))
    print()
    peers = [[r["events"], f"{r['peer'].seconds:.2f}", f"{r['clean'].seconds:.2f}",
              f"{r['peer'].seconds / r['clean'].seconds:.2f}x", f"{r['peer'].peak_rss_mb:,.0f}"] for r in results]
    print(table(peers, ["events", "notebook-style clean s", "our clean s", "ours faster by", "notebook peak RSS MB"]))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--events-per-day", type=int, default=2000)
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
        # the sizes' figures first: the history runs below take a while, and must not hold them back
        print_sizes(results)
        print(f"running one new day after 1 and {args.history_days} days of history "
              f"({args.events_per_day} events a day) ...", flush=True)
        history = history_ratio(Path(tmp), args.history_days, args.events_per_day)
    one, many = history[1], history[args.history_days]
    hist_rows = [[f"{d} day(s)", f"{h['sink'].seconds:.2f}", f"{h['clean'].seconds:.2f}", f"{h['analytics'].seconds:.2f}"]
                 for d, h in ((1, one), (args.history_days, many))]
    print(table(hist_rows, ["history", "sink s", "clean s (one new day)", "analytics s (all days)"]))
    new_day_ratio = ((many["sink"].seconds + many["clean"].seconds) / (one["sink"].seconds + one["clean"].seconds))
    print(f"one new day, sink + clean, {args.history_days} days of history / 1 day: {new_day_ratio:.2f}")
    largest = results[-1]
    ratios = {f"clean_over_floor_{r['events']}": round(r["clean"].seconds / r["floor_s"], 2) for r in results}
    ratios.update({f"notebook_clean_over_ours_{r['events']}": round(r["peer"].seconds / r["clean"].seconds, 2)
                   for r in results})
    ratios.update({f"incremental_over_full_{largest['events']}": round(largest["incremental_s"] / largest["full_s"], 3),
                   f"new_day_{args.history_days}d_over_1d": round(new_day_ratio, 3)})
    print(json.dumps({"bench": "batch", "ratios": ratios,
                      "peak_rss_mb": {str(r["events"]): round(max(r[s].peak_rss_mb for s in ("sink", "clean", "analytics")))
                                      for r in results}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
