"""The source database (RDS MySQL in production, a SQLite file locally), reached through SQLAlchemy."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


def mask_url(url: str) -> str:
    """The URL with its password hidden, for logs and summaries."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class SourceDatabaseResource(dg.ConfigurableResource):
    """Where the posting events come from: `pinterest_data`, `geolocation_data`, `user_data`."""

    url: str = Field(description="SQLAlchemy URL: sqlite:///path or mysql+pymysql://user:pw@host/db")

    def engine(self):
        from pinterest_platform.datagen import source_engine

        return source_engine(self.url)

    def display_url(self) -> str:
        return mask_url(self.url)


class SqliteSourceDatabase(SourceDatabaseResource):
    """The local default: a SQLite file made by `pinterest-platform seed`."""


class MySqlSourceDatabase(SourceDatabaseResource):
    """RDS MySQL over PyMySQL; the URL (with its password) comes from PINTEREST_SOURCE_DB_URL."""
