"""Spark: one job seam for both profiles.

A Spark job is a plain function `job(spark, params) -> dict` registered in `pinterest_platform.jobs`.
`LocalSparkResource` runs it in-process on a shared local SparkSession with Delta; the Databricks
implementation runs the same function on a job cluster under Dagster Pipes. Assets only call
`SparkResource.run_job`, so no asset body knows where Spark runs."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pinterest_platform.settings import project_root

_session_lock = threading.Lock()
_session = None


def jars_dir() -> Path:
    default = project_root() / ".pinterest" / "jars"
    return Path(os.environ.get("PINTEREST_JARS_DIR") or default)


def delta_jars() -> list[str]:
    folder = jars_dir() / "delta"
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not jars:
        raise RuntimeError(
            f"Delta jars not found in {folder}. Run `make install` (or `jvm/fetch.sh`) once to fetch them "
            "from Maven Central; Spark then starts offline."
        )
    return jars


def local_spark_session(extra_conf: dict[str, str] | None = None):
    """The process's one SparkSession (local[*], Delta, UTC). Start-up costs 7-15 s, so it is shared."""
    global _session
    with _session_lock:
        if _session is not None and _session._jsc is not None:  # noqa: SLF001 - stopped sessions drop _jsc
            return _session
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        from pyspark.sql import SparkSession

        conf = {
            "spark.jars": ",".join(delta_jars()),
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            # source datetimes carry no zone: they are UTC, and so is every year we take from them
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            # small machine, small data: the default 200 shuffle / 50 snapshot partitions are pure overhead
            "spark.sql.shuffle.partitions": os.environ.get("PINTEREST_SPARK_SHUFFLE_PARTITIONS", "4"),
            "spark.default.parallelism": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.databricks.delta.merge.repartitionBeforeWrite.enabled": "true",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            "spark.driver.memory": os.environ.get("PINTEREST_SPARK_DRIVER_MEMORY", "4g"),
            "spark.driver.extraJavaOptions": "-Dlog4j2.level=WARN",
        }
        conf.update(extra_conf or {})
        builder = SparkSession.builder.master(os.environ.get("PINTEREST_SPARK_MASTER", "local[2]"))
        builder = builder.appName("pinterest_platform")
        for key, value in conf.items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        return _session


class SparkResource(dg.ConfigurableResource):
    """Where Spark jobs run. Assets call `run_job(context, name, params)` and get the job's result dict."""

    def run_job(self, context: dg.AssetExecutionContext | dg.OpExecutionContext, job_name: str,
                params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def kinesis_source_format(self) -> str:
        """The readStream format that reads Kinesis here: Databricks' built-in, or our Python data source."""
        return "kinesis"


class LocalSparkResource(SparkResource):
    """Runs jobs in this process on the shared local SparkSession (Delta jars from the local cache)."""

    def session(self):
        return local_spark_session()

    def kinesis_source_format(self) -> str:
        from pinterest_platform.streaming.kinesis_source import FORMAT_NAME

        return FORMAT_NAME

    def run_job(self, context, job_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from pinterest_platform.jobs import get_job

        context.log.info(f"running Spark job {job_name} locally")
        return get_job(job_name)(self.session(), params)


def _pipes_version() -> str:
    from importlib.metadata import version

    return version("dagster-pipes")


class DatabricksSparkResource(SparkResource):
    """Runs jobs on a Databricks job cluster under Dagster Pipes.

    The cluster runs `jobs/databricks_entry.py` (uploaded with the project wheel, see README), which
    opens a Pipes session, runs the same registered job function on the cluster's SparkSession and
    reports its result dict back as a Pipes custom message."""

    host: str = Field(description="workspace URL, from DATABRICKS_HOST")
    token: str = Field(description="personal access token or service principal token, from DATABRICKS_TOKEN")
    entrypoint: str = Field(default="dbfs:/pinterest_platform/databricks_entry.py")
    wheel: str | None = Field(default=None, description="dbfs:/... path of the pinterest_platform wheel")
    existing_cluster_id: str | None = None
    spark_version: str = "16.4.x-scala2.12"
    node_type_id: str = "m5d.large"
    num_workers: int = 1
    poll_interval_seconds: float = 10.0

    def workspace_client(self):
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(host=self.host, token=self.token)

    def submit_task(self, job_name: str) -> dict[str, Any]:
        """The jobs/runs/submit task for one job (plain dict, so tests can assert the exact request)."""
        task: dict[str, Any] = {
            "task_key": f"pinterest_platform_{job_name}",
            "spark_python_task": {"python_file": self.entrypoint, "parameters": [job_name]},
            # the cluster's Pipes must speak the same protocol version as this orchestrator
            "libraries": [{"pypi": {"package": f"dagster-pipes=={_pipes_version()}"}}],
        }
        if self.wheel:
            task["libraries"].append({"whl": self.wheel})
        if self.existing_cluster_id:
            task["existing_cluster_id"] = self.existing_cluster_id
        else:
            task["new_cluster"] = {"spark_version": self.spark_version, "node_type_id": self.node_type_id,
                                   "num_workers": self.num_workers}
        return task

    def run_job(self, context, job_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from dagster_databricks import PipesDatabricksClient
        from databricks.sdk.service import jobs

        client = PipesDatabricksClient(client=self.workspace_client(),
                                       poll_interval_seconds=self.poll_interval_seconds)
        invocation = client.run(context=context, task=jobs.SubmitTask.from_dict(self.submit_task(job_name)),
                                extras={"job": job_name, "params": params})
        messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
        if not messages:
            raise RuntimeError(f"Databricks job {job_name} finished without reporting a result over Pipes")
        return messages[-1]
