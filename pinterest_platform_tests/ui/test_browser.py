"""The Dagster UI in a real browser: `dagster dev` on an instance made by the CLI a user runs (the demo's
batch half: seed, emulate, `run batch`, on the session's shared Kafka and moto), and headless Chromium
(Debian's, installed by scripts/install_system_deps.sh; Playwright drives it, no browser download) looking at
what a user must see: the asset graph, a cleaned table's column schema, an analytics table's bar chart, the
checks tab and the automation page. Screenshots (PNG) go to each test's tmp_path; their paths are printed.

A machine without chromium fails here, never skips."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from deltalake import DeltaTable

from pinterest_platform import contract, descriptions
from pinterest_platform_tests.e2e.test_batch_pipeline import cli, cli_env

REPO = Path(__file__).resolve().parents[2]
EVENTS = 60
CHART_TABLE = "users_joined_by_year"  # one of descriptions.CHARTS: its materialization carries a bar chart
WAIT_MS = 90_000  # how long an element may take to appear on a loaded, shared 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@pytest.fixture(scope="session")  # session, like local_stack: so it is looked up first
def chromium() -> str:
    """Debian's chromium, looked up before anything is built: a machine without it fails, never skips."""
    path = shutil.which("chromium")
    assert path, ("chromium is not installed: the browser test needs Debian's `chromium` package "
                  "(run scripts/install_system_deps.sh, or `apt-get install chromium`)")
    return path


@pytest.fixture(scope="module")
def instance(chromium, local_stack, tmp_path_factory):
    """A user's state, lake and Dagster instance after seed, emulate and `run batch` with few events."""
    home = tmp_path_factory.mktemp("ui_instance")
    env = cli_env(local_stack, home, home / "source.db", prefix="ui")
    cli(env, "seed", "--events", str(EVENTS), "--seed", "5", "--no-progress")
    cli(env, "emulate", "--mode", "batch", "--all", "--no-progress")
    cli(env, "run", "batch")
    return {"env": env, "home": home, "lake": home / "lake"}


@pytest.fixture(scope="module")
def dagster_dev(instance):
    """`dagster dev` on the instance, on a free port of 127.0.0.1, once its code location has loaded; its
    whole process group (webserver, daemon, code servers) is stopped at the end."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = instance["home"] / "dagster_dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO,
                                   env=instance["env"], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        state = "no answer"
        while True:
            assert process.poll() is None, f"dagster dev exited ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            try:
                entries = _graphql(base, _LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]
                state = str(entries)
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                    assert not errors, f"code location failed to load: {errors}"
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, (f"dagster dev did not load its code location on {base}: "
                                                 f"{state}\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever of it is left (dagster dev's webserver, daemon
    and code servers can outlive a TERM for a long while on a loaded machine)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_context(chromium, dagster_dev):
    """Headless Debian Chromium under Playwright: one context (so one dismissal of the UI's welcome dialog)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(base_url=dagster_dev, viewport={"width": 1600, "height": 1200})
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()
            browser.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    # the "Join the Dagster community" dialog opens once over whatever page comes first
    page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                             lambda: page.get_by_role("button", name="Skip").click())
    yield page
    page.close()


def screenshot(page, tmp_path: Path, name: str, element=None) -> Path:
    """The page as the user sees it, scrolled to `element` (the asset page scrolls inside a panel, so a
    full-page shot would not reach it), and `element` alone beside it."""
    path = tmp_path / f"{name}.png"
    if element is not None:
        element.scroll_into_view_if_needed()
        element.screenshot(path=str(tmp_path / f"{name}_detail.png"))
        print(f"screenshot: {tmp_path / f'{name}_detail.png'}")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    print(f"screenshot: {path}")
    return path


def _plain(text: str) -> str:
    """Text as the UI shows it: markdown code marks rendered away, whitespace collapsed."""
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


