"""DatabricksSparkResource against a fake Databricks workspace (pinterest_platform_tests.fakes.databricks).

The fake checks the exact REST requests PipesDatabricksClient and databricks-sdk make, and runs the submitted
spark_python_task (our real entry point, under Dagster Pipes) in a subprocess on a fake cluster."""

import base64
import json
import re
import time
from importlib.metadata import version
from typing import Any

import dagster as dg
import pytest
from dagster_pipes import decode_param
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest, DatabricksError, NotFound, ResourceAlreadyExists
from databricks.sdk.service import files, jobs

from pinterest_platform.resources.spark import DatabricksSparkResource, SparkResource
from pinterest_platform_tests.fakes.databricks import TEST_JOBS, FakeDatabricksWorkspace

TOKEN = "t0k3n"
PIPES = f"dagster-pipes=={version('dagster-pipes')}"
ENTRY = "dbfs:/pinterest_platform/databricks_entry.py"
WHEEL = "dbfs:/pinterest_platform/wheels/pinterest_platform-0.1.0-py3-none-any.whl"
EXISTING_CLUSTER = "0101-000000-fakeabcd"
NEW_CLUSTER = {"spark_version": "16.4.x-scala2.12", "node_type_id": "m5d.large", "num_workers": 1}
TMP_DIR = re.compile(r"/tmp/[A-Za-z]{30}")


@pytest.fixture
def workspace():
    with FakeDatabricksWorkspace(token=TOKEN, extra_jobs=TEST_JOBS,
                                 clusters={EXISTING_CLUSTER: {**NEW_CLUSTER, "cluster_name": "shared"}}) as fake:
        fake.put_file(WHEEL, b"PK\x03\x04 not really a wheel")  # the cluster only checks that it was uploaded
        yield fake
    assert not fake.dbfs_root.exists()


def databricks(fake: FakeDatabricksWorkspace, **overrides: Any) -> DatabricksSparkResource:
    return DatabricksSparkResource(**{"host": fake.url, "token": TOKEN, "wheel": WHEEL,
                                      "poll_interval_seconds": 0.2, **overrides})


def materialize_job(resource: DatabricksSparkResource, job_name: str, params: dict[str, Any],
                    instance: dg.DagsterInstance | None = None):
    @dg.asset
    def remote_job(context: dg.AssetExecutionContext, spark: SparkResource):
        # under Pipes the asset must return typed results (a plain dict is refused), as our assets do
        return dg.MaterializeResult(value=spark.run_job(context, job_name, params))

    return dg.materialize([remote_job], resources={"spark": resource}, raise_on_error=False, instance=instance)


def step_error(result):
    [failure] = result.get_step_failure_events()
    return failure.step_failure_data.error


def full_message(error) -> str:
    parts = []
    while error is not None:
        parts.append(f"{error.cls_name}: {error.message}")
        error = error.cause
    return "\n".join(parts)


# ---- (a) the task dict ------------------------------------------------------------------------------------


def test_submit_task_on_a_new_job_cluster_with_the_wheel():
    resource = DatabricksSparkResource(host="https://example.cloud.databricks.com", token="x", wheel=WHEEL)
    task = resource.submit_task("clean_batch")
    assert task == {
        "task_key": "pinterest_platform_clean_batch",
        "spark_python_task": {"python_file": ENTRY, "parameters": ["clean_batch"]},
        "libraries": [{"pypi": {"package": PIPES}}, {"whl": WHEEL}],
        "new_cluster": NEW_CLUSTER,
    }
    # nothing is lost on the way through the SDK's typed SubmitTask
    assert jobs.SubmitTask.from_dict(task).as_dict() == task


def test_submit_task_on_an_existing_cluster_without_a_wheel():
    resource = DatabricksSparkResource(host="https://example.cloud.databricks.com", token="x",
                                       existing_cluster_id=EXISTING_CLUSTER, entrypoint="dbfs:/other/entry.py")
    task = resource.submit_task("analytics")
    assert task == {
        "task_key": "pinterest_platform_analytics",
        "spark_python_task": {"python_file": "dbfs:/other/entry.py", "parameters": ["analytics"]},
        "libraries": [{"pypi": {"package": PIPES}}],
        "existing_cluster_id": EXISTING_CLUSTER,
    }
    assert jobs.SubmitTask.from_dict(task).as_dict() == task


