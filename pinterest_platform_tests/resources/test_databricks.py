"""DatabricksSparkResource against a fake Databricks workspace (pinterest_platform_tests.fakes.databricks).

The fake checks the exact REST requests PipesDatabricksClient, PipesDatabricksServerlessClient and
databricks-sdk make, and runs the submitted spark_python_task (our real entry point, under Dagster Pipes) in
a subprocess on a stub cluster. test_databricks_e2e.py runs the real jobs on real Spark through it."""

import base64
import json
import re
import time
from importlib.metadata import version
from typing import Any
from urllib.parse import unquote

import dagster as dg
import pytest
from dagster_pipes import decode_param
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest, DatabricksError, NotFound, ResourceAlreadyExists
from databricks.sdk.service import files, jobs

from pinterest_platform.resources.spark import DatabricksConfigError, DatabricksSparkResource, SparkResource
from pinterest_platform_tests.fakes.databricks import TEST_JOBS, FakeDatabricksWorkspace

TOKEN = "t0k3n"
PIPES = f"dagster-pipes=={version('dagster-pipes')}"
VOLUME = "/Volumes/main/pinterest/platform"
ARTIFACTS = f"{VOLUME}/artifacts/pinterest_platform-0.1.0-0123456789ab"
ENTRY = f"{ARTIFACTS}/databricks_entry.py"
WHEEL = f"{ARTIFACTS}/pinterest_platform-0.1.0-py3-none-any.whl"
EXISTING_CLUSTER = "0101-000000-fakeabcd"
NEW_CLUSTER = {"spark_version": "17.3.x-scala2.13", "node_type_id": "m5d.large", "num_workers": 1,
               "data_security_mode": "SINGLE_USER"}
TMP_DIR = re.compile(re.escape(VOLUME) + r"/tmp/[A-Za-z]{30}")


@pytest.fixture
def workspace():
    with FakeDatabricksWorkspace(token=TOKEN, extra_jobs=TEST_JOBS, volumes=[VOLUME],
                                 clusters={EXISTING_CLUSTER: {**NEW_CLUSTER, "cluster_name": "shared"}}) as fake:
        fake.put_file(WHEEL, b"PK\x03\x04 not really a wheel")  # a stub cluster only checks that it was uploaded
        yield fake
    assert not fake.volumes_root.exists()


def databricks(fake: FakeDatabricksWorkspace, **overrides: Any) -> DatabricksSparkResource:
    return DatabricksSparkResource(**{"host": fake.url, "token": TOKEN, "volume": VOLUME, "entrypoint": ENTRY,
                                      "wheel": WHEEL, "poll_interval_seconds": 0.2, **overrides})


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


def volume_path(request) -> str:
    """The /Volumes/... path of a Files API request (/api/2.0/fs/files/Volumes/...)."""
    _, _, rest = request.path.partition("/api/2.0/fs/")
    return unquote("/" + rest.split("/", 1)[1])


# ---- (a) the task dict ------------------------------------------------------------------------------------


def test_submit_task_on_a_new_job_cluster_runs_the_lts_runtime_with_the_wheel():
    resource = DatabricksSparkResource(host="https://example.cloud.databricks.com", token="x", volume=VOLUME,
                                       entrypoint=ENTRY, wheel=WHEEL)
    task = resource.submit_task("clean_batch")
    assert task == {
        "task_key": "pinterest_platform_clean_batch",
        "spark_python_task": {"python_file": ENTRY, "parameters": ["clean_batch"]},
        "libraries": [{"pypi": {"package": PIPES}}, {"whl": WHEEL}],
        "new_cluster": NEW_CLUSTER,
    }
    assert resource.submit_args() == {}
    # nothing is lost on the way through the SDK's typed SubmitTask
    assert jobs.SubmitTask.from_dict(task).as_dict() == task


def test_submit_task_on_an_existing_cluster_and_with_an_instance_profile():
    resource = DatabricksSparkResource(host="https://example.cloud.databricks.com", token="x", volume=VOLUME,
                                       entrypoint=ENTRY, wheel=WHEEL, compute="existing_cluster",
                                       existing_cluster_id=EXISTING_CLUSTER)
    assert resource.submit_task("analytics") == {
        "task_key": "pinterest_platform_analytics",
        "spark_python_task": {"python_file": ENTRY, "parameters": ["analytics"]},
        "libraries": [{"pypi": {"package": PIPES}}, {"whl": WHEEL}],
        "existing_cluster_id": EXISTING_CLUSTER,
    }
    arn = "arn:aws:iam::123456789012:instance-profile/pinterest-lake"
    profiled = DatabricksSparkResource(host="https://x", token="x", volume=VOLUME, entrypoint=ENTRY, wheel=WHEEL,
                                       instance_profile_arn=arn, spark_version="18.0.x-scala2.13")
    cluster = profiled.submit_task("analytics")["new_cluster"]
    assert cluster["aws_attributes"] == {"instance_profile_arn": arn} and cluster["spark_version"] == "18.0.x-scala2.13"


