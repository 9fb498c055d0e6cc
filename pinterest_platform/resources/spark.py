"""Spark: one job seam for every place Spark runs.

A Spark job is a plain function `job(spark, params) -> dict` registered in `pinterest_platform.jobs`.
`LocalSparkResource` runs it on this process's SparkSession (Delta, S3A), whose executors are in-process,
on the stack's standalone cluster or on any cluster PINTEREST_SPARK_MASTER names; the Databricks
implementation runs the same function on a job cluster under Dagster Pipes. Assets only call
`SparkResource.run_job`, so no asset body knows where Spark runs."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pinterest_platform.settings import Settings, load_settings, project_root

_session_lock = threading.Lock()
_session = None


def jars_dir() -> Path:
    default = project_root() / ".pinterest" / "jars"
    return Path(os.environ.get("PINTEREST_JARS_DIR") or default)


def _jars(component: str, what: str) -> list[str]:
    folder = jars_dir() / component
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not jars:
        raise RuntimeError(
            f"{what} jars not found in {folder}. Run `make install` (or `jvm/fetch.sh`) once to fetch them "
            "from Maven Central; Spark then starts offline.")
    return jars


def delta_jars() -> list[str]:
    return _jars("delta", "Delta")


def s3_jars() -> list[str]:
    """hadoop-aws and the AWS SDK bundle, at the Hadoop version inside pyspark (see jvm/fetch.sh)."""
    return _jars("s3", "S3A (hadoop-aws + AWS SDK)")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def spark_master(settings: Settings | None = None) -> str:
    """PINTEREST_SPARK_MASTER, else the stack's Spark cluster when `stack up --spark-cluster` started one,
    else in-process `local[2]`."""
    settings = settings or load_settings()
    if settings.spark_master:
        return settings.spark_master
    if settings.env == "local":
        stack_master = settings.stack_endpoints().get("spark_master_url")
        if stack_master:
            return stack_master
    return "local[2]"


def master_address(master: str) -> tuple[str, int] | None:
    """(host, port) of a spark:// master, the first one of a list (None for local[*] and other masters)."""
    if not master.startswith("spark://"):
        return None
    host, _, port = master.removeprefix("spark://").split(",")[0].rpartition(":")
    return host.strip("[]"), int(port or 7077)


def master_host(master: str) -> str | None:
    address = master_address(master)
    return address[0] if address else None


def executors_share_this_filesystem(master: str) -> bool:
    """In-process Spark and a standalone cluster on this machine see this machine's files; others do not."""
    if master.startswith("local"):
        return True
    host = master_host(master)
    return host is not None and host in LOOPBACK_HOSTS


def check_lake_visible_to_executors(settings: Settings, master: str) -> None:
    """Executors on other machines cannot read a folder of this one: the lake must be on S3 there."""
    if not executors_share_this_filesystem(master) and not settings.lake_is_s3:
        raise RuntimeError(
            f"the lake {settings.lake_root} is a folder on this machine, but Spark master {master} runs "
            "executors elsewhere, which cannot see it: set PINTEREST_LAKE_ROOT=s3://<bucket>/<prefix>")


def check_master_reachable(master: str, timeout: float = 3.0) -> None:
    """A standalone master that does not answer would leave the driver retrying for minutes: say so now."""
    import socket

    address = master_address(master)
    if address is None:
        return
    host, port = address
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        hint = ("start it with `pinterest-platform stack up --spark-cluster`, or `stack down` to forget it"
                if host in LOOPBACK_HOSTS else "check PINTEREST_SPARK_MASTER")
        raise RuntimeError(f"Spark master {master} does not answer ({exc}): {hint}") from None


