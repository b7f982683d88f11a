"""The viewer in real Chromium against a real server on a store written by real runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect
from viewer_support import FAIL_MESSAGE, XSS_ERROR, XSS_NAME, screenshot, stop_process

from notebook_exp.collectors.git import git_info
from notebook_exp.store import get_store

SWEEP = ["lr-0.1", "lr-0.01", "lr-0.001"]
ALL_NAMES = [*SWEEP, "exploding", XSS_NAME]

CURVES_JS = """() => {
  const out = [];
  for (const doc of window.Bokeh.documents) {
    for (const m of doc.all_models) {
      if (m.name === 'nx-curve' && m.visible) {
        const d = m.data_source.data;
        const x = d instanceof Map ? d.get('x') : d.x;
        out.push(x.length);
      }
    }
  }
  return out;
}"""


KEYS_JS = CURVES_JS.replace("out.push(x.length)", "if (x.length) out.push(String(m.tags))")
RANGES_JS = CURVES_JS.replace("out.push(x.length)", "out.push([Math.min(...x), Math.max(...x)])")


def open_viewer(page, url: str) -> None:
    page.goto(url)
    rows(page).first.wait_for()


def rows(page):
    return page.locator(".nx-runs-table .tabulator-row")


def _name_selector(name: str) -> str:
    return f'.tabulator-cell[tabulator-field="name"]:text-is({json.dumps(name)})'


def name_cell(page, name: str):
    return page.locator(".nx-runs-table " + _name_selector(name))


def run_row(page, name: str):
    return rows(page).filter(has=page.locator(_name_selector(name)))


def curves(page) -> list[int]:
    return page.evaluate(CURVES_JS)


def curve_ranges(page) -> list[tuple[float, float]]:
    return [tuple(r) for r in page.evaluate(RANGES_JS)]


def zoom_in(page, canvas, clicks: int = 4) -> None:
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(clicks):
        page.mouse.wheel(0, -300)
        time.sleep(0.1)


def wait_for(predicate, timeout: float = 20.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_runs_table_shows_every_run(page, viewer):
    open_viewer(page, viewer)
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    for name in ALL_NAMES:
        expect(name_cell(page, name)).to_be_visible()
    expect(run_row(page, "exploding").locator('[tabulator-field="status"]')).to_have_text("failed")
    expect(page.locator(".nx-count")).to_contain_text(f"{len(ALL_NAMES)} runs")
    screenshot(page, "runs-table")
    assert page.watch.external == [], "the page must not need anything but the viewer server"
    assert page.watch.errors == []


def test_filter_expression_narrows_the_table(page, viewer):
    open_viewer(page, viewer)
    box = page.locator(".nx-filter input")
    box.fill("lr < 0.05 and loss < 0.9")
    box.press("Enter")
    expect(rows(page)).to_have_count(2)
    expect(name_cell(page, "lr-0.01")).to_be_visible()
    expect(name_cell(page, "lr-0.001")).to_be_visible()
    expect(name_cell(page, "lr-0.1")).to_have_count(0)
    screenshot(page, "filtered")


def test_compare_two_runs(page, viewer):
    open_viewer(page, viewer)
    for name in ("lr-0.1", "lr-0.01"):
        run_row(page, name).locator("input[type=checkbox]").click()
    page.get_by_role("button", name="Compare selected (2)").click()
    lines = wait_for(lambda: [n for n in curves(page) if n > 0] if len(curves(page)) == 2 else None)
    assert lines and len(lines) == 2 and all(n == 200 for n in lines), curves(page)
    zoom_in(page, page.locator(".nx-compare-chart canvas").first)
    # Each curve is refined when its own read arrives: wait for both, not the first.
    refined = wait_for(lambda: [x for x in curve_ranges(page) if x[1] - x[0] < 150] if all(
        x[1] - x[0] < 150 for x in curve_ranges(page)) else None)
    assert refined and len(refined) == 2, curve_ranges(page)  # the zoomed window was read again from the store
    diff = page.locator(".nx-params-diff .tabulator-row")
    expect(diff).to_have_count(1)  # lr differs; bs, opt and layers are the same
    expect(diff.first.locator('[tabulator-field="param"]')).to_have_text("lr")
    expect(page.locator(".nx-params-diff")).not_to_contain_text("layers")
    screenshot(page, "compare")


def test_run_page_shows_traceback_of_failed_run(page, viewer):
    open_viewer(page, viewer)
    name_cell(page, "exploding").click()
    error = page.locator(".nx-error")
    expect(error).to_contain_text("Traceback (most recent call last)")
    expect(error).to_contain_text(f"FloatingPointError: {FAIL_MESSAGE}")
    expect(page.locator(".nx-run-status")).to_have_text("failed")
    screenshot(page, "failed-run")


def test_run_page_system_tab_shows_real_telemetry_and_git(page, viewer):
    open_viewer(page, viewer)
    name_cell(page, "lr-0.1").click()
    expect(page.locator(".nx-run-status")).to_have_text("completed")
    if git_info() is not None:  # the sample runs ran in this checkout
        expect(page.locator(".nx-run-info")).to_contain_text("git commit")
    page.locator(".bk-tab", has_text="System").click()

    def drawn() -> bool:  # each chart fills when its own read arrives: wait for both kinds
        keys = page.evaluate(KEYS_JS)
        return all(any(wanted in key for key in keys) for wanted in ("sys/memory_rss_mb", "gpu/0/utilization_percent"))

    assert wait_for(drawn), page.evaluate(KEYS_JS)
    expect(page.locator(".nx-sys-chart canvas").first).to_be_visible()
    screenshot(page, "run-system-tab")


def test_markup_in_store_renders_as_text(page, viewer):
    open_viewer(page, viewer)
    expect(name_cell(page, XSS_NAME)).to_have_text(XSS_NAME)
    expect(page.get_by_text(XSS_NAME, exact=True)).to_be_visible()
    name_cell(page, XSS_NAME).click()
    expect(page.locator(".nx-run-name")).to_have_text(XSS_NAME)
    expect(page.locator(".nx-error")).to_contain_text(XSS_ERROR)
    time.sleep(1.0)  # give any injected handler a chance to fire
    screenshot(page, "markup-as-text")
    assert page.locator('img[src="x"]').count() == 0
    assert page.watch.dialogs == []


def test_injection_in_filter_changes_nothing(page, viewer, browser_store):
    open_viewer(page, viewer)
    box = page.locator(".nx-filter input")
    box.fill("name = ''; DROP TABLE runs; --")
    box.press("Enter")
    expect(page.locator(".nx-filter-error")).to_contain_text("Filter not applied")
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    screenshot(page, "injection")
    count = get_store(browser_store[0]).query("SELECT count(*) AS n FROM runs")["n"][0]
    assert count >= len(ALL_NAMES)  # the table is still there


def test_health_endpoint(viewer, browser_store):
    with urllib.request.urlopen(viewer + "/health", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "ok"
    assert body["store"] == str(Path(browser_store[0]).absolute())
    assert body["runs"] >= len(ALL_NAMES)


def test_live_run_shows_running_and_its_chart_grows(page, viewer, browser_store):
    open_viewer(page, viewer)
    script = Path(__file__).with_name("viewer_support.py")
    live = subprocess.Popen([sys.executable, str(script), str(browser_store[0]), "live-one", "60"],
                            stdout=subprocess.PIPE, text=True)
    try:
        live.stdout.readline()  # the run id: the run exists
        status = run_row(page, "live-one").locator('[tabulator-field="status"]')
        expect(status).to_have_text("running")  # streamed in by the refresh, no reload
        screenshot(page, "live-in-table")
        name_cell(page, "live-one").click()
        expect(page.locator(".nx-run-status")).to_have_text("running")
        first = wait_for(lambda: sum(curves(page)))
        grown = wait_for(lambda: sum(curves(page)) >= first + 20, timeout=15)
        assert grown, (first, curves(page))
        screenshot(page, "live-run")
    finally:
        stop_process(live)
    expect(page.locator(".nx-run-status")).to_have_text("completed")
    assert not re.search(r"refresh failed", page.locator(".nx-status").inner_text())
