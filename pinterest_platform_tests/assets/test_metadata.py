"""The UI explains the data: plain-words table and column descriptions, column lineage that points at real
columns, charts for the analytics that read better as bars, and owners, kinds and a description on every
asset."""

import dagster as dg
import pytest

from pinterest_platform import contract, descriptions
from pinterest_platform.assets import batch, streaming
from pinterest_platform.assets.metadata import (
    analytics_chart,
    bar_chart_markdown,
    column_lineage,
    column_schema,
    table_metadata,
)
from pinterest_platform.definitions import defs

# every table of the contract by its asset key, with its schema
TABLES = {
    **{batch.raw_key(k).to_user_string(): contract.WIRE_SCHEMAS[k] for k in contract.EVENT_KINDS},
    **{batch.cleaned_key(k).to_user_string(): contract.CLEANED_SCHEMAS[k] for k in contract.EVENT_KINDS},
    batch.QUARANTINE_KEY.to_user_string(): contract.QUARANTINE_SCHEMA,
    **{batch.analytics_key(n).to_user_string(): contract.ANALYTICS_SCHEMAS[n] for n in contract.ANALYTICS_TABLES},
}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_column_has_a_description(table):
    schema = column_schema(TABLES[table], table)
    assert [c.name for c in schema.columns] == TABLES[table].fieldNames()
    for column in schema.columns:
        assert column.description and column.description.strip(), f"{table}.{column.name}"
    # no description for a column the table does not have
    assert set(descriptions.COLUMN_DESCRIPTIONS[table]) == set(TABLES[table].fieldNames())


def test_column_schema_stays_compatible_and_finds_tables_by_schema():
    # no table named: the contract table with this schema (streaming tables: their cleaned table)
    plain = column_schema(contract.CLEANED_SCHEMAS["user"])
    assert plain == column_schema(contract.CLEANED_SCHEMAS["user"], batch.cleaned_key("user"))
    assert all(c.description for c in plain.columns)
    # explicit descriptions win; an unknown table has none
    custom = column_schema(contract.CLEANED_SCHEMAS["geo"], descriptions={"ind": "the key"})
    assert [c.description for c in custom.columns] == ["the key", None, None, None]
    unknown = column_schema(contract.CLEANED_SCHEMAS["geo"], "nowhere/nothing")
    assert all(c.description is None for c in unknown.columns)


def test_streaming_tables_carry_the_cleaned_descriptions():
    for spec in streaming.STREAMING_TABLE_SPECS:
        kind = streaming.TABLE_KINDS[spec.key.path[-1]]
        schema = spec.metadata["dagster/column_schema"]
        assert {c.name: c.description for c in schema.columns} == descriptions.CLEANED_COLUMNS[kind]
        assert descriptions.column_descriptions(spec.key.path[-1]) == descriptions.CLEANED_COLUMNS[kind]


def test_source_tables_carry_the_wire_descriptions():
    for table, kind in ((contract.SOURCE_TABLE_OF[k], k) for k in contract.EVENT_KINDS):
        assert descriptions.column_descriptions(table) == descriptions.WIRE_COLUMNS[kind]


def test_every_table_has_a_plain_description():
    for key in [batch.cleaned_key(k) for k in contract.EVENT_KINDS] + [batch.QUARANTINE_KEY] + [
            batch.analytics_key(n) for n in contract.ANALYTICS_TABLES]:
        text = descriptions.table_description(key.to_user_string())
        assert text and "contract §" not in text and len(text) > 40, key
    assert descriptions.table_description("analytics/popular_category_by_country") == (
        "For each country, the category with the most pins posted there, and how many.")


def test_lineage_points_at_existing_columns_of_upstream_tables():
    for table, lineage in descriptions.COLUMN_LINEAGE.items():
        assert table in TABLES, table
        # every column of the table, and only those, has its sources
        assert set(lineage) == set(TABLES[table].fieldNames()), table
        layer = table.split("/")[0]
        for column, deps in lineage.items():
            assert deps, f"{table}.{column}"
            for upstream, upstream_column in deps:
                assert upstream in TABLES, (table, column, upstream)
                assert upstream.split("/")[0] == {"cleaned": "raw", "analytics": "cleaned"}[layer]
                assert upstream_column in TABLES[upstream].fieldNames(), (table, column, upstream, upstream_column)
    # every cleaned and analytics table has its lineage
    assert {t for t in TABLES if t.split("/")[0] == "analytics" or t in
            {batch.cleaned_key(k).to_user_string() for k in contract.EVENT_KINDS}} <= set(descriptions.COLUMN_LINEAGE)


def test_lineage_examples_of_the_contract():
    pin = column_lineage(batch.cleaned_key("pin")).deps_by_column
    assert pin["ind"] == [dg.TableColumnDep(batch.raw_key("pin"), "index")]
    assert "downloaded" not in pin
    user = column_lineage(batch.cleaned_key("user")).deps_by_column
    assert [d.column_name for d in user["user_name"]] == ["first_name", "last_name"]
    geo = column_lineage(batch.cleaned_key("geo")).deps_by_column
    assert [d.column_name for d in geo["coordinates"]] == ["latitude", "longitude"]
    by_country = column_lineage(batch.analytics_key("popular_category_by_country")).deps_by_column
    assert by_country["country"] == [dg.TableColumnDep(batch.cleaned_key("geo"), "country")]
    assert by_country["category_count"] == [dg.TableColumnDep(batch.cleaned_key("pin"), "category")]
    assert column_lineage(batch.QUARANTINE_KEY) is None