def s3a_conf(settings: Settings | None = None) -> dict[str, str]:
    """Hadoop S3A settings (as `spark.hadoop.*`) for the lake, the same on the driver and every executor.

    `s3://` URIs go through S3A too, so the lake URIs are the same as on Databricks and in delta-rs. Locally:
    the stack's moto (AWS_ENDPOINT_URL wins), path-style access, dummy credentials. On AWS: the default
    credential chain of the AWS SDK (environment, SSO or profile, instance or pod role), nothing stored."""
    settings = settings or load_settings()
    conf = {
        "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        "fs.s3a.endpoint.region": settings.aws_region,
    }
    endpoint = settings.s3_endpoint_url()
    if settings.env == "local":
        conf.update({
            "fs.s3a.path.style.access": "true",
            "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            "fs.s3a.access.key": os.environ.get("AWS_ACCESS_KEY_ID") or "testing",
            "fs.s3a.secret.key": os.environ.get("AWS_SECRET_ACCESS_KEY") or "testing",
        })
    else:
        conf["fs.s3a.aws.credentials.provider"] = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
    if endpoint:
        conf["fs.s3a.endpoint"] = endpoint
        conf["fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    return {f"spark.hadoop.{key}": value for key, value in conf.items()}


def apply_s3a_conf(spark, settings: Settings | None = None) -> None:
    """Refresh the session's S3A settings (the stack may have started after the session did)."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001 - the documented way to set it live
    for key, value in s3a_conf(settings).items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)


def _package_zip() -> str:
    """This package as a zip for executors on other machines (they import the Kinesis source from it)."""
    import tempfile
    import zipfile

    package = Path(__file__).resolve().parent.parent
    target = Path(tempfile.mkdtemp(prefix="pinterest_platform_pyfiles_")) / "pinterest_platform.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in package.rglob("*.py"):
            archive.write(path, path.relative_to(package.parent))
    return str(target)


DRIVER_MEMORY_ENV = "PINTEREST_SPARK_DRIVER_MEMORY"
# measured on the 1M-event batch (about 1 GiB of raw files; cleaning, then analytics), 2 cores:
#   G1 (the JVM's default), 2 GiB heap:  112 s + 20 s, peak RSS 2.97 GB
#   Parallel GC,            2 GiB heap:  100 s + 16 s, 2.93 GB
#   Parallel GC,          1.5 GiB heap:  103 s + 16 s, 2.19 GB
#   Parallel GC,            1 GiB heap:  104 s + 17 s, 1.72 GB
# G1's concurrent marking and write barriers compete with the tasks for two cores, and beyond about half
# the data's size a larger heap only fills (the JVM's own memory is ~0.5-0.7 GB on top of the heap)
MIN_DRIVER_MIB, MAX_DRIVER_MIB, DEFAULT_DRIVER_MIB = 1024, 4096, 1536
DRIVER_GC = "-XX:+UseParallelGC"
# the driver's JVM options, but for the class archive's (resources/class_archive.py), which depends on them
DRIVER_BASE_JAVA_OPTIONS = f"-Dlog4j2.level=WARN {DRIVER_GC}"


def driver_memory(data_bytes: int | None = None) -> str:
    """The local driver's heap: PINTEREST_SPARK_DRIVER_MEMORY when set, else 1 GiB plus half the size of
    the raw files the first job reads (1.5 GiB when it names none), in 512 MiB steps, within 1-4 GiB and at
    most a quarter of this machine's memory."""
    if os.environ.get(DRIVER_MEMORY_ENV):
        return os.environ[DRIVER_MEMORY_ENV]
    mib = DEFAULT_DRIVER_MIB if data_bytes is None else MIN_DRIVER_MIB + data_bytes / 2**20 / 2
    mib = math.ceil(mib / 512) * 512
    ceiling = MAX_DRIVER_MIB
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ceiling = min(ceiling, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4 // 2**20)
    return f"{max(MIN_DRIVER_MIB, min(mib, ceiling))}m"


def input_bytes(params: dict[str, Any]) -> int | None:
    """Bytes of the raw files a job's params name (`files`: {kind: [{"size"}]}), or None when it names none."""
    files = params.get("files")
    if not isinstance(files, dict):
        return None
    return sum(int(f.get("size") or 0) for of_kind in files.values() for f in of_kind)


def local_spark_session(extra_conf: dict[str, str] | None = None, data_bytes: int | None = None):
    """The process's one SparkSession, with Delta and S3A, in UTC. Start-up costs 3.5-4 s with the class
    archive `make install` builds (`class_archive`), 6-15 s without, so it is shared.
    The first caller's `data_bytes` (the raw files its job reads) sizes the driver's heap (`driver_memory`).

    The master is `spark_master()`: in-process by default, the stack's standalone cluster while it runs,
    or PINTEREST_SPARK_MASTER. Executors then run in other processes (or machines): they get the jars,
    the S3A settings and, off this machine, this package as a py-file; nothing else of the driver's."""
    global _session
    with _session_lock:
        if _session is not None and _session._jsc is not None:  # noqa: SLF001 - stopped sessions drop _jsc
            return _session
        settings = load_settings()
        master = spark_master(settings)
        shared_fs = executors_share_this_filesystem(master)
        check_lake_visible_to_executors(settings, master)
        check_master_reachable(master)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        from pyspark.sql import SparkSession

        from pinterest_platform.resources import class_archive

        jars = [*delta_jars(), *s3_jars()]
        conf = {
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            # source datetimes carry no zone: they are UTC, and so is every year we take from them
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            # small machine, small data: the default 200 shuffle / 50 snapshot partitions are pure overhead
            "spark.sql.shuffle.partitions": os.environ.get("PINTEREST_SPARK_SHUFFLE_PARTITIONS", "4"),
            "spark.default.parallelism": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.databricks.delta.merge.repartitionBeforeWrite.enabled": "true",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            # the analytics' one aggregation (a median beside the counts) keeps a few thousand groups in its
            # hash map; past the default 128 Spark sorts its whole input instead, which doubled its time at 1M
            "spark.sql.objectHashAggregate.sortBased.fallbackThreshold": "65536",
            "spark.driver.memory": driver_memory(data_bytes),
            "spark.driver.extraJavaOptions": " ".join(
                filter(None, [DRIVER_BASE_JAVA_OPTIONS, class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS)])),
            # open-source Delta on S3 is safe for one writer per table: the jobs take the platform's lock
            # around every commit (jobs/commit_lock.py); Databricks' commit service makes that unneeded there
            "spark.pinterest.s3CommitLock": "true",
            **s3a_conf(settings),
        }
        if shared_fs:
            # same machine: put the jars on the class path directly instead of copying the 700 MB AWS SDK
            # bundle to every executor at start
            classpath = ":".join(jars)
            conf.update({"spark.driver.extraClassPath": classpath, "spark.executor.extraClassPath": classpath,
                         "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
        else:
            conf["spark.jars"] = ",".join(jars)
        if master.startswith("spark://"):
            conf.update({
                "spark.executor.memory": os.environ.get("PINTEREST_SPARK_EXECUTOR_MEMORY", "1g"),
                "spark.executor.cores": "1",
                "spark.cores.max": os.environ.get("PINTEREST_SPARK_CORES_MAX", "2"),
            })
        conf.update(extra_conf or {})
        builder = SparkSession.builder.master(master).appName("pinterest_platform")
        for key, value in conf.items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        if not shared_fs:
            _session.sparkContext.addPyFile(_package_zip())
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

    def session(self, data_bytes: int | None = None):
        spark = local_spark_session(data_bytes=data_bytes)
        apply_s3a_conf(spark)
        return spark

    def kinesis_source_format(self) -> str:
        from pinterest_platform.streaming.kinesis_source import FORMAT_NAME

        return FORMAT_NAME

    def run_job(self, context, job_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from pinterest_platform.jobs import get_job

        context.log.info(f"running Spark job {job_name} locally")
        return get_job(job_name)(self.session(input_bytes(params)), params)


def _pipes_version() -> str:
    from importlib.metadata import version

    return version("dagster-pipes")


DATABRICKS_RUNTIME = "17.3.x-scala2.13"  # 17.3 LTS, Spark 4.0: the Spark local runs pin (see pyproject.toml)
SERVERLESS_ENVIRONMENT = "4"  # serverless environment 4: Python 3.12, Databricks Connect 17 (Spark 4.0)
COMPUTE_KINDS = ("job_cluster", "existing_cluster", "serverless")
ENVIRONMENT_KEY = "pinterest_platform"


class DatabricksConfigError(ValueError):
    """A Databricks setting is missing or inconsistent: raised before anything is submitted."""


class DatabricksSparkResource(SparkResource):
    """Runs jobs on Databricks under Dagster Pipes: a new job cluster, an existing cluster or serverless.

    The task runs the entry point (`jobs/databricks_entry.py`) that `pinterest-platform databricks deploy`
    uploaded with the project wheel to a Unity Catalog volume or workspace files. The entry point opens a
    Pipes session, runs the same registered job function on the cluster's SparkSession and reports its
    result dict back as a Pipes custom message. Pipes' context and messages go through temporary files in
    `volume` (Unity Catalog volumes), never DBFS root, which new workspaces disable."""

    host: str = Field(description="workspace URL, from DATABRICKS_HOST")
    token: str = Field(description="personal access token or service principal token, from DATABRICKS_TOKEN")
    volume: str = Field(description="/Volumes/<catalog>/<schema>/<volume> for Pipes' temporary files "
                                    "(DATABRICKS_VOLUME)")
    entrypoint: str = Field(description="path of databricks_entry.py as deployed (DATABRICKS_ENTRYPOINT)")
    wheel: str = Field(description="path of the pinterest_platform wheel as deployed (DATABRICKS_WHEEL)")
    compute: str = Field(default="job_cluster", description=f"one of {', '.join(COMPUTE_KINDS)} (DATABRICKS_COMPUTE)")
    existing_cluster_id: str | None = Field(default=None, description="DATABRICKS_CLUSTER_ID, for existing_cluster")
    spark_version: str = Field(default=DATABRICKS_RUNTIME, description="job clusters' runtime "
                                                                       "(DATABRICKS_SPARK_VERSION)")
    node_type_id: str = "m5d.large"
    num_workers: int = 1
    instance_profile_arn: str | None = Field(default=None, description="job clusters' S3 access to the lake "
                                                                       "(DATABRICKS_INSTANCE_PROFILE_ARN)")
    serverless_environment: str = Field(default=SERVERLESS_ENVIRONMENT,
                                        description="serverless environment version (DATABRICKS_SERVERLESS_ENVIRONMENT)")
    poll_interval_seconds: float = 10.0

    def workspace_client(self):
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(host=self.host, token=self.token)

    def kinesis_source_format(self) -> str:
        return "kinesis"

    def _check(self) -> None:
        if self.compute not in COMPUTE_KINDS:
            raise DatabricksConfigError(f"DATABRICKS_COMPUTE={self.compute!r}: expected one of {', '.join(COMPUTE_KINDS)}")
        if self.compute == "existing_cluster" and not self.existing_cluster_id:
            raise DatabricksConfigError("DATABRICKS_COMPUTE=existing_cluster needs DATABRICKS_CLUSTER_ID")
        if not self.volume.startswith("/Volumes/") or len(self.volume.strip("/").split("/")) < 4:
            raise DatabricksConfigError(f"DATABRICKS_VOLUME={self.volume!r}: expected /Volumes/<catalog>/<schema>/<volume>")
        for name, path in (("DATABRICKS_ENTRYPOINT", self.entrypoint), ("DATABRICKS_WHEEL", self.wheel)):
            if path.startswith("dbfs:/"):
                raise DatabricksConfigError(f"{name}={path}: DBFS root is disabled in new workspaces; "
                                            "deploy to a Unity Catalog volume or workspace files "
                                            "(`pinterest-platform databricks deploy`)")
            if not path.startswith(("/Volumes/", "/Workspace/")):
                raise DatabricksConfigError(f"{name}={path!r}: expected a /Volumes/... or /Workspace/... path "
                                            "as printed by `pinterest-platform databricks deploy`")

    def _pipes_requirement(self) -> str:
        # the cluster's Pipes must speak the same protocol version as this orchestrator
        return f"dagster-pipes=={_pipes_version()}"

    def submit_task(self, job_name: str) -> dict[str, Any]:
        """The jobs/runs/submit task for one job (plain dict, so tests can assert the exact request)."""
        self._check()
        task: dict[str, Any] = {
            "task_key": f"pinterest_platform_{job_name}",
            "spark_python_task": {"python_file": self.entrypoint, "parameters": [job_name]},
        }
        if self.compute == "serverless":
            task["environment_key"] = ENVIRONMENT_KEY
            return task
        task["libraries"] = [{"pypi": {"package": self._pipes_requirement()}}, {"whl": self.wheel}]
        if self.compute == "existing_cluster":
            task["existing_cluster_id"] = self.existing_cluster_id
        else:
            cluster: dict[str, Any] = {"spark_version": self.spark_version, "node_type_id": self.node_type_id,
                                       "num_workers": self.num_workers,
                                       # Unity Catalog access (the volume with Pipes' files) needs a UC access mode
                                       "data_security_mode": "SINGLE_USER"}
            if self.instance_profile_arn:
                cluster["aws_attributes"] = {"instance_profile_arn": self.instance_profile_arn}
            task["new_cluster"] = cluster
        return task

    def submit_args(self) -> dict[str, Any]:
        """Run-level fields of runs/submit besides the task: serverless tasks name their environment here."""
        if self.compute != "serverless":
            return {}
        from databricks.sdk.service import jobs

        return {"environments": [jobs.JobEnvironment.from_dict({
            "environment_key": ENVIRONMENT_KEY,
            "spec": {"environment_version": self.serverless_environment,
                     "dependencies": [self._pipes_requirement(), self.wheel]},
        })]}

    def pipes_client(self):
        from dagster_databricks import PipesDatabricksClient
        from dagster_databricks.pipes import (
            PipesDatabricksServerlessClient,
            PipesUnityCatalogVolumesContextInjector,
            PipesUnityCatalogVolumesMessageReader,
        )

        client = self.workspace_client()
        if self.compute == "serverless":
            return PipesDatabricksServerlessClient(client=client, volume_path=self.volume,
                                                   poll_interval_seconds=self.poll_interval_seconds)
        return PipesDatabricksClient(
            client=client, poll_interval_seconds=self.poll_interval_seconds,
            context_injector=PipesUnityCatalogVolumesContextInjector(client=client, volume_path=self.volume),
            message_reader=PipesUnityCatalogVolumesMessageReader(client=client, volume_path=self.volume,
                                                                 interval=min(self.poll_interval_seconds, 5.0)),
        )

    def run_job(self, context, job_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from databricks.sdk.service import jobs

        task = jobs.SubmitTask.from_dict(self.submit_task(job_name))
        invocation = self.pipes_client().run(context=context, task=task, submit_args=self.submit_args(),
                                             extras={"job": job_name, "params": params})
        messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
        if not messages:
            raise RuntimeError(f"Databricks job {job_name} finished without reporting a result over Pipes")
        return messages[-1]