def test_serverless_task_names_an_environment_with_the_wheel_and_pipes():
    resource = DatabricksSparkResource(host="https://x", token="x", volume=VOLUME, entrypoint=ENTRY, wheel=WHEEL,
                                       compute="serverless")
    task = resource.submit_task("stream")
    assert task == {"task_key": "pinterest_platform_stream", "environment_key": "pinterest_platform",
                    "spark_python_task": {"python_file": ENTRY, "parameters": ["stream"]}}
    [environment] = resource.submit_args()["environments"]
    assert environment.as_dict() == {"environment_key": "pinterest_platform",
                                     "spec": {"environment_version": "4", "dependencies": [PIPES, WHEEL]}}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"compute": "gpu"}, "DATABRICKS_COMPUTE='gpu'"),
    ({"compute": "existing_cluster"}, "needs DATABRICKS_CLUSTER_ID"),
    ({"volume": "dbfs:/tmp"}, "DATABRICKS_VOLUME='dbfs:/tmp'"),
    ({"volume": "/Volumes/main"}, "expected /Volumes/<catalog>/<schema>/<volume>"),
    ({"entrypoint": "dbfs:/pinterest_platform/databricks_entry.py"}, "DBFS root is disabled"),
    ({"wheel": "s3://bucket/x.whl"}, "DATABRICKS_WHEEL='s3://bucket/x.whl'"),
])
def test_wrong_settings_are_refused_before_anything_is_submitted(overrides, message):
    resource = DatabricksSparkResource(**{"host": "https://x", "token": "x", "volume": VOLUME, "entrypoint": ENTRY,
                                          "wheel": WHEEL, **overrides})
    with pytest.raises(DatabricksConfigError, match=re.escape(message)):
        resource.submit_task("analytics")


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
    tags = submit.body["tasks"][0].get("tags")
    assert submit.body == {"tasks": [{
        "task_key": "pinterest_platform_fake_echo",
        "spark_python_task": {"python_file": ENTRY, "parameters": ["fake_echo"]},
        "libraries": [{"pypi": {"package": PIPES}}, {"whl": WHEEL}],
        "new_cluster": {**NEW_CLUSTER, "spark_env_vars": {"DAGSTER_PIPES_CONTEXT": env["DAGSTER_PIPES_CONTEXT"],
                                                          "DAGSTER_PIPES_MESSAGES": env["DAGSTER_PIPES_MESSAGES"]}},
        **({"tags": tags} if tags is not None else {}),
    }]}
    context_path = decode_param(env["DAGSTER_PIPES_CONTEXT"])["path"]
    messages = decode_param(env["DAGSTER_PIPES_MESSAGES"])
    assert re.fullmatch(TMP_DIR.pattern + "/context.json", context_path)
    assert messages == {"path": messages["path"], "include_stdio_in_messages": True}
    assert TMP_DIR.fullmatch(messages["path"])

    # Pipes' files live in the Unity Catalog volume (Files API), never on DBFS
    assert not [r for r in workspace.requests if "/dbfs/" in r.path]
    [put] = [r for r in workspace.requests_to("PUT", "") if r.path.startswith("/api/2.0/fs/files/")]
    assert volume_path(put) == context_path
    assert workspace.requests.index(put) < workspace.requests.index(submit)
    context = json.loads(put.raw)
    assert context["extras"] == {"job": "fake_echo", "params": {"x": 1}}
    assert context["asset_keys"] == ["remote_job"]
    made = sorted(volume_path(r) for r in workspace.requests_to("PUT", "") if "/fs/directories/" in r.path)
    assert made == sorted([context_path.rsplit("/", 1)[0], messages["path"]])
    removed = sorted(volume_path(r) for r in workspace.requests_to("DELETE", "") if "/fs/directories/" in r.path)
    assert removed == made
    assert [p.name for p in (workspace.volumes_root / "main/pinterest/platform/tmp").iterdir()] == []

    # the run was polled through its life cycle
    seen = [r.response["state"]["life_cycle_state"] for r in workspace.requests_to("GET", "/jobs/runs/get")]
    states = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert states[0] == "PENDING" and "RUNNING" in states and states[-1] == "TERMINATED"

    # every request carried the token, and nothing but reads of message chunks not yet written was refused
    assert {r.headers["Authorization"] for r in workspace.requests} == {f"Bearer {TOKEN}"}
    refused = {(r.method, r.path.split("/fs/")[0], r.status) for r in workspace.requests if r.status >= 300}
    assert refused <= {("GET", "/api/2.0", 404), ("HEAD", "/api/2.0", 404)}


