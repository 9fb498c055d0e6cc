"""`pinterest-platform stack up|down|status`: the CLI face of `LocalStack` (the lead's cli.py dispatches here)."""

from __future__ import annotations

import sys
import time

from pinterest_platform.local_stack.stack import LocalStack


def _print_status(report: dict) -> None:
    rows = [("component", "healthy", "pid", "endpoint", "log")]
    for name, item in report.items():
        healthy = "yes" if item["healthy"] else "NO"
        if item.get("external"):
            healthy += " (external)"
        rows.append((name, healthy, str(item["pid"] or "-"), item["endpoint"] or "-", item["log"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for name, item in report.items():
        if not item["healthy"] and item.get("error"):
            print(f"{name}: {item['error']}")
    for item in report.values():
        if item.get("ui"):
            print(f"Spark master UI: {item['ui']}")


def _print_client_hints(endpoints: dict) -> None:
    """How to post with other people's clients, right now (the README shows the same)."""
    from pinterest_platform import contract
    from pinterest_platform.settings import load_settings

    prefix = load_settings().topic_prefix
    kafka, aws = endpoints.get("kafka_bootstrap_servers"), endpoints.get("aws_endpoint_url")
    row = '{"index": 1, "title": "hello"}'
    print("\npost with your own clients:")
    if kafka:
        print(f"  echo '{row}' | kcat -P -b {kafka} -t {contract.topic_name(prefix, 'pin')}")
    if aws:
        print(f"  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing aws --region us-east-1 --endpoint-url {aws} "
              f"kinesis put-record --stream-name {contract.stream_name(prefix, 'pin')} --partition-key 1 "
              f"--cli-binary-format raw-in-base64-out --data '{row}'   # AWS CLI v1: without --cli-binary-format ...")
    print(f"  curl -X POST -H 'Content-Type: application/vnd.kafka.json.v2+json' -d '{{\"records\": [{{\"value\": {row}}}]}}' "
          f"http://127.0.0.1:8080/topics/{contract.topic_name(prefix, 'pin')}   # after `pinterest-platform gateway`")


def stack_command(args) -> int:
    """Run `args.action` (up | down | status); optional `args.timeout` (s) and `args.state_dir`."""
    stack = LocalStack(getattr(args, "state_dir", None))
    action = args.action
    if action == "up":
        timeout = getattr(args, "timeout", None) or 60
        started = time.monotonic()
        try:
            endpoints = stack.up(timeout=timeout, spark_cluster=bool(getattr(args, "spark_cluster", False)))
        except RuntimeError as exc:
            print(f"stack up failed: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - e.g. the lake bucket could not be made: one line, not a trace
            print(f"stack up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - started
        report = stack.status()
        _print_status(report)
        print()
        for key, value in endpoints.items():
            print(f"{key} = {value}")
        for note in stack.notes:
            print(note)
        _print_client_hints(endpoints)
        print(f"stack up in {elapsed:.1f} s (state: {stack.state_path})")
        return 0 if all(item["healthy"] for item in report.values()) else 1
    if action == "down":
        for name, outcome in stack.down().items():
            print(f"{name}: {outcome}")
        return 0
    if action == "status":
        report = stack.status()
        _print_status(report)
        return 0 if all(item["healthy"] for item in report.values()) else 1
    print(f"unknown stack action {action!r}: expected up, down or status", file=sys.stderr)
    return 2
