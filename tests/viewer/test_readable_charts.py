"""Charts people can read (issue 14, point 4), in real Chromium against a real server.

The store holds the demo's four noisy runs (its real training, ``_demo.train``:
batch losses of 8 and 128 examples, 12,000 steps) and six runs of two learning
rates across three seeds, whose params are nested (``optim.lr``). What the page
drew is read from the bokeh document in the browser and checked against the
points in the store, reduced with numpy.
"""

from __future__ import annotations

import json
import time

import duckdb
import numpy as np
import pytest
from playwright.sync_api import expect
from viewer_support import screenshot, start_viewer, stop_process

from notebook_exp.store.queries.series import running_mean

DEMO = {f"lr={lr} bs={bs}": (lr, bs) for lr in (0.5, 0.002) for bs in (8, 128)}
DEMO_STEPS = 12_000
SEEDS = {f"lr={lr} seed={seed}": (lr, seed) for lr in (0.5, 0.05) for seed in range(3)}
SEED_STEPS = 4_000
LONG_NAME = ("a run whose name is far too long for its column " * 4).strip()
WIDTH = 1000  # the viewer's buckets per chart (state.DEFAULT_WIDTH)

#: Every visible line or band of the charts shown (live views only: a replaced figure's
#: models may linger in the document): renderer name, glyph type, tags and columns.
GLYPHS_JS = """() => {
  const out = [];
  const column = (data, key) => {
    const v = data instanceof Map ? data.get(key) : data[key];
    return v === undefined ? null : Array.from(v, Number);
  };
  for (const view of window.Bokeh.index.all_views()) {
    const m = view.model;
    if (typeof m.name !== 'string' || !m.name.startsWith('nx-') || !m.data_source || !m.visible) continue;
    const d = m.data_source.data;
    out.push({name: m.name, glyph: m.glyph.type, tags: Array.from(m.tags, String),
              x: column(d, 'x'), y: column(d, 'y'), y1: column(d, 'y1'), y2: column(d, 'y2')});
  }
  return out;
}"""

#: The legend labels of the charts shown.
LEGEND_JS = """() => {
  const out = [];
  for (const view of window.Bokeh.index.all_views()) {
    if (view.model.type !== 'Legend') continue;
    for (const item of view.model.items) {
      const label = item.label;
      out.push(typeof label === 'string' ? label : (label && label.value));
    }
  }
  return out;
}"""


# -- the store and the server ------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """(store path, {run name: run id}): the demo's noisy runs, seeds of two learning rates, a long name."""
    import notebook_exp as nx
    from notebook_exp._demo import train
    from notebook_exp.store import close_all

    path = tmp_path_factory.mktemp("noisy-store") / "store.duckdb"
    ids = {}
    for name, (lr, bs) in DEMO.items():
        with nx.start_run(name, experiment="demo-sweep", params={"lr": lr, "batch_size": bs}, store=path) as run:
            train(run, lr, bs, DEMO_STEPS)
        ids[name] = run.run_id
    for name, (lr, seed) in SEEDS.items():
        params = {"optim": {"lr": lr, "name": "sgd"}, "batch_size": 8, "seed": seed}
        with nx.start_run(name, experiment="seeds", params=params, store=path) as run:
            train(run, lr, 8, SEED_STEPS, seed=seed)
        ids[name] = run.run_id
    with nx.start_run(LONG_NAME, experiment="seeds", params={"lr": 1.0, "note": "x" * 80}, store=path) as run:
        run.log(loss=1.0, step=0)
    ids["long"] = run.run_id
    close_all()
    yield path, ids
    close_all()


@pytest.fixture(scope="module")
def noisy_viewer(noisy):
    proc, url = start_viewer(noisy[0])
    yield url
    stop_process(proc)


@pytest.fixture
def noisy_page(browser, noisy_viewer):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: (page.errors.append(str(exc)), print("page error:", exc.stack)))
    page.goto(noisy_viewer)
    page.locator(".nx-runs-table .tabulator-row").first.wait_for()
    yield page
    context.close()


