"""Every data-quality rule on passing and on failing data, and the checks wired to real Delta tables."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pinterest_platform import contract
from pinterest_platform.assets import checks
from pinterest_platform.assets.batch import conservation_check
from pinterest_platform.resources.lake import LocalLakeResource

UTC = dt.timezone.utc


def test_unique_non_null_ind():
    assert checks.unique_non_null_ind(pa.table({"ind": [1, 2, 3]}))[0]
    passed, meta = checks.unique_non_null_ind(pa.table({"ind": [1, 2, 2, None]}))
    assert not passed and meta["duplicate_ind"] == 1 and meta["null_ind"] == 1


def test_follower_count_non_negative_integer():
    assert checks.follower_count_valid(pa.table({"follower_count": pa.array([0, 26000, None], pa.int64())}))[0]
    passed, meta = checks.follower_count_valid(pa.table({"follower_count": pa.array([5, -1], pa.int64())}))
    assert not passed and meta["negative"] == 1
    passed, _ = checks.follower_count_valid(pa.table({"follower_count": pa.array(["26k"])}))
    assert not passed


def test_category_in_contract():
    assert checks.category_known(pa.table({"category": ["art", "travel", None]}))[0]
    passed, meta = checks.category_known(pa.table({"category": ["art", "cooking"]}))
    assert not passed and meta["unknown_rows"] == 1 and "cooking" in meta["unknown_values"]


def test_coordinates_in_range():
    good = pa.table({"coordinates": pa.array([[-90.0, 180.0], [12.5, -33.25], None], pa.list_(pa.float64()))})
    assert checks.coordinates_in_range(good)[0]
    bad = pa.table({"coordinates": pa.array([[91.0, 0.0], [0.0, -181.0], [1.0]], pa.list_(pa.float64()))})
    passed, meta = checks.coordinates_in_range(bad)
    assert not passed
    assert (meta["latitude_out_of_range"], meta["longitude_out_of_range"], meta["wrong_length"]) == (1, 1, 1)


def test_timestamps_not_in_future():
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    rule = checks.not_in_future("timestamp", now=now)
    past = pa.array([dt.datetime(2020, 8, 28, 3, 52, 47, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    assert rule(pa.table({"timestamp": past}))[0]
    future = pa.array([dt.datetime(2030, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    passed, meta = rule(pa.table({"timestamp": future}))
    assert not passed and meta["in_future"] == 1


def test_age_plausible():
    assert checks.age_plausible(pa.table({"age": pa.array([20, 59, None], pa.int32())}))[0]
    passed, meta = checks.age_plausible(pa.table({"age": pa.array([20, 7, 150], pa.int32())}))
    assert not passed and meta["outside_13_120"] == 2


def test_columns_match_contract():
    rule = checks.columns_match_contract("geo")
    assert rule(pa.schema([(c, pa.string()) for c in contract.CLEANED_COLUMNS["geo"]]))[0]
    reordered = list(reversed(contract.CLEANED_COLUMNS["geo"]))
    assert not rule(pa.schema([(c, pa.string()) for c in reordered]))[0]


def test_conservation_check_balances_and_flags_losses():
    ok = conservation_check("pin", {"read": 10, "upserted": 6, "duplicates": 3, "quarantined": 1})
    assert ok.passed and ok.metadata["unaccounted"].value == 0
    lost = conservation_check("pin", {"read": 10, "upserted": 6, "duplicates": 2, "quarantined": 1})
    assert not lost.passed and lost.metadata["unaccounted"].value == 1


@pytest.fixture
def lake(tmp_path):
    return LocalLakeResource(root=str(tmp_path))


def _check(name: str, kind: str):
    for check in checks.BATCH_CHECKS:
        for spec in check.check_specs:
            if spec.name == name and spec.asset_key == dg.AssetKey(["cleaned", kind]):
                return check
    raise LookupError(name)


def test_checks_read_delta_tables(lake, tmp_path):
    """The wired checks load the Delta table through delta-rs and apply the rule."""
    write_deltalake(lake.table_uri("user"), pa.table({
        "ind": pa.array([1, 2, 2], pa.int32()), "user_name": ["a b", "c d", "c d"],
        "age": pa.array([20, 200, 30], pa.int32()),
        "date_joined": pa.array([dt.datetime(2016, 1, 1, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC")),
    }))
    unique = _check("unique_non_null_ind", "user")(lake=lake)
    assert not unique.passed and unique.metadata["duplicate_ind"].value == 1
    age = _check("age_plausible", "user")(lake=lake)
    assert not age.passed
    columns = _check("columns_match_contract", "user")(lake=lake)
    assert columns.passed
    # a table nothing was ever cleaned into breaks no rule (a run with nothing posted is not a failure)
    missing = _check("unique_non_null_ind", "pin")(lake=lake)
    assert missing.passed and "no Delta table yet" in missing.metadata["note"].value


@pytest.mark.parametrize("duplicated", [False, True])
def test_a_blocking_check_stops_downstream_and_fails_the_run(lake, duplicated):
    write_deltalake(lake.table_uri("pin"), pa.table({"ind": pa.array([1, 2, 2 if duplicated else 3], pa.int32())}))
    downstream_ran = []

    @dg.asset(key=["cleaned", "pin"])
    def pin_table():
        return dg.MaterializeResult()

    @dg.asset(deps=[pin_table])
    def analytics_like():
        downstream_ran.append(1)

    unique = _check("unique_non_null_ind", "pin")
    age = _check("age_plausible", "user")
    assert unique.check_specs and next(iter(unique.check_specs)).blocking
    assert not next(iter(age.check_specs)).blocking
    result = dg.materialize([pin_table, analytics_like, unique], resources={"lake": lake}, raise_on_error=False)
    assert result.success is not duplicated
    assert bool(downstream_ran) is not duplicated