def _number(value) -> str:
    """A chart's value as its markdown shows it (assets/metadata.py): whole floats without decimals."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.1f}"
    return str(value)


def test_asset_graph_shows_raw_cleaned_and_analytics(page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"/assets/analytics/{CHART_TABLE}?view=lineage&lineageScope=upstream&lineageDepth=2")
    # a graph node's name carries its full (untruncated) name as its tooltip
    expect(page.locator(f'[data-tooltip="{CHART_TABLE}"]')).to_have_count(1)
    for kind in contract.EVENT_KINDS:
        expect(page.locator(f'[data-tooltip="{kind}"]')).to_have_count(2)  # raw/<kind> and cleaned/<kind>
    for group in ("raw", "cleaned", "analytics"):  # the group boxes around them
        expect(page.get_by_text(group, exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)  # every node's status filled in
    screenshot(page, tmp_path, "asset_graph")
    page.goto("/asset-groups")
    for group in ("raw", "cleaned", "analytics"):
        expect(page.get_by_text(group, exact=True).first).to_be_visible()
    screenshot(page, tmp_path, "global_lineage")


def test_cleaned_pin_shows_its_column_schema(page, tmp_path):
    from playwright.sync_api import expect

    page.goto("/assets/cleaned/pin")
    columns = page.locator("table").filter(has_text="Column name").first
    expect(columns).to_be_visible()
    expected = descriptions.column_descriptions("cleaned/pin")
    for column in contract.CLEANED_COLUMNS["pin"]:
        expect(columns.get_by_text(column, exact=True)).to_be_visible()
    shown = _plain(columns.inner_text())
    for column in contract.CLEANED_COLUMNS["pin"]:
        assert expected.get(column), f"cleaned/pin.{column} has no description in descriptions.py"
        assert _plain(expected[column]) in shown, f"description of {column} not shown:\n{shown}"
    expect(page.get_by_text("Row count").first).to_be_visible()
    screenshot(page, tmp_path, "cleaned_pin_columns", element=columns)


def test_analytics_table_shows_its_bar_chart(page, tmp_path, instance):
    from playwright.sync_api import expect

    assert CHART_TABLE in descriptions.CHARTS
    labels, value_column = descriptions.CHARTS[CHART_TABLE]
    rows = DeltaTable(str(instance["lake"] / "tables" / CHART_TABLE)).to_pyarrow_table().to_pylist()
    assert rows, f"{CHART_TABLE} is empty: no chart to look at"
    page.goto(f"/assets/analytics/{CHART_TABLE}")
    metadata = page.locator("tr").filter(has=page.get_by_text("chart", exact=True))
    expect(metadata.first).to_be_visible()
    chart = metadata.first.locator("table").first  # the markdown table the chart is drawn in
    expect(chart).to_contain_text("█")
    expect(chart.locator("tbody tr")).to_have_count(len(rows))
    shown = chart.locator("tbody tr").evaluate_all(
        "trs => trs.map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))")
    top = max(row[value_column] for row in rows)
    # one line per row of the table: its labels, its value, and a bar as long as the value (the greatest
    # value 24 blocks; the others in proportion, to an eighth of a block)
    want = sorted([*(str(row[c]) for c in labels), _number(row[value_column])] for row in rows)
    assert sorted(line[:-1] for line in shown) == want, shown
    for line in shown:
        bar, value = line[-1], float(line[-2])
        assert set(bar) <= set("█▏▎▍▌▋▊▉"), line
        blocks = bar.count("█") + (1 if bar and bar[-1] != "█" else 0)
        assert abs(blocks - value / top * 24) <= 1, line
    assert any(line[-1] == "█" * 24 for line in shown), shown
    screenshot(page, tmp_path, "analytics_chart", element=metadata.first)


def test_checks_tab_shows_every_check_passed(page, tmp_path):
    import dagster as dg
    from playwright.sync_api import expect

    from pinterest_platform.definitions import defs

    key = dg.AssetKey(["cleaned", "pin"])
    names = sorted(k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == key)
    assert "unique_non_null_ind" in names and "conservation" in names
    page.goto("/assets/cleaned/pin?view=checks")
    expect(page.get_by_text(f"Checks ({len(names)})")).to_be_visible()
    for name in names:
        # the list on the left: the check's name (title: the untruncated name) beside its latest status
        entry = page.locator("span").filter(has=page.locator(f'[title="{name}"]')).last
        expect(entry).to_contain_text("Succeeded")
    expect(page.get_by_text("Failed", exact=True)).to_have_count(0)
    expect(page.get_by_text("Passed", exact=True).first).to_be_visible()  # the selected check's result
    screenshot(page, tmp_path, "cleaned_pin_checks")


def test_automation_page_lists_the_sensor_and_schedule(page, tmp_path):
    from playwright.sync_api import expect

    page.goto("/automation")
    # each automation links to its own page: sensors/<name>, schedules/<name>
    for path in ("sensors/batch_automation", "schedules/daily_batch", "sensors/streaming_tables_sensor"):
        expect(page.locator(f'a[href$="/{path}"]').first).to_be_visible()
    expect(page.locator('a[href$="/sensors/batch_automation"]').first).to_contain_text("Automation condition sensor")
    expect(page.locator('a[href$="/schedules/daily_batch"]').first).to_contain_text("At 02:00 AM UTC")
    screenshot(page, tmp_path, "automation")
