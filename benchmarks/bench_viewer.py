"""Viewer budgets (issue 14), measured in one run of this script (not a test).

    .venv/bin/python benchmarks/bench_viewer.py [--store PATH] [--compact] [--only ...]

By default, on a store of 1,000 runs x 100,000 steps (100 M points) and 1,000
queued runs, built once through the store's own write path (``Store.records``
and its writer: ``MetricBatch`` es as Arrow batches, 4 runs logging at a time,
as the logging path commits them) and reused by later runs (``--store``, env
``NX_BENCH_STORE``; a manifest beside it says how it was built), it prints, each
next to its budget with PASS or OVER (judged by the median; the best and the
process's CPU time are printed too, as a loaded machine inflates wall times):

  runs     the Runs page's load read (``RunsList.reload``: facets, the default
           metric columns, ``ViewerState.list_runs``) (budget 100 ms);
  compare  the Compare chart's read (``ViewerState.series_buckets``, and
           ``chart_read``: with the params to group by, in the same session) of the 10 and the 100 newest runs
           (budgets 150 ms and 300 ms);
  queue    the Queue page's refresh (``queue_page.read_queue``) with 1,000 queued
           runs (budget 50 ms);
  paint    ``notebook-exp view`` on the store, opened in Chromium: from the load
           event to the runs table's first row visible (budget 1 s), and the same
           on a one-run store;
  size     the store's bytes per point (with ``--compact``: also of a compacted copy).

``--only list,compare-small,paint-small,writer`` runs the earlier measurements on
made-up stores: listing 10,000 runs; Compare of 100 runs x 100,000 steps (``series``
and ``series_buckets``); first paint of a 10,000-run store; and the writer's
flush p99 while the viewer refreshes (budget 250 ms). Those stores are inserted
as Arrow tables with duckdb, sorted by run_id, key, step.
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


# -- the 100 M point store (issue 14's budgets) ----------------------------------------
DEFAULT_BIG_STORE = Path(tempfile.gettempdir()) / "nx-bench-viewer" / "big.duckdb"
BIG_VERSION = 1  # bump when the build changes: a cached store of another version is rebuilt
CONCURRENT = 4  # runs logging at once (4 GPUs), their batches interleaved in the file as they commit
DEFAULT_CHUNK_STEPS = 10_000  # steps per batch a run hands the writer (one commit holds one batch of each live run)
VAL_EVERY = 1_000  # val/loss is logged every this many steps
COMPACT_TIMEOUT = 600.0  # seconds `--compact` gives `notebook-exp compact` of the copy
QUEUE_OWNERS = (("bench-node-a", 41_001, "/home/me/train.ipynb"), ("bench-node-b", 41_002, "sweep.py"))


def _big_manifest(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def big_store(path: Path, runs: int, steps: int, queued: int, chunk_steps: int) -> dict:
    """The store at ``path`` if a build with these figures made it, else a new one.

    Written through the store's own write path (``Store.records`` and its writer,
    ``MetricBatch`` es turned into Arrow batches): ``runs`` finished runs, each
    logging ``loss`` at every one of ``steps`` steps and ``val/loss`` every
    ``VAL_EVERY``, ``CONCURRENT`` at a time, in batches of ``chunk_steps`` steps
    (so the file holds them interleaved as commits left them); then ``queued`` runs
    queued by two scheduler owners on other hosts (the lost-run recovery of this
    host leaves those alone, so a cached store keeps its queue).
    """
    wanted = {"version": BIG_VERSION, "runs": runs, "steps": steps, "queued": queued, "chunk_steps": chunk_steps}
    manifest = _big_manifest(path)
    if path.exists() and manifest.exists():
        found = json.loads(manifest.read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return {**found, "reused": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    for stale in (path, manifest, building, building.with_name(building.name + ".wal")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    ids = _build_runs(building, runs, steps, chunk_steps)
    built = time.perf_counter() - start
    _build_queue(building, queued)
    from notebook_exp.store import close_all

    close_all()
    building.rename(path)
    for leftover in building.parent.glob(building.name + ".*"):  # the writers' lock file
        leftover.unlink(missing_ok=True)
    found = {**wanted, "build_seconds": built, "queue_seconds": time.perf_counter() - start - built,
             "points": runs * (steps + (steps + VAL_EVERY - 1) // VAL_EVERY), "run_ids": ids,
             "built_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    manifest.write_text(json.dumps(found))
    return {**found, "reused": False}


def _build_runs(path: Path, runs: int, steps: int, chunk_steps: int) -> list[str]:
    from datetime import datetime, timedelta

    from notebook_exp.models import MetricBatch, RunStatus
    from notebook_exp.store import get_store

    store = get_store(path)
    store.ensure()
    records, writer = store.records, store.writer
    rng = np.random.default_rng(14)
    ids = [rng.bytes(8).hex() for _ in range(runs)]  # random 16 hex characters, as new_run_id() makes them
    base = datetime(2026, 1, 1)
    step_seconds = 0.05  # 20 steps a second: a 100,000-step run takes 83 minutes
    run_seconds = steps * step_seconds
    for first in range(0, runs, CONCURRENT):
        group = ids[first:first + CONCURRENT]
        began = base + timedelta(seconds=(first // CONCURRENT) * (run_seconds + 60))
        curves = []
        for i, run_id in enumerate(group):
            n = first + i
            lr, seed = float(rng.choice([1e-4, 3e-4, 1e-3, 3e-3, 1e-2])), n % 5
            params = {"lr": lr, "batch_size": int(rng.choice([32, 64, 128])), "seed": seed,
                      "optim": {"name": str(rng.choice(["adam", "sgd"])), "momentum": 0.9},
                      "model": {"depth": int(rng.choice([12, 24])), "width": 512}}
            row = {"experiment": f"exp-{n % 10}", "name": f"lr{lr:g}-s{seed}-{n}",
                   "status": RunStatus.RUNNING.value, "params": json.dumps(params),
                   "tags": ["bench", f"depth{params['model']['depth']}"], "started_at": began, "error": None,
                   "ended_at": None}
            records.started(run_id, row, began, existing=False,
                            info={"python": sys.version.split()[0], "hostname": "bench", "gpus": [i]})
            curves.append((run_id, began.replace(tzinfo=None).timestamp(), 2.5 * (1e-3 / lr) ** 0.1, rng))
        for s0 in range(0, steps, chunk_steps):
            step = np.arange(s0, min(s0 + chunk_steps, steps), dtype=np.float64)
            for run_id, t0, scale, r in curves:
                ts = t0 + step * step_seconds
                loss = scale * np.exp(-step / (steps / 4)) + 0.3 + 0.05 * r.standard_normal(len(step))
                loss[r.integers(0, len(step), 2)] += 3.0  # spikes
                chunks = [("loss", np.column_stack([step, ts, loss]).ravel())]
                val = step[step % VAL_EVERY == 0]
                if len(val):
                    chunks.append(("val/loss", np.column_stack(
                        [val, t0 + val * step_seconds, scale * np.exp(-val / (steps / 4)) + 0.35]).ravel()))
                records.metrics(MetricBatch(run_id, chunks))
        ended = began + timedelta(seconds=run_seconds)
        for run_id in group:
            status = str(rng.choice(["completed"] * 8 + ["failed", "cancelled"]))
            records.ended(run_id, status, "RuntimeError: CUDA out of memory" if status == "failed" else None)
            writer.submit("UPDATE runs SET ended_at = ? WHERE run_id = ?", [ended, run_id])
        writer.flush()  # the writer commits as it goes; memory stays at one group's points
    writer.flush()
    return ids


def _build_queue(path: Path, queued: int) -> None:
    """``queued`` runs queued by two schedulers (as ``records.queued`` and the claim write them)."""
    from datetime import datetime, timedelta

    from notebook_exp.scheduler.control import CLAIM_SQL
    from notebook_exp.store import get_store

    store = get_store(path)
    records, writer = store.records, store.writer
    since = datetime(2026, 3, 1)
    ids = [f"q{i:015x}" for i in range(queued)]
    for i, run_id in enumerate(ids):
        host, pid, program = QUEUE_OWNERS[i % len(QUEUE_OWNERS)]
        after = [ids[i - len(QUEUE_OWNERS)]] if i % 10 == 9 else []
        records.queued(run_id, experiment="queued", name=f"sweep-{i}", params={"lr": 10 ** -(1 + i % 4), "seed": i},
                       tags=["bench"], executor="process", priority=i % 11, source=None,
                       spec={"after": after, "gpus": 1, "retries": i % 3}, git=None, detail="bench")
        at = since + timedelta(seconds=i)
        writer.submit("UPDATE runs SET host = ?, pid = ?, pid_started = NULL, created_at = ? WHERE run_id = ?",
                      [host, pid, at, run_id])
        writer.submit(CLAIM_SQL, [host, pid, None, program, i, at, run_id])
    writer.flush()


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


def measured(fn, repeat: int = REPEAT) -> tuple[dict, object]:
    """Wall-clock median and best, and the median CPU time of this process (all its
    threads: DuckDB's too), in ms over ``repeat`` calls after a warm-up call; and the
    last result. On a shared, loaded machine the best and the CPU time say more than
    the median."""
    result = fn()
    walls, cpus = [], []
    for _ in range(repeat):
        cpu, start = time.process_time(), time.perf_counter()
        result = fn()
        walls.append((time.perf_counter() - start) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return {"median": statistics.median(walls), "best": min(walls), "cpu": statistics.median(cpus)}, result


def _figures(t: dict, budget: float | None = None) -> str:
    text = f"{t['median']:.1f} ms median, {t['best']:.1f} ms best, {t['cpu']:.1f} ms CPU"
    if budget is None:
        return text
    verdict = "PASS" if t["median"] <= budget else "OVER"
    if verdict == "OVER" and t["best"] <= budget:
        verdict += ", best PASS"
    return f"{text} (budget {budget:.0f} ms: {verdict})"


def bench_big_runs_page(path: Path) -> None:
    """The Runs page's load read (``RunsList.reload``): the facets, the default metric
    columns, and the runs table of every run in ``LIST_LAYOUT``."""
    from notebook_exp_viewer.state import ViewerState

    def load():
        state = ViewerState(path)
        state.facets(refresh=True)
        keys = list(state.metric_columns) or state.default_metric_columns()
        return keys, state.list_runs(metric_columns=keys)

    t, (keys, frame) = measured(load)
    print(f"Runs page load read ({len(frame):,} runs, metric columns {keys}, {frame.shape[1]} columns): "
          f"{_figures(t, 100)}")
    state = ViewerState(path, metric_columns=keys)
    print(f"  of which list_runs: {_figures(measured(state.list_runs)[0])}")
    print(f"  and facets: {_figures(measured(lambda: state.facets(refresh=True))[0])}")
    t, frame = measured(lambda: state.list_runs(expression="lr < 0.001 and loss < 0.5"))
    print(f"  with filter 'lr < 0.001 and loss < 0.5' ({len(frame)} rows): {_figures(t)}")


def bench_big_compare(path: Path, ids: list[str], steps: int) -> None:
    """What the Compare chart reads (``MetricChart._query``): ``series_buckets`` of the
    selected runs, and with their params the first time (to group by: ``chart_read``)."""
    from notebook_exp_viewer.state import ViewerState

    state = ViewerState(path)
    for n, budget in ((10, 150), (100, 300)):
        chosen = ids[:n]
        t, read = measured(lambda c=chosen: state.series_buckets(c, ["loss"], "step"), repeat=5)
        per_run = read.buckets.groupby("run_id").size()
        assert len(per_run) == n and per_run.max() <= 1000, per_run
        print(f"compare {n} runs x {steps:,} steps ({n * steps / 1e6:g} M points read) -> {per_run.max()} "
              f"buckets/run: {_figures(t, budget)}")
        t, _ = measured(lambda c=chosen: state.chart_read(c, ["loss"], "step", params=True), repeat=5)
        print(f"  grouped by a param (chart_read: buckets and params in one session, the chart's first read): "
              f"{_figures(t, budget)}")
        window = (steps * 0.4, steps * 0.45)
        t, _ = measured(lambda c=chosen, w=window: state.series_buckets(c, ["loss"], "step", window=w), repeat=5)
        print(f"  zoomed to 5% of the steps: {_figures(t)}")


def bench_big_queue(path: Path, queued: int) -> None:
    """What the Queue page's periodic refresh reads (``queue_page.read_queue``):
    the store's queue, the lease files and the (virtual) GPUs."""
    sys.path.insert(0, str(HERE.parent))
    from notebook_exp.store import queries
    from viewer.components.queue_page import read_queue

    t, machine = measured(lambda: read_queue(path), repeat=20)
    assert len(machine.queued) == queued, len(machine.queued)
    print(f"Queue page refresh (read_queue: {len(machine.queued):,} queued runs, {len(machine.gpus)} GPUs): "
          f"{_figures(t, 50)}")
    t, _ = measured(lambda: queries.read(queries.queue_entries, store=path), repeat=20)
    print(f"  of which queue_entries in one read session: {_figures(t)}")


def first_paints(path: Path, loads: int = 3) -> tuple[list[float], list[float]]:
    """``notebook-exp view`` on the store; Chromium opens it ``loads`` times: per load,
    ms from its load event to the runs table's first row visible, and from navigation."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(HERE.parent / "tests" / "viewer"))
    from viewer_support import free_port, stop_process, wait_healthy

    port = free_port()
    log_path = path.parent / f"viewer-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("notebook-exp")), "view", "--store", str(path),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    after_load, navigation = [], []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for _ in range(loads):
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(url, wait_until="load")
                    page.locator(".nx-runs-table .tabulator-row").first.wait_for(state="visible", timeout=60_000)
                    shown, load = page.evaluate(
                        "[performance.now(), performance.getEntriesByType('navigation')[0].loadEventEnd]")
                    after_load.append(shown - load)
                    navigation.append(shown)
                    page.close()
            finally:
                browser.close()
    finally:
        stop_process(proc)
    return after_load, navigation


def bench_big_paint(path: Path, loads: int = 3) -> None:
    """First paint on the big store, and on a one-run store (what the page costs anyway)."""
    from notebook_exp.store import close_all

    after_load, navigation = first_paints(path, loads)
    median = statistics.median(after_load)
    verdict = "PASS" if median <= 1000 else "OVER"
    print(f"first paint (`notebook-exp view`, Chromium, 1400x900; load event -> first runs table row visible): "
          f"{median:.0f} ms median of {loads} loads, first {after_load[0]:.0f} ms (budget 1000 ms: {verdict}); "
          f"from navigation {statistics.median(navigation):.0f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-viewer-tiny-") as folder:
        tiny = Path(folder) / "tiny.duckdb"
        _build_runs(tiny, 1, 100, 100)
        close_all()
        after_load, navigation = first_paints(tiny, loads)
    print(f"  the same on a one-run store (the page's own cost): {statistics.median(after_load):.0f} ms after the "
          f"load event, {statistics.median(navigation):.0f} ms from navigation")


def bench_big_size(path: Path, points: int, compact: bool) -> None:
    size = path.stat().st_size
    print(f"store size: {size / 1e9:.2f} GB for {points / 1e6:.1f} M points: {size / points:.1f} bytes per point "
          "(as logged)")
    if not compact:
        return
    compacted = path.with_name(path.name + ".compacted")
    manifest = _big_manifest(path)
    stamp = json.loads(manifest.read_text()).get("built_at")
    marker = compacted.with_name(compacted.name + ".json")
    took = None
    if not (compacted.exists() and marker.exists() and json.loads(marker.read_text()).get("built_at") == stamp):
        compacted.unlink(missing_ok=True)
        shutil.copyfile(path, compacted)
        start = time.perf_counter()
        try:
            subprocess.run([str(Path(sys.executable).with_name("notebook-exp")), "compact", "--store",
                            str(compacted)], check=True, stdout=subprocess.DEVNULL, timeout=COMPACT_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"`notebook-exp compact` of a copy did not finish in {COMPACT_TIMEOUT:.0f} s; left out")
            for leftover in compacted.parent.glob(compacted.name + "*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            return
        took = time.perf_counter() - start
        marker.write_text(json.dumps({"built_at": stamp, "seconds": took}))
    else:
        took = json.loads(marker.read_text())["seconds"]
    size = compacted.stat().st_size
    print(f"after `notebook-exp compact` ({took:.0f} s, of a copy): {size / 1e9:.2f} GB, "
          f"{size / points:.1f} bytes per point")


BIG_PARTS = ("runs", "compare", "queue", "paint", "size")
OLD_PARTS = ("list", "compare-small", "paint-small", "writer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("NX_BENCH_STORE", DEFAULT_BIG_STORE)),
                        help="the 100 M point store: reused when a build with the same figures made it, "
                             f"else built there (env NX_BENCH_STORE; default {DEFAULT_BIG_STORE})")
    parser.add_argument("--big-runs", type=int, default=1_000)
    parser.add_argument("--big-steps", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=1_000)
    parser.add_argument("--chunk-steps", type=int, default=DEFAULT_CHUNK_STEPS,
                        help="steps per batch each run hands the writer while the store is built")
    parser.add_argument("--compact", action="store_true",
                        help="also compact a copy of the store and print its bytes per point (minutes)")
    parser.add_argument("--runs", type=int, default=10_000, help="runs of the list store (--only list)")
    parser.add_argument("--compare-runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--writer-seconds", type=float, default=15.0)
    parser.add_argument("--writer-rates", default="0,100000",
                        help="points/s of the writer runs, comma separated (0: as fast as it can)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument("--only", default=",".join(BIG_PARTS),
                        help="which measurements, comma separated: on the 100 M point store "
                             f"{', '.join(BIG_PARTS)}; on made-up stores {', '.join(OLD_PARTS)}")
    args = parser.parse_args()
    only = set(args.only.split(","))
    _uptime("start")
    if only & set(BIG_PARTS):
        big_main(args, only)
    if only & set(OLD_PARTS):
        small_main(args, only)
    _uptime("end")


def _uptime(when: str) -> None:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"[{when}: {time.strftime('%H:%M:%S')}, {os.cpu_count()} CPUs, load average {load}]", flush=True)


def big_main(args, only: set[str]) -> None:
    path = args.store.expanduser().absolute()
    lock_dir = Path(tempfile.mkdtemp(prefix="bench-viewer-locks-"))
    os.environ.update({"NOTEBOOK_EXP_FAKE_GPUS": os.environ.get("NOTEBOOK_EXP_FAKE_GPUS", "4"),
                       "NOTEBOOK_EXP_LOCK_DIR": str(lock_dir), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"})
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path("/")).free
        built = big_store(path, args.big_runs, args.big_steps, args.queued, args.chunk_steps)
        how = "reused, built" if built["reused"] else "built"
        print(f"store {path}: {args.big_runs:,} runs x {args.big_steps:,} steps, {built['points'] / 1e6:.1f} M points, "
              f"+ {args.queued:,} queued runs; {how} in {built['build_seconds']:.0f} s "
              f"({built['points'] / built['build_seconds'] / 1e6:.2f} M points/s through Store.records and its writer, "
              f"batches of {args.chunk_steps:,} steps, {CONCURRENT} runs at a time) + {built['queue_seconds']:.1f} s "
              f"for the queue; {free / 1e9:.0f} GB were free", flush=True)
        newest = list(reversed(built["run_ids"]))  # the top of the Runs page, as a user would pick them
        if "runs" in only:
            bench_big_runs_page(path)
        if "compare" in only:
            bench_big_compare(path, newest, args.big_steps)
        if "queue" in only:
            bench_big_queue(path, args.queued)
        if "paint" in only:
            bench_big_paint(path)
        if "size" in only:
            bench_big_size(path, built["points"], args.compact)
    finally:
        from notebook_exp.store import close_all

        close_all()
        shutil.rmtree(lock_dir, ignore_errors=True)


def small_main(args, only: set[str]) -> None:
    """The earlier measurements, on made-up stores (10,000 runs; 100 runs x 100,000 steps)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    try:
        start = time.perf_counter()
        list_store, compare_store = folder / "list.duckdb", folder / "compare.duckdb"
        make_list_store(list_store, args.runs)
        ids = make_compare_store(compare_store, args.compare_runs, args.steps) if "compare-small" in only else []
        print(f"(made-up stores made in {time.perf_counter() - start:.1f} s under {folder})")
        if "list" in only:
            bench_list(list_store, args.runs)
        if "compare-small" in only:
            bench_compare(compare_store, ids, args.steps)
        rates = [float(r) for r in args.writer_rates.split(",") if r.strip()] if "writer" in only else []
        if "paint-small" in only or rates:
            _browser_benches(list_store, args.writer_seconds, rates, paint="paint-small" in only)
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
