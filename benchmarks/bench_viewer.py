"""Viewer budgets, measured in one run of this script (not a test).

    .venv/bin/python benchmarks/bench_viewer.py [--runs 10000] [--compare-runs 100] [--steps 100000]

Prints, each next to its budget:
  1. listing 10,000 runs through ViewerState.list_runs (budget 100 ms);
  2. the Compare query for 100 runs x 100,000 steps, downsampled in DuckDB to at
     most 2,000 points per run (min and max per bucket), and the chart's query
     (``series_buckets``: each of 1,000 buckets' mean, std, count, min and max)
     (budget 300 ms each);
  3. time to first table paint after page load in Chromium (served by
     ``python -m notebook_exp_viewer``);
  4. writer flush (commit) p99 of a process logging at full speed (and at
     100,000 points/s) while the viewer refreshes a Runs page and that run's
     page in Chromium (budget 250 ms), next to the same writer with no viewer.

Big stores are made fast: the schema through ``get_store(path).ensure()``, rows
inserted as Arrow tables with duckdb, sorted by run_id, key, step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
REPEAT = 7
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BASE = np.datetime64("2026-01-01T00:00:00", "us")


# -- synthetic stores ----------------------------------------------------------------
def _connect(path: Path):
    import duckdb

    from notebook_exp.store import close_all, get_store

    get_store(path).ensure()
    close_all()
    return duckdb.connect(str(path), config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})


def _runs_table(n: int, prefix: str, rng) -> pa.Table:
    ids = [f"{prefix}{i:015x}" for i in range(n)]  # 16 characters, like real run ids
    statuses = rng.choice(["completed", "completed", "completed", "failed", "cancelled"], n)
    statuses[-min(10, n):] = "running"  # the newest few are live
    started = BASE + (np.arange(n) * 60_000_000).astype("timedelta64[us]")
    params = [json.dumps({"lr": float(10 ** rng.uniform(-5, -1)), "bs": int(rng.choice([32, 64, 128])),
                          "opt": str(rng.choice(["adam", "sgd"])), "seed": i}) for i in range(n)]
    return pa.table({
        "run_id": ids, "experiment": [f"exp-{i % 20}" for i in range(n)], "name": [f"run-{i}" for i in ids],
        "status": statuses, "params": params,
        "tags": [["bench", f"t{i % 5}"] for i in range(n)],
        "created_at": started, "started_at": started,
        "ended_at": started + np.timedelta64(3_600_000_000, "us"),
    })


def _insert_runs(conn, runs: pa.Table) -> None:
    conn.register("bench_runs", runs)
    conn.execute("INSERT INTO runs (run_id, experiment, name, status, params, tags, created_at, "
                 "started_at, ended_at) SELECT * FROM bench_runs")
    conn.unregister("bench_runs")


def make_list_store(path: Path, n: int) -> None:
    """``n`` runs with params and tags, and summaries of three metrics each."""
    rng = np.random.default_rng(1)
    conn = _connect(path)
    runs = _runs_table(n, "r", rng)
    _insert_runs(conn, runs)
    keys = ["loss", "acc", "val/loss"]
    ids = np.repeat(np.array(runs.column("run_id").to_pylist()), len(keys))
    conn.register("bench_summary", pa.table({
        "run_id": ids, "key": np.tile(keys, n), "count": np.full(n * 3, 1000), "first_step": np.zeros(n * 3, int),
        "last_step": np.full(n * 3, 999), "last_value": rng.random(n * 3), "min_value": rng.random(n * 3) / 2,
        "max_value": 1 + rng.random(n * 3), "last_ts": np.repeat(runs.column("ended_at").to_numpy(), 3),
    }))
    conn.execute("INSERT INTO metric_summary SELECT * FROM bench_summary")
    conn.close()


def make_compare_store(path: Path, n_runs: int, steps: int) -> list[str]:
    """``n_runs`` runs of ``steps`` points of ``loss`` (with spikes), stored sorted by run, key, step."""
    rng = np.random.default_rng(2)
    conn = _connect(path)
    runs = _runs_table(n_runs, "c", rng)
    _insert_runs(conn, runs)
    ids = runs.column("run_id").to_pylist()
    starts = runs.column("started_at").to_numpy()
    step = np.arange(steps, dtype=np.int64)
    for start in range(0, n_runs, 10):
        chunk = ids[start:start + 10]
        ts = (starts[start:start + 10, None] + (step * 10_000).astype("timedelta64[us]")[None, :]).ravel()
        values = np.exp(-step / (steps / 5))[None, :] + 0.05 * rng.standard_normal((len(chunk), steps))
        values[:, rng.integers(0, steps, 5)] += 5.0
        conn.register("bench_batch", pa.table({
            "run_id": pa.DictionaryArray.from_arrays(np.repeat(np.arange(len(chunk), dtype=np.int32), steps),
                                                     pa.array(chunk)),
            "key": pa.DictionaryArray.from_arrays(np.zeros(len(chunk) * steps, np.int32), pa.array(["loss"])),
            "step": np.tile(step, len(chunk)),
            "ts": ts,
            "value": values.ravel(),
        }))
        conn.execute("INSERT INTO metrics SELECT run_id::VARCHAR, key::VARCHAR, step, ts, value FROM bench_batch")
        conn.unregister("bench_batch")
    conn.execute("""INSERT INTO metric_summary SELECT run_id, key, count(*), min(step), max(step),
                    arg_max(value, step), min(value), max(value), max(ts) FROM metrics GROUP BY ALL""")
    conn.close()
    return ids


# -- measurements ---------------------------------------------------------------------
def timed(fn, repeat: int = REPEAT) -> tuple[float, float, object]:
    """(median ms, min ms, last result) over ``repeat`` calls after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), result


