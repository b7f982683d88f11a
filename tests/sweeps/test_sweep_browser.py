"""A sweep over a nested pydantic config in the viewer, in real Chromium against a real server:
the filter language takes dotted names, the Sweeps page shows progress and the best run, Compare takes
a whole sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "viewer"))

from viewer_support import EXPECT_TIMEOUT_MS, chromium, screenshot, start_viewer, stop_process  # noqa: E402

MAKE_STORE = textwrap.dedent('''
    import json, math, time
    from pydantic import BaseModel
    import notebook_exp as nx
    from notebook_exp.scheduler import sweeps
    from notebook_exp.scheduler.stopping import MedianStop

    class Optim(BaseModel):
        name: str = "adam"
        lr: float = 0.1

    class Config(BaseModel):
        optim: Optim = Optim()
        model: dict = {"layers": [64, 64]}

    def train(run, optim, model):
        bad = optim["lr"] > 0.05
        for step in range(300):
            run.log(**{"val/loss": (3.0 if bad else 0.0) + math.exp(-step / 100) + optim["lr"]}, step=step)
            time.sleep(0.002)

    with nx.start_run("plain", params={"lr": 0.5}) as run:
        run.log(**{"val/loss": 9.0}, step=0)
    sweep = sweeps.sweep(train, {"optim.lr": [0.01, 0.02, 0.1, 0.2]}, base=Config(), experiment="sw",
                         stop=MedianStop("val/loss", grace=20, min_runs=3))
    nx.wait(sweep, timeout=120)
    print(json.dumps({"sweep": sweep.id, "statuses": [job.status.value for job in sweep]}))
''')


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """(store path, sweep id): a store written by a real sweep in a fresh interpreter."""
    path = tmp_path_factory.mktemp("sweep-store") / "store.duckdb"
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(path), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0",
           "NOTEBOOK_EXP_FLUSH_INTERVAL": "0.05", "NOTEBOOK_EXP_MAX_CONCURRENT": "4",
           "NOTEBOOK_EXP_LOCK_DIR": str(path.parent / "locks")}
    done = subprocess.run([sys.executable, "-c", MAKE_STORE], env=env, capture_output=True, text=True, timeout=180,
                          check=True)
    made = json.loads(done.stdout.strip().splitlines()[-1])
    assert made["statuses"] == ["completed", "completed", "cancelled", "cancelled"], done.stdout
    return path, made["sweep"]


@pytest.fixture(scope="module")
def viewer(sweep_store):
    proc, url = start_viewer(sweep_store[0])
    yield url
    stop_process(proc)


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser, viewer):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(EXPECT_TIMEOUT_MS)
    page.goto(viewer)
    page.locator(".nx-runs-table .tabulator-row").first.wait_for()
    yield page
    context.close()


def names(page):
    return page.locator('.nx-runs-table .tabulator-cell[tabulator-field="name"]')


def test_the_filter_takes_a_dotted_param_name(page):
    from playwright.sync_api import expect

    expect(names(page)).to_have_count(5)
    expect(page.locator(".nx-runs-table .tabulator-col-title", has_text="optim.lr")).to_be_visible()
    box = page.locator(".nx-filter input")
    box.fill("optim.lr < 0.05")
    box.press("Enter")
    expect(names(page)).to_have_count(2)
    expect(names(page)).to_have_text(["optim.lr=0.02", "optim.lr=0.01"], ignore_case=False)
    screenshot(page, "sweep-filter-dotted")


def test_sweeps_page_shows_progress_and_best_and_compares_the_sweep(page, sweep_store):
    from playwright.sync_api import expect

    page.locator(".bk-tab", has_text="Sweeps").click()
    row = page.locator(".nx-sweeps .tabulator-row")
    expect(row).to_have_count(1)
    expect(row.locator('[tabulator-field="sweep_id"]')).to_have_text(sweep_store[1])
    expect(row.locator('[tabulator-field="progress"]')).to_have_text("4/4")
    expect(row.locator('[tabulator-field="stopped_early"]')).to_have_text("2")
    expect(row.locator('[tabulator-field="completed"]')).to_have_text("2")
    expect(row.locator('[tabulator-field="best_run"]')).to_have_text("optim.lr=0.01")
    expect(row.locator('[tabulator-field="rule"]')).to_have_text("MedianStop")
    screenshot(page, "sweeps-page")
    row.locator('[tabulator-field="experiment"]').click()  # a sweep's row: compare all its runs
    expect(page.locator(".nx-info", has_text="Comparing 4 run(s).")).to_be_visible()
    diff = page.locator(".nx-params-diff .tabulator-row")
    expect(diff).to_have_count(1)  # only optim.lr differs; optim.name and model.layers are the same
    expect(diff.first.locator('[tabulator-field="param"]')).to_have_text("optim.lr")
    screenshot(page, "sweep-compare")
