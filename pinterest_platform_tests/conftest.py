"""Session-wide fixtures: one SparkSession per test session (start-up is 7-15 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from pinterest_platform.resources.spark import local_spark_session

    return local_spark_session()
