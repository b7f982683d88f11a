"""The example notebooks (notebooks/*.ipynb), their light charts, and the demo's sweep.

The notebooks are saved with their outputs (``notebooks/execute.py`` writes
them); nbval compares a fresh run with those outputs, cell by cell. Their charts
carry only their own data: BokehJS comes once per page from the Jupyter server
(``notebook_exp._inline``), which a real JupyterLab in Chromium shows here.
"""

import ast
import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbclient
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from notebook_exp._inline import (
    _FIX,
    _NOT_JUPYTER,
    _NOT_LOADED,
    BOKEHJS_ATTR,
    BOKEHJS_ROUTE,
    NOTE,
    NOTE_CLASS,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "viewer"))

from viewer_support import EXPECT_TIMEOUT_MS, chromium, free_port, screenshot, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "nbval_sanitize.cfg"
NAMES = ["01_quickstart.ipynb", "02_gpu_scheduling.ipynb", "03_logging_and_queries.ipynb", "04_plugins.ipynb",
         "05_viewer.ipynb", "06_frameworks.ipynb", "07_scale_out.ipynb"]
MAX_SECONDS = 60  # each notebook, top to bottom, in a fresh kernel (the cap)
MAX_BYTES = 500_000  # each notebook file, everything included (the cap)
MAX_CHART_BYTES = 100_000  # one chart's output: its data and scripts, never BokehJS
SUBMITS = ("%%experiment", "nx.submit(", "nx.sweep(")
WAITS = ("%experiment_wait", "nx.wait(", "--wait")
DEMO_STATUSES = ["completed"] * 4 + ["failed", "cancelled"]
#: Python's bytecode cache for the kernels and what they start (the folder tests/ray/conftest.py uses):
#: a local Ray (07) starts a few Python processes, each importing ray, and with no cache (the venv
#: ships no .pyc, and PYTHONDONTWRITEBYTECODE is set here) each compiles it again.
PYCACHE = os.path.join(tempfile.gettempdir(), "notebook_exp-pycache")


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def html_outputs(cell) -> list[str]:
    return [out["data"]["text/html"] for out in cell.get("outputs", [])
            if "data" in out and "text/html" in out["data"]]


def all_html(nb) -> str:
    return "".join(text for cell in code_cells(nb) for text in html_outputs(cell))


def shows_something(source: str) -> bool:
    """Whether a cell prints or displays: a print() anywhere, or a last bare expression
    (magics included, as IPython runs them)."""
    python = TransformerManager().transform_cell(source)
    tree = ast.parse(python)
    calls_print = any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                      for node in ast.walk(tree))
    return calls_print or bool(tree.body and isinstance(tree.body[-1], ast.Expr))


def with_bytecode_cache(env) -> dict[str, str]:
    """``env`` with Python's bytecode cache on, in ``PYCACHE``."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", PYCACHE)
    return env


@pytest.fixture
def bytecode_cache(monkeypatch):
    """Kernels started in this test cache bytecode (``with_bytecode_cache``)."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", os.environ.get("PYTHONPYCACHEPREFIX", PYCACHE))


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


def chart_outputs(nb) -> list[str]:
    return [h for cell in code_cells(nb) for h in html_outputs(cell) if "nx-metric-plot" in h]


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_is_at_most_500_kb_and_its_charts_carry_no_bokehjs(name):
    path = NOTEBOOKS / name
    size = path.stat().st_size
    print(f"{name}: {size / 1000:.0f} kB")
    assert size <= MAX_BYTES
    text = path.read_text(encoding="utf-8")
    assert BOKEHJS_ATTR not in text and "DecompressionStream" not in text
    assert "cdn.bokeh.org" not in text and "<iframe" not in text
    for chart in chart_outputs(load(name)):
        assert len(chart) < MAX_CHART_BYTES and BOKEHJS_ROUTE in chart and NOTE_CLASS in chart


def test_the_quickstart_has_two_light_charts():
    charts = chart_outputs(load("01_quickstart.ipynb"))
    assert len(charts) == 2
    print("chart outputs:", [f"{len(c) / 1000:.1f} kB" for c in charts])


def image_outputs(nb) -> list[tuple[str, bytes]]:
    return [(cell.source, base64.b64decode(out["data"][mime])) for cell in code_cells(nb) for out in cell.outputs
            for mime in ("image/jpeg", "image/png") if mime in out.get("data", {})]


def printed(cell) -> str:
    return "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in cell.outputs)


