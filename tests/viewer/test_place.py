"""The viewer as a place, in real Chromium against a real server: every page with data, at 1,000
and 1,400 px, fits the window (no sideways scrolling of the page, the run id column never cut), loads
nothing from anywhere but the viewer server, shows each status in one colour everywhere, and is kept
as a screenshot.

Screenshots go where ``viewer_support.screenshot`` puts them: ``test-artifacts/viewer-<name>.png`` at
the repository's root (ignored by git); here ``viewer-page-<page>-<width>.png`` for the Runs, Compare,
Run, Sweeps and Queue pages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from playwright.sync_api import expect
from viewer_support import EXPECT_TIMEOUT_MS, screenshot, start_viewer, stop_process

from notebook_exp._style import STATUS_COLORS

#: A sweep of three runs, a failed run, then three one-GPU runs on one virtual GPU (one running, two
#: queued) that hold on until the gate file appears; prints the run ids once all that is in the store.
MAKE_PLACE = """
    import json, math, pathlib, sys, time
    import notebook_exp as nx
    from notebook_exp.scheduler import sweeps

    gate = pathlib.Path(sys.argv[1])

    def train(run, lr):
        for step in range(200):
            run.log(loss=math.exp(-lr * 30 * step / 200) + 0.02 * math.sin(step), step=step)

    sweep = sweeps.sweep(train, {"lr": [0.1, 0.01, 0.001]}, experiment="place")
    nx.wait(sweep, timeout=120)
    try:
        with nx.start_run("exploding", experiment="place", params={"lr": 5.0}) as run:
            run.log(loss=1.0, step=0)
            raise FloatingPointError("diverged")
    except FloatingPointError:
        pass

    def hold(run, i):
        while not gate.exists():
            run.log(k=float(i))
            time.sleep(0.05)

    jobs = [nx.submit(hold, {"i": i}, gpus=1, name=f"held-{i}", experiment="place-queue") for i in range(3)]
    deadline = time.monotonic() + 60
    while jobs[0].status.value != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"sweep": [job.run_id for job in sweep], "failed": run.run_id}), flush=True)
    nx.wait(jobs, timeout=300)
"""
WIDTHS = (1000, 1400)
#: The boxes of a table's run id header and cells (null while the table is being re-rendered).
RUN_ID_BOXES_JS = """(table) => {
  const find = (root, css, out = []) => {  // querySelectorAll through every shadow root (Panel's models)
    for (const scope of [root, root.shadowRoot].filter(Boolean)) {
      scope.querySelectorAll(css).forEach((el) => out.push(el));
      scope.querySelectorAll('*').forEach((el) => el.shadowRoot && find(el.shadowRoot, css, out));
    }
    return out;
  };
  const root = find(document, table)[0];
  const holder = root && find(root, '.tabulator-tableholder')[0];
  const cells = root ? find(root, '.tabulator-col[tabulator-field="run_id"], .tabulator-cell[tabulator-field="run_id"]')
                     : [];
  if (!holder || cells.length < 2 || cells.some((el) => !el.isConnected)) return null;
  const box = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  return {holder: box(holder), cells: [...new Set(cells)].map((el) => ({...box(el), text: el.innerText.trim(),
                                                                       cut: el.scrollWidth > el.clientWidth}))};
}"""
PAGES = ("runs", "compare", "run", "sweeps", "queue")


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """(viewer url, run ids): a viewer on a store with runs, a sweep, a failed run and a live queue."""
    folder = tmp_path_factory.mktemp("place")
    store, gate = folder / "store.duckdb", folder / "gate"
    env = {"NOTEBOOK_EXP_STORE": str(store), "NOTEBOOK_EXP_LOCK_DIR": str(folder / "locks"),
           "NOTEBOOK_EXP_FAKE_GPUS": "1", "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0",
           "NOTEBOOK_EXP_FLUSH_INTERVAL": "0.05", "NOTEBOOK_EXP_MAX_CONCURRENT": "4"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)  # the viewer below reads the same lock folder and virtual GPU
        maker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(MAKE_PLACE), str(gate)],
                                 env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = maker.stdout.readline()
            assert line, maker.communicate(timeout=30)[1]
            ids = json.loads(line)
            proc, url = start_viewer(store, refresh=0.5)
        except BaseException:
            maker.kill()
            maker.communicate()
            raise
    try:
        yield url, ids
    finally:
        stop_process(proc)
        gate.touch()
        try:
            maker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            maker.kill()
            maker.communicate()


@pytest.fixture
def open_page(browser, place):
    """Open the viewer at a width; the page records requests leaving the server and failed responses."""
    contexts = []
    url = place[0]

    def open_at(width: int, query: str = ""):
        context = browser.new_context(viewport={"width": width, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(EXPECT_TIMEOUT_MS)
        page.elsewhere, page.failed, page.errors = [], [], []
        page.on("request", lambda r: None if r.url.startswith((url, "blob:", "data:")) else page.elsewhere.append(r.url))
        page.on("response", lambda r: page.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: page.failed.append(f"failed {r.url}"))
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.goto(f"{url}/{query}")
        page.locator(".nx-runs-table .tabulator-row, .nx-run-status, .nx-info").first.wait_for()
        return page

    yield open_at
    for context in contexts:
        context.close()


def go(page, name: str) -> None:
    """Open a page through the header's navigation."""
    page.locator(".nx-nav .bk-tab", has_text=re.compile(f"^{name}$", re.IGNORECASE)).click()
    expect(page).to_have_url(re.compile(f"page={name}"))


def rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def fits(page, width: int) -> None:
    """The page does not scroll sideways: nothing is wider than the window."""
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] <= width, widths


