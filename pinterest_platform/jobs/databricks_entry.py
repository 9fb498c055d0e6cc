"""Entry point on Databricks: run one registered Spark job under Dagster Pipes.

`pinterest-platform databricks deploy` uploads this file beside the project wheel; `DatabricksSparkResource`
submits it as a spark_python_task on a job cluster, an existing cluster or serverless. The job's name and
params arrive as Pipes extras, its result dict goes back as a Pipes custom message. Pipes' context and
messages are files in a Unity Catalog volume (the resource's `volume`), read here through the /Volumes
mount that every Unity Catalog compute has."""

from __future__ import annotations


def main() -> None:
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesEnvVarParamsLoader,
        PipesUnityCatalogVolumesContextLoader,
        PipesUnityCatalogVolumesMessageWriter,
        open_dagster_pipes,
    )
    from pyspark.sql import SparkSession

    from pinterest_platform.jobs import get_job

    # Pipes bootstraps a new job cluster through spark_env_vars, existing clusters and serverless through
    # task parameters
    params_loader = PipesCliArgsParamsLoader()
    if not params_loader.is_dagster_pipes_process():
        params_loader = PipesEnvVarParamsLoader()
    if not params_loader.is_dagster_pipes_process():
        raise SystemExit("databricks_entry.py must be launched by DatabricksSparkResource (Dagster Pipes): "
                         "no DAGSTER_PIPES_CONTEXT env var or --dagster-pipes-context argument")
    with open_dagster_pipes(context_loader=PipesUnityCatalogVolumesContextLoader(),
                            message_writer=PipesUnityCatalogVolumesMessageWriter(),
                            params_loader=params_loader) as pipes:
        job_name = pipes.get_extra("job")
        params = pipes.get_extra("params")
        pipes.log.info(f"running {job_name} on Databricks")
        result = get_job(job_name)(SparkSession.builder.getOrCreate(), params)
        pipes.report_custom_message(result)


if __name__ == "__main__":
    main()