# ---- (b) end to end through the fake ----------------------------------------------------------------------


def test_run_job_on_a_new_cluster_returns_the_remote_result(workspace):
    result = materialize_job(databricks(workspace), "fake_echo", {"x": 1})
    assert result.success, full_message(step_error(result))

    [run_id] = workspace.run_ids()
    run = workspace.run_view(run_id)
    cluster_id = run["tasks"][0]["cluster_instance"]["cluster_id"]
    # the job ran on the cluster (got its SparkSession) and its result dict came back over Pipes
    assert result.output_for_node("remote_job") == {"echo": {"x": 1}, "rows": 3, "cluster_id": cluster_id}
    assert run["state"] == {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS", "state_message": "",
                            "user_cancelled_or_timedout": False}

    # the exact runs/submit request: our task, plus the Pipes bootstrap env vars on the new cluster
    [submit] = workspace.requests_to("POST", "/jobs/runs/submit")
    assert submit.path == "/api/2.2/jobs/runs/submit"
    env = submit.body["tasks"][0]["new_cluster"]["spark_env_vars"]
    assert submit.body == {"tasks": [{
        "task_key": "pinterest_platform_fake_echo",
        "spark_python_task": {"python_file": ENTRY, "parameters": ["fake_echo"]},
        "libraries": [{"pypi": {"package": PIPES}}, {"whl": WHEEL}],
        "new_cluster": {**NEW_CLUSTER, "spark_env_vars": {"DAGSTER_PIPES_CONTEXT": env["DAGSTER_PIPES_CONTEXT"],
                                                          "DAGSTER_PIPES_MESSAGES": env["DAGSTER_PIPES_MESSAGES"]}},
    }]}
    context_path = decode_param(env["DAGSTER_PIPES_CONTEXT"])["path"]
    messages = decode_param(env["DAGSTER_PIPES_MESSAGES"])
    assert re.fullmatch(TMP_DIR.pattern + "/context.json", context_path)
    assert messages == {"path": messages["path"], "include_stdio_in_messages": False}
    assert TMP_DIR.fullmatch(messages["path"])

    # the context (with our extras) went to DBFS before the run was submitted
    [put] = workspace.requests_to("POST", "/dbfs/put")
    assert put.body["path"] == context_path and put.body["overwrite"] is True
    context = json.loads(base64.b64decode(put.body["contents"]))
    assert context["extras"] == {"job": "fake_echo", "params": {"x": 1}}
    assert context["asset_keys"] == ["remote_job"]
    assert workspace.requests.index(put) < workspace.requests.index(submit)
    mkdirs = [r.body["path"] for r in workspace.requests_to("POST", "/dbfs/mkdirs")]
    deletes = [r.body for r in workspace.requests_to("POST", "/dbfs/delete")]
    assert sorted(mkdirs) == sorted([context_path.rsplit("/", 1)[0], messages["path"]])
    assert sorted(deletes, key=lambda b: b["path"]) == sorted(({"path": p, "recursive": True} for p in mkdirs),
                                                              key=lambda b: b["path"])
    reads = [r for r in workspace.requests_to("GET", "/dbfs/read") if r.status == 200]
    assert [r.query["path"] for r in reads] == [f"{messages['path']}/1.json"]
    assert [p.name for p in workspace.local_path("/tmp").iterdir()] == []  # Pipes cleaned up its temp dirs

    # the run was polled through its life cycle
    seen = [r.response["state"]["life_cycle_state"] for r in workspace.requests_to("GET", "/jobs/runs/get")]
    states = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert states[0] == "PENDING" and "RUNNING" in states and states[-1] == "TERMINATED"

    # every request carried the token, and nothing but chunk reads before the chunk existed was refused
    assert {r.headers["Authorization"] for r in workspace.requests} == {f"Bearer {TOKEN}"}
    assert {(r.path, r.status) for r in workspace.requests if r.status != 200} <= {("/api/2.0/dbfs/read", 404)}
    assert not workspace.requests_to("GET", "/clusters/get")


