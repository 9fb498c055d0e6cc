"""`pinterest-platform validate`: a lake of small Delta tables written with delta-rs (no Spark) that keeps the
data contract passes; each kind of break is reported on its own table with the exact problem, exit 1; a
lake root that cannot be read is exit 2. The tables are built from contract.py's Spark schemas through
pyspark's own Arrow conversion (no JVM), so the test does not share the checker's type mapping."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql.pandas.types import to_arrow_schema

from pinterest_platform import contract
from pinterest_platform.cli import main
from pinterest_platform.validate import Finding, validate_lake

UTC = dt.timezone.utc
PREFIX = "s1"
BATCH_TABLES = [*contract.EVENT_KINDS, *contract.ANALYTICS_TABLES]
STREAMING_TABLES = [contract.streaming_table_name(PREFIX, kind) for kind in contract.EVENT_KINDS]

CLEANED_ROWS: dict[str, list[dict]] = {
    "pin": [{"ind": i, "unique_id": str(uuid.UUID(int=i)), "title": f"t{i}", "description": None,
             "follower_count": 1000 * i, "poster_name": f"p{i} ", "tag_list": "a,b", "is_image_or_video": "image",
             "image_src": None, "save_location": "/data/art", "category": "art"} for i in (1, 2, 3)],
    "geo": [{"ind": i, "country": "Chad", "coordinates": [10.5, -3.25],
             "timestamp": dt.datetime(2019, 5, i, 3, 4, 5, tzinfo=UTC)} for i in (1, 2, 3)],
    "user": [{"ind": i, "user_name": f"A B{i}", "age": 20 + i,
              "date_joined": dt.datetime(2016, 1, i, tzinfo=UTC)} for i in (1, 2, 3)],
}
ANALYTICS_ROWS: dict[str, list[dict]] = {
    "popular_category_by_country": [{"country": "Chad", "category": "art", "category_count": 3},
                                    {"country": "Peru", "category": "travel", "category_count": 1}],
    "popular_category_by_year": [{"post_year": 2018, "category": "art", "category_count": 2},
                                 {"post_year": 2022, "category": "quotes", "category_count": 1}],
    "top_poster_by_country": [{"country": "Chad", "poster_name": "p3 ", "follower_count": 3000}],
    "top_country_by_followers": [{"country": "Chad", "follower_count": 3000}],
    "popular_category_by_age_group": [{"age_group": "18-24", "category": "art", "category_count": 3},
                                      {"age_group": "+50", "category": "finance", "category_count": 1}],
    "median_followers_by_age_group": [{"age_group": "18-24", "median_follower_count": 2000.0}],
    "users_joined_by_year": [{"post_year": 2015, "number_users_joined": 1},
                             {"post_year": 2020, "number_users_joined": 3}],
    "median_followers_by_join_year": [{"post_year": 2016, "median_follower_count": 2000.0}],
    "median_followers_by_join_year_and_age_group": [
        {"age_group": "18-24", "post_year": 2016, "median_follower_count": 2000.0},
        {"age_group": "25-35", "post_year": 2016, "median_follower_count": 1500.5},
        {"age_group": "18-24", "post_year": 2017, "median_follower_count": 10.0}],
}


def contract_schema(name: str) -> pa.Schema:
    kind = next((k for k in contract.EVENT_KINDS if name in (k, contract.streaming_table_name(PREFIX, k))), None)
    return to_arrow_schema(contract.CLEANED_SCHEMAS[kind] if kind else contract.ANALYTICS_SCHEMAS[name])


def good_rows(name: str) -> list[dict]:
    kind = next((k for k in contract.EVENT_KINDS if name in (k, contract.streaming_table_name(PREFIX, k))), None)
    return CLEANED_ROWS[kind] if kind else ANALYTICS_ROWS[name]


def write(lake: Path, name: str, rows: list[dict] | None = None, schema: pa.Schema | None = None) -> None:
    """(Re)write tables/<name> from scratch: the contract's schema and good rows unless told otherwise."""
    target = lake / contract.TABLES_DIR / name
    shutil.rmtree(target, ignore_errors=True)
    schema = schema or contract_schema(name)
    write_deltalake(str(target), pa.Table.from_pylist(good_rows(name) if rows is None else rows, schema=schema))


def with_type(name: str, column: str, arrow_type: pa.DataType, nullable: bool = True) -> pa.Schema:
    schema = contract_schema(name)
    return schema.set(schema.get_field_index(column), pa.field(column, arrow_type, nullable))


