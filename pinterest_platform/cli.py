"""`pinterest-platform`: the command line of the platform.

    stack up|down|status      the embedded local stack (Kafka KRaft broker + moto for S3/Kinesis)
    seed --events N           create the synthetic source database
    emulate --mode ...        post source events to Kafka topics and/or Kinesis streams
    gateway                   the local HTTP gateway (API Gateway + REST Proxy + Kinesis proxy stand-in)
    run batch [--from D --to D] sink, then clean the days with new raw files (or re-process a range), analytics
    run stream                Kinesis -> Delta with Spark Structured Streaming
    databricks deploy         upload the job wheel and entry point to a Unity Catalog volume or workspace files
    demo                      all of the above end to end on the local stack
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _dagster_instance():
    """The instance `make dev` / `dagster dev` use, so CLI runs show up in the UI."""
    import dagster as dg

    from pinterest_platform.instance import dagster_home, ensure_dagster_yaml

    # with no dagster.yaml Dagster warns on every command; an existing one (maybe edited) is kept
    home = dagster_home()
    ensure_dagster_yaml(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def table_summary(lake, names: list[str]) -> list[tuple[str, int | None]]:
    from pinterest_platform.assets.metadata import delta_row_count

    try:
        options = lake.storage_options()
        return [(name, delta_row_count(lake.table_uri(name), options)) for name in names]
    except Exception:  # noqa: BLE001 - a lake we cannot read has no rows to show; the run's error says why
        return [(name, None) for name in names]


def _events(results):
    return [event for result in results for event in result.all_events]


def _materialization_metadata(results) -> dict[str, dict]:
    """Asset key ("raw/pin") -> the raw values of the metadata its materialization in these runs reported."""
    out: dict[str, dict] = {}
    for event in _events(results):
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            out[materialization.asset_key.to_user_string()] = {
                key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
    return out


def _nothing_arrived(results) -> bool:
    """The raw sink read no record and cleaning found no new raw file: the run had nothing to work on.

    Read from what the run's assets reported (assets/batch.py): raw/<kind> `records_this_run`, cleaned/<kind>
    `new_files`. Both count, because raw files can also land on the lake without the sink (a Kafka Connect
    S3 sink, say)."""
    from pinterest_platform import contract

    metadata = _materialization_metadata(results)
    raw = [metadata.get(f"raw/{kind}") for kind in contract.EVENT_KINDS]
    cleaned = [metadata.get(f"cleaned/{kind}") for kind in contract.EVENT_KINDS]
    if any(m is None for m in (*raw, *cleaned)):
        return False  # a step that did not report: not a run we can call empty
    return (sum(int(m.get("records_this_run", 0)) for m in raw) == 0
            and sum(int(m.get("new_files", 0)) for m in cleaned) == 0)


def _failed_checks(results, missing_tables: set[str]) -> tuple[list[str], list[str]]:
    """(checks that failed on data, assets whose checks failed only because their table does not exist yet)."""
    failed: list[str] = []
    waiting: set[str] = set()
    for event in _events(results):
        if event.event_type_value != "ASSET_CHECK_EVALUATION" or event.event_specific_data.passed:
            continue
        asset = event.event_specific_data.asset_key.to_user_string()
        # a check of a table that does not exist has no data to fail on; it waits for the first records
        if asset.split("/")[-1] in missing_tables:
            waiting.add(asset)
        else:
            failed.append(f"{asset}:{event.event_specific_data.check_name}")
    return failed, sorted(waiting)


def _print_nothing_arrived(lake, prefix: str) -> None:
    from pinterest_platform import contract

    topics = ", ".join(contract.topic_name(prefix, kind) for kind in contract.EVENT_KINDS)
    print(f"\nnothing has arrived: no new records in the Kafka topics {topics} and no new raw files under "
          f"{lake.uri(contract.TOPICS_DIR)}, so there is nothing to clean yet.")
    print("Post events, then run `pinterest-platform run batch` again:")
    print("  pinterest-platform emulate --mode batch --all   # the source database's events "
          "(`pinterest-platform seed --events 2000` makes one)")
    print("  or post to the topics with your own client (`pinterest-platform stack up` prints kcat and curl "
          "examples)")


def innermost_message(error) -> str:
    """The user's error is the innermost cause, not Dagster's "error while executing op" wrapper."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def _blocking_checks() -> set[str]:
    from pinterest_platform.assets.checks import BATCH_CHECKS

    return {spec.name for check in BATCH_CHECKS for spec in check.check_specs if spec.blocking}


