"""`pinterest-platform seed`: fill the source database with synthetic events and say what was written."""

from __future__ import annotations

import argparse
import sys
import time

import sqlalchemy as sa

from pinterest_platform.datagen.generator import SourceNotEmptyError, seed_source_database
from pinterest_platform.resources.source_db import mask_url
from pinterest_platform.settings import load_settings


def seed_command(args: argparse.Namespace) -> int:
    """Seed `args.events` events (`args.seed`, `args.db_url` or the settings' URL, `args.no_progress`,
    `args.replace`: drop and recreate tables that already hold rows)."""
    settings = load_settings()
    explicit_url = getattr(args, "db_url", None)
    if settings.env == "aws" and not explicit_url:
        # the aws profile's source is the production database: the synthetic one is a local-profile feature
        print("seed: refusing under PINTEREST_ENV=aws: its source database (PINTEREST_SOURCE_DB_URL) is the "
              "production one. Seed a database of your own with --db-url, or run in the local profile.",
              file=sys.stderr)
        return 2
    url = explicit_url or settings.source_db_url
    events = int(args.events)
    seed = int(getattr(args, "seed", 0) or 0)
    if events < 0:
        print(f"seed: --events must be >= 0, got {events}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        counts = seed_source_database(url, events=events, seed=seed,
                                      progress=not getattr(args, "no_progress", False),
                                      replace=bool(getattr(args, "replace", False)))
    except SourceNotEmptyError as exc:
        print(f"seed: {mask_url(url)}: {exc}", file=sys.stderr)
        return 1
    except sa.exc.OperationalError as exc:
        # an unreachable or refusing server is a user error: one line, not a traceback
        print(f"seed: cannot write to {mask_url(url)}: {exc.orig}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    tables = ", ".join(f"{table}={rows:,}" for table, rows in counts.items())
    print(f"seeded {events:,} events (seed {seed}) into {mask_url(url)}: {tables} in {seconds:.1f} s")
    return 0