def test_table_metadata_adds_lineage_where_known():
    with_lineage = table_metadata(contract.CLEANED_SCHEMAS["geo"], "/lake/tables/geo", 3,
                                  table=batch.cleaned_key("geo"), extra_key=1)
    assert isinstance(with_lineage["dagster/column_lineage"], dg.TableColumnLineage)
    assert with_lineage["dagster/row_count"] == dg.MetadataValue.int(3) and with_lineage["extra_key"] == 1
    quarantine = table_metadata(contract.QUARANTINE_SCHEMA, "/lake/tables/quarantine", table=batch.QUARANTINE_KEY)
    assert "dagster/column_lineage" not in quarantine
    assert all(c.description for c in quarantine["dagster/column_schema"].columns)
    # the old call, no table named, still works
    assert "dagster/column_lineage" not in table_metadata(contract.CLEANED_SCHEMAS["geo"], "/x")


def _chart_rows(markdown: str) -> list[list[str]]:
    lines = markdown.splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_bar_chart_bars_are_proportional_and_labelled():
    rows = [{"post_year": 2018, "category": "art", "category_count": 40},
            {"post_year": 2019, "category": "travel", "category_count": 20},
            {"post_year": 2020, "category": "quotes", "category_count": 10},
            {"post_year": 2021, "category": "tattoos", "category_count": 0}]
    text = bar_chart_markdown(rows, ["post_year", "category"], "category_count", width=8).value
    header = text.splitlines()[0]
    assert "post_year" in header and "category" in header and "category_count" in header
    table = _chart_rows(text)
    assert [r[:3] for r in table] == [["2018", "art", "40"], ["2019", "travel", "20"], ["2020", "quotes", "10"],
                                      ["2021", "tattoos", "0"]]
    assert [r[3] for r in table] == ["█" * 8, "█" * 4, "█" * 2, ""]


def test_bar_chart_partial_blocks_nulls_and_empty_input():
    rows = [{"g": "a", "v": 8.0}, {"g": "b", "v": 1.0}, {"g": "c", "v": None}]
    table = _chart_rows(bar_chart_markdown(rows, ["g"], "v", width=1).value)
    assert table == [["a", "8", "█"], ["b", "1", "▏"], ["c", "", ""]]
    assert bar_chart_markdown([], ["g"], "v").value == "_no rows_"
    # all zero: no bars, no division by zero
    assert [r[2] for r in _chart_rows(bar_chart_markdown([{"g": "a", "v": 0}], ["g"], "v").value)] == [""]
    # a pipe in a label does not break the table
    assert "a\\|b" in bar_chart_markdown([{"g": "a|b", "v": 1}], ["g"], "v").value


def test_analytics_charts_where_a_chart_reads_better():
    by_age = analytics_chart("median_followers_by_age_group", [
        {"age_group": "+50", "median_follower_count": 1000.0},
        {"age_group": "18-24", "median_follower_count": 4000.0},
        {"age_group": "36-50", "median_follower_count": 2000.5},
        {"age_group": "25-35", "median_follower_count": 3000.0}])
    assert [r[0] for r in _chart_rows(by_age.value)] == ["18-24", "25-35", "36-50", "+50"]  # age order
    by_year = analytics_chart("popular_category_by_year", [
        {"post_year": 2020, "category": "art", "category_count": 3},
        {"post_year": 2018, "category": "travel", "category_count": 6}])
    assert [r[:2] for r in _chart_rows(by_year.value)] == [["2018", "travel"], ["2020", "art"]]
    assert analytics_chart("popular_category_by_country", [{"country": "x"}]) is None
    for name, (labels, value) in descriptions.CHARTS.items():
        assert set(labels) | {value} <= set(contract.ANALYTICS_SCHEMAS[name].fieldNames()), name
    assert {"popular_category_by_year", "median_followers_by_age_group"} <= set(descriptions.CHARTS)


def test_every_asset_has_owners_kinds_and_a_description():
    graph = defs.get_repository_def().asset_graph
    keys = list(graph.get_all_asset_keys())
    assert any(k.path[0] == "kafka" for k in keys) and any(k.path[0] == "kinesis" for k in keys)
    for key in keys:
        node = graph.get(key)
        assert node.owners, f"{key.to_user_string()} has no owners"
        assert node.kinds, f"{key.to_user_string()} has no kinds"
        assert node.description and node.description.strip(), f"{key.to_user_string()} has no description"
        assert "(contract §4)" not in node.description, key


def test_specs_show_columns_and_lineage_before_any_run():
    graph = defs.get_repository_def().asset_graph
    for table, schema in TABLES.items():
        metadata = graph.get(dg.AssetKey.from_user_string(table)).metadata
        columns = metadata["dagster/column_schema"].columns
        assert [c.name for c in columns] == schema.fieldNames() and all(c.description for c in columns), table
        if table in descriptions.COLUMN_LINEAGE:
            assert isinstance(metadata["dagster/column_lineage"], dg.TableColumnLineage), table
