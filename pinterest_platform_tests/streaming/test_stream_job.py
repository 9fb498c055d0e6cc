"""The `stream` Spark job end to end on moto: posting emulator -> Kinesis -> streaming Delta tables, held
against the batch cleaning of the same records and the plain-Python reference; exactly-once across a
crash; continuous mode with a clean stop on SIGINT; the CLI entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from pinterest_platform import contract
from pinterest_platform.jobs import stream as stream_job
from pinterest_platform_tests import reference
from pinterest_platform_tests.compare import normalize
from pinterest_platform_tests.streaming.conftest import put_records

EVENTS = 300
# records no cleaning can keep, per kind; each must land in the quarantine exactly once
BAD = {
    "pin": [b"{not json", b"[1, 2]", b'{"index": "x7", "title": "t"}', b'{"index": 5, "follower_count": "lots"}'],
    "geo": [b'{"ind": 9, "latitude": "north"}', b"", b'{"ind": null}'],
    "user": [b'{"ind": 3, "age": "old", "date_joined": "yesterday"}', b"null"],
}


def delta_rows(uri: str) -> list[dict]:
    rows = DeltaTable(uri).to_pyarrow_table().to_pylist()
    return sorted(({k: normalize(v) for k, v in r.items()} for r in rows), key=lambda r: r["ind"])


def stream_texts(client, stream: str) -> list[tuple[str, str, str]]:
    """(text, shardId, sequenceNumber) of every record in the stream, shard by shard in sequence order."""
    out = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            answer = client.get_records(ShardIterator=iterator, Limit=10000)
            out += [(r["Data"].decode(), shard["ShardId"], r["SequenceNumber"]) for r in answer["Records"]]
            if not answer["Records"]:
                break
            iterator = answer["NextShardIterator"]
    return out


def params(prefix: str, lake: Path, endpoint: str, **extra) -> dict:
    return {"prefix": prefix, "lake_tables_root": str(lake / "tables"), "region": "us-east-1",
            "endpoint": endpoint, **extra}


@pytest.fixture(scope="module")
def posted(local_stack, tmp_path_factory):
    """EVENTS synthetic events posted to the three streams by the emulator, plus BAD records."""
    import boto3

    from pinterest_platform.datagen import seed_source_database
    from pinterest_platform.ingestion.emulator import emulate
    from pinterest_platform.resources.kinesis import LocalKinesisResource

    home = tmp_path_factory.mktemp("stream_e2e")
    db_url = f"sqlite:///{home / 'source.db'}"
    seed_source_database(db_url, EVENTS, seed=5, progress=False)
    endpoint = local_stack["aws_endpoint_url"]
    prefix = f"s{uuid.uuid4().hex[:8]}"
    kinesis = LocalKinesisResource(endpoint=endpoint)
    report = emulate(db_url, "stream", kinesis=kinesis, prefix=prefix, progress=False)
    assert report.ok and report.events_read == EVENTS, report.summary()
    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=endpoint)
    for kind, records in BAD.items():
        put_records(client, contract.stream_name(prefix, kind), records, keys=[f"bad{i}" for i in range(len(records))])
    return {"prefix": prefix, "lake": home / "lake", "endpoint": endpoint, "db_url": db_url, "client": client,
            "kinesis": kinesis}


@pytest.fixture(scope="module")
def first_run(posted, spark):
    return stream_job.stream(spark, params(posted["prefix"], posted["lake"], posted["endpoint"]))


def test_tables_equal_batch_cleaning_of_the_same_records(posted, first_run, spark):
    from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key

    prefix, lake = posted["prefix"], posted["lake"]
    assert first_run["stopped_by"] == "completed"
    for kind in contract.EVENT_KINDS:
        stream = contract.stream_name(prefix, kind)
        records = stream_texts(posted["client"], stream)
        entry = first_run["streams"][kind]
        assert entry["records"] == len(records) == EVENTS + len(BAD[kind])
        assert entry["quarantined"] == len(BAD[kind])
        uri = str(lake / "tables" / contract.streaming_table_name(prefix, kind))
        got = delta_rows(uri)
        assert entry["rows_in_table"] == len(got)
        # new inds, each once in its batch: appended, no MERGE (the insert-only fast path)
        assert entry["appended"] == entry["upserted"] == len(got) and entry["merged"] == 0
        assert "MERGE" not in {c["operation"] for c in DeltaTable(uri).history()}

        # the batch path's cleaning, applied to the same JSON texts
        batch = spark.createDataFrame([(text, stream, f"{shard}:{seq}") for text, shard, seq in records],
                                      "value string, source string, origin string")
        cleaned = clean(kind, batch)
        good = cleaned.where("_reason is null")
        expected_batch = cleaned_rows(kind, latest_per_key(good, key="ind", order_by=["_origin"])).collect()
        assert got == sorted(({k: normalize(v) for k, v in r.asDict(recursive=True).items()}
                              for r in expected_batch), key=lambda r: r["ind"])

        # and the independent plain-Python reference
        expected, quarantined = reference.clean_wire_values(kind, [text for text, _, _ in records])
        assert got == [{k: normalize(v) for k, v in r.items()} for r in expected]

        table = DeltaTable(uri)
        assert table.schema().to_arrow().names == contract.CLEANED_COLUMNS[kind]
        assert table.metadata().configuration.get("delta.autoOptimize.autoCompact") == "true"
        assert len({r["ind"] for r in got}) == len(got)

        q = DeltaTable(str(lake / "tables" / contract.QUARANTINE_TABLE)).to_pyarrow_table().to_pylist()
        mine = [r for r in q if r["source"] == stream]
        assert sorted(r["reason"] for r in mine) == sorted(r["reason"] for r in quarantined)
        assert all(r["kind"] == kind and ":" in r["origin"] for r in mine)
        assert len({r["origin"] for r in mine}) == len(mine)


def test_spark_schema_is_the_contract(posted, first_run, spark):
    for kind in contract.EVENT_KINDS:
        uri = str(posted["lake"] / "tables" / contract.streaming_table_name(posted["prefix"], kind))
        schema = spark.read.format("delta").load(uri).schema
        assert [(f.name, f.dataType) for f in schema] == \
               [(f.name, f.dataType) for f in contract.CLEANED_SCHEMAS[kind]]


def test_contract_shape_tool_passes_on_streaming_tables(posted, first_run):
    # this lake holds only the streaming tables (no batch ran into it), so only they are checked
    command = Path(sys.executable).parent / "pinterest-platform"
    result = subprocess.run([str(command), "validate", "--lake", str(posted["lake"]),
                             "--streaming-prefix", posted["prefix"], "--streaming-only"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for kind in contract.EVENT_KINDS:
        name = contract.streaming_table_name(posted["prefix"], kind)
        assert f"{name}: ok" in lines, result.stdout + result.stderr


def test_redelivery_and_rerun_change_no_row(posted, first_run, spark):
    from pinterest_platform.ingestion.emulator import emulate

    lake, prefix = posted["lake"], posted["prefix"]
    before = {k: delta_rows(str(lake / "tables" / contract.streaming_table_name(prefix, k)))
              for k in contract.EVENT_KINDS}
    quarantine = str(lake / "tables" / contract.QUARANTINE_TABLE)
    q_before = DeltaTable(quarantine).to_pyarrow_table().num_rows
    # every event posted again: new Kinesis records, same rows
    report = emulate(posted["db_url"], "stream", kinesis=posted["kinesis"], prefix=prefix, progress=False)
    assert report.ok
    second = stream_job.stream(spark, params(prefix, lake, posted["endpoint"]))
    for kind in contract.EVENT_KINDS:
        assert second["streams"][kind]["records"] == EVENTS
        assert second["streams"][kind]["quarantined"] == 0
        # every ind is in the table already: MERGEd (changing nothing), none appended
        assert second["streams"][kind]["appended"] == 0 and second["streams"][kind]["merged"] > 0
        assert delta_rows(str(lake / "tables" / contract.streaming_table_name(prefix, kind))) == before[kind]
    assert DeltaTable(quarantine).to_pyarrow_table().num_rows == q_before
    # and a run with nothing new reads nothing and commits nothing
    versions = {k: second["streams"][k]["table_version"] for k in contract.EVENT_KINDS}
    third = stream_job.stream(spark, params(prefix, lake, posted["endpoint"]))
    assert {k: third["streams"][k]["records"] for k in contract.EVENT_KINDS} == dict.fromkeys(contract.EVENT_KINDS, 0)
    assert {k: third["streams"][k]["table_version"] for k in contract.EVENT_KINDS} == versions


def pin_records(n: int, bad_every: int = 0, start: int = 0) -> list[bytes]:
    from pinterest_platform.datagen import generate_events

    out = []
    for i, (pin, _geo, _user) in enumerate(generate_events(start + n, seed=3)):
        if i < start:
            continue
        out.append(reference.to_wire(pin).encode())
        if bad_every and (i + 1) % bad_every == 0:
            out.append(f'{{"index": "broken-{i}"}}'.encode())
    return out


@pytest.mark.parametrize("crash_point", ["after_both_commits", "between_merge_and_quarantine"])
def test_crash_then_restart_loses_and_duplicates_nothing(crash_point, spark, kinesis_client, kinesis_endpoint,
                                                         make_stream, tmp_path, monkeypatch):
    prefix = f"c{uuid.uuid4().hex[:8]}"
    stream = make_stream(shards=1, name=contract.stream_name(prefix, "pin"))
    records = pin_records(300, bad_every=15)  # 300 good, 20 bad, spread over every batch
    put_records(kinesis_client, stream, records)
    # processing-time batches of 100 records (Spark 4.0 runs availableNow as one batch), crashing in batch 1
    run_params = params(prefix, tmp_path / "lake", kinesis_endpoint, kinds=["pin"], trigger="processing_time",
                        interval="0 seconds", timeout_s=180, source_options={"maxRecordsPerTrigger": "100"})
    crashed = []

    def crash_on_batch_1(original, batch_id_of):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            if batch_id_of(args, kwargs) == 1 and not crashed:
                crashed.append(1)
                raise RuntimeError(f"simulated crash ({crash_point}) in batch 1")
            return result
        return wrapper

    if crash_point == "after_both_commits":
        # write_batches(spark, batch_df, batch_id, ...): the stream table and the quarantine are committed
        monkeypatch.setattr(stream_job, "write_batches", crash_on_batch_1(stream_job.write_batches, lambda a, k: a[2]))
    else:
        # the table write (append and/or MERGE) is committed, the quarantine append of the same batch is not
        batch_ids = iter(range(100))
        monkeypatch.setattr(stream_job, "upsert_rows",
                            crash_on_batch_1(stream_job.upsert_rows, lambda a, k: next(batch_ids)))
    with pytest.raises(RuntimeError, match="simulated crash"):
        stream_job.stream(spark, run_params)
    assert crashed
    table = str(tmp_path / "lake" / "tables" / contract.streaming_table_name(prefix, "pin"))
    quarantine = str(tmp_path / "lake" / "tables" / contract.QUARANTINE_TABLE)
    assert len(delta_rows(table)) > 0  # batches 0 and 1 are in Delta, batch 1 is not checkpointed

    monkeypatch.undo()
    # the restart drains what is left with availableNow: batch 1 again (its offsets were logged, its commit
    # was not), then everything after it
    result = stream_job.stream(spark, params(prefix, tmp_path / "lake", kinesis_endpoint, kinds=["pin"]))
    entry = result["streams"]["pin"]
    assert entry["records"] == 320 - 100

    expected, quarantined = reference.clean_wire_values("pin", [r.decode() for r in records])
    assert delta_rows(table) == [{k: normalize(v) for k, v in r.items()} for r in expected]
    assert len(expected) == 300
    q = [r for r in DeltaTable(quarantine).to_pyarrow_table().to_pylist() if r["source"] == stream]
    assert len(q) == len(quarantined) == 20
    assert len({r["origin"] for r in q}) == 20  # a replayed append of batch 1 is skipped by Delta


def test_continuous_mode_stops_cleanly_on_sigint(spark, kinesis_client, kinesis_endpoint, make_stream, tmp_path):
    prefix = f"k{uuid.uuid4().hex[:8]}"
    stream = make_stream(shards=2, name=contract.stream_name(prefix, "pin"))
    table = str(tmp_path / "lake" / "tables" / contract.streaming_table_name(prefix, "pin"))
    first, second = pin_records(60), pin_records(40, start=60)
    latencies: list[float] = []
    problems: list[str] = []

    def rows_visible(n: int, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if DeltaTable.is_deltatable(table) and DeltaTable(table).to_pyarrow_dataset().count_rows() >= n:
                return True
            time.sleep(0.2)
        return False

    def producer():
        try:
            for batch, total in ((first, 60), (second, 100)):
                sent = time.monotonic()
                put_records(kinesis_client, stream, batch, keys=[f"k{total}-{i}" for i in range(len(batch))])
                if not rows_visible(total):
                    problems.append(f"{total} rows not visible in time")
                    break
                latencies.append(time.monotonic() - sent)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=producer, daemon=True)
    previous = signal.getsignal(signal.SIGINT)
    thread.start()
    result = stream_job.stream(spark, params(prefix, tmp_path / "lake", kinesis_endpoint, kinds=["pin"],
                                             trigger="processing_time", interval="1s", timeout_s=300))
    thread.join(30)
    assert signal.getsignal(signal.SIGINT) is previous  # the job's handler is gone again
    assert not problems, problems
    assert result["stopped_by"] == "signal"
    assert result["streams"]["pin"]["rows_in_table"] == 100
    assert all(not q.isActive for q in spark.streams.active)
    assert len(latencies) == 2


def test_continuous_mode_stops_at_its_timeout(spark, kinesis_endpoint, make_stream, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    make_stream(shards=1, name=contract.stream_name(prefix, "geo"))
    started = time.monotonic()
    result = stream_job.stream(spark, params(prefix, tmp_path / "lake", kinesis_endpoint, kinds=["geo"],
                                             trigger="processing_time", interval="1 second", timeout_s=6))
    assert result["stopped_by"] == "timeout"
    assert 6 <= time.monotonic() - started < 120
    assert result["streams"]["geo"]["records"] == 0


def test_missing_streams_are_skipped_or_a_clear_error(spark, kinesis_client, kinesis_endpoint, make_stream,
                                                      tmp_path):
    prefix = f"m{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match="do not exist yet"):
        stream_job.stream(spark, params(prefix, tmp_path / "lake", kinesis_endpoint))
    stream = make_stream(shards=1, name=contract.stream_name(prefix, "user"))
    put_records(kinesis_client, stream, [b'{"ind": 1, "first_name": "A", "last_name": "B", "age": 30, '
                                         b'"date_joined": "2016-01-02 03:04:05"}'])
    result = stream_job.stream(spark, params(prefix, tmp_path / "lake", kinesis_endpoint))
    assert "skipped" in result["streams"]["pin"] and "skipped" in result["streams"]["geo"]
    assert result["streams"]["user"]["rows_in_table"] == 1


def test_run_stream_available_now_is_a_run_in_the_dagster_instance(kinesis_client, kinesis_endpoint, make_stream,
                                                                   tmp_path):
    """`pinterest-platform run stream --available-now` (a CLI process of its own) materializes
    stream_available_now through the instance at DAGSTER_HOME: the run, its materializations of
    streaming/available_now_run and of each table, and the tables' checks are there for the UI."""
    import dagster as dg

    prefix = f"cli{uuid.uuid4().hex[:6]}"
    for kind in contract.EVENT_KINDS:
        make_stream(shards=1, name=contract.stream_name(prefix, kind))
    put_records(kinesis_client, contract.stream_name(prefix, "pin"), pin_records(5))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and (k == "PINTEREST_STATE_DIR"
                                                                         or not k.startswith("PINTEREST_"))}
    env.update(PINTEREST_ENV="local", PINTEREST_TOPIC_PREFIX=prefix, PINTEREST_LAKE_ROOT=str(tmp_path / "lake"),
               AWS_ENDPOINT_URL=kinesis_endpoint, DAGSTER_HOME=str(tmp_path / "dagster_home"))
    run = subprocess.run([sys.executable, "-m", "pinterest_platform.cli", "run", "stream", "--available-now"],
                         env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr}"
    assert f"{prefix}_pin_table: 5 rows" in out and f"{prefix}_geo_table: 0 rows" in out
    assert (tmp_path / "lake" / "checkpoints" / f"{prefix}_streams").is_dir()

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        [record] = instance.get_runs()
        assert record.status == dg.DagsterRunStatus.SUCCESS and record.job_name == "__ASSET_JOB"
        assert f"run {record.run_id} in the Dagster instance" in out
        tables = {kind: dg.AssetKey(["streaming", contract.streaming_table_name(prefix, kind)])
                  for kind in contract.EVENT_KINDS}
        keys = [dg.AssetKey(["streaming", "available_now_run"]), *tables.values()]
        latest = {key: instance.get_latest_materialization_event(key) for key in keys}
        assert all(event is not None and event.run_id == record.run_id for event in latest.values()), latest
        run_metadata = latest[keys[0]].asset_materialization.metadata
        assert run_metadata["records"].value == 5 and run_metadata["stopped_by"].value == "completed"
        pin = latest[tables["pin"]].asset_materialization.metadata
        assert pin["dagster/row_count"].value == 5 and pin["records_this_run"].value == 5
        table = DeltaTable(str(tmp_path / "lake" / "tables" / contract.streaming_table_name(prefix, "pin")))
        assert pin["delta_version"].value == table.version()
        # the tables' checks ran in the run, as when the UI materializes the asset
        evaluations = instance.get_records_for_run(
            record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        checked = {(e.event_log_entry.dagster_event.event_specific_data.asset_key,
                    e.event_log_entry.dagster_event.event_specific_data.check_name) for e in evaluations}
        assert checked == {(key, name) for key in tables.values()
                           for name in ("unique_non_null_ind", "columns_match_contract")}


def test_run_stream_available_now_exit_codes(tmp_path, monkeypatch, capsys):
    """A failed run exits 1 with the query's error; an interrupted one 130 (README "Exit codes"). The Spark
    job is replaced by one that fails, then by one that stops on a signal: no Spark, no stack."""
    import dagster as dg

    from pinterest_platform import cli

    prefix = f"none{uuid.uuid4().hex[:6]}"  # no stream of this prefix exists: the job fails
    monkeypatch.setenv("PINTEREST_TOPIC_PREFIX", prefix)
    monkeypatch.setattr("pinterest_platform.assets.streaming.PREFIX", prefix)
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never called: the job is replaced
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))

    def missing(_spark, _params):
        raise RuntimeError(f"no Kinesis stream to read: streaming-{prefix}-pin do not exist yet")

    def interrupted(_spark, _params):
        raise KeyboardInterrupt("stream job stopped by signal 2")

    monkeypatch.setattr("pinterest_platform.resources.spark.LocalSparkResource.session", lambda self, data_bytes=None: None)
    for job, code, line in ((missing, 1, "error: no Kinesis stream to read"), (interrupted, 130, "interrupted")):
        monkeypatch.setattr("pinterest_platform.jobs.get_job", lambda _name, job=job: job)
        assert cli.main(["run", "stream", "--available-now"]) == code
        assert line in capsys.readouterr().out
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.FAILURE] * 2


