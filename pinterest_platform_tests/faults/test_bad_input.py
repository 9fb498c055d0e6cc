"""Bad input over all four channels a user posts through: Kafka and Kinesis directly (a client of their
own), and the gateway's REST proxy and Kinesis proxy. Each record of the corpus has one expected outcome:
cleaned, quarantined with its reason (the same on every channel that lets it through), or refused by the
gateway with a 4xx JSON error (and then found nowhere). After `run batch` and `run stream --available-now`
every record is looked up by the marker it carries: none vanished, none changed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
from deltalake import DeltaTable

from pinterest_platform import contract
from pinterest_platform.resources.kafka import LocalKafkaResource
from pinterest_platform_tests.e2e.test_batch_pipeline import cli
from pinterest_platform_tests.faults.test_crashes import environment

pytestmark = pytest.mark.faults

BASE = {
    "pin": {"index": 0, "unique_id": "fbe53c66-3442-4773-b19e-d3ec6f54dddf", "title": "",
            "description": "Tyres for every road", "poster_name": "Tire Buyer", "follower_count": "26k",
            "tag_list": "tyres,cars", "is_image_or_video": "image", "image_src": "https://i.pinimg.com/x.jpg",
            "downloaded": 1, "save_location": "Local save in /data/vehicles", "category": "vehicles"},
    "geo": {"ind": 0, "timestamp": "2020-08-28T03:52:47", "latitude": 10.5, "longitude": -73.2, "country": ""},
    "user": {"ind": 0, "first_name": "", "last_name": "Ali", "age": 20, "date_joined": "2015-10-24 11:23:51"},
}
KEY = {"pin": "index", "geo": "ind", "user": "ind"}
MARKED = {"pin": "title", "geo": "country", "user": "first_name"}  # the text field that carries the marker
CHANNELS = ("kafka", "kinesis", "rest", "kinesis_proxy")
DIRECT = ("kafka", "kinesis")

# name -> (kind, changes to the base event, how the bytes differ, outcome on a direct channel, on a proxy)
# outcomes: "clean", ("quarantine", reason fragment), "refused" (a 4xx from the gateway)
CASES = {
    "good pin": ("pin", {}, None, "clean", "clean"),
    "good user": ("user", {}, None, "clean", "clean"),
    "invalid utf-8": ("pin", {}, "latin-1", ("quarantine", "invalid UTF-8"), "refused"),
    "duplicate key": ("user", {}, "duplicate", ("quarantine", "malformed JSON"), "refused"),
    "negative ind": ("pin", {"index": -7}, None, ("quarantine", "is negative"), ("quarantine", "is negative")),
    "latitude 95": ("geo", {"latitude": 95}, None, ("quarantine", "latitude '95' is outside [-90, 90]"),
                    ("quarantine", "latitude '95' is outside [-90, 90]")),
    "longitude 200": ("geo", {"longitude": 200}, None, ("quarantine", "longitude '200' is outside [-180, 180]"),
                      ("quarantine", "longitude '200' is outside [-180, 180]")),
    "age 200": ("user", {"age": 200}, None, ("quarantine", "age '200' is outside [0, 150]"),
                ("quarantine", "age '200' is outside [0, 150]")),
    "age not a number": ("user", {"age": "old"}, None, ("quarantine", "age 'old' is not"),
                         ("quarantine", "age 'old' is not")),
    "lone surrogate": ("pin", {}, "surrogate", None, "refused"),
}


def marker(channel: str, case: str) -> str:
    return f"case {channel} {case}"


def event(channel: str, case: str, ind: int) -> tuple[str, bytes]:
    kind, changes, twist, _, _ = CASES[case]
    row = {**BASE[kind], KEY[kind]: ind, MARKED[kind]: marker(channel, case), **changes}
    text = json.dumps(row, ensure_ascii=False)
    if twist == "latin-1":
        return kind, text.replace(marker(channel, case), marker(channel, case) + " Zo\udceb").encode(
            "utf-8", "surrogateescape")
    if twist == "duplicate":
        return kind, (text[:-1] + f', "{KEY[kind]}": {ind + 1}}}').encode()
    if twist == "surrogate":
        return kind, text.replace(marker(channel, case), marker(channel, case) + " \\ud800").encode()
    return kind, text.encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def outcome(local_stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("bad_input")
    env = environment(home, local_stack)
    prefix = env["PINTEREST_TOPIC_PREFIX"]
    kafka = LocalKafkaResource(bootstrap_servers=local_stack["kafka_bootstrap_servers"])
    kafka.ensure_platform_topics(prefix)
    kinesis = boto3.client("kinesis", endpoint_url=local_stack["aws_endpoint_url"], region_name="us-east-1")
    for kind in contract.EVENT_KINDS:
        kinesis.create_stream(StreamName=contract.stream_name(prefix, kind), ShardCount=1)
    for kind in contract.EVENT_KINDS:
        kinesis.get_waiter("stream_exists").wait(StreamName=contract.stream_name(prefix, kind))

    port = free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "pinterest_platform.cli", "gateway", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers: dict[tuple[str, str], httpx.Response] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.2)
        producer = kafka.producer()
        for c, channel in enumerate(CHANNELS):
            for i, case in enumerate(CASES):
                if expected_outcome(channel, case) is None:
                    continue
                kind, data = event(channel, case, 700_000 + 1000 * c + i)
                if channel == "kafka":
                    producer.produce(contract.topic_name(prefix, kind), value=data)
                elif channel == "kinesis":
                    kinesis.put_record(StreamName=contract.stream_name(prefix, kind), Data=data, PartitionKey=case)
                elif channel == "rest":
                    body = b'{"records": [{"value": ' + data + b"}]}"
                    answers[(channel, case)] = httpx.post(
                        f"{url}/topics/{contract.topic_name(prefix, kind)}", content=body, timeout=30,
                        headers={"Content-Type": "application/vnd.kafka.json.v2+json"})
                else:
                    body = b'{"records": [{"data": ' + data + b', "partition-key": "k"}]}'
                    answers[(channel, case)] = httpx.put(
                        f"{url}/streams/{contract.stream_name(prefix, kind)}/records", content=body, timeout=30,
                        headers={"Content-Type": "application/json"})
        assert producer.flush(60) == 0
    finally:
        gateway.terminate()
        gateway.wait(30)
    cli(env, "run", "batch", timeout=900)
    cli(env, "run", "stream", "--available-now", timeout=900)

    tables = Path(env["PINTEREST_LAKE_ROOT"]) / contract.TABLES_DIR
    cleaned_text = []
    for kind in contract.EVENT_KINDS:
        for name in (kind, contract.streaming_table_name(prefix, kind)):
            rows = DeltaTable(str(tables / name)).to_pyarrow_table().to_pylist()
            cleaned_text += [(name, json.dumps(r, default=str, ensure_ascii=False)) for r in rows]
    quarantine = DeltaTable(str(tables / contract.QUARANTINE_TABLE)).to_pyarrow_table().to_pylist()
    return {"prefix": prefix, "answers": answers, "cleaned": cleaned_text, "quarantine": quarantine}


def _raw_text(row: dict) -> str:
    if row["reason"] == "invalid UTF-8":
        return bytes.fromhex(row["raw"]).decode("utf-8", "replace")
    return row["raw"]


def expected_outcome(channel: str, case: str):
    return CASES[case][3] if channel in DIRECT else CASES[case][4]


# a direct client has no lone surrogate to send (it is an escape only JSON text can carry to the gateway)
SENT = [(channel, case) for channel in CHANNELS for case in CASES if expected_outcome(channel, case) is not None]


@pytest.mark.parametrize(("channel", "case"), SENT)
def test_every_record_has_its_outcome(outcome, channel, case):
    expected = expected_outcome(channel, case)
    mark = marker(channel, case)
    found_clean = [name for name, text in outcome["cleaned"] if mark in text]
    found_quarantined = [r for r in outcome["quarantine"] if mark in _raw_text(r)]
    answer = outcome["answers"].get((channel, case))
    if expected == "refused":
        assert 400 <= answer.status_code < 500 and "error_code" in answer.json(), answer.text
        assert not found_clean and not found_quarantined
        return
    if answer is not None:
        assert answer.status_code == 200, answer.text
    if expected == "clean":
        assert len(found_clean) == 1 and not found_quarantined, (found_clean, found_quarantined)
        return
    _, reason = expected
    assert not found_clean, found_clean
    assert len(found_quarantined) == 1, found_quarantined
    row = found_quarantined[0]
    assert reason in row["reason"], row["reason"]
    sources = {"kafka": contract.topic_name, "rest": contract.topic_name,
               "kinesis": contract.stream_name, "kinesis_proxy": contract.stream_name}
    assert row["source"] == sources[channel](outcome["prefix"], CASES[case][0])
    if row["reason"] == "invalid UTF-8":
        # the bytes as they arrived, not a replacement character in sight
        assert (mark.encode() + b" Zo\xeb") in bytes.fromhex(row["raw"])


def test_nothing_is_refused_by_the_direct_channels_or_lost(outcome):
    # every quarantine row of this corpus is accounted for by a case above
    ours = [r for r in outcome["quarantine"] if "case " in _raw_text(r) and outcome["prefix"] in r["source"]]
    expected = sum(1 for channel, case in SENT if isinstance(expected_outcome(channel, case), tuple))
    assert len(ours) == expected