def test_run_job_on_an_existing_cluster_passes_pipes_params_as_task_parameters(workspace):
    resource = databricks(workspace, existing_cluster_id=EXISTING_CLUSTER, wheel=None)
    result = materialize_job(resource, "fake_echo", {"x": 2})
    assert result.success, full_message(step_error(result))
    assert result.output_for_node("remote_job") == {"echo": {"x": 2}, "rows": 3, "cluster_id": EXISTING_CLUSTER}

    [submit] = workspace.requests_to("POST", "/jobs/runs/submit")
    parameters = submit.body["tasks"][0]["spark_python_task"]["parameters"]
    assert submit.body == {"tasks": [{
        "task_key": "pinterest_platform_fake_echo",
        "spark_python_task": {"python_file": ENTRY, "parameters": parameters},
        "libraries": [{"pypi": {"package": PIPES}}],
        "existing_cluster_id": EXISTING_CLUSTER,
    }]}
    assert [parameters[0], parameters[1], parameters[3]] == ["fake_echo", "--dagster-pipes-context",
                                                             "--dagster-pipes-messages"]
    assert len(parameters) == 5
    assert re.fullmatch(TMP_DIR.pattern + "/context.json", decode_param(parameters[2])["path"])
    assert TMP_DIR.fullmatch(decode_param(parameters[4])["path"])
    # Pipes looks the cluster up (for log delivery) before submitting
    [cluster_get] = workspace.requests_to("GET", "/clusters/get")
    assert cluster_get.query == {"cluster_id": EXISTING_CLUSTER} and cluster_get.status == 200


# ---- (c) a failing remote job -----------------------------------------------------------------------------


def test_failing_remote_job_fails_the_asset_with_the_remote_error(workspace):
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_job(databricks(workspace), "fake_fail", {"x": 1}, instance=instance)
        assert not result.success
        message = full_message(step_error(result))
        assert "Error running Databricks job" in message
        assert "Task pinterest_platform_fake_fail failed" in message

        # the remote exception itself reaches the run's event log over Pipes (an engine event)
        pipes_errors = [e.dagster_event.event_specific_data.error for e in instance.all_logs(result.run_id)
                        if e.dagster_event is not None and e.dagster_event.is_engine_event
                        and "pipes closed with exception" in (e.dagster_event.message or "")]
    assert len(pipes_errors) == 1
    assert pipes_errors[0].cls_name == "ValueError"
    assert pipes_errors[0].message.strip() == "ValueError: fake_fail refuses params {'x': 1}"

    [run_id] = workspace.run_ids()
    run = workspace.run_view(run_id)
    assert run["state"]["result_state"] == "FAILED"
    output = WorkspaceClient(host=workspace.url, token=TOKEN).jobs.get_run_output(run["tasks"][0]["run_id"])
    assert output.error == "ValueError: fake_fail refuses params {'x': 1}"
    assert workspace.task_output(run_id)["pinterest_platform_fake_fail"]["exit_code"] != 0


# ---- (d) a wrong token ------------------------------------------------------------------------------------


def test_wrong_token_is_a_clear_authentication_failure(workspace):
    result = materialize_job(databricks(workspace, token="wrong"), "fake_echo", {"x": 1})
    assert not result.success
    message = full_message(step_error(result))
    assert "Unauthenticated" in message and "Invalid access token" in message
    assert workspace.run_ids() == []
    assert workspace.requests and {(r.status, r.headers["Authorization"]) for r in workspace.requests} == {
        (401, "Bearer wrong")}


# ---- the fake itself --------------------------------------------------------------------------------------


def test_fake_dbfs_and_jobs_api_semantics(workspace):
    client = WorkspaceClient(host=workspace.url, token=TOKEN)
    dbfs = files.DbfsAPI(client.api_client)
    dbfs.mkdirs("/data/a")
    dbfs.put("dbfs:/data/a/x.txt", contents=base64.b64encode(b"hello").decode())
    with pytest.raises(ResourceAlreadyExists):
        dbfs.put("/data/a/x.txt", contents=base64.b64encode(b"again").decode())
    handle = dbfs.create("/data/b.bin", overwrite=True).handle
    dbfs.add_block(handle, base64.b64encode(b"12").decode())
    dbfs.add_block(handle, base64.b64encode(b"34").decode())
    dbfs.close(handle)
    assert base64.b64decode(dbfs.read("/data/b.bin", offset=1, length=2).data) == b"23"
    assert dbfs.get_status("/data/a/x.txt").file_size == 5
    assert [(f.path, f.is_dir) for f in dbfs.list("/data")] == [("/data/a", True), ("/data/b.bin", False)]
    with pytest.raises(NotFound):  # an OSError: what Pipes' message reader expects for a missing chunk
        dbfs.read("/data/missing.json")
    with pytest.raises(BadRequest, match="not empty"):
        dbfs.delete("/data")
    dbfs.delete("/data", recursive=True)
    with pytest.raises(NotFound):
        dbfs.get_status("/data")

    bad_tasks = [
        {"task_key": "t", "spark_python_task": {"python_file": ENTRY}},  # no compute
        {"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "new_cluster": NEW_CLUSTER,
         "existing_cluster_id": EXISTING_CLUSTER},  # two computes
        {"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "existing_cluster_id": "nope"},
        {"task_key": "t", "notebook_task": {"notebook_path": "/x"}, "new_cluster": NEW_CLUSTER},
        {"task_key": "t", "spark_python_task": {"python_file": ENTRY},
         "new_cluster": {"spark_version": "16.4.x-scala2.12"}},  # no node type
    ]
    for task in bad_tasks:
        with pytest.raises(BadRequest):
            client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)])
    assert workspace.run_ids() == []
    with pytest.raises(DatabricksError, match="Run 424242 does not exist"):
        client.jobs.get_run(424242)


