"""One batch at a time: the instance's dagster.yaml limits runs tagged pinterest/lane=batch to one, and a CLI
batch run enters `batch_lane`, which refuses while a batch run is queued or in progress (or another CLI process
holds the lane's lock) and does not let a dead CLI run block forever."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

from pinterest_platform import instance as instance_module
from pinterest_platform.instance import DEFAULT_DAGSTER_YAML, PREVIOUS_DEFAULT_DAGSTER_YAMLS, ensure_dagster_yaml
from pinterest_platform.run_guard import (
    BATCH_LANE_TAG,
    CLI_PID_TAG,
    LOCK_FILE,
    BatchRunInProgress,
    batch_lane,
    batch_run_in_progress,
    refuse_message,
)

LANE = {BATCH_LANE_TAG[0]: BATCH_LANE_TAG[1]}


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("run_guard") / "dagster_home"
    ensure_dagster_yaml(home)
    return home


@pytest.fixture(scope="module")
def shared_instance(shared_home):
    """One instance for the module (creating its SQLite storage takes seconds); each test starts with no runs."""
    instance = dg.DagsterInstance.from_config(str(shared_home))
    try:
        yield instance
    finally:
        instance.dispose()


@pytest.fixture
def home(shared_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(shared_home))
    return shared_home


@pytest.fixture
def instance(shared_instance, home):
    shared_instance.wipe()
    assert shared_instance.get_runs() == []
    yield shared_instance
    shared_instance.wipe()


# the event that moves a run into each status, as Dagster reports it
STATUS_EVENT = {
    dg.DagsterRunStatus.QUEUED: DagsterEventType.RUN_ENQUEUED,
    dg.DagsterRunStatus.STARTING: DagsterEventType.RUN_STARTING,
    dg.DagsterRunStatus.STARTED: DagsterEventType.RUN_START,
    dg.DagsterRunStatus.CANCELING: DagsterEventType.RUN_CANCELING,
    dg.DagsterRunStatus.SUCCESS: DagsterEventType.RUN_SUCCESS,
    dg.DagsterRunStatus.FAILURE: DagsterEventType.RUN_FAILURE,
    dg.DagsterRunStatus.CANCELED: DagsterEventType.RUN_CANCELED,
}


def add_run(instance, status, tags=None, job_name="batch_job"):
    """A run record as the daemon, the UI or the CLI would leave it: written NOT_STARTED, then moved to
    `status` by the run event Dagster reports (so a started run has its start time)."""
    # where the job lives, as a run launched from the UI or the daemon records it (queued runs must say)
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("pinterest_platform"), "__repository__")
    run = instance.add_run(dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()),
                                         status=dg.DagsterRunStatus.NOT_STARTED, tags={**LANE, **(tags or {})},
                                         remote_job_origin=origin.get_job_origin(job_name)))
    if status != dg.DagsterRunStatus.NOT_STARTED:
        instance.report_dagster_event(DagsterEvent(event_type_value=STATUS_EVENT[status].value,
                                                   job_name=job_name), run_id=run.run_id)
    run = instance.get_run_by_id(run.run_id)
    assert run.status == status
    return run


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- dagster.yaml ------------------------------------------------------------------------------------------


def test_the_written_dagster_yaml_limits_batch_runs_to_one_in_the_run_queue(home, instance):
    assert (home / "dagster.yaml").read_text() == DEFAULT_DAGSTER_YAML
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None  # the queued run coordinator, which the daemon of `make dev` runs
    assert queue.tag_concurrency_limits == [{"key": "pinterest/lane", "value": "batch", "limit": 1}]
    assert queue.max_concurrent_runs == 4


def test_an_unedited_previous_default_is_upgraded_in_place(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PREVIOUS_DEFAULT_DAGSTER_YAMLS[-1])
    path, written = ensure_dagster_yaml(home)
    assert written
    assert path.read_text() == DEFAULT_DAGSTER_YAML
    assert [p.name for p in home.iterdir() if p.name.startswith(".dagster.yaml")] == []  # no temp file left
    assert ensure_dagster_yaml(home) == (path, False)  # once


def test_a_previous_default_changed_by_one_character_is_left_alone(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    edited = PREVIOUS_DEFAULT_DAGSTER_YAMLS[-1].replace("max_concurrent_runs: 4", "max_concurrent_runs: 5")
    (home / "dagster.yaml").write_text(edited)
    assert ensure_dagster_yaml(home) == (home / "dagster.yaml", False)
    assert (home / "dagster.yaml").read_text() == edited


def test_make_dev_helper_says_it_upgraded(tmp_path):
    home = tmp_path / "dev_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PREVIOUS_DEFAULT_DAGSTER_YAMLS[-1])
    env = {**os.environ, "DAGSTER_HOME": str(home), "PINTEREST_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pinterest_platform.instance"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "upgraded" in done.stdout
    assert (home / "dagster.yaml").read_text() == DEFAULT_DAGSTER_YAML


def test_the_current_default_is_not_listed_as_a_previous_one():
    assert DEFAULT_DAGSTER_YAML not in PREVIOUS_DEFAULT_DAGSTER_YAMLS
    assert instance_module.PREVIOUS_DEFAULT_DAGSTER_YAMLS  # the text before the batch limit


# --- runs in the instance -------------------------------------------------------------------------------------


def test_a_started_batch_run_from_the_daemon_or_ui_refuses_with_its_id_and_what_to_do(instance):
    run = add_run(instance, dg.DagsterRunStatus.STARTED)
    assert batch_run_in_progress(instance).run_id == run.run_id
    with pytest.raises(BatchRunInProgress) as refused:
        with batch_lane(instance):
            pytest.fail("entered the lane while a batch run is in progress")
    message = refused.value.message
    assert run.run_id in message
    assert "STARTED" in message and "started 20" in message
    assert f"http://127.0.0.1:3000/runs/{run.run_id}" in message
    assert "wait" in message.lower() and "cancel" in message.lower()
    assert refused.value.run.run_id == run.run_id
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # not touched


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                    dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING])
def test_any_unfinished_batch_run_refuses(instance, status):
    run = add_run(instance, status)
    with pytest.raises(BatchRunInProgress, match=run.run_id):
        with batch_lane(instance):
            pass


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                    dg.DagsterRunStatus.CANCELED])
def test_a_finished_batch_run_does_not_refuse(instance, status):
    add_run(instance, status)
    assert batch_run_in_progress(instance) is None
    with batch_lane(instance) as lane:
        assert lane.reaped == ()


def test_a_run_of_another_lane_does_not_refuse(instance):
    instance.add_run(dg.DagsterRun(job_name="streaming_job", run_id=str(uuid.uuid4()),
                                   status=dg.DagsterRunStatus.STARTED, tags={"pinterest/lane": "stream"}))
    with batch_lane(instance):
        pass


def test_a_cli_run_whose_process_is_gone_does_not_block_and_is_marked_failed(instance):
    run = add_run(instance, dg.DagsterRunStatus.STARTED, tags={CLI_PID_TAG: str(dead_pid())})
    assert batch_run_in_progress(instance) is None
    with batch_lane(instance) as lane:
        assert lane.reaped == (run.run_id,)
    # failed, so the run queue (which counts started runs against the tag's limit) no longer counts it
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    with batch_lane(instance) as lane:
        assert lane.reaped == ()


def test_a_cli_run_whose_process_is_alive_blocks(instance):
    run = add_run(instance, dg.DagsterRunStatus.STARTED, tags={CLI_PID_TAG: str(os.getpid())})
    with pytest.raises(BatchRunInProgress) as refused:
        with batch_lane(instance):
            pass
    assert run.run_id in refused.value.message and f"pid {os.getpid()}" in refused.value.message


def test_the_lane_tags_a_run_so_it_is_recognised_and_a_finished_one_frees_the_lane(instance):
    @dg.op
    def step():
        return 1

    @dg.job(tags=LANE)
    def batch_job():
        step()

    with batch_lane(instance) as lane:
        assert lane.tags == {**LANE, CLI_PID_TAG: str(os.getpid())}
        assert (instance.root_directory and lane.lock_path.name == LOCK_FILE)
        result = batch_job.execute_in_process(instance=instance, tags=lane.tags)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags[CLI_PID_TAG] == str(os.getpid()) and run.tags[BATCH_LANE_TAG[0]] == BATCH_LANE_TAG[1]
    assert batch_run_in_progress(instance) is None
    with batch_lane(instance):
        pass


def test_refuse_message_without_an_instance_still_names_the_run(instance):
    run = add_run(instance, dg.DagsterRunStatus.QUEUED)
    message = refuse_message(run)
    assert run.run_id in message and "QUEUED" in message and f"/runs/{run.run_id}" in message


# --- two CLI processes ----------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    import dagster as dg
    from pinterest_platform.run_guard import batch_lane

    instance = dg.DagsterInstance.from_config(sys.argv[1])
    with batch_lane(instance):
        print("holding", flush=True)
        sys.stdin.readline()
    instance.dispose()
    print("released", flush=True)
""")


