"""Synthetic data for the platform: the source database of DATA_CONTRACT.md §1."""

from pinterest_platform.datagen.generator import (
    CHUNK_SIZE,
    SourceNotEmptyError,
    generate_events,
    seed_source_database,
    source_engine,
    source_rows_held,
    source_tables,
)

__all__ = ["CHUNK_SIZE", "SourceNotEmptyError", "generate_events", "seed_source_database", "source_engine",
           "source_rows_held", "source_tables"]
