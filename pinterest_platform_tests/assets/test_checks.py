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
    """Raw records (counted on the files) against the tables' counts: a table short of one row fails."""
    ok = conservation_check("pin", {"table_rows": 6, "duplicates": 3, "quarantine_rows": 1}, raw_lines=10)
    assert ok.passed and ok.metadata["unaccounted"].value == 0
    lost = conservation_check("pin", {"table_rows": 5, "duplicates": 3, "quarantine_rows": 1}, raw_lines=10)
    assert not lost.passed and lost.metadata["unaccounted"].value == 1
    extra = conservation_check("pin", {"table_rows": 6, "duplicates": 3, "quarantine_rows": 2}, raw_lines=10)
    assert not extra.passed and extra.metadata["unaccounted"].value == -1


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


# --- analytics: one row per group ---------------------------------------------------------------------


def test_analytics_groups_are_the_contracts():
    """One entry per analytics table; its keys are columns of the table, and they and the year windows
    agree with what `pinterest-platform validate` holds the lake to."""
    from pinterest_platform import validate

    assert list(checks.ANALYTICS_GROUPS) == list(contract.ANALYTICS_TABLES)
    for name, groups in checks.ANALYTICS_GROUPS.items():
        assert set(groups) <= set(contract.ANALYTICS_SCHEMAS[name].fieldNames()), name
        assert set(groups) == set(validate.ANALYTICS_KEYS[name]), name
        if "post_year" in groups:
            low, high = validate.YEAR_WINDOWS[name]
            assert groups["post_year"] == tuple(range(low, high + 1)), name
        if "age_group" in groups:
            assert groups["age_group"] == validate.AGE_GROUP_LABELS == ("18-24", "25-35", "36-50", "+50")
    assert checks.ANALYTICS_GROUPS["popular_category_by_year"]["post_year"] == (2018, 2019, 2020, 2021, 2022)
    assert checks.ANALYTICS_GROUPS["users_joined_by_year"]["post_year"] == tuple(range(2015, 2021))


def _years(values):
    return pa.array(values, pa.int32())


def test_one_row_per_country():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["popular_category_by_country"])
    good = pa.table({"country": ["Albania", "Chad", "Peru"], "category": ["art", "travel", "art"],
                     "category_count": pa.array([3, 1, 2], pa.int64())})
    passed, meta = rule(good)
    assert passed and (meta["rows"], meta["groups"], meta["duplicate_groups"], meta["unexpected_rows"]) == (3, 3, 0, 0)
    duplicated = pa.table({"country": ["Albania", "Chad", "Albania", None], "category": ["art", "art", "travel", "art"],
                           "category_count": pa.array([3, 1, 3, 1], pa.int64())})
    passed, meta = rule(duplicated)
    assert not passed
    assert meta["duplicate_groups"] == 1 and meta["duplicate_sample"] == "country='Albania' (2 rows)"
    # a null country belongs to no group
    assert meta["unexpected_rows"] == 1 and meta["unexpected_groups"] == "country=None"


def test_one_row_per_post_year_within_the_window():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["popular_category_by_year"])
    assert rule(pa.table({"post_year": _years([2018, 2019, 2020, 2021, 2022])}))[0]
    passed, meta = rule(pa.table({"post_year": _years([2017, 2018, 2023, 2023])}))
    assert not passed
    assert meta["unexpected_rows"] == 3 and meta["unexpected_groups"] == "post_year=2017; post_year=2023"
    # 2023 is both outside the window and repeated
    assert meta["duplicate_groups"] == 1 and meta["duplicate_sample"] == "post_year=2023 (2 rows)"
    passed, meta = rule(pa.table({"post_year": _years([2018, 2019, 2019])}))
    assert not passed and meta["duplicate_groups"] == 1 and meta["unexpected_rows"] == 0
    # the join-year tables have the other window: 2015 is in it, 2021 is not
    joined = checks.one_row_per_group(checks.ANALYTICS_GROUPS["users_joined_by_year"])
    assert joined(pa.table({"post_year": _years([2015, 2020])}))[0]
    passed, meta = joined(pa.table({"post_year": _years([2015, 2021])}))
    assert not passed and meta["unexpected_groups"] == "post_year=2021"


