"""Entry point on a Databricks job cluster: run one registered Spark job under Dagster Pipes.

Submitted by `DatabricksSparkResource` as a spark_python_task with the job name as its parameter; the
job's params arrive as Pipes extras and its result dict goes back as a Pipes custom message."""

from __future__ import annotations


def main() -> None:
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesDbfsContextLoader,
        PipesDbfsMessageWriter,
        PipesEnvVarParamsLoader,
        open_dagster_pipes,
    )
    from pyspark.sql import SparkSession

    from pinterest_platform.jobs import get_job

    # Pipes bootstraps a new job cluster through spark_env_vars, an existing cluster through task parameters
    params_loader = PipesCliArgsParamsLoader()
    if not params_loader.is_dagster_pipes_process():
        params_loader = PipesEnvVarParamsLoader()
    if not params_loader.is_dagster_pipes_process():
        raise SystemExit("databricks_entry.py must be launched by DatabricksSparkResource (Dagster Pipes): "
                         "no DAGSTER_PIPES_CONTEXT env var or --dagster-pipes-context argument")
    with open_dagster_pipes(context_loader=PipesDbfsContextLoader(), message_writer=PipesDbfsMessageWriter(),
                            params_loader=params_loader) as pipes:
        job_name = pipes.get_extra("job")
        params = pipes.get_extra("params")
        pipes.log.info(f"running {job_name} on Databricks")
        result = get_job(job_name)(SparkSession.builder.getOrCreate(), params)
        pipes.report_custom_message(result)


if __name__ == "__main__":
    main()