def test_a_second_process_refuses_while_the_first_holds_the_lane(home, instance):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n", holder.stderr.read()
        # the holder has written no run yet: the lock alone keeps this process out
        with pytest.raises(BatchRunInProgress) as refused:
            with batch_lane(instance):
                pytest.fail("two processes in the batch lane")
        assert f"pid {holder.pid}" in refused.value.message
        assert refused.value.run is None

        # a run whose pid is gone still blocks while the lane is held: whoever holds it may be running it
        orphan = add_run(instance, dg.DagsterRunStatus.STARTED, tags={CLI_PID_TAG: str(dead_pid())})
        assert batch_run_in_progress(instance).run_id == orphan.run_id
        with pytest.raises(BatchRunInProgress, match=orphan.run_id):
            with batch_lane(instance):
                pass
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.STARTED  # not reaped
        instance.report_run_failed(orphan)

        # the holder's own run, once the storage has it, is the one named
        run = add_run(instance, dg.DagsterRunStatus.STARTED, tags={CLI_PID_TAG: str(holder.pid)})
        with pytest.raises(BatchRunInProgress, match=run.run_id):
            with batch_lane(instance):
                pass
        assert batch_run_in_progress(instance).run_id == run.run_id
        instance.report_run_failed(run)  # its run ends
    finally:
        out, err = holder.communicate("\n", timeout=120)
    assert holder.returncode == 0, err
    assert out == "released\n"
    with batch_lane(instance):  # the lock went with the first process's lane
        pass


def test_run_batch_refuses_with_exit_3_while_a_batch_run_is_in_progress(instance, home, tmp_path):
    """The user's command: a UI or daemon batch run is going, `run batch` says which and starts nothing."""
    running = add_run(instance, dg.DagsterRunStatus.STARTED)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PINTEREST_ENV": "local",
           "PINTEREST_LAKE_ROOT": str(tmp_path / "lake"), "PINTEREST_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "run", "batch"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert running.run_id in result.stderr and "never overlap" in result.stderr
    assert "landing" not in result.stdout
    assert [r.run_id for r in instance.get_runs()] == [running.run_id]  # no run of its own