@pytest.fixture
def lake(tmp_path) -> Path:
    root = tmp_path / "lake"
    for name in [*BATCH_TABLES, *STREAMING_TABLES]:
        write(root, name)
    return root


def validate(capsys, *args: str) -> tuple[int, list[str], str]:
    """`pinterest-platform validate ARGS` in this process: (exit code, stdout lines, stderr)."""
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def problems_of(lines: list[str]) -> dict[str, str]:
    """table -> its line's text after `table: `, for the lines that are not ok (the summary left out)."""
    return {t: rest for t, _, rest in (line.partition(": ") for line in lines[:-1]) if rest != "ok"}


def test_a_lake_that_keeps_the_contract_passes(lake, capsys):
    code, lines, err = validate(capsys, "--lake", str(lake))
    assert (code, err) == (0, "")
    assert lines == [f"{name}: ok" for name in BATCH_TABLES] + [f"lake {lake}: 12 tables ok"]


def test_streaming_prefix_adds_the_three_streaming_tables(lake, capsys):
    code, lines, _ = validate(capsys, "--lake", str(lake), "--streaming-prefix", PREFIX)
    assert code == 0
    assert lines == [f"{name}: ok" for name in [*BATCH_TABLES, *STREAMING_TABLES]] + [f"lake {lake}: 15 tables ok"]


def test_streaming_only_checks_just_the_streaming_tables(lake, capsys):
    for name in BATCH_TABLES:
        shutil.rmtree(lake / "tables" / name)
    code, lines, _ = validate(capsys, "--lake", str(lake), "--streaming-prefix", PREFIX, "--streaming-only")
    assert code == 0
    assert lines == [f"{name}: ok" for name in STREAMING_TABLES] + [f"lake {lake}: 3 tables ok"]


def test_streaming_only_needs_a_prefix(lake, capsys):
    code, lines, err = validate(capsys, "--lake", str(lake), "--streaming-only")
    assert (code, lines, err) == (2, [], "error: --streaming-only needs --streaming-prefix\n")


def test_the_lake_defaults_to_the_configured_root(lake, capsys, monkeypatch):
    monkeypatch.setenv("PINTEREST_LAKE_ROOT", str(lake))
    code, lines, _ = validate(capsys)
    assert code == 0 and lines[-1] == f"lake {lake}: 12 tables ok"