# --- parameters (no Spark) ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("5s", "5 seconds"), ("5 seconds", "5 seconds"), ("500ms", "500 milliseconds"),
                                            ("1m", "1 minutes"), ("2", "2 seconds"), ("1.5 sec", "1.5 seconds")])
def test_interval_forms(text, expected):
    assert stream_job.normalize_interval(text) == expected


def test_params_defaults_and_errors():
    p = stream_job.StreamParams.from_dict({"prefix": "x", "lake_tables_root": "s3://b/lake/tables/"})
    assert p.checkpoint_root == "s3://b/lake/checkpoints" and p.checkpoint("pin") == "s3://b/lake/checkpoints/x_pin"
    assert p.table_uri("geo") == "s3://b/lake/tables/x_geo_table" and p.quarantine_uri == "s3://b/lake/tables/quarantine"
    assert p.kinds == list(contract.EVENT_KINDS) and p.trigger == "available_now" and p.source_format == "kinesis-local"
    with pytest.raises(ValueError, match="trigger"):
        stream_job.StreamParams.from_dict({"prefix": "x", "lake_tables_root": "/l/tables", "trigger": "once"})
    with pytest.raises(ValueError, match="kind"):
        stream_job.StreamParams.from_dict({"prefix": "x", "lake_tables_root": "/l/tables", "kinds": ["pins"]})
    with pytest.raises(ValueError, match="lake_tables_root"):
        stream_job.StreamParams.from_dict({"prefix": "x"})


