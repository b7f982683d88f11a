"""The example notebooks (notebooks/*.ipynb), their light charts, and the demo's sweep.

The notebooks are saved with their outputs (``notebooks/execute.py`` writes
them); nbval compares a fresh run with those outputs, cell by cell.
"""

import ast
import base64
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "nbval_sanitize.cfg"
NAMES = ["01_quickstart.ipynb", "02_gpu_scheduling.ipynb", "03_logging_and_queries.ipynb"]
MAX_SECONDS = 60  # each notebook, top to bottom, in a fresh kernel (the cap)
MAX_BYTES = 500_000  # each notebook file, besides its one copy of BokehJS
BOKEHJS_MARK = "data-nx-bokehjs="
BUNDLE = re.compile(r'const data = "([A-Za-z0-9+/=]+)";')
CHROMIUM = "/usr/bin/chromium"
SUBMITS = ("%%experiment", "nx.submit(", "nx.sweep(")
WAITS = ("%experiment_wait", "nx.wait(", "--wait")


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def html_outputs(cell) -> list[str]:
    return [out["data"]["text/html"] for out in cell.get("outputs", [])
            if "data" in out and "text/html" in out["data"]]


def all_html(nb) -> str:
    return "".join(text for cell in code_cells(nb) for text in html_outputs(cell))


def bokehjs() -> str:
    from bokeh.resources import Resources

    return "\n".join(Resources(mode="inline", components=["bokeh"]).js_raw)


def shows_something(source: str) -> bool:
    """Whether a cell prints or displays: a print() anywhere, or a last bare expression
    (magics included, as IPython runs them)."""
    python = TransformerManager().transform_cell(source)
    tree = ast.parse(python)
    calls_print = any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                      for node in ast.walk(tree))
    return calls_print or bool(tree.body and isinstance(tree.body[-1], ast.Expr))


def execute(nb, path: Path, timeout: int = 120) -> nbformat.NotebookNode:
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                                     resources={"metadata": {"path": str(path)}})
    client.execute()
    return nb


def test_the_notebooks_are_the_ones_described():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_cell_that_shows_something_has_its_output_saved(name):
    nb = load(name)
    showing = [cell for cell in code_cells(nb) if shows_something(cell.source)]
    assert len(showing) >= 5
    for cell in showing:
        assert cell.outputs, f"{name}: no saved output for\n{cell.source}"
    for cell in code_cells(nb):
        assert cell.execution_count is not None, f"{name}: a cell was never run:\n{cell.source}"
        for out in cell.outputs:
            assert out.output_type != "error", f"{name}: saved an error: {out.get('evalue')}"
            assert out.get("name") != "stderr", f"{name}: saved stderr: {out.get('text')}"