def run_ids_in_view(page, table: str, width: int) -> list[str]:
    """The run id column of a table: header and every cell inside the window and the table, none cut
    (measured again while the live refresh re-renders the table under the measurement)."""
    deadline = time.monotonic() + EXPECT_TIMEOUT_MS / 1000
    while True:
        boxes = page.evaluate(RUN_ID_BOXES_JS, table)
        if boxes is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert boxes, f"no run id column in {table}"
    right = min(width, boxes["holder"]["right"])
    for cell in boxes["cells"]:
        assert 0 <= cell["left"] and cell["right"] <= right, (cell, right)
        assert not cell["cut"], cell
    return [cell["text"] for cell in boxes["cells"][1:]]


def chart_fits(page, css: str, width: int) -> None:
    canvas = page.locator(f"{css} canvas").first
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_the_window_loads_only_from_the_server_and_is_kept(open_page, place, width):
    _url, ids = place
    page = open_page(width)
    header = page.locator(".nx-header-bar")
    expect(header.locator(".nx-project")).to_have_text("place0")
    expect(header.locator(".nx-store-path")).to_contain_text("store.duckdb")
    expect(header.locator(".nx-totals")).to_have_text("7 runs")
    expect(header.locator('.nx-live-count[data-status="running"]')).to_have_text("1 running")
    expect(header.locator('.nx-live-count[data-status="queued"]')).to_have_text("2 queued")
    expect(page.locator(".nx-nav .bk-tab")).to_have_text(["Runs", "Compare", "Run", "Sweeps", "Queue"])

    expect(page.locator(".nx-runs-table .tabulator-row")).to_have_count(7)
    listed = run_ids_in_view(page, ".nx-runs-table", width)
    assert set(ids["sweep"]) <= set(listed)
    fits(page, width)
    screenshot(page, f"page-runs-{width}")

    for name in ids["sweep"][:2]:
        page.locator(".nx-runs-table .tabulator-row").filter(
            has=page.locator(f'[tabulator-field="run_id"]:text-is("{name}")')).locator("input[type=checkbox]").click()
    go(page, "compare")
    expect(page.get_by_text("Comparing 2 run(s).")).to_be_visible()
    chart_fits(page, ".nx-compare-chart", width)
    fits(page, width)
    screenshot(page, f"page-compare-{width}")

    go(page, "runs")
    page.locator('.nx-runs-table .tabulator-cell[tabulator-field="name"]', has_text="exploding").click()
    expect(page).to_have_url(re.compile("page=run"))
    expect(page.locator(".nx-run-status")).to_have_text("failed")
    expect(page.locator("pre.nx-error")).to_contain_text("FloatingPointError: diverged")
    chart_fits(page, ".nx-run-chart", width)
    fits(page, width)
    screenshot(page, f"page-run-{width}")

    go(page, "sweeps")
    expect(page.locator(".nx-sweeps .tabulator-row")).to_have_count(1)
    expect(page.locator('.nx-sweeps [tabulator-field="completed"]').last).to_have_text("3")
    fits(page, width)
    screenshot(page, f"page-sweeps-{width}")

    go(page, "queue")
    expect(page.locator(".nx-queue .tabulator-row")).to_have_count(3)
    assert len(run_ids_in_view(page, ".nx-queue", width)) == 3
    expect(page.locator(".nx-gpu")).to_have_count(1)
    fits(page, width)
    screenshot(page, f"page-queue-{width}")

    assert page.elsewhere == [], "the page must load nothing from anywhere but the viewer server"
    assert page.failed == [], page.failed
    assert page.errors == []


def test_one_status_colour_on_every_page(open_page, place):
    _url, ids = place
    page = open_page(1400)

    def color(element, prop: str = "color") -> str:
        """The colour the text (or badge) is drawn in: that of the innermost element holding it."""
        element = element.first
        expect(element).to_be_visible()
        deadline = time.monotonic() + EXPECT_TIMEOUT_MS / 1000
        while True:  # (none while a refresh re-renders the table: the cell is detached)
            found = element.evaluate(f"el => {{ while (el.firstElementChild) el = el.firstElementChild; "
                                     f"return el.isConnected ? getComputedStyle(el).{prop} : ''; }}")
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def status_cell(table: str, status: str):
        return page.locator(f'{table} .tabulator-cell[tabulator-field="status"]').filter(
            has_text=re.compile(f"^{status}$"))

    seen: dict[str, set[str]] = {s: set() for s in STATUS_COLORS}
    for status in ("completed", "failed", "running", "queued"):
        seen[status].add(color(status_cell(".nx-runs-table", status)))
    for status in ("running", "queued"):
        seen[status].add(color(page.locator(f'.nx-header-bar .nx-live-count[data-status="{status}"]'),
                               "backgroundColor"))
    go(page, "queue")
    for status in ("running", "queued"):
        seen[status].add(color(status_cell(".nx-queue", status)))
    go(page, "sweeps")
    seen["completed"].add(color(page.locator('.nx-sweeps .tabulator-cell[tabulator-field="completed"]')))
    page.goto(f"{place[0]}/?run={ids['failed']}")
    seen["failed"].add(color(page.locator(".nx-run-status")))
    page.goto(f"{place[0]}/?run={ids['sweep'][0]}")
    seen["completed"].add(color(page.locator(".nx-run-status")))
    for status in ("completed", "failed", "running", "queued"):
        assert seen[status] == {rgb(STATUS_COLORS[status])}, (status, seen[status])


def test_the_header_names_the_project_the_store_belongs_to(tmp_path):
    from notebook_exp_viewer.app import project_name

    assert project_name(tmp_path / "mnist" / ".notebook_exp" / "store.duckdb") == "mnist"  # the default place
    assert project_name(tmp_path / "runs.duckdb") == tmp_path.name