def test_the_viewer_notebook_shows_a_real_screenshot_of_each_page_and_stops_its_viewer():
    """05: one screenshot per page (Runs, Compare, Run, Queue), each a picture of something (not a
    blank page), all different, light; the viewer is stopped at the end and says so."""
    from PIL import Image, ImageStat

    nb = load("05_viewer.ipynb")
    shots = image_outputs(nb)
    addresses = [re.search(r'screenshot\((f?"[^"]*"|compare)', source)[1] for source, _ in shots]
    assert addresses == ['""', "compare", 'f"?page=run&run={too_fast.run_id}"', '"?page=queue"']
    assert len({hashlib.sha256(shot).hexdigest() for _, shot in shots}) == 4
    for _source, shot in shots:
        image = Image.open(io.BytesIO(shot))
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
        print(f"screenshot: {image.format} {image.size}, {len(shot) / 1000:.0f} kB, grey spread {spread:.0f}")
        assert image.format == "JPEG" and image.size == (1100, 700)
        assert len(shot) < 80_000 and spread > 20
    last = code_cells(nb)[-1]
    assert "server.stop()" in last.source and printed(last).endswith("the viewer has stopped\n")


def test_the_scale_out_notebook_runs_one_cell_on_two_executors_into_one_store():
    """07: the Ray cell is the thread cell with ``--executor ray`` added, and the store holds both
    sweeps with the same numbers; Ray is stopped at the end."""
    nb = load("07_scale_out.ipynb")
    cells = [cell for cell in code_cells(nb) if cell.source.startswith("%%experiment")]
    assert len(cells) == 2 and "--executor" not in cells[0].source
    assert cells[1].source.replace(" --executor ray", "") == cells[0].source
    (table,) = [cell for cell in code_cells(nb) if cell.source.startswith('table = nx.runs("scale-out")')]
    rows = re.findall(r"^\d+\s+(sweep lr=\S+)\s+(ray|thread)\s+(\w+)\s+\S+\s+(\S+)$", printed(table), flags=re.M)
    assert sorted((name, executor, status) for name, executor, status, _ in rows) == [
        (name, executor, "completed") for name in ("sweep lr=0.05", "sweep lr=0.5") for executor in ("ray", "thread")]
    losses = {}
    for name, _executor, _status, loss in rows:
        losses.setdefault(name, set()).add(loss)
    assert all(len(values) == 1 for values in losses.values()), losses
    assert printed(code_cells(nb)[-1]) == "Ray is stopped\n"


def jupyter_env(tmp_path: Path) -> dict[str, str]:
    """This environment with Jupyter's own folders (config, data with the notary's key, runtime)
    in ``tmp_path``, so nothing of the machine's Jupyter settings or trust is used or changed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTEBOOK_EXP_", "JUPYTER_"))}
    for name in ("config", "data", "runtime"):
        (tmp_path / name).mkdir(exist_ok=True)
        env[f"JUPYTER_{name.upper()}_DIR"] = str(tmp_path / name)
    settings = tmp_path / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "Would you like to get notified about official Jupyter news?" toast
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    return env


def start_jupyterlab(root: Path, env: dict[str, str], token: str) -> tuple[subprocess.Popen, str]:
    """``jupyter lab`` on a free loopback port serving ``root``, as a user starts it; waits until it answers."""
    port = free_port()
    args = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log = open(root.parent / "jupyterlab.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (root.parent / "jupyterlab.log").read_text()
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).close()
            return proc, url
        except OSError:
            assert time.monotonic() < deadline, "JupyterLab did not answer in 120 s"
            time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # then Jupyter asks "Shutdown this Jupyter server (y/[n])?" on a tty only
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_the_saved_quickstart_draws_its_charts_when_reopened_in_jupyterlab(tmp_path):
    """The saved notebook, trusted and opened in a real JupyterLab in Chromium: both charts draw,
    BokehJS comes once, from the Jupyter server itself (Panel's server extension serves bokeh's
    own file), and the page asks nothing of any other host."""
    root = tmp_path / "notebooks"
    root.mkdir()
    path = root / "01_quickstart.ipynb"
    path.write_bytes((NOTEBOOKS / path.name).read_bytes())
    env = jupyter_env(tmp_path)
    jupyter = str(Path(sys.executable).parent / "jupyter")
    subprocess.run([jupyter, "trust", str(path)], env=env, check=True, capture_output=True, timeout=120)
    proc, url = start_jupyterlab(root, env, token="nx-test")
    outside, errors, bokehjs = [], [], []

    def route(request_route):
        if request_route.request.url.startswith(url + "/"):
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route("**/*", route)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: bokehjs.append(r.url) if r.url.split("?")[0].endswith("/bokeh.min.js") else None)
            page.goto(f"{url}/lab/tree/{path.name}?token=nx-test")
            page.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.length == 2",
                                   timeout=6 * EXPECT_TIMEOUT_MS)
            lines = page.evaluate("() => Bokeh.documents.map(d => d.roots()[0].renderers.length)")
            charts = page.locator(".nx-metric-plot")
            charts.nth(1).locator("canvas").first.wait_for(timeout=EXPECT_TIMEOUT_MS)
            notes = page.locator(f".{NOTE_CLASS}").count()
            charts.first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            shot = screenshot(page, "notebook-01-quickstart-in-jupyterlab")
            print(f"screenshot: {shot}")
            version = page.evaluate("() => Bokeh.version")
    finally:
        stop(proc)
    import bokeh

    assert lines == [7, 3]  # baseline + 6 sweep runs; the 3 runs of batch size 8
    assert version == bokeh.__version__
    assert bokehjs == [f"{url}/{BOKEHJS_ROUTE}?v={bokeh.__version__}"]  # once, for both charts
    assert notes == 0  # each chart's "run or trust" note gave way to the chart
    assert outside == [] and errors == []


def test_a_chart_that_gets_no_bokehjs_says_why(tmp_path):
    """In Chromium: a chart on a page that no Jupyter server serves, and one whose server does not
    serve BokehJS, each say why they are not drawn instead of staying blank."""
    chart = chart_outputs(load("01_quickstart.ipynb"))[1]
    dead = f"http://127.0.0.1:{free_port()}/base/"  # nothing listens there
    config = f'<script id="jupyter-config-data" type="application/json">{{"baseUrl": "{dead}"}}</script>'
    texts = []
    with chromium() as browser:
        for head in ("", config):
            page = browser.new_page()
            page.set_content(f"<html><head>{head}</head><body>{chart}</body></html>")
            note = page.locator(f".{NOTE_CLASS}")
            page.wait_for_function(f"() => document.querySelector('.{NOTE_CLASS}').textContent !== {json.dumps(NOTE)}",
                                   timeout=EXPECT_TIMEOUT_MS)
            texts.append(note.inner_text())
            page.close()
    assert texts == [_NOT_JUPYTER, f"{_NOT_LOADED}{dead}{BOKEHJS_ROUTE}?v={__import__('bokeh').__version__}{_FIX}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_runs_top_to_bottom_in_a_fresh_kernel_within_the_cap(name, bytecode_cache):
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


def nbval_failures(stdout: str) -> str:
    """nbval's report, readable in a CI log: the failing cells first, then each difference with
    long runs of base64 (a chart's arrays, a picture) cut short, so one chart cannot fill it all."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
    failed = [line for line in plain.splitlines() if line.startswith("FAILED ")]
    short = re.sub(r"[A-Za-z0-9+/=]{80,}", lambda m: m[0][:40] + f"...({len(m[0])} chars)", plain)
    return "\n".join(failed) + "\n\n" + short[-8000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_nbval_passes_twice_in_a_row_in_either_order():
    """`pytest --nbval` on the notebooks, outputs compared: last notebook first, then first
    notebook first, in one session (each notebook makes its own store, so neither the order nor
    an earlier execution changes what it shows)."""
    order = [str(NOTEBOOKS / n) for n in [*reversed(NAMES), *NAMES]]
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--keep-duplicates", "--nbval",
            "--nbval-sanitize-with", str(SANITIZE), *order]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1700,
                          env=with_bytecode_cache(os.environ))
    print(f"nbval, twice: {time.perf_counter() - started:.1f} s\n{proc.stdout[-2000:]}")
    cells = 2 * sum(len(code_cells(load(n))) for n in NAMES)
    assert proc.returncode == 0, nbval_failures(proc.stdout) + proc.stderr[-2000:]
    assert re.search(rf"\b{cells} passed\b", proc.stdout), proc.stdout[-2000:]