@pytest.mark.parametrize("name", NAMES)
def test_widgets_in_outputs_have_their_state_saved(name):
    nb = load(name)
    views = [out["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for cell in code_cells(nb) for out in cell.outputs
             if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    assert set(views) <= set(state), f"{name}: widget views without saved state"
    if views:  # the saved state is the final one: no card is left queued or running
        texts = json.dumps([m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel"])
        assert ">completed<" in texts and ">running<" not in texts and ">queued<" not in texts


@pytest.mark.parametrize("name", NAMES)
def test_the_first_cell_picks_a_fresh_store_and_declares_virtual_gpus_plainly(name):
    first = code_cells(load(name))[0]
    assert 'os.environ["NOTEBOOK_EXP_STORE"]' in first.source and "tempfile.mkdtemp" in first.source
    assert 'os.environ["NOTEBOOK_EXP_FAKE_GPUS"] = "2"' in first.source
    text = "".join(out.get("text", "") for out in first.outputs)
    assert text.startswith("No NVIDIA GPU on this machine: this notebook declares 2 virtual GPUs"), text


@pytest.mark.parametrize("name", NAMES)
def test_a_blocking_wait_follows_the_last_submission(name):
    sources = [cell.source for cell in code_cells(load(name))]
    submitted = [i for i, s in enumerate(sources) if any(k in s for k in SUBMITS)]
    waited = [i for i, s in enumerate(sources) if any(k in s for k in WAITS)]
    assert submitted and waited and max(waited) >= max(submitted), (submitted, waited)
    last = sources[max(submitted)]
    assert max(waited) > max(submitted) or any(k in last for k in WAITS), last


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_is_light_and_carries_bokehjs_at_most_once(name):
    path = NOTEBOOKS / name
    text = path.read_text(encoding="utf-8")
    bundles = BUNDLE.findall(all_html(load(name)))
    assert text.count(BOKEHJS_MARK) == len(bundles) <= 1
    size = path.stat().st_size - sum(len(b) for b in bundles)
    print(f"{name}: {path.stat().st_size / 1000:.0f} kB on disk, {size / 1000:.0f} kB besides BokehJS")
    assert size <= MAX_BYTES
    assert "cdn.bokeh.org" not in text and "<iframe" not in text


def test_the_quickstart_has_two_charts_and_the_bokehjs_bundle_once():
    nb = load("01_quickstart.ipynb")
    charts = [cell for cell in code_cells(nb) if any("nx-metric-plot" in h for h in html_outputs(cell))]
    assert len(charts) == 2
    first, second = ("".join(html_outputs(c)) for c in charts)
    assert first.count(BOKEHJS_MARK) == 1 and second.count(BOKEHJS_MARK) == 0
    (data,) = BUNDLE.findall(first)
    assert gzip.decompress(base64.b64decode(data)).decode("utf-8") == bokehjs()  # the whole of bokeh.min.js
    assert len(second) < 100_000 < len(first)  # the second chart: its data and script only


def test_the_saved_charts_render_in_chromium_without_network():
    """The quickstart's two saved chart outputs, in order, on one page: the first loads
    BokehJS from the notebook itself, the second waits for it; nothing is fetched."""
    from playwright import sync_api as playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run .ci/run (it installs it)"
    nb = load("01_quickstart.ipynb")
    charts = [h for cell in code_cells(nb) for h in html_outputs(cell) if "nx-metric-plot" in h]
    requests, errors = [], []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.route("http*://**", lambda route: (requests.append(route.request.url), route.abort()))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_content(f"<html><body>{''.join(charts)}</body></html>")
        page.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.length == 2", timeout=30_000)
        lines = page.evaluate("() => Bokeh.documents.map(d => d.roots()[0].renderers.length)")
        version = page.evaluate("() => Bokeh.version")
        browser.close()
    import bokeh

    assert requests == [] and errors == []
    assert version == bokeh.__version__
    assert lines == [7, 3]  # baseline + 6 sweep runs; the 3 runs of batch size 8


@pytest.mark.slow
def test_charts_carry_bokehjs_once_per_kernel_and_again_when_its_cell_reruns(tmp_path, store_path):
    """In a real kernel: the first chart carries BokehJS, later ones do not; running the
    carrying cell again (nbclient sends no cell id: the same source) carries it again."""
    plot = "table.plot('loss')"
    cells = [
        "import notebook_exp as nx\n"
        "for lr in (0.1, 0.5):\n"
        "    with nx.start_run(f'lr={lr}', experiment='charts') as run:\n"
        "        for step in range(20):\n"
        "            run.log(loss=1 / (1 + lr * step), acc=lr, step=step)\n"
        "table = nx.runs('charts')",
        plot, "table.plot('acc')", "table.plot('loss', smooth=0.5); table.plot('loss', logy=True)", plot,
        "from IPython.display import display\ndisplay(table.plot('loss', x='time'), table.plot('acc'))",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    execute(nb, tmp_path)
    counts = [sum(h.count(BOKEHJS_MARK) for h in html_outputs(cell)) for cell in nb.cells[1:]]
    charts = [sum("nx-metric-plot" in h for h in html_outputs(cell)) for cell in nb.cells[1:]]
    assert charts == [1, 1, 1, 1, 2]
    assert counts == [1, 0, 0, 1, 0]
    assert all(BUNDLE.search(h) is None for cell in nb.cells[2:4] for h in html_outputs(cell))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_runs_top_to_bottom_in_a_fresh_kernel_within_the_cap(name, tmp_path):
    nb = load(name)
    for cell in code_cells(nb):
        cell.outputs = []
    started = time.perf_counter()
    execute(nb, NOTEBOOKS)
    took = time.perf_counter() - started
    print(f"{name}: executed in {took:.1f} s")
    assert took < MAX_SECONDS
    errors = [out for cell in code_cells(nb) for out in cell.outputs if out.output_type == "error"]
    assert errors == []


@pytest.mark.slow
def test_nbval_passes_in_reverse_order():
    """`pytest --nbval` on the notebooks, outputs compared, last notebook first (each
    notebook makes its own store, so the order and earlier runs do not matter)."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
            "--nbval-sanitize-with", str(SANITIZE), *[str(NOTEBOOKS / n) for n in reversed(NAMES)]]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(f"nbval: {time.perf_counter() - started:.1f} s\n{proc.stdout[-2000:]}")
    cells = sum(len(code_cells(load(n))) for n in NAMES)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert re.search(rf"\b{cells} passed\b", proc.stdout), proc.stdout[-2000:]


def test_sanitizers_are_few_and_ignored_cells_rare():
    sections = re.findall(r"^\[(.+)\]$", SANITIZE.read_text(), flags=re.M)
    assert sections == ["bokeh-uuids", "bokeh-point-times", "run-ids"]
    ignored = [n for n in NAMES for cell in code_cells(load(n)) if "NBVAL_IGNORE_OUTPUT" in cell.source]
    assert ignored == ["01_quickstart.ipynb"]  # %experiment_wait's count depends on the machine's speed


# -- the demo ------------------------------------------------------------------------
@pytest.fixture
def demo(tmp_path, read_only):
    from notebook_exp._demo import run_sweep

    store = tmp_path / "demo.duckdb"
    started = time.perf_counter()
    ids = run_sweep(store=store)
    print(f"demo sweep: {time.perf_counter() - started:.1f} s")
    return store, ids


def test_the_demo_sweep_shows_every_final_state(demo, read_only):
    store, ids = demo
    rows = read_only(store, "SELECT run_id, name, status, error FROM runs ORDER BY created_at")
    assert [r[0] for r in rows] == ids
    assert [(name, status) for _id, name, status, _e in rows] == [
        ("lr=0.5 bs=8", "completed"), ("lr=0.5 bs=128", "completed"),
        ("lr=0.002 bs=8", "completed"), ("lr=0.002 bs=128", "completed"),
        ("lr=50.0 bs=32", "failed"), ("lr=0.1 bs=32", "cancelled"),
    ]
    assert "Diverged: loss diverged" in rows[4][3] and "lr=50.0 is too large" in rows[4][3]
    assert rows[5][3] == "cancelled by the demo: stopped at step 4000 of 12000"
    steps = dict(read_only(store, "SELECT run_id, max(step) + 1 FROM metrics WHERE key = 'loss' GROUP BY 1"))
    assert [steps[i] for i in ids[:4]] == [12_000] * 4 and steps[ids[5]] == 4_000 and steps[ids[4]] < 4_000


def test_the_demo_curves_separate_and_have_a_smoothed_loss(demo, read_only):
    store, ids = demo
    smooth = dict(read_only(store, """
        SELECT run_id, avg(value) FROM metrics WHERE key = 'loss_smooth' AND step BETWEEN 1000 AND 2000 GROUP BY 1"""))
    fast, slow = [smooth[i] for i in ids[:2]], [smooth[i] for i in ids[2:4]]
    assert max(fast) * 3 < min(slow)  # the learning rate matters: 0.5 is far ahead of 0.002 at step 1,000
    noise = dict(read_only(store, """
        SELECT run_id, stddev(value) FROM metrics WHERE key = 'loss' AND step >= 6000 GROUP BY 1"""))
    assert noise[ids[0]] > 2 * noise[ids[1]]  # batch size 8 is noisier than 128
    counts = dict(read_only(store, "SELECT key, count(*) FROM metrics WHERE run_id = ? GROUP BY 1", [ids[0]]))
    assert counts["loss"] == counts["loss_smooth"] == 12_000 and counts["acc"] == 241
    (spread,), = read_only(store, """
        SELECT stddev(value) FROM metrics WHERE run_id = ? AND key = 'loss_smooth' AND step >= 6000""", [ids[0]])
    assert spread < noise[ids[0]] / 3  # the smoothed loss is much steadier than the raw one
