"""Entry point on a Databricks job cluster: run one registered Spark job under Dagster Pipes.

Submitted by `DatabricksSparkResource` as a spark_python_task with the job name as its parameter; the
job's params arrive as Pipes extras and its result dict goes back as a Pipes custom message."""

from __future__ import annotations


def main() -> None:
    from dagster_pipes import PipesDbfsContextLoader, PipesDbfsMessageWriter, open_dagster_pipes
    from pyspark.sql import SparkSession

    from pinterest_platform.jobs import get_job

    with open_dagster_pipes(context_loader=PipesDbfsContextLoader(),
                            message_writer=PipesDbfsMessageWriter()) as pipes:
        job_name = pipes.get_extra("job")
        params = pipes.get_extra("params")
        pipes.log.info(f"running {job_name} on Databricks")
        result = get_job(job_name)(SparkSession.builder.getOrCreate(), params)
        pipes.report_custom_message(result)


if __name__ == "__main__":
    main()