def test_one_row_per_age_group_among_the_contracts_labels():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["median_followers_by_age_group"])
    good = pa.table({"age_group": ["18-24", "25-35", "36-50", "+50"],
                     "median_follower_count": [1.0, 2.5, 3.0, 4.0]})
    assert rule(good)[0]
    # under 18 is no group, and "50+" is not the contract's spelling
    bad = pa.table({"age_group": ["13-17", "18-24", "50+"], "median_follower_count": [1.0, 2.0, 3.0]})
    passed, meta = rule(bad)
    assert not passed and meta["duplicate_groups"] == 0
    assert meta["unexpected_rows"] == 2 and meta["unexpected_groups"] == "age_group='13-17'; age_group='50+'"


def test_one_row_per_age_group_and_join_year():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["median_followers_by_join_year_and_age_group"])
    good = pa.table({"age_group": ["18-24", "18-24", "+50"], "post_year": _years([2015, 2016, 2015]),
                     "median_follower_count": [1.0, 2.0, 3.0]})
    assert rule(good)[0]
    bad = pa.table({"age_group": ["18-24", "18-24", "+50", "25-35"], "post_year": _years([2015, 2015, 2014, None]),
                    "median_follower_count": [1.0, 2.0, 3.0, 4.0]})
    passed, meta = rule(bad)
    assert not passed
    assert meta["duplicate_groups"] == 1 and meta["duplicate_sample"] == "age_group='18-24', post_year=2015 (2 rows)"
    assert meta["unexpected_rows"] == 2
    assert meta["unexpected_groups"] == "age_group='+50', post_year=2014; age_group='25-35', post_year=None"


def test_top_country_is_one_row_at_most():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["top_country_by_followers"])
    one = pa.table({"country": ["Chad"], "follower_count": pa.array([10], pa.int64())})
    assert rule(one)[0]
    assert rule(one.slice(0, 0))[0]  # no posts, no row
    passed, meta = rule(pa.concat_tables([one, one]))
    assert not passed and meta["rows"] == 2 and meta["duplicate_groups"] == 1


def test_one_row_per_group_without_its_key_column_fails():
    rule = checks.one_row_per_group(checks.ANALYTICS_GROUPS["users_joined_by_year"])
    passed, meta = rule(pa.table({"year": _years([2016]), "number_users_joined": pa.array([1], pa.int64())}))
    assert not passed and meta["missing_columns"] == "post_year"


def _analytics_check(name: str):
    for check in checks.BATCH_CHECKS:
        for spec in check.check_specs:
            if spec.name == "one_row_per_group" and spec.asset_key == dg.AssetKey(["analytics", name]):
                return check
    raise LookupError(name)


def test_every_analytics_table_has_a_non_blocking_group_check():
    for name in contract.ANALYTICS_TABLES:
        (spec,) = _analytics_check(name).check_specs
        assert not spec.blocking, name


def test_analytics_check_reads_the_delta_table(lake):
    """The wired check loads the analytics table through delta-rs; a table not computed yet passes."""
    name = "median_followers_by_join_year_and_age_group"
    check = _analytics_check(name)
    missing = check(lake=lake)
    assert missing.passed and "no Delta table yet" in missing.metadata["note"].value
    good = pa.table({"age_group": ["18-24", "+50"], "post_year": _years([2015, 2020]),
                     "median_follower_count": [10.0, 20.5]})
    write_deltalake(lake.table_uri(name), good)
    result = check(lake=lake)
    assert result.passed and result.metadata["rows"].value == 2
    bad = pa.table({"age_group": ["18-24", "12-17"], "post_year": _years([2015, 2016]),
                    "median_follower_count": [11.0, 1.0]})
    write_deltalake(lake.table_uri(name), bad, mode="append")
    result = check(lake=lake)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["duplicate_groups"].value == 1
    assert result.metadata["unexpected_groups"].value == "age_group='12-17', post_year=2016"


def test_a_failing_analytics_check_does_not_fail_the_run(lake):
    """Not blocking: the run succeeds and the failed evaluation is recorded (`run batch` prints it as a warning)."""
    name = "users_joined_by_year"
    write_deltalake(lake.table_uri(name), pa.table({"post_year": _years([2016, 2016]),
                                                    "number_users_joined": pa.array([1, 2], pa.int64())}))

    @dg.asset(key=["analytics", name])
    def joined():
        return dg.MaterializeResult()

    result = dg.materialize([joined, _analytics_check(name)], resources={"lake": lake}, raise_on_error=False)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.check_name == "one_row_per_group"