def wait_for_run(client: WorkspaceClient, run_id: int, timeout: float = 30.0) -> jobs.Run:
    deadline = time.monotonic() + timeout
    while True:
        run = client.jobs.get_run(run_id)
        if run.state.life_cycle_state in (jobs.RunLifeCycleState.TERMINATED, jobs.RunLifeCycleState.INTERNAL_ERROR):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.state.life_cycle_state}"
        time.sleep(0.1)


def test_fake_cluster_checks_libraries_and_entry_point_refuses_to_run_outside_pipes(workspace):
    client = WorkspaceClient(host=workspace.url, token=TOKEN)
    task = {"task_key": "t", "spark_python_task": {"python_file": ENTRY, "parameters": ["fake_echo"]},
            "new_cluster": NEW_CLUSTER}
    missing_wheel = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {**task, "libraries": [{"whl": "dbfs:/nowhere/missing.whl"}]})]).bind()["run_id"]
    unknown_package = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {**task, "libraries": [{"pypi": {"package": "surely-not-installed-pkg==1.0"}}]})]).bind()["run_id"]
    no_pipes = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {**task, "libraries": [{"whl": WHEEL}, {"pypi": {"package": PIPES}}]})]).bind()["run_id"]

    for run_id, missing in [(missing_wheel, "dbfs:/nowhere/missing.whl"), (unknown_package, "surely-not-installed")]:
        run = wait_for_run(client, run_id)
        assert run.state.life_cycle_state == jobs.RunLifeCycleState.INTERNAL_ERROR
        assert run.state.result_state == jobs.RunResultState.FAILED
        assert "Library installation failed" in run.state.state_message and missing in run.state.state_message
        assert workspace.task_output(run_id)["t"]["exit_code"] is None  # never started

    run = wait_for_run(client, no_pipes)
    assert run.state.result_state == jobs.RunResultState.FAILED
    output = client.jobs.get_run_output(run.tasks[0].run_id)
    assert "must be launched by DatabricksSparkResource" in output.error


def test_fake_cluster_runs_an_uploaded_script_and_cancel_kills_it(workspace):
    client = WorkspaceClient(host=workspace.url, token=TOKEN)
    workspace.put_file("dbfs:/scripts/sleep.py", b"import sys, time\nprint('started', sys.argv[1:], flush=True)\n"
                                                  b"time.sleep(60)\n")
    run_id = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {"task_key": "sleeper", "new_cluster": NEW_CLUSTER,
         "spark_python_task": {"python_file": "dbfs:/scripts/sleep.py", "parameters": ["a", "b"]}})]).bind()["run_id"]
    deadline = time.monotonic() + 20
    while not workspace.task_output(run_id)["sleeper"]["stdout"]:
        assert time.monotonic() < deadline, "the script never started"
        time.sleep(0.1)
    assert client.jobs.get_run(run_id).state.life_cycle_state == jobs.RunLifeCycleState.RUNNING
    client.jobs.cancel_run(run_id)
    run = wait_for_run(client, run_id, timeout=10)
    assert run.state.result_state == jobs.RunResultState.CANCELED and run.state.user_cancelled_or_timedout
    assert workspace.task_output(run_id)["sleeper"]["stdout"] == "started ['a', 'b']\n"