def _utc_today():
    import datetime

    return datetime.datetime.now(datetime.UTC).date()


def batch_days(args: argparse.Namespace, lake) -> tuple[list, bool, list]:
    """(days to clean, whether to re-read all their files, pending days that are not partitions).

    `--from/--to`: that range, every file again. Otherwise the days with raw files not cleaned yet (the
    sink's pending days), or today when there are none (the analytics may still need a first run)."""
    from pinterest_platform.ingestion.raw_days import pending_days
    from pinterest_platform.partitions import is_partition

    if args.from_day is not None:
        last = args.to_day or _utc_today()
        return [args.from_day, last], True, []
    pending = pending_days(lake)
    usable = [d for d in pending if is_partition(d)]
    return (usable or [_utc_today()]), False, [d for d in pending if not is_partition(d)]


def _print_failures(results) -> None:
    for event in _events(results):
        if event.event_type_value == "STEP_FAILURE" and event.event_specific_data.error is not None:
            print(f"{event.step_key} failed: {innermost_message(event.event_specific_data.error)}", file=sys.stderr)
        elif event.is_failure:
            print(event.message, file=sys.stderr)


def run_batch_command(args: argparse.Namespace) -> int:
    from pinterest_platform import contract
    from pinterest_platform.assets.batch import PREFIX, QUARANTINE_KEY, analytics_key, cleaned_key, raw_key
    from pinterest_platform.definitions import defs
    from pinterest_platform.partitions import DAILY_PARTITIONS, is_partition, partition_key
    from pinterest_platform.resources.lake import LakeAccessError
    from pinterest_platform.run_guard import BatchRunInProgress, batch_lane

    if args.from_day is None and args.to_day is not None:
        print("error: --to needs --from", file=sys.stderr)
        return 2
    for flag, day in (("--from", args.from_day), ("--to", args.to_day)):
        if day is not None and not is_partition(day):
            print(f"error: {flag} {day} is not a partition: days run from {DAILY_PARTITIONS.start:%Y-%m-%d} "
                  "(PINTEREST_PARTITIONS_START) to today, UTC", file=sys.stderr)
            return 2
    if args.from_day is not None and args.to_day is not None and args.to_day < args.from_day:
        print(f"error: --to {args.to_day} is before --from {args.from_day}", file=sys.stderr)
        return 2
    started = time.monotonic()
    lake = defs.resources["lake"]
    try:
        lake.check_access(write=True)
    except LakeAccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    instance = _dagster_instance()
    # batch_job is a define_asset_job (unresolved until bound to the assets): Dagster 1.11+ wants it resolved
    job = defs.resolve_job_def("batch_job")
    loggers = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    try:
        with batch_lane(instance) as lane:
            tags = lane.tags  # the lane and this process's pid: a later command knows the run died with it
            print(f"landing: batch_job's raw sink for {_utc_today()} in the Dagster instance at "
                  f"{os.environ['DAGSTER_HOME']}", flush=True)
            landing = job.execute_in_process(
                instance=instance, raise_on_error=False, run_config=loggers, tags=tags,
                partition_key=partition_key(_utc_today()),
                asset_selection=[raw_key(kind) for kind in contract.EVENT_KINDS])
            results = [landing]
            if landing.success:
                days, reprocess, outside = batch_days(args, lake)
                for day in outside:
                    print(f"warning: raw files of {day} are kept but not cleaned: the partitions start "
                          f"{DAILY_PARTITIONS.start:%Y-%m-%d} (PINTEREST_PARTITIONS_START)", file=sys.stderr)
                first, last = partition_key(min(days)), partition_key(max(days))
                print(f"cleaning and analytics: batch_job for {first}..{last}"
                      + (" (every file of these days again)" if reprocess else " (the files not cleaned yet)"),
                      flush=True)
                results.append(job.execute_in_process(
                    instance=instance, raise_on_error=False,
                    run_config={**loggers, "ops": {"cleaned_tables": {"config": {"reprocess": reprocess}}}},
                    tags={**tags, "dagster/asset_partition_range_start": first,
                          "dagster/asset_partition_range_end": last},
                    asset_selection=[*[cleaned_key(k) for k in contract.EVENT_KINDS], QUARANTINE_KEY,
                                     *[analytics_key(n) for n in contract.ANALYTICS_TABLES]]))
    except BatchRunInProgress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    success = all(r.success for r in results)
    run_ids = " and ".join(r.run_id for r in results)
    rows = table_summary(lake, [*contract.EVENT_KINDS, contract.QUARANTINE_TABLE, *contract.ANALYTICS_TABLES])
    missing_tables = {name for name, count in rows if count is None}
    failed_checks, waiting = _failed_checks(results, missing_tables)
    status = "succeeded" if success else "FAILED"
    summary = f"\nbatch runs {run_ids} {status} in {time.monotonic() - started:.1f}s"
    if success and _nothing_arrived(results):
        if all(kind in missing_tables for kind in contract.EVENT_KINDS):
            # nothing was ever cleaned: a table listing of dashes and checks "failing" on absent tables
            # would read as a broken pipeline, when it only waits for its first events
            _print_nothing_arrived(lake, PREFIX)
            print(summary + ": nothing has arrived yet"
                  + (f"; failed checks: {', '.join(failed_checks)}" if failed_checks else ""))
            return 0
        summary += ": nothing new since the last run"
    width = max(len(n) for n, _ in rows)
    print(f"\nlake: {lake.root_uri()}")
    for name, count in rows:
        print(f"  tables/{name:<{width}}  {'-' if count is None else count:>9} rows")
    blocking = _blocking_checks()
    stopping = [c for c in failed_checks if c.split(":", 1)[1] in blocking]
    warnings = [c for c in failed_checks if c not in stopping]
    print(summary
          + (f"; failed blocking checks (the run stops): {', '.join(stopping)}" if stopping else "")
          + (f"; warnings (non-blocking checks failed): {', '.join(warnings)}" if warnings else "")
          + (f"; no table yet, so not checked: {', '.join(waiting)}" if waiting else ""))
    if not success:
        _print_failures(results)
    return 0 if success else 1


