"""Spark jobs: `job(spark, params) -> dict`, run in-process locally or under Pipes on Databricks.

Registered by name so the Databricks entry point can dispatch to the same function."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

SparkJob = Callable[[Any, dict], dict]

# name -> "module:function"; imported lazily so that loading definitions never imports PySpark code paths
JOBS: dict[str, str] = {
    "clean_batch": "pinterest_platform.jobs.batch:clean_batch",
    "analytics": "pinterest_platform.jobs.batch:analytics",
    "stream": "pinterest_platform.jobs.stream:stream",
}


def get_job(name: str) -> SparkJob:
    try:
        module_name, func_name = JOBS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown Spark job {name!r}; known: {', '.join(sorted(JOBS))}") from None
    return getattr(importlib.import_module(module_name), func_name)
