"""Data-quality checks on the cleaned and analytics tables, read with delta-rs (no JVM).

Each rule is a pure function of an Arrow table returning (passed, metadata) so it is tested on passing
and failing data; the asset checks below only load the table and wrap the rule. `unique_non_null_ind` and
`columns_match_contract` are blocking: a violation stops the analytics and fails the run (`run batch` exits
1). The others are warnings: the run goes on and `run batch` prints them but exits 0.

Each analytics table has `one_row_per_group`: one row per group of `ANALYTICS_GROUPS` (the contract's
"one row per" column), every group one the contract names (age-group labels, year windows). It is not
blocking, with severity ERROR: it runs after the analytics tables are written and no asset depends on them,
so blocking would stop nothing and only turn the finding into a failed run; the failure is printed by
`run batch` among the warnings and shows red in the UI. The blocking checks stay on the cleaned tables,
where a broken key would spread into every analytics table.

pyarrow is imported by the rules when they run, not with the module: loading the code location stays light."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

from pinterest_platform import contract
from pinterest_platform.assets.batch import analytics_key, cleaned_key
from pinterest_platform.resources.lake import LakeResource

if TYPE_CHECKING:
    import pyarrow as pa

Rule = Callable[["pa.Table"], tuple[bool, dict]]
AGE_RANGE = (13, 120)  # Pinterest's minimum age; anything past 120 is a data error


def unique_non_null_ind(table: pa.Table) -> tuple[bool, dict]:
    import pyarrow.compute as pc

    ind = table.column("ind")
    nulls = ind.null_count
    duplicates = len(ind) - nulls - pc.count_distinct(ind, mode="only_valid").as_py()
    return nulls == 0 and duplicates == 0, {"rows": len(ind), "null_ind": nulls, "duplicate_ind": duplicates}


def follower_count_valid(table: pa.Table) -> tuple[bool, dict]:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("follower_count")
    is_integer = pa.types.is_integer(column.type)
    negative = pc.sum(pc.less(column, 0)).as_py() or 0 if is_integer else None
    return is_integer and negative == 0, {"type": str(column.type), "negative": negative,
                                          "null": column.null_count}


def category_known(table: pa.Table) -> tuple[bool, dict]:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("category")
    known = pa.array(contract.CATEGORIES)
    unknown = pc.filter(column, pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, value_set=known))))
    sample = sorted(set(unknown.to_pylist()))[:10]
    return len(unknown) == 0, {"unknown_rows": len(unknown), "unknown_values": ", ".join(map(str, sample))}


def coordinates_in_range(table: pa.Table) -> tuple[bool, dict]:
    import pyarrow as pa
    import pyarrow.compute as pc

    coordinates = table.column("coordinates").combine_chunks()
    valid = pc.drop_null(coordinates)
    pairs_mask = pc.equal(pc.list_value_length(valid), 2)
    wrong_length = len(valid) - (pc.sum(pairs_mask).as_py() or 0)
    pairs = pc.filter(valid, pairs_mask)
    lat = pc.list_element(pairs, 0) if len(pairs) else pa.array([], pa.float64())
    lon = pc.list_element(pairs, 1) if len(pairs) else pa.array([], pa.float64())
    bad_lat = pc.sum(pc.or_(pc.less(lat, -90), pc.greater(lat, 90))).as_py() or 0
    bad_lon = pc.sum(pc.or_(pc.less(lon, -180), pc.greater(lon, 180))).as_py() or 0
    return wrong_length + bad_lat + bad_lon == 0, {"wrong_length": wrong_length, "latitude_out_of_range": bad_lat,
                                                   "longitude_out_of_range": bad_lon}


def not_in_future(column_name: str, now: dt.datetime | None = None) -> Rule:
    def rule(table: pa.Table) -> tuple[bool, dict]:
        import pyarrow as pa
        import pyarrow.compute as pc

        moment = now or dt.datetime.now(dt.timezone.utc)
        column = table.column(column_name)
        scalar = pa.scalar(moment, type=pa.timestamp("us", tz="UTC"))
        future = pc.sum(pc.greater(pc.cast(column, pa.timestamp("us", tz="UTC")), scalar)).as_py() or 0
        latest = pc.max(column).as_py()
        return future == 0, {"in_future": future, "latest": str(latest)}

    return rule


def age_plausible(table: pa.Table) -> tuple[bool, dict]:
    import pyarrow.compute as pc

    age = table.column("age")
    low, high = AGE_RANGE
    bad = pc.sum(pc.or_(pc.less(age, low), pc.greater(age, high))).as_py() or 0
    return bad == 0, {"outside_13_120": bad, "min": pc.min(age).as_py(), "max": pc.max(age).as_py()}


def columns_match_contract(kind: str) -> Callable[[pa.Schema], tuple[bool, dict]]:
    def rule(schema: pa.Schema) -> tuple[bool, dict]:
        expected = contract.CLEANED_COLUMNS[kind]
        return schema.names == expected, {"columns": ", ".join(schema.names), "contract": ", ".join(expected)}

    return rule


# --- analytics: one row per group ---------------------------------------------------------------------

AGE_GROUP_LABELS: tuple[str, ...] = tuple(label for label, _, _ in contract.AGE_GROUPS)


def _years(window: tuple[int, int]) -> tuple[int, ...]:
    low, high = window
    return tuple(range(low, high + 1))  # both ends inclusive


POST_YEARS = _years(contract.POST_YEAR_WINDOW)  # 2018 to 2022: the years of posting counted
JOIN_YEARS = _years(contract.JOIN_YEAR_WINDOW)  # 2015 to 2020: the years joined counted
ANY = None  # any value but null: a row whose key is null belongs to no group

# Per analytics table, the columns it has one row per and the values each may take, as the "one row per"
# column of the contract's analytics table says. No key column: the whole table is one group, so one row
# at most (none when there is no post to rank).
ANALYTICS_GROUPS: dict[str, dict[str, tuple | None]] = {
    "popular_category_by_country": {"country": ANY},
    "popular_category_by_year": {"post_year": POST_YEARS},
    "top_poster_by_country": {"country": ANY},
    "top_country_by_followers": {},
    "popular_category_by_age_group": {"age_group": AGE_GROUP_LABELS},
    "median_followers_by_age_group": {"age_group": AGE_GROUP_LABELS},
    "users_joined_by_year": {"post_year": JOIN_YEARS},
    "median_followers_by_join_year": {"post_year": JOIN_YEARS},
    "median_followers_by_join_year_and_age_group": {"age_group": AGE_GROUP_LABELS, "post_year": JOIN_YEARS},
}
SAMPLE = 10  # groups quoted per finding


def _group_label(group: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in group.items())


def _sample(labels: list[str]) -> str:
    ordered = sorted(labels)
    return "; ".join(ordered[:SAMPLE]) + (f"; and {len(ordered) - SAMPLE} more" if len(ordered) > SAMPLE else "")


def one_row_per_group(groups: dict[str, tuple | None]) -> Rule:
    """A rule: at most one row per combination of the `groups` columns, and every row's group one the
    contract names (each column null-free and, where `groups` lists values, one of them)."""
    keys = list(groups)

    def rule(table: pa.Table) -> tuple[bool, dict]:
        rows = table.num_rows
        missing = [key for key in keys if key not in table.column_names]
        if missing:
            return False, {"rows": rows, "missing_columns": ", ".join(missing)}
        if not keys:
            return rows <= 1, {"rows": rows, "groups": min(rows, 1), "duplicate_groups": int(rows > 1),
                               "duplicate_sample": f"the whole table: {rows} rows" if rows > 1 else "",
                               "unexpected_rows": 0, "unexpected_groups": ""}
        # one row per distinct group (a null key is grouped like a value), with the number of rows it has
        counts = table.select(keys).group_by(keys).aggregate([([], "count_all")]).to_pylist()
        duplicated: list[str] = []
        unexpected: list[str] = []
        unexpected_rows = 0
        for group in counts:
            count = group.pop("count_all")
            outside = any(group[key] is None or (allowed is not ANY and group[key] not in allowed)
                          for key, allowed in groups.items())
            if outside:
                unexpected.append(_group_label(group))
                unexpected_rows += count
            # a group with a null key is no group at all: reported as unexpected, not as duplicated
            if count > 1 and all(value is not None for value in group.values()):
                duplicated.append(f"{_group_label(group)} ({count} rows)")
        return not duplicated and not unexpected, {
            "rows": rows, "groups": len(counts), "duplicate_groups": len(duplicated),
            "duplicate_sample": _sample(duplicated), "unexpected_rows": unexpected_rows,
            "unexpected_groups": _sample(unexpected)}

    return rule


def _groups_description(name: str) -> str:
    groups = ANALYTICS_GROUPS[name]
    if not groups:
        return "one row at most: the whole table is one group (contract §4)"
    allowed = []
    for key, values in groups.items():
        if values is ANY:
            allowed.append(f"{key} not null")
        elif all(isinstance(v, int) for v in values):
            allowed.append(f"{key} {min(values)} to {max(values)}")
        else:
            allowed.append(f"{key} one of {', '.join(values)}")
    return f"one row per {', '.join(groups)}; {'; '.join(allowed)} (contract §4)"


def _load(lake: LakeResource, name: str, columns: list[str] | None = None) -> pa.Table | None:
    from deltalake import DeltaTable

    uri = lake.table_uri(name)
    options = lake.storage_options()
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=columns)


# a table that was never written (nothing has arrived for it) holds no row that could break a rule
_NOTHING_YET = "no Delta table yet: nothing has been cleaned for it"
_NOTHING_COMPUTED = "no Delta table yet: nothing has been computed for it"


def _table_check(kind: str, name: str, columns: list[str], rule: Rule, description: str, blocking: bool = False):
    @dg.asset_check(asset=cleaned_key(kind), name=name, description=description, blocking=blocking)
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        table = _load(lake, kind, columns)
        if table is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "note": _NOTHING_YET})
        passed, metadata = rule(table)
        return dg.AssetCheckResult(passed=passed, metadata=metadata)

    return check


def _schema_check(kind: str):
    @dg.asset_check(asset=cleaned_key(kind), name="columns_match_contract", blocking=True,
                    description="column names and order exactly as the data contract (blocking)")
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        import pyarrow as pa
        from deltalake import DeltaTable

        uri = lake.table_uri(kind)
        options = lake.storage_options()
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return dg.AssetCheckResult(passed=True, metadata={"note": _NOTHING_YET})
        schema = DeltaTable(uri, storage_options=options).schema().to_arrow()
        passed, metadata = columns_match_contract(kind)(pa.schema(schema))
        return dg.AssetCheckResult(passed=passed, metadata=metadata)

    return check


def _analytics_check(name: str):
    rule = one_row_per_group(ANALYTICS_GROUPS[name])

    @dg.asset_check(asset=analytics_key(name), name="one_row_per_group", blocking=False,
                    description=_groups_description(name))
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        # an analytics table is a few hundred rows at most: read whole, so a missing key column is seen
        table = _load(lake, name)
        if table is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "note": _NOTHING_COMPUTED})
        passed, metadata = rule(table)
        return dg.AssetCheckResult(passed=passed, metadata=metadata, severity=dg.AssetCheckSeverity.ERROR)

    return check


# not blocking (see the module's docstring): they run once the analytics are written, and nothing is downstream
ANALYTICS_CHECKS = [_analytics_check(name) for name in contract.ANALYTICS_TABLES]

BATCH_CHECKS = [
    # blocking: analytics computed over duplicate or missing keys would be wrong, so a violation stops them
    # and fails the run
    *[_table_check(kind, "unique_non_null_ind", ["ind"], unique_non_null_ind,
                   "one row per ind, none null (blocking)", blocking=True)
      for kind in contract.EVENT_KINDS],
    *[_schema_check(kind) for kind in contract.EVENT_KINDS],
    _table_check("pin", "follower_count_non_negative_integer", ["follower_count"], follower_count_valid,
                 "follower_count is an integer type and never negative"),
    _table_check("pin", "category_in_contract", ["category"], category_known, "category is one of the 13"),
    _table_check("geo", "coordinates_in_range", ["coordinates"], coordinates_in_range,
                 "latitude within [-90, 90], longitude within [-180, 180]"),
    _table_check("geo", "timestamp_not_in_future", ["timestamp"], not_in_future("timestamp"),
                 "no event timestamp after now"),
    _table_check("user", "age_plausible", ["age"], age_plausible, "ages between 13 and 120"),
    _table_check("user", "date_joined_not_in_future", ["date_joined"], not_in_future("date_joined"),
                 "no join date after now"),
    *ANALYTICS_CHECKS,
]