def test_result_is_json_serializable(first_run):
    assert json.loads(json.dumps(first_run)) == first_run


def test_changed_reposts_keep_the_latest_arrival(spark, kinesis_client, kinesis_endpoint, make_stream, tmp_path):
    """The same inds put again with changed content, from a plain client with other partition keys (so other
    shards): the row holds the latest-arrived record, across micro-batches and within one."""
    prefix = f"r{uuid.uuid4().hex[:8]}"
    stream = make_stream(shards=3, name=contract.stream_name(prefix, "pin"))
    lake = tmp_path / "lake"
    rows = [json.loads(r) for r in pin_records(20)]
    put_records(kinesis_client, stream, [json.dumps(r).encode() for r in rows], keys=[f"a{i}" for i in range(20)])
    stream_job.stream(spark, params(prefix, lake, kinesis_endpoint))
    # the second drain mixes re-posts (MERGEd) with new inds (appended)
    new = [json.loads(r) for r in pin_records(25)[20:]]
    changed = [{**r, "title": f"changed {r['index']}"} for r in rows[:10]] + new
    final = [{**r, "title": f"final {r['index']}"} for r in rows[:5]]
    for later, tag in ((changed, "b"), (final, "c")):
        time.sleep(1.1)  # a later approximateArrivalTimestamp than the puts before, whatever its resolution
        put_records(kinesis_client, stream, [json.dumps(r).encode() for r in later],
                    keys=[f"{tag}{i}" for i in range(len(later))])
    # both changes in one drain: one micro-batch holds two versions of five inds
    second = stream_job.stream(spark, params(prefix, lake, kinesis_endpoint))["streams"]["pin"]
    assert (second["appended"], second["merged"]) == (len(new), 10)

    latest = {r["index"]: r for r in rows} | {r["index"]: r for r in changed} | {r["index"]: r for r in final}
    expected, _ = reference.clean_wire_values("pin", [json.dumps(r) for r in latest.values()])
    got = delta_rows(str(lake / "tables" / contract.streaming_table_name(prefix, "pin")))
    assert got == sorted(({k: normalize(v) for k, v in r.items()} for r in expected), key=lambda r: r["ind"])