def bench_list(path: Path, n: int) -> None:
    from notebook_exp_viewer.state import ViewerState

    state = ViewerState(path, metric_columns=["loss", "acc"])
    median, best, frame = timed(state.list_runs)
    assert len(frame) == n, len(frame)
    print(f"list {n} runs: {median:.1f} ms median, {best:.1f} ms best (budget 100 ms)")
    median, _best, frame = timed(lambda: state.list_runs(expression="lr < 0.001 and loss < 0.5"))
    print(f"list with filter 'lr < 0.001 and loss < 0.5' ({len(frame)} rows): {median:.1f} ms median")


def bench_compare(path: Path, ids: list[str], steps: int) -> None:
    from notebook_exp_viewer.state import ViewerState

    state = ViewerState(path)
    median, best, read = timed(lambda: state.series(ids, ["loss"], "step"), repeat=5)
    points = read.points
    per_run = points.groupby("run_id").size()
    assert per_run.max() <= 2000 and len(per_run) == len(ids)
    print(f"compare {len(ids)} runs x {steps} steps -> <= {per_run.max()} points/run: "
          f"{median:.1f} ms median, {best:.1f} ms best (budget 300 ms)")
    window = (steps * 0.4, steps * 0.45)
    median, _best, _ = timed(lambda: state.series(ids, ["loss"], "step", window=window), repeat=5)
    print(f"compare zoomed to 5% of the steps: {median:.1f} ms median")
    # what the charts read: each bucket's mean, std, count and extremes, in the same one query
    median, best, read = timed(lambda: state.series_buckets(ids, ["loss"], "step"), repeat=5)
    per_run = read.buckets.groupby("run_id").size()
    assert per_run.max() <= 1000 and len(per_run) == len(ids)
    print(f"compare chart (mean/std/min/max buckets) {len(ids)} runs x {steps} steps -> <= {per_run.max()} "
          f"buckets/run: {median:.1f} ms median, {best:.1f} ms best (budget 300 ms)")
    median, _best, _ = timed(lambda: state.series_buckets(ids, ["loss"], "step", window=window), repeat=5)
    print(f"compare chart zoomed to 5% of the steps: {median:.1f} ms median")


def _start_viewer(path: Path, refresh: float = 2.0) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(HERE.parent / "tests" / "viewer"))
    from viewer_support import free_port, wait_healthy

    port = free_port()
    log = open(path.parent / f"viewer-{port}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "notebook_exp_viewer", "--store", str(path),
                             "--port", str(port), "--refresh", str(refresh)], stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def bench_first_paint(browser, url: str, loads: int = 3) -> None:
    """Navigation start to the first table row, and the part of it after the page's load event."""
    paints, after_load = [], []
    for _ in range(loads):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        start = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.locator(".nx-runs-table .tabulator-row").first.wait_for(timeout=60_000)
        paints.append((time.perf_counter() - start) * 1000)
        load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        after_load.append(paints[-1] - load)
        page.close()
    print(f"first table paint, 10,000-run store: {statistics.median(paints):.0f} ms from navigation "
          f"({statistics.median(after_load):.0f} ms after the load event), median of {loads} loads; "
          f"first load {paints[0]:.0f} ms")


