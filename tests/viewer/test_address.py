"""The address bar is the view: page, selected runs, open run and filters live in the URL's query."""

from __future__ import annotations

import ast
import json
import re
import urllib.parse

from playwright.sync_api import expect
from test_browser import ALL_NAMES, name_cell, open_viewer, rows, run_row
from viewer_support import screenshot


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query).items()}


def address(viewer: str, **values) -> str:
    return f"{viewer}/?" + urllib.parse.urlencode(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})


def test_changing_the_view_updates_the_address(page, viewer, browser_store):
    _store, ids = browser_store
    open_viewer(page, viewer)
    for name in ("lr-0.1", "lr-0.01"):
        run_row(page, name).locator("input[type=checkbox]").click()
    page.get_by_role("button", name="Compare selected (2)").click()
    expect(page).to_have_url(re.compile(r"page=compare"))
    assert sorted(ast.literal_eval(query(page)["runs"])) == sorted([ids["lr-0.1"], ids["lr-0.01"]])

    page.locator(".bk-tab", has_text="Runs").click()
    box = page.locator(".nx-filter input")
    box.fill("lr < 0.05")
    box.press("Enter")
    expect(rows(page)).to_have_count(2)
    expect(page).to_have_url(re.compile(r"filter=lr"))
    assert query(page)["filter"] == "lr < 0.05" and query(page)["page"] == "runs"

    name_cell(page, "lr-0.001").click()
    expect(page.locator(".nx-run-status")).to_have_text("completed")
    expect(page).to_have_url(re.compile(r"page=run"))
    assert query(page)["run"] == ids["lr-0.001"]


def test_an_address_restores_its_view(page, viewer, browser_store):
    _store, ids = browser_store
    page.goto(address(viewer, page="compare", runs=[ids["lr-0.1"], ids["lr-0.001"]]))
    expect(page.locator(".bk-tab.bk-active").first).to_have_text("Compare")
    expect(page.get_by_text("Comparing 2 run(s).")).to_be_visible()
    screenshot(page, "address-compare")

    page.goto(address(viewer, filter="lr < 0.05 and bs == 64"))
    expect(rows(page)).to_have_count(1)
    expect(name_cell(page, "lr-0.001")).to_be_visible()
    expect(page.locator(".nx-filter input")).to_have_value("lr < 0.05 and bs == 64")

    page.goto(address(viewer, page="run", run=ids["exploding"]))
    expect(page.locator(".bk-tab.bk-active").first).to_have_text("Run")
    expect(page.locator(".nx-run-status")).to_have_text("failed")

    page.goto(f"{viewer}/?run={ids['exploding']}")  # the older ?run=<id> links open the run too
    expect(page.locator(".nx-run-status")).to_have_text("failed")


def test_the_header_counts_runs_by_status(page, viewer):
    open_viewer(page, viewer)
    expect(page.locator(".nx-totals")).to_have_text(f"{len(ALL_NAMES)} runs")
