"""The source database as Dagster assets: the seeding step, and the three §1 tables it writes.

`source_seed` (re)creates the synthetic source database; the tables themselves are external assets
(`SOURCE_TABLE_SPECS`), read by the event emulator, whose row counts the seed reports when it runs."""

# no `from __future__ import annotations`: Dagster reads the Config annotation at definition time
import time

import dagster as dg
from pydantic import Field

from pinterest_platform import contract
from pinterest_platform.assets.metadata import OWNERS
from pinterest_platform.datagen.generator import seed_source_database, source_tables
from pinterest_platform.resources.source_db import SourceDatabaseResource, mask_url

SOURCE_GROUP = "source"
SEED_KEY = dg.AssetKey(["source", "seed"])
SOURCE_TABLE_KEYS = {table: dg.AssetKey(["source", table]) for table in contract.SOURCE_COLUMNS}

_DESCRIPTIONS = {
    contract.SOURCE_PIN_TABLE: "Pinterest posts: one row per posting event, keyed by `index` (placeholders kept as scraped).",
    contract.SOURCE_GEO_TABLE: "Where and when each event was posted, keyed by `ind`.",
    contract.SOURCE_USER_TABLE: "Who posted each event, keyed by `ind`; the same person repeats across events.",
}


def _column_schema(table_name: str) -> dg.TableSchema:
    table = source_tables()[table_name]
    return dg.TableSchema(columns=[
        dg.TableColumn(name=c.name, type=str(c.type), constraints=dg.TableColumnConstraints(nullable=c.nullable))
        for c in table.columns
    ])


SOURCE_TABLE_SPECS: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key,
        deps=[SEED_KEY],
        group_name=SOURCE_GROUP,
        kinds={"sqlite", "mysql", "table"},
        owners=OWNERS,
        description=_DESCRIPTIONS[table],
        metadata={"dagster/column_schema": _column_schema(table), "dagster/table_name": table},
    )
    for table, key in SOURCE_TABLE_KEYS.items()
]


class SourceSeedConfig(dg.Config):
    events: int = Field(default=11_000, ge=0, description="posting events to generate (rows per table)")
    seed: int = Field(default=0, description="same seed and events -> identical rows")


@dg.asset(key=SEED_KEY, group_name=SOURCE_GROUP, kinds={"sqlite", "python"}, owners=OWNERS)
def source_seed(context: dg.AssetExecutionContext, config: SourceSeedConfig,
                source_db: SourceDatabaseResource) -> dg.MaterializeResult:
    """Recreate the source database with synthetic events faithful to DATA_CONTRACT.md §1."""
    started = time.monotonic()
    counts = seed_source_database(source_db.url, events=config.events, seed=config.seed, progress=False)
    seconds = round(time.monotonic() - started, 2)
    url = mask_url(source_db.url)
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
        "events": config.events,
        "seed": config.seed,
        "url": url,
        "seconds": seconds,
    })