def demo_command(args: argparse.Namespace) -> int:
    """Seed, post events both ways, run batch and stream, and print where everything is."""
    from pinterest_platform.settings import load_settings

    settings = load_settings()
    steps = [
        ("stack up", lambda: _call("pinterest_platform.local_stack:stack_command", action="up")),
        (f"seed {args.events} events", lambda: _seed_unless_seeded(args)),
        ("emulate --all --mode both", lambda: _call("pinterest_platform.ingestion.emulator:emulate_command",
                                                   mode="both", all=True, limit=None, rate=None, via="direct",
                                                   invoke_url=None, api_key=None, resume=False,
                                                   no_progress=False)),
        ("run batch", lambda: run_batch_command(argparse.Namespace(log_level="WARNING", from_day=None, to_day=None))),
        ("run stream --available-now", lambda: _call("pinterest_platform.jobs.stream:stream_command",
                                                     available_now=True, continuous=False, interval="5 seconds",
                                                     timeout=None)),
    ]
    started = time.monotonic()
    for title, step in steps:
        print(f"\n=== {title}", flush=True)
        code = step() or 0
        if code:
            print(f"demo stopped: `{title}` failed (exit {code})", file=sys.stderr)
            return code
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
    print(f"  source database : {settings.source_db_url}")
    print(f"  lake            : {settings.lake_root} (raw files under topics/, Delta tables under tables/)")
    print(f"  Dagster instance: {settings.dagster_home}  (open the UI with `make dev`, http://127.0.0.1:3000)")
    print("  what they hold  : docs/data-contract.md")
    print("  the local stack is still up: `pinterest-platform stack down` (or `make stack-down`) stops it")
    return 0