def _writer(path: Path, seconds: float, rate: float) -> dict:
    """Start a writer process; it creates its run, then waits for ``_go`` before logging."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), "--writer", str(path), str(seconds), str(rate)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    return {"proc": proc, "run_id": run_id}


def _go(writer: dict) -> None:
    writer["proc"].stdin.write("go\n")
    writer["proc"].stdin.flush()


def _writer_result(writer: dict) -> dict:
    out, _ = writer["proc"].communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def writer_main(path: str, seconds: float, rate: float) -> None:
    """Log ``rate`` points/s (0: as fast as one loop can) for ``seconds``; print commit times as JSON."""
    import notebook_exp as nx
    from notebook_exp.store import get_store

    with nx.start_run("bench-writer", experiment="bench", params={"lr": 0.01}, store=path) as run:
        print(run.run_id, flush=True)
        sys.stdin.readline()  # the viewer pages are loaded: measure from here
        get_store(path).writer.commit_seconds.clear()
        start = time.monotonic()
        step = 0
        while time.monotonic() - start < seconds:
            for _ in range(500):
                run.log(loss=1.0 / (step + 1), acc=step * 1e-9, step=step)
                step += 1
            if rate:
                time.sleep(max(0.0, start + 2 * step / rate - time.monotonic()))
    commits = np.array(get_store(path).writer.commit_seconds) * 1000
    print(json.dumps({"points": 2 * step, "commits": len(commits), "p50": float(np.percentile(commits, 50)),
                      "p99": float(np.percentile(commits, 99)), "max": float(commits.max())}))


def bench_writer(browser, path: Path, url: str, seconds: float, rate: float) -> None:
    """The writer alone, then with a Runs page and the writer's own run page open (2 s refresh).

    The pages are loaded before the writer starts logging: this measures the
    viewer's steady refreshing, not page loads.
    """
    writer = _writer(path, seconds, rate)
    try:
        _go(writer)
        alone = _writer_result(writer)
        writer = _writer(path, seconds, rate)
        pages = [browser.new_page(), browser.new_page()]
        pages[0].goto(url)
        pages[1].goto(f"{url}/?run={writer['run_id']}")
        pages[0].locator(".nx-runs-table .tabulator-row").first.wait_for(timeout=60_000)
        pages[1].locator(".nx-run-status").wait_for(timeout=60_000)
        time.sleep(2.0)
        _go(writer)
        watched = _writer_result(writer)
        for page in pages:
            page.close()
    finally:
        if writer["proc"].poll() is None:
            writer["proc"].kill()
            writer["proc"].wait()
    speed = "full speed" if not rate else f"{rate:,.0f} points/s"
    for label, r in (("alone", alone), ("with the viewer open on it", watched)):
        print(f"writer flush p99 at {speed}, {label}: {r['p99']:.1f} ms (p50 {r['p50']:.1f} ms, "
              f"max {r['max']:.1f} ms, {r['commits']} commits, {r['points'] / seconds:,.0f} points/s)"
              + (" (budget 250 ms)" if label != "alone" else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--compare-runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--writer-seconds", type=float, default=15.0)
    parser.add_argument("--writer-rates", default="0,100000",
                        help="points/s of the writer runs, comma separated (0: as fast as it can)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument("--only", default="list,compare,paint,writer",
                        help="which measurements, comma separated (list, compare, paint, writer)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    try:
        start = time.perf_counter()
        list_store, compare_store = folder / "list.duckdb", folder / "compare.duckdb"
        make_list_store(list_store, args.runs)
        ids = make_compare_store(compare_store, args.compare_runs, args.steps)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"(stores made in {time.perf_counter() - start:.1f} s under {folder}; "
              f"{os.cpu_count()} CPUs, load average {load})")
        only = set(args.only.split(","))
        if "list" in only:
            bench_list(list_store, args.runs)
        if "compare" in only:
            bench_compare(compare_store, ids, args.steps)
        rates = [float(r) for r in args.writer_rates.split(",") if r.strip()] if "writer" in only else []
        if "paint" in only or rates:
            _browser_benches(list_store, args.writer_seconds, rates, paint="paint" in only)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def _browser_benches(list_store: Path, writer_seconds: float, rates: list[float], paint: bool) -> None:
    from playwright.sync_api import sync_playwright

    proc, url = _start_viewer(list_store)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            if paint:
                bench_first_paint(browser, url)
            for rate in rates:
                bench_writer(browser, list_store, url, writer_seconds, rate)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