def test_run_job_on_an_existing_cluster_passes_pipes_params_as_task_parameters(workspace):
    resource = databricks(workspace, compute="existing_cluster", existing_cluster_id=EXISTING_CLUSTER)
    result = materialize_job(resource, "fake_echo", {"x": 2})
    assert result.success, full_message(step_error(result))
    assert result.output_for_node("remote_job") == {"echo": {"x": 2}, "rows": 3, "cluster_id": EXISTING_CLUSTER}

    [submit] = workspace.requests_to("POST", "/jobs/runs/submit")
    parameters = submit.body["tasks"][0]["spark_python_task"]["parameters"]
    assert submit.body["tasks"][0]["existing_cluster_id"] == EXISTING_CLUSTER
    assert "new_cluster" not in submit.body["tasks"][0]
    assert [parameters[0], parameters[1], parameters[3]] == ["fake_echo", "--dagster-pipes-context",
                                                             "--dagster-pipes-messages"]
    assert len(parameters) == 5
    assert re.fullmatch(TMP_DIR.pattern + "/context.json", decode_param(parameters[2])["path"])
    assert TMP_DIR.fullmatch(decode_param(parameters[4])["path"])


def test_run_job_on_serverless_sends_the_environment_and_bootstraps_through_parameters(workspace):
    result = materialize_job(databricks(workspace, compute="serverless"), "fake_echo", {"x": 3})
    assert result.success, full_message(step_error(result))
    [run_id] = workspace.run_ids()
    cluster_id = workspace.run_view(run_id)["tasks"][0]["cluster_instance"]["cluster_id"]
    assert result.output_for_node("remote_job") == {"echo": {"x": 3}, "rows": 3, "cluster_id": cluster_id}
    [submit] = workspace.requests_to("POST", "/jobs/runs/submit")
    [task] = submit.body["tasks"]
    assert submit.body["environments"] == [{"environment_key": "pinterest_platform",
                                            "spec": {"environment_version": "4", "dependencies": [PIPES, WHEEL]}}]
    assert task["environment_key"] == "pinterest_platform"
    assert not {"libraries", "new_cluster", "existing_cluster_id"} & set(task)
    assert task["spark_python_task"]["parameters"][:2] == ["fake_echo", "--dagster-pipes-context"]


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
         "new_cluster": {"spark_version": "17.3.x-scala2.13"}},  # no node type
        {"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "environment_key": "nope"},  # no such env
    ]
    for task in bad_tasks:
        with pytest.raises(BadRequest):
            client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)])
    # serverless tasks take their libraries from the environment, as the service insists
    environment = jobs.JobEnvironment.from_dict({"environment_key": "e", "spec": {"environment_version": "4"}})
    with pytest.raises(BadRequest, match="Libraries field is not supported for serverless"):
        client.jobs.submit(environments=[environment], tasks=[jobs.SubmitTask.from_dict(
            {"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "environment_key": "e",
             "libraries": [{"whl": WHEEL}]})])
    # a body the SDK's models do not describe is refused (as the service refuses unknown fields)
    with pytest.raises(BadRequest, match="unknown field"):
        client.api_client.do("POST", "/api/2.2/jobs/runs/submit", body={
            "tasks": [{"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "new_cluster": NEW_CLUSTER}],
            "cluster_spec": {}})
    with pytest.raises(BadRequest, match="does not match the SubmitTask model"):
        client.api_client.do("POST", "/api/2.2/jobs/runs/submit", body={
            "tasks": [{"task_key": "t", "spark_python_task": {"python_file": ENTRY}, "new_cluster": NEW_CLUSTER,
                       "python_file": "misplaced.py"}]})
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
        {**task, "libraries": [{"whl": "/Volumes/main/pinterest/platform/nowhere/missing.whl"}]})]).bind()["run_id"]
    unknown_package = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {**task, "libraries": [{"pypi": {"package": "surely-not-installed-pkg==1.0"}}]})]).bind()["run_id"]
    no_pipes = client.jobs.submit(tasks=[jobs.SubmitTask.from_dict(
        {**task, "libraries": [{"whl": WHEEL}, {"pypi": {"package": PIPES}}]})]).bind()["run_id"]

    for run_id, missing in [(missing_wheel, "/Volumes/main/pinterest/platform/nowhere/missing.whl"),
                            (unknown_package, "surely-not-installed")]:
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