def test_the_installed_command_exits_0_and_1(lake):
    command = Path(sys.executable).parent / "pinterest-platform"
    good = subprocess.run([str(command), "validate", "--lake", str(lake)], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-1] == f"lake {lake}: 12 tables ok"
    shutil.rmtree(lake / "tables" / "geo")
    bad = subprocess.run([str(command), "validate", "--lake", str(lake)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "geo: missing (no Delta table at tables/geo)" in bad.stdout.splitlines()


# each case: how to break the good lake, then the one table and the exact problem line it must get
def _missing(lake):
    shutil.rmtree(lake / "tables" / "users_joined_by_year")


def _not_delta(lake):
    shutil.rmtree(lake / "tables" / "pin")
    (lake / "tables" / "pin").mkdir()
    (lake / "tables" / "pin" / "part-0.parquet").write_bytes(b"")


def _renamed_column(lake):
    rows = [{("followers" if k == "follower_count" else k): v for k, v in r.items()} for r in CLEANED_ROWS["pin"]]
    schema = contract_schema("pin")
    write(lake, "pin", rows, schema.set(schema.get_field_index("follower_count"), pa.field("followers", pa.int64())))


def _missing_column(lake):
    schema = contract_schema("median_followers_by_age_group")
    write(lake, "median_followers_by_age_group", schema=schema.remove(schema.get_field_index("median_follower_count")))


def _extra_column(lake):
    schema = contract_schema("geo").append(pa.field("downloaded", pa.int32()))
    write(lake, "geo", [{**r, "downloaded": 1} for r in CLEANED_ROWS["geo"]], schema)


def _column_order(lake):
    schema = contract_schema("user")
    order = ["ind", "age", "user_name", "date_joined"]
    write(lake, "user", schema=pa.schema([schema.field(c) for c in order]))


def _wrong_type(name, column, arrow_type, rows=None):
    def breaks(lake):
        write(lake, name, rows, with_type(name, column, arrow_type, nullable=column != "ind"))

    return breaks


def _duplicate_ind(lake):
    write(lake, "geo", CLEANED_ROWS["geo"] + CLEANED_ROWS["geo"][:1])


def _null_ind(lake):
    write(lake, "user", CLEANED_ROWS["user"] + [{**CLEANED_ROWS["user"][0], "ind": None}],
          with_type("user", "ind", pa.int32(), nullable=True))


def _duplicate_group(lake):
    rows = ANALYTICS_ROWS["median_followers_by_join_year_and_age_group"]
    write(lake, "median_followers_by_join_year_and_age_group", rows + [{**rows[0], "median_follower_count": 1.0}])


def _duplicate_country(lake):
    rows = ANALYTICS_ROWS["popular_category_by_country"]
    write(lake, "popular_category_by_country", rows + [{**rows[0], "category": "travel"}] * 2)


def _two_top_countries(lake):
    write(lake, "top_country_by_followers", [{"country": "Chad", "follower_count": 3000},
                                             {"country": "Peru", "follower_count": 3000}])


def _null_group(lake):
    write(lake, "median_followers_by_age_group", [{"age_group": None, "median_follower_count": 1.0}])


def _unknown_age_group(lake):
    write(lake, "popular_category_by_age_group", [{"age_group": "13-17", "category": "art", "category_count": 1}])


def _year_outside(lake):
    write(lake, "popular_category_by_year", [{"post_year": 2017, "category": "art", "category_count": 1},
                                             {"post_year": 2023, "category": "art", "category_count": 1}])


def _unknown_category(lake):
    write(lake, "popular_category_by_country", [{"country": "Chad", "category": "cars", "category_count": 1}])


CASES = {
    "missing table": (_missing, "users_joined_by_year", "missing (no Delta table at tables/users_joined_by_year)"),
    "not a Delta table": (_not_delta, "pin", "not a Delta table (tables/pin holds no Delta log)"),
    "wrong column name": (_renamed_column, "pin", "missing column follower_count; unexpected column followers"),
    "missing column": (_missing_column, "median_followers_by_age_group", "missing column median_follower_count"),
    "extra column": (_extra_column, "geo", "unexpected column downloaded"),
    "wrong column order": (_column_order, "user", "columns out of order: [ind, age, user_name, date_joined], "
                                                  "the contract has [ind, user_name, age, date_joined]"),
    "int for long": (_wrong_type("pin", "follower_count", pa.int32()), "pin",
                     "follower_count is int32, the contract says int64"),
    "long for int": (_wrong_type("user", "ind", pa.int64()), "user", "ind is int64, the contract says int32"),
    "float for double": (_wrong_type("median_followers_by_join_year", "median_follower_count", pa.float32()),
                         "median_followers_by_join_year",
                         "median_follower_count is float, the contract says double"),
    "string for int": (_wrong_type("users_joined_by_year", "post_year", pa.string(),
                                   [{"post_year": "2016", "number_users_joined": 1}]),
                       "users_joined_by_year", "post_year is string, the contract says int32"),
    "timestamp without zone": (_wrong_type("geo", "timestamp", pa.timestamp("us"),
                                           [{**r, "timestamp": r["timestamp"].replace(tzinfo=None)}
                                            for r in CLEANED_ROWS["geo"]]),
                               "geo", "timestamp is timestamp[us], the contract says timestamp[us, tz=UTC]"),
    "date for timestamp": (_wrong_type("user", "date_joined", pa.date32(),
                                       [{**r, "date_joined": r["date_joined"].date()} for r in CLEANED_ROWS["user"]]),
                           "user", "date_joined is date32[day], the contract says timestamp[us, tz=UTC]"),
    "array of float": (_wrong_type("geo", "coordinates", pa.list_(pa.float32())), "geo",
                       "coordinates is list<float>, the contract says list<double>"),
    "duplicate ind": (_duplicate_ind, "geo", "ind not unique: 1 duplicate row"),
    "null ind": (_null_ind, "user", "1 row with null ind"),
    "duplicate group of two keys": (_duplicate_group, "median_followers_by_join_year_and_age_group",
                                    "not one row per (age_group, post_year): 1 duplicate row"),
    "duplicate group": (_duplicate_country, "popular_category_by_country",
                        "not one row per country: 2 duplicate rows"),
    "two rows in a one-row table": (_two_top_countries, "top_country_by_followers",
                                    "2 rows, the contract says one row at most"),
    "null group": (_null_group, "median_followers_by_age_group", "1 row with null age_group"),
    "unknown age group": (_unknown_age_group, "popular_category_by_age_group",
                          "age_group '13-17' not one of 18-24, 25-35, 36-50, +50"),
    "year outside the window": (_year_outside, "popular_category_by_year", "post_year 2017, 2023 outside 2018-2022"),
    "unknown category": (_unknown_category, "popular_category_by_country", "category 'cars' not one of the contract's 13"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_break_is_reported_on_its_table(lake, capsys, case):
    breaks, table, problem = CASES[case]
    breaks(lake)
    code, lines, err = validate(capsys, "--lake", str(lake))
    assert (code, err) == (1, "")
    assert problems_of(lines) == {table: problem}
    count = problem.count("; ") + 1
    assert lines[-1] == f"lake {lake}: {count} problem{'s' * (count > 1)} in 1 table"
    # the function's answer is the same, one finding per problem
    assert validate_lake(str(lake), echo=None) == [Finding(table, p) for p in problem.split("; ")]


def test_a_streaming_table_is_checked_like_its_batch_table(lake, capsys):
    name = contract.streaming_table_name(PREFIX, "pin")
    write(lake, name, CLEANED_ROWS["pin"] * 2)
    code, lines, _ = validate(capsys, "--lake", str(lake), "--streaming-prefix", PREFIX)
    assert code == 1
    assert problems_of(lines) == {name: "ind not unique: 3 duplicate rows"}


def test_problems_on_several_tables_are_all_counted(lake, capsys):
    _missing(lake)
    _duplicate_ind(lake)
    _renamed_column(lake)
    code, lines, _ = validate(capsys, "--lake", str(lake))
    assert code == 1
    assert set(problems_of(lines)) == {"users_joined_by_year", "geo", "pin"}
    assert lines[-1] == f"lake {lake}: 4 problems in 3 tables"


def test_an_empty_lake_misses_every_table(tmp_path, capsys):
    code, lines, _ = validate(capsys, "--lake", str(tmp_path))
    assert code == 1
    assert problems_of(lines) == {n: f"missing (no Delta table at tables/{n})" for n in BATCH_TABLES}
    assert lines[-1] == f"lake {tmp_path}: 12 problems in 12 tables"


def test_empty_tables_keep_the_contract(tmp_path, capsys):
    for name in BATCH_TABLES:
        write(tmp_path, name, [])
    code, lines, _ = validate(capsys, "--lake", str(tmp_path))
    assert code == 0, lines


def test_a_root_that_does_not_exist_is_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, lines, err = validate(capsys, "--lake", str(missing))
    assert (code, lines, err) == (2, [], f"error: lake {missing}: no such folder\n")


def test_a_root_that_is_a_file_is_exit_2(tmp_path, capsys):
    (tmp_path / "lake").write_text("not a lake")
    code, lines, err = validate(capsys, "--lake", str(tmp_path / "lake"))
    assert (code, lines, err) == (2, [], f"error: lake {tmp_path / 'lake'}: not a folder\n")


# --- an s3:// lake, on a moto server of this test's own --------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    """The project's moto server in a process of its own: delta-rs holds the GIL while it waits for S3, so
    an in-process (threaded) moto would never answer it."""
    from pinterest_platform.local_stack.components import moto_error

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pinterest_platform.local_stack.moto_server",
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (error := moto_error(endpoint)) and time.monotonic() < deadline:
            assert server.poll() is None, f"moto exited with {server.returncode}"
            time.sleep(0.2)
        assert error is None, error
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(moto_endpoint, tmp_path, monkeypatch):
    """The local profile pointed at this moto (no stack state, dummy credentials)."""
    monkeypatch.setenv("PINTEREST_ENV", "local")
    monkeypatch.setenv("PINTEREST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint


def test_an_s3_lake_is_read_with_the_lake_resources_options(s3_env, capsys):
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {"AWS_ENDPOINT_URL": s3_env, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    root = f"s3://{bucket}/lake"
    for name in BATCH_TABLES:
        rows = ANALYTICS_ROWS["users_joined_by_year"] * 2 if name == "users_joined_by_year" else good_rows(name)
        write_deltalake(f"{root}/tables/{name}", pa.Table.from_pylist(rows, schema=contract_schema(name)),
                        storage_options=options)
    code, lines, _ = validate(capsys, "--lake", root)
    assert code == 1
    assert problems_of(lines) == {"users_joined_by_year": "not one row per post_year: 2 duplicate rows"}
    assert lines[-1] == f"lake {root}: 1 problem in 1 table"


def test_an_s3_lake_without_its_bucket_is_exit_2(s3_env, capsys):
    code, lines, err = validate(capsys, "--lake", "s3://no-such-bucket-here/lake")
    assert (code, lines) == (2, [])
    assert err.startswith("error: lake s3://no-such-bucket-here/lake: HeadBucket on bucket 'no-such-bucket-here' "
                          "failed: the bucket does not exist")