def test_sanitizers_are_few_and_ignored_cells_rare():
    sections = re.findall(r"^\[(.+)\]$", SANITIZE.read_text(), flags=re.M)
    assert sections == ["bokeh-uuids", "bokeh-point-times", "bokeh-point-values", "run-ids", "loopback-ports"]
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


@pytest.mark.slow
def test_the_readme_demo_serves_a_viewer_that_lists_every_status(tmp_path):
    """`notebook-exp demo` as the README's first command runs it, in an empty folder (a fresh
    clone's default store): it prints the viewer's URL, Chromium opening that URL sees the six
    runs with every final status, and Ctrl-C then stops it cleanly."""
    from playwright.sync_api import expect

    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBOOK_EXP_")}
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "notebook-exp"), "demo", "--port", str(port)],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.log_path = "its stderr"  # what wait_healthy names if the demo exits early
    try:
        lines = []
        while not (lines and lines[-1].startswith("Serving the viewer on ")):
            line = proc.stdout.readline()
            assert line, f"the demo ended before serving:\n{''.join(lines)}\n{proc.stderr.read()}"
            lines.append(line)
        url = re.search(r"http://\S+", lines[-1])[0]
        assert url == f"http://127.0.0.1:{port}/" and "(Ctrl-C stops it)" in lines[-1]
        wait_healthy(url.rstrip("/"), proc, timeout=120)  # the line comes as the server starts
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            rows = page.locator(".nx-runs-table .tabulator-row")
            expect(rows).to_have_count(len(DEMO_STATUSES), timeout=3 * EXPECT_TIMEOUT_MS)
            statuses = rows.locator('[tabulator-field="status"]')
            expect(statuses).to_have_count(len(DEMO_STATUSES))
            shown = sorted(statuses.all_inner_texts())
            screenshot(page, "demo-runs")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("".join(lines) + out)
    assert shown == sorted(DEMO_STATUSES)
    assert (tmp_path / ".notebook_exp" / "store.duckdb").exists()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "viewer stopped on SIGINT" in out
