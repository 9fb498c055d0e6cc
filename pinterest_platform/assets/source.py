"""The source database as Dagster assets: the seeding step, and the three §1 tables it writes.

`source_seed` creates the synthetic source database of the local profile; the tables themselves are
external assets (`source_table_specs`), read by the event emulator, whose row counts the seed reports when it
runs. The seed never touches tables that hold rows unless its config says `replace: true`, and the aws
profile does not have it at all: there the source is the production database."""

# no `from __future__ import annotations`: Dagster reads the Config annotation at definition time
import time

import dagster as dg
from pydantic import Field

from pinterest_platform import contract
from pinterest_platform.assets.metadata import OWNERS
from pinterest_platform.descriptions import column_descriptions
from pinterest_platform.resources.source_db import SourceDatabaseResource, mask_url

SOURCE_GROUP = "source"
SEED_KEY = dg.AssetKey(["source", "seed"])
SOURCE_TABLE_KEYS = {table: dg.AssetKey(["source", table]) for table in contract.SOURCE_COLUMNS}

_DESCRIPTIONS = {
    contract.SOURCE_PIN_TABLE: "Pinterest posts: one row per posting event, keyed by `index` (placeholders kept as scraped).",
    contract.SOURCE_GEO_TABLE: "Where and when each event was posted, keyed by `ind`.",
    contract.SOURCE_USER_TABLE: "Who posted each event, keyed by `ind`; the same person repeats across events.",
}


# (name, SQL type, nullable) of each column of datagen.generator.source_tables(), as SQLAlchemy prints them:
# written out so that loading the code location imports no SQLAlchemy (the seed asset imports it when it
# runs); pinterest_platform_tests/test_light_code_location.py checks they match the tables' definitions
SOURCE_TABLE_COLUMNS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    contract.SOURCE_PIN_TABLE: (
        ("index", "INTEGER", False), ("unique_id", "VARCHAR(36)", False), ("title", "TEXT", True),
        ("description", "TEXT", True), ("poster_name", "VARCHAR(255)", True), ("follower_count", "TEXT", True),
        ("tag_list", "TEXT", True), ("is_image_or_video", "VARCHAR(64)", True), ("image_src", "VARCHAR(512)", True),
        ("downloaded", "INTEGER", True), ("save_location", "VARCHAR(255)", True), ("category", "VARCHAR(64)", True),
    ),
    contract.SOURCE_GEO_TABLE: (
        ("ind", "INTEGER", False), ("timestamp", "DATETIME", True), ("latitude", "DOUBLE", True),
        ("longitude", "DOUBLE", True), ("country", "VARCHAR(255)", True),
    ),
    contract.SOURCE_USER_TABLE: (
        ("ind", "INTEGER", False), ("first_name", "VARCHAR(255)", True), ("last_name", "VARCHAR(255)", True),
        ("age", "INTEGER", True), ("date_joined", "DATETIME", True),
    ),
}


def _column_schema(table_name: str) -> dg.TableSchema:
    described = column_descriptions(table_name)  # a source table's columns are its events' wire fields
    return dg.TableSchema(columns=[
        dg.TableColumn(name=name, type=type_, description=described.get(name),
                       constraints=dg.TableColumnConstraints(nullable=nullable))
        for name, type_, nullable in SOURCE_TABLE_COLUMNS[table_name]
    ])


def source_table_specs(seeded_by_platform: bool) -> list[dg.AssetSpec]:
    """The three source tables; downstream of `source/seed` only where the platform makes them (local)."""
    return [
        dg.AssetSpec(
            key,
            deps=[SEED_KEY] if seeded_by_platform else [],
            group_name=SOURCE_GROUP,
            kinds={"sqlite", "mysql", "table"},
            owners=OWNERS,
            description=_DESCRIPTIONS[table],
            metadata={"dagster/column_schema": _column_schema(table), "dagster/table_name": table},
        )
        for table, key in SOURCE_TABLE_KEYS.items()
    ]


SOURCE_TABLE_SPECS = source_table_specs(seeded_by_platform=True)


class SourceSeedConfig(dg.Config):
    events: int = Field(default=11_000, ge=0, description="posting events to generate (rows per table)")
    seed: int = Field(default=0, description="same seed and events -> identical rows")
    replace: bool = Field(default=False, description="drop and recreate source tables that already hold rows")


@dg.asset(key=SEED_KEY, group_name=SOURCE_GROUP, kinds={"sqlite", "python"}, owners=OWNERS)
def source_seed(context: dg.AssetExecutionContext, config: SourceSeedConfig,
                source_db: SourceDatabaseResource) -> dg.MaterializeResult:
    """Creates the synthetic source database (local profile); tables holding rows are kept unless `replace`."""
    from pinterest_platform.datagen.generator import seed_source_database, source_rows_held

    started = time.monotonic()
    url = mask_url(source_db.url)
    held = source_rows_held(source_db.url)
    if any(held.values()) and not config.replace:
        # "Materialize all" must never erase a source: keep it, say so, and report what it holds
        context.log.warning(f"{url} already holds rows {held}: kept as it is (set `replace: true` to recreate it)")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(sum(held.values())),
            **{f"rows/{table}": dg.MetadataValue.int(rows) for table, rows in held.items()},
            "seeded": False, "url": url,
        })
    counts = seed_source_database(source_db.url, events=config.events, seed=config.seed, progress=False,
                                  replace=config.replace)
    seconds = round(time.monotonic() - started, 2)
    context.log.info(f"seeded {config.events} events into {url} in {seconds} s: {counts}")
    # the tables are external assets: record their new contents so the UI shows fresh row counts
    for table, rows in counts.items():
        context.log_event(dg.AssetMaterialization(
            asset_key=SOURCE_TABLE_KEYS[table],
            metadata={"dagster/row_count": dg.MetadataValue.int(rows), "seed": config.seed},
        ))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(counts.values())),
        **{f"rows/{table}": dg.MetadataValue.int(rows) for table, rows in counts.items()},
        "seeded": True,
        "events": config.events,
        "seed": config.seed,
        "url": url,
        "seconds": seconds,
    })