def stored_losses(store, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's finite ``loss`` points, read with plain duckdb."""
    con = duckdb.connect(str(store), read_only=True)
    try:
        rows = con.execute("SELECT step, value FROM metrics WHERE run_id = ? AND key = 'loss' AND isfinite(value) "
                           "ORDER BY step", [run_id]).fetchall()
    finally:
        con.close()
    steps, values = zip(*rows, strict=True)
    return np.asarray(steps, dtype="float64"), np.asarray(values, dtype="float64")


def bucket_means(steps: np.ndarray, values: np.ndarray, width: int = WIDTH) -> dict[str, np.ndarray]:
    """numpy's own per-bucket reduction of a whole series (``width`` buckets over its steps)."""
    lo, hi = int(steps.min()), int(steps.max())
    bucket = ((steps - lo) * width // (hi - lo + 1)).astype(int)
    found = np.unique(bucket)
    pick = [bucket == b for b in found]
    return {"x": np.array([steps[p].mean() for p in pick]), "mean": np.array([values[p].mean() for p in pick]),
            "lo": np.array([values[p].min() for p in pick]), "hi": np.array([values[p].max() for p in pick])}


# -- helpers on the page -------------------------------------------------------------------
def glyphs(page, name: str | None = None) -> list[dict]:
    found = page.evaluate(GLYPHS_JS)
    return [g for g in found if name is None or g["name"] == name]


def drawn(page, name: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The ``count`` visible renderers called ``name`` once each has data."""
    deadline = time.monotonic() + timeout
    while True:
        found = [g for g in glyphs(page, name) if g["x"]]
        if len(found) == count or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return value


def compare(page, names) -> None:
    for name in names:
        cell = f'.tabulator-cell[tabulator-field="name"]:text-is({json.dumps(name)})'
        page.locator(".nx-runs-table .tabulator-row").filter(has=page.locator(cell)).locator(
            "input[type=checkbox]").click()
    page.get_by_role("button", name=f"Compare selected ({len(names)})").click()


# -- the compare chart ---------------------------------------------------------------------
def test_compare_of_noisy_runs_draws_mean_lines_over_min_max_bands(noisy_page, noisy):
    page, (store, ids) = noisy_page, noisy
    compare(page, list(DEMO))
    lines = drawn(page, "nx-curve", len(DEMO))
    bands = drawn(page, "nx-band", len(DEMO))
    assert len(lines) == len(bands) == len(DEMO), glyphs(page)
    assert {g["glyph"] for g in lines} == {"Line"} and {g["glyph"] for g in bands} == {"VArea"}
    band_of = {tuple(g["tags"]): g for g in bands}
    for line in lines:
        run_id, key = line["tags"]
        assert key == "loss" and run_id in {ids[n] for n in DEMO}
        expected = bucket_means(*stored_losses(store, run_id))
        band = band_of[(run_id, key)]
        # the line is each bucket's mean, the band its min..max, all from one DuckDB query
        np.testing.assert_allclose(line["x"], expected["x"])
        np.testing.assert_allclose(line["y"], expected["mean"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(band["y1"], expected["lo"], rtol=1e-12)
        np.testing.assert_allclose(band["y2"], expected["hi"], rtol=1e-12)
        assert len(line["x"]) == WIDTH  # 12 steps a bucket: the line is no smear of 12,000 points
        y, y1, y2 = (np.asarray(line["y"]), np.asarray(band["y1"]), np.asarray(band["y2"]))
        assert (y1 <= y + 1e-12).all() and (y <= y2 + 1e-12).all() and (y2 - y1).max() > 0
        assert y2.max() == stored_losses(store, run_id)[1].max()  # the highest spike stays visible
    assert any("lr=0.5 bs=8" == label for label in page.evaluate(LEGEND_JS))
    path = screenshot(page, "compare-mean-band")
    assert path.stat().st_size > 10_000

    page.locator(".nx-raw-toggle input").check()  # the raw view: each bucket's lowest and highest point
    raw = wait_for(lambda: [g for g in glyphs(page, "nx-curve") if len(g["x"]) > WIDTH])
    assert len(raw) == len(DEMO) and all(len(g["x"]) <= 2 * WIDTH for g in raw), glyphs(page, "nx-curve")
    assert not [g for g in glyphs(page, "nx-band") if g["x"]]
    for line in raw:
        values = stored_losses(store, line["tags"][0])[1]
        assert max(line["y"]) == values.max() and min(line["y"]) == values.min()
    assert page.errors == []


def test_grouping_by_a_nested_param_draws_one_line_per_group(noisy_page, noisy):
    page, (store, ids) = noisy_page, noisy
    compare(page, list(SEEDS))
    assert len(drawn(page, "nx-curve", len(SEEDS))) == len(SEEDS)
    page.locator(".nx-group-by select").select_option("optim.lr")
    groups = drawn(page, "nx-group", 2)
    assert len(groups) == 2, glyphs(page)
    assert not [g for g in glyphs(page, "nx-curve") if g["x"]]  # one line per group, none per run
    labels = [label for label in page.evaluate(LEGEND_JS) if label and label.startswith("optim.lr")]
    assert labels == ["optim.lr = 0.05 (3 runs)", "optim.lr = 0.5 (3 runs)"]
    bands = {tuple(g["tags"]): g for g in drawn(page, "nx-band", 2)}
    for line in groups:
        name, value, key = line["tags"]
        assert (name, key) == ("optim.lr", "loss")
        members = [ids[n] for n, (lr, _seed) in SEEDS.items() if str(lr) == value]
        per_run = np.array([bucket_means(*stored_losses(store, r))["mean"] for r in members])
        np.testing.assert_allclose(line["y"], per_run.mean(axis=0), rtol=1e-9)  # the mean across seeds
        band = bands[tuple(line["tags"])]
        np.testing.assert_allclose(band["y1"], per_run.min(axis=0), rtol=1e-9)
        np.testing.assert_allclose(band["y2"], per_run.max(axis=0), rtol=1e-9)
    screenshot(page, "compare-grouped")

    page.locator(".nx-band select").select_option(label="\u00b11 std")
    line = groups[0]
    members = [ids[n] for n, (lr, _seed) in SEEDS.items() if str(lr) == line["tags"][1]]
    spread = np.array([bucket_means(*stored_losses(store, r))["mean"] for r in members]).std(axis=0)

    def upper() -> np.ndarray:  # the band's top above the group's mean
        band = next(g for g in glyphs(page, "nx-band") if g["tags"] == line["tags"])
        return np.asarray(band["y2"]) - np.asarray(line["y"])

    wait_for(lambda: np.allclose(upper(), spread, rtol=1e-6, atol=1e-12))
    np.testing.assert_allclose(upper(), spread, rtol=1e-6, atol=1e-12)  # mean + one std across seeds
    assert page.errors == []


# -- the run page -------------------------------------------------------------------------------
def test_run_page_chart_draws_means_and_bands(noisy_page, noisy):
    page, (store, ids) = noisy_page, noisy
    run_id = ids["lr=0.5 bs=8"]
    page.locator('.nx-runs-table .tabulator-cell[tabulator-field="name"]:text-is("lr=0.5 bs=8")').click()
    expect(page.locator(".nx-run-status")).to_have_text("completed")
    lines = drawn(page, "nx-curve", 3)  # acc, loss, loss_smooth
    assert sorted(g["tags"][1] for g in lines) == ["acc", "loss", "loss_smooth"]
    loss = next(g for g in lines if g["tags"] == [run_id, "loss"])
    expected = bucket_means(*stored_losses(store, run_id))
    np.testing.assert_allclose(loss["y"], expected["mean"], rtol=1e-9)
    bands = [g for g in drawn(page, "nx-band", 3) if g["tags"] == [run_id, "loss"]]
    assert bands and max(bands[0]["y2"]) == expected["hi"].max()
    assert page.locator(".nx-group-by:visible").count() == 0  # one run: nothing to group
    screenshot(page, "run-mean-band")

    page.locator(".nx-smoother select").select_option(label="running mean")  # a window of 20 points
    expect(page.locator(".nx-running-window")).to_be_visible()
    smooth = running_mean(expected["mean"], 20)

    def smoothed():
        line = next((g for g in glyphs(page, "nx-curve") if g["tags"] == [run_id, "loss"]), None)
        return line is not None and np.allclose(line["y"], smooth, rtol=1e-9)

    assert wait_for(smoothed), "the loss line is not the running mean of its bucket means"
    faint = [g for g in glyphs(page, "nx-raw") if g["tags"] == [run_id, "loss"]]
    np.testing.assert_allclose(faint[0]["y"], expected["mean"], rtol=1e-9)  # the unsmoothed line, faint
    screenshot(page, "run-running-mean")
    assert page.errors == []


# -- the runs table -----------------------------------------------------------------------------
def test_runs_table_at_1400px_shows_the_whole_run_id_column(noisy_page, noisy):
    page, (_store, ids) = noisy_page, noisy
    rows = page.locator(".nx-runs-table .tabulator-row")
    expect(rows).to_have_count(len(ids))
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # the page fits the window
    holder = page.locator(".nx-runs-table .tabulator-tableholder")
    assert holder.evaluate("el => el.scrollWidth > el.clientWidth")  # many columns: the table scrolls sideways

    def run_id_column() -> list[str]:
        header = page.locator('.nx-runs-table .tabulator-col[tabulator-field="run_id"]')
        expect(header).to_contain_text("run id")
        # Every run-id cell measured in one go in the page (evaluate_all: the table is in a
        # shadow root), so a re-render between two measurements cannot hand back a cell that is gone.
        cells = page.locator(
            '.nx-runs-table .tabulator-col[tabulator-field="run_id"],'
            ' .nx-runs-table .tabulator-cell[tabulator-field="run_id"]'
        ).evaluate_all("""els => els.map(el => {
            const box = el.getBoundingClientRect();
            return {left: box.left, right: box.right, cut: el.scrollWidth > el.clientWidth,
                    text: el.innerText.trim(), header: el.classList.contains("tabulator-col")};
        })""")
        assert [c["header"] for c in cells].count(True) == 1, cells
        for cell in cells:
            assert cell["left"] >= 0 and cell["right"] <= 1400, cell
            assert not cell["cut"], cell  # no id cut short
        return [c["text"] for c in cells if not c["header"]]

    assert sorted(run_id_column()) == sorted(ids.values())
    screenshot(page, "runs-table-1400")
    holder.evaluate("el => { el.scrollLeft = el.scrollWidth; }")  # scrolled to the last param column
    assert sorted(run_id_column()) == sorted(ids.values())  # the run id column stays in view
    long_name = page.locator(f'.nx-runs-table .tabulator-cell[tabulator-field="name"]:text-is("{LONG_NAME}")')
    box = long_name.bounding_box()
    assert box["width"] <= 330  # a long name is cut short with an ellipsis, not the run id
    screenshot(page, "runs-table-1400-scrolled")
    assert page.errors == []


# -- the chart's controls, server side (the same models the browser gets) ------------------------
def _renderers(chart, name: str) -> dict[tuple, dict]:
    return {tuple(r.tags): r.data_source.data for r in chart.figure.renderers if r.name == name}


def test_smoothing_band_and_raw_controls(noisy):
    from notebook_exp_viewer.components.metric_chart import MetricChart
    from notebook_exp_viewer.state import ViewerState

    from notebook_exp.store.queries import ema

    store, ids = noisy
    run_id = ids["lr=0.5 bs=8"]
    chart = MetricChart(ViewerState(store))
    chart.set_series([run_id], ["loss"])
    want = bucket_means(*stored_losses(store, run_id))
    pair = (run_id, "loss")
    np.testing.assert_allclose(_renderers(chart, "nx-curve")[pair]["y"], want["mean"], rtol=1e-9)
    assert len(_renderers(chart, "nx-raw")[pair]["x"]) == 0  # nothing faint while unsmoothed

    chart.smoothing.value = 0.6  # EMA of the bucket means; the band stays the raw min..max
    np.testing.assert_allclose(_renderers(chart, "nx-curve")[pair]["y"], ema(want["mean"], 0.6), rtol=1e-9)
    np.testing.assert_allclose(_renderers(chart, "nx-raw")[pair]["y"], want["mean"], rtol=1e-9)
    np.testing.assert_allclose(_renderers(chart, "nx-band")[pair]["y2"], want["hi"])

    chart.smoother.value = "mean"  # a trailing running mean over a window of points
    assert chart.window_points.visible and not chart.smoothing.visible
    chart.window_points.value = 10
    np.testing.assert_allclose(_renderers(chart, "nx-curve")[pair]["y"], running_mean(want["mean"], 10), rtol=1e-9)
    chart.window_points.value = 1
    assert not chart.smoothed and len(_renderers(chart, "nx-raw")[pair]["x"]) == 0

    chart.band.value = "std"
    band, buckets = _renderers(chart, "nx-band")[pair], chart.buckets
    np.testing.assert_allclose(band["y1"], buckets["mean"] - buckets["std"])
    np.testing.assert_allclose(band["y2"], buckets["mean"] + buckets["std"])
    chart.band.value = "none"
    assert len(_renderers(chart, "nx-band")[pair]["x"]) == 0

    chart.raw.value = True  # today's view: each bucket's lowest and highest point, no band
    raw = _renderers(chart, "nx-curve")[pair]
    assert len(raw["x"]) == len(chart.points) > len(want["x"])
    assert max(raw["y"]) == stored_losses(store, run_id)[1].max()
    assert all(len(d["x"]) == 0 for d in _renderers(chart, "nx-band").values())


def test_groups_follow_the_param_and_runs_without_it_form_their_own(noisy):
    from notebook_exp_viewer.components.metric_chart import MetricChart
    from notebook_exp_viewer.state import ViewerState

    store, ids = noisy
    runs = [ids[n] for n in SEEDS] + [ids["long"]]
    chart = MetricChart(ViewerState(store))
    chart.set_series(runs, ["loss"], {r: r for r in runs})
    assert chart.group_by.visible and "optim.lr" in chart.group_by.options and "seed" in chart.group_by.options
    chart.group_by.value = "optim.lr"
    labels = [item.label.value for item in chart.figure.legend[0].items]
    assert labels == ["optim.lr = 0.05 (3 runs)", "optim.lr = 0.5 (3 runs)", "optim.lr = (not set) (1 run)"]
    groups = {tuple(r.tags) for r in chart.figure.renderers if r.name == "nx-group"}
    assert groups == {("optim.lr", "0.05", "loss"), ("optim.lr", "0.5", "loss"), ("optim.lr", "(not set)", "loss")}
    assert not [r for r in chart.figure.renderers if r.name == "nx-curve"]
    chart.group_by.value = "seed"  # another param: three groups of two, and the run without it
    assert len([r for r in chart.figure.renderers if r.name == "nx-group"]) == 4
    chart.raw.value = True  # raw points are each run's own: grouping waits
    assert chart.group_by.disabled and len([r for r in chart.figure.renderers if r.name == "nx-curve"]) == len(runs)
    chart.raw.value = False
    assert len([r for r in chart.figure.renderers if r.name == "nx-group"]) == 4
    chart.set_series(runs[:1], ["loss"])  # one run: nothing to group
    assert not chart.group_by.visible
    assert [r.name for r in chart.figure.renderers if r.name in ("nx-curve", "nx-group")] == ["nx-curve"]


# -- every page fits the window ------------------------------------------------------------------
#: What each page shows once its data arrived (a locator), by the address that opens it.
PAGE_READY = {
    "runs": ".nx-runs-table .tabulator-row",
    "compare": ".bk-Canvas",
    "run": ".nx-run-status",
    "sweeps": ".bk-tab.bk-active",
    "queue": ".nx-queue-note, .nx-queue .tabulator-row",
}


#: The right edge of every shown chart canvas, through bokeh's nested shadow roots.
CANVAS_RIGHTS_JS = """() => {
  const out = [];
  const walk = root => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') {
        const box = el.getBoundingClientRect();
        if (box.width > 0 && box.height > 0) out.push(box.right);
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return out;
}"""


@pytest.mark.parametrize("width", [1000, 1400])
def test_every_page_fits_the_window_at_1000_and_1400_px(browser, noisy_viewer, noisy, width):
    """Each page, opened by its address, is no wider than the window (a wide table scrolls inside
    itself), its charts end inside it, nothing fails in the page and nothing is fetched from
    another host (the viewer works offline); a screenshot of each."""
    import urllib.parse

    _store, ids = noisy
    seeds = [ids[name] for name in SEEDS]
    queries = {"runs": {}, "compare": {"runs": json.dumps(seeds)}, "run": {"run": ids["lr=0.5 bs=8"]},
               "sweeps": {}, "queue": {}}
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors, hosts = [], set()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: hosts.add(urllib.parse.urlsplit(request.url).netloc)
            if request.url.startswith(("http:", "https:", "ws:", "wss:")) else None)  # not data: or blob:
    try:
        for name, query in queries.items():
            page.goto(f"{noisy_viewer}/?" + urllib.parse.urlencode({"page": name, **query}))
            expect(page.locator(".bk-tab.bk-active").first).to_have_text(name.capitalize())
            page.locator(PAGE_READY[name]).first.wait_for(timeout=30_000)
            time.sleep(0.5)  # the layout settles (charts size themselves to the page)
            assert page.evaluate("document.documentElement.scrollWidth") <= width, name
            rights = page.evaluate(CANVAS_RIGHTS_JS)
            if name in ("compare", "run"):
                assert rights, f"{name}: no chart drawn"
            assert all(right <= width + 1 for right in rights), f"{name}: a chart ends past the window: {rights}"
            screenshot(page, f"page-{name}-{width}")
        assert errors == []
        assert hosts == {urllib.parse.urlsplit(noisy_viewer).netloc}  # nothing from elsewhere: works offline
    finally:
        context.close()