def _seed_unless_seeded(args: argparse.Namespace) -> int:
    """The demo seeds an empty source database; one that holds rows (an earlier demo's) is kept as it is."""
    from pinterest_platform.datagen import source_rows_held
    from pinterest_platform.settings import load_settings

    held = source_rows_held(load_settings().source_db_url)
    if any(held.values()):
        print(f"source database already holds {', '.join(f'{t}={n:,}' for t, n in held.items())}: kept "
              "(`pinterest-platform seed --events N --replace` recreates it)", flush=True)
        return 0
    return _call("pinterest_platform.datagen.cli_seed:seed_command", events=args.events, seed=args.seed,
                 db_url=None, no_progress=False, replace=False)


def _call(target: str, **fields) -> int:
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(argparse.Namespace(**fields)) or 0


def _posted_at_day(text: str):
    """`emulate --posted-at`: a real calendar day (YYYY-MM-DD), not after today (UTC)."""
    import datetime as dt

    try:
        day = dt.date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")
    today = dt.datetime.now(dt.timezone.utc).date()
    if day > today:
        raise argparse.ArgumentTypeError(f"{text} is in the future (today is {today.isoformat()} UTC)")
    return day


def _day(text: str):
    import datetime

    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinterest-platform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or check the embedded local stack")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--spark-cluster", action="store_true",
                       help="up: also start a Spark standalone master and two workers (stays until `down`)")

    seed = sub.add_parser("seed", help="create the synthetic source database")
    seed.add_argument("--events", type=int, required=True, help="number of posting events")
    seed.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    seed.add_argument("--db-url", default=None, help="SQLAlchemy URL (default PINTEREST_SOURCE_DB_URL)")
    seed.add_argument("--replace", action="store_true",
                      help="drop and recreate source tables that already hold rows (refused without it)")
    seed.add_argument("--no-progress", action="store_true")

    emulate = sub.add_parser("emulate", help="post source events to Kafka and/or Kinesis")
    emulate.add_argument("--mode", choices=["batch", "stream", "both"], default="both")
    amount = emulate.add_mutually_exclusive_group()
    amount.add_argument("--all", action="store_true", help="every source event once, in source order")
    amount.add_argument("--limit", type=int, default=None, help="at most N events")
    emulate.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    emulate.add_argument("--via", choices=["direct", "http"], default="direct")
    emulate.add_argument("--invoke-url", default=None, help="API Gateway invoke URL (default PINTEREST_GATEWAY_URL)")
    emulate.add_argument("--api-key", default=None, help="x-api-key (default PINTEREST_API_KEY)")
    emulate.add_argument("--resume", action="store_true", help="continue after the last acknowledged event")
    emulate.add_argument("--posted-at", type=_posted_at_day, default=None, metavar="YYYY-MM-DD",
                         help="stamp the Kafka records' timestamps with this UTC day (at the current time of day), "
                              "to replay history; --mode batch --via direct only; its own --resume cursor")
    emulate.add_argument("--no-progress", action="store_true")

    gateway = sub.add_parser("gateway", help="serve the local HTTP gateway")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--api-key", default=None, help="required x-api-key (default PINTEREST_API_KEY)")

    run = sub.add_parser("run", help="run the batch or streaming pipeline")
    run_sub = run.add_subparsers(dest="pipeline", required=True)
    run_batch = run_sub.add_parser(
        "batch", help="sink, then clean every day with new raw files and recompute the analytics",
        description="Lands new Kafka records as raw files under their ingest day, then cleans the days that have "
                    "raw files not cleaned yet and recomputes the analytics (two Dagster runs of batch_job). "
                    "With --from/--to, re-processes every raw file of that range of days instead.")
    run_batch.add_argument("--from", dest="from_day", type=_day, default=None, metavar="YYYY-MM-DD",
                           help="first day to re-process (UTC ingest day)")
    run_batch.add_argument("--to", dest="to_day", type=_day, default=None, metavar="YYYY-MM-DD",
                           help="last day to re-process (default: today)")
    run_batch.add_argument("--log-level", default="WARNING", help="Dagster console log level")
    run_stream = run_sub.add_parser(
        "stream", help="Kinesis -> Delta with Structured Streaming",
        description="Kinesis -> the streaming Delta tables. --available-now materializes the stream_available_now "
                    "asset in the Dagster instance (a run the UI shows); --continuous streams in this process, "
                    "outside any Dagster run. Exit 0, 1 when a query failed, 130 when interrupted.")
    mode = run_stream.add_mutually_exclusive_group(required=True)
    mode.add_argument("--available-now", action="store_true",
                      help="drain what is there and exit: a run of stream_available_now in the Dagster instance")
    mode.add_argument("--continuous", action="store_true",
                      help="run until stopped (SIGINT/SIGTERM), in this process: not a Dagster run (the "
                           "streaming_tables_sensor records the tables' new versions)")
    run_stream.add_argument("--interval", default="5 seconds", help="processing-time trigger interval")
    run_stream.add_argument("--timeout", type=float, default=None, help="stop continuous mode after N seconds")

    databricks = sub.add_parser("databricks", help="the Databricks job artifact")
    databricks_sub = databricks.add_subparsers(dest="databricks_action", required=True)
    deploy = databricks_sub.add_parser("deploy", help="build the wheel and upload it with the Pipes entry point "
                                                      "to a Unity Catalog volume or workspace files")
    deploy.add_argument("--to", default=None, help="/Volumes/<catalog>/<schema>/<volume>/<folder> or /Workspace/... "
                                                   "(default DATABRICKS_ARTIFACTS, else $DATABRICKS_VOLUME/artifacts)")
    deploy.add_argument("--wheel", default=None, help="upload this wheel instead of building one from the checkout")
    deploy.add_argument("--env-file", default=None, help="also write the printed settings to this file")

    demo = sub.add_parser("demo", help="the whole pipeline end to end on the local stack")
    demo.add_argument("--events", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=0)

    validate = sub.add_parser("validate", help="check the lake's tables against the data contract (exit 1 if not)")
    validate.add_argument("--lake", default=None, help="lake root, a folder or s3:// URI (default PINTEREST_LAKE_ROOT)")
    validate.add_argument("--streaming-prefix", default=None, help="also check the <prefix>_pin|geo|user_table tables")
    validate.add_argument("--streaming-only", action="store_true",
                          help="check only the streaming tables (a lake the batch never wrote)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import dagster  # noqa: F401 - the orchestrator extra; a cluster install of the wheel has only Pipes
    except ModuleNotFoundError:
        print("error: the command line needs the orchestrator: pip install 'pinterest_platform[orchestrator]' "
              "(or [local] for the laptop stack)", file=sys.stderr)
        return 2
    if args.command == "stack":
        return _call("pinterest_platform.local_stack:stack_command", action=args.action,
                     spark_cluster=args.spark_cluster)
    if args.command == "seed":
        return _call("pinterest_platform.datagen.cli_seed:seed_command", **vars(args))
    if args.command == "emulate":
        return _call("pinterest_platform.ingestion.emulator:emulate_command", **vars(args))
    if args.command == "gateway":
        return _call("pinterest_platform.ingestion.gateway:gateway_command", **vars(args))
    if args.command == "run" and args.pipeline == "batch":
        return run_batch_command(args)
    if args.command == "run" and args.pipeline == "stream":
        return _call("pinterest_platform.jobs.stream:stream_command", **vars(args))
    if args.command == "databricks" and args.databricks_action == "deploy":
        return _call("pinterest_platform.databricks_deploy:deploy_command", **vars(args))
    if args.command == "demo":
        return demo_command(args)
    if args.command == "validate":
        return _call("pinterest_platform.validate:validate_command", **vars(args))
    raise AssertionError(args)


def entry() -> None:
    """The `pinterest-platform` command: `main`, then an exit that skips the interpreter's teardown.

    The command's work is done and reported by then. Native thread pools of the libraries a run loads
    (Arrow, through delta-rs and pyspark) can abort the teardown ("terminate called without an active
    exception", signal 6), which would turn a run that succeeded into a failed exit. Spark's JVM exits on
    its own when this process's end closes its stdin."""
    import logging

    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
