"""Environment -> typed settings: the one place that reads the platform's environment variables.

Every variable is listed in `.env.example`. Local defaults need no cloud account: state, the source
database and the lake all live under `PINTEREST_STATE_DIR` (default `<project>/.pinterest`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local", "aws")


def project_root() -> Path:
    """The source checkout when running from one (so every command agrees on paths), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    env: str
    state_dir: Path
    topic_prefix: str
    lake_root: str
    source_db_url: str
    kafka_bootstrap_servers: str | None  # None: use the embedded broker from the stack state
    aws_region: str
    aws_endpoint_url: str | None  # None: real AWS, or (local profile) moto from the stack state
    gateway_url: str | None
    gateway_api_key: str | None
    msk_auth: str  # iam | tls
    msk_ssl_ca_location: str | None
    msk_ssl_certificate_location: str | None
    msk_ssl_key_location: str | None
    databricks_cluster_id: str | None
    databricks_compute: str  # job_cluster | existing_cluster | serverless
    databricks_overrides: dict  # DatabricksSparkResource fields set by the environment (runtime, nodes, ...)
    spark_master: str | None  # None: the stack's Spark cluster when it runs, else in-process local[2]
    raw_flush_size: int  # records per raw topic file at most (Confluent's flush.size)
    partitions_start: str  # the first day of the daily partitions (YYYY-MM-DD)

    @property
    def lake_is_s3(self) -> bool:
        return self.lake_root.startswith(("s3://", "s3a://"))

    @property
    def lake_bucket(self) -> str | None:
        """The lake's bucket when the lake is on S3."""
        if not self.lake_is_s3:
            return None
        return self.lake_root.split("://", 1)[1].split("/", 1)[0]

    @property
    def stack_dir(self) -> Path:
        return self.state_dir / "stack"

    @property
    def dagster_home(self) -> Path:
        return Path(_env("DAGSTER_HOME", str(self.state_dir / "dagster_home")))

    def stack_endpoints(self) -> dict:
        """Endpoints written by `pinterest-platform stack up` ({} when the stack never ran)."""
        path = self.stack_dir / "state.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text()).get("endpoints", {})

    def s3_endpoint_url(self) -> str | None:
        """Where S3 (and Kinesis) requests go: an explicit AWS_ENDPOINT_URL wins; in the local profile the
        stack's moto; in the aws profile None, i.e. real AWS. Read at call time, so a stack started after
        the definitions loaded is still found."""
        if self.aws_endpoint_url:
            return self.aws_endpoint_url
        if self.env == "local":
            return self.stack_endpoints().get("aws_endpoint_url")
        return None


# DatabricksSparkResource field -> (environment variable, type); unset ones keep the resource's defaults
_DATABRICKS_FIELDS = {
    "spark_version": ("DATABRICKS_SPARK_VERSION", str),
    "node_type_id": ("DATABRICKS_NODE_TYPE_ID", str),
    "num_workers": ("DATABRICKS_NUM_WORKERS", int),
    "instance_profile_arn": ("DATABRICKS_INSTANCE_PROFILE_ARN", str),
    "serverless_environment": ("DATABRICKS_SERVERLESS_ENVIRONMENT", str),
}


def load_settings() -> Settings:
    env = _env("PINTEREST_ENV", "local")
    if env not in PROFILES:
        raise ValueError(f"PINTEREST_ENV={env!r}: expected one of {', '.join(PROFILES)}")
    state_dir = Path(_env("PINTEREST_STATE_DIR", str(project_root() / ".pinterest"))).resolve()
    return Settings(
        env=env,
        state_dir=state_dir,
        topic_prefix=_env("PINTEREST_TOPIC_PREFIX", "pinterest"),
        lake_root=_env("PINTEREST_LAKE_ROOT", str(state_dir / "lake")),
        source_db_url=_env("PINTEREST_SOURCE_DB_URL", f"sqlite:///{state_dir / 'source.db'}"),
        kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS"),
        aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
        aws_endpoint_url=_env("AWS_ENDPOINT_URL"),
        gateway_url=_env("PINTEREST_GATEWAY_URL"),
        gateway_api_key=_env("PINTEREST_API_KEY"),
        msk_auth=_env("MSK_AUTH", "iam"),
        msk_ssl_ca_location=_env("MSK_SSL_CA_LOCATION"),
        msk_ssl_certificate_location=_env("MSK_SSL_CERTIFICATE_LOCATION"),
        msk_ssl_key_location=_env("MSK_SSL_KEY_LOCATION"),
        databricks_cluster_id=_env("DATABRICKS_CLUSTER_ID"),
        databricks_compute=_env("DATABRICKS_COMPUTE",
                                "existing_cluster" if _env("DATABRICKS_CLUSTER_ID") else "job_cluster"),
        databricks_overrides={field: cast(value) for field, (name, cast) in _DATABRICKS_FIELDS.items()
                              if (value := _env(name)) is not None},
        spark_master=_env("PINTEREST_SPARK_MASTER"),
        raw_flush_size=int(_env("PINTEREST_RAW_FLUSH_SIZE", "10000")),
        partitions_start=_env("PINTEREST_PARTITIONS_START", "2020-01-01"),
    )
