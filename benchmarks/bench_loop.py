"""A training loop's slowdown from run.log, and run.end() until durable.

A numpy SGD step of about 25 us (a linear model on a 512 x 128 batch), one scalar
logged per step, over 20,000 and 100,000 steps. Each trial is a fresh
interpreter, which times the same loop three ways, interleaved: bare (no
logging), a bare Python list-append logger, and notebook_exp (a fresh run in a
fresh store: the writer's start, first attach and every commit happen during or
after the loop, as in a notebook's first run). The slowdown is the loop's time
over the bare loop's. Then it times ``run.end()`` until the run and all its
points are committed to the DuckDB file (end returns only then), and checks the
file holds every point.

Budgets (issue 17, 2 cores): slowdown <= +5% at both lengths, printed next to the
list-append logger's; ``run.end()`` after 100,000 points <= 30 ms.

    python benchmarks/bench_loop.py [--trials 5] [--steps 20000 100000] [--before PATH] [--switch 0 0.001 ...]

``--before`` runs an older copy of the package (a folder holding ``notebook_exp``) in
alternate trials; ``--switch`` compares ``gil_switch_interval`` values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def sgd(steps: int, log=None) -> float:
    """Seconds for ``steps`` SGD steps of a linear model, calling ``log(loss=...)`` per step."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 128))
    y = x @ rng.standard_normal(128)
    w = np.zeros(128)
    lr = 0.01
    start = time.perf_counter()
    for step in range(steps):
        err = x @ w - y
        w -= lr * (x.T @ err) / 512
        loss = float(err @ err) / 512
        if log is not None:
            log(loss=loss, step=step)
    return time.perf_counter() - start


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def list_logger():
    rows = []
    append = rows.append
    now = time.time

    def log(step=None, **metrics):
        t = now()
        for key, value in metrics.items():
            append((key, step, t, value))

    return log


def child(steps: int) -> None:
    """One trial: bare, list-append and notebook_exp loops in this fresh interpreter."""
    sgd(2000)  # warm numpy and the interpreter
    bare = sgd(steps)
    listed = sgd(steps, list_logger())
    import notebook_exp as nx
    from notebook_exp.tracking.flusher import flusher

    run = nx.start_run("bench-loop", experiment="bench")
    cpu_before = thread_cpu()
    logged = sgd(steps, run.log)
    started = time.perf_counter()
    run.end()
    end_ms = (time.perf_counter() - started) * 1000
    cpu = {tid: seconds - cpu_before.get(tid, 0.0) for tid, seconds in thread_cpu().items()}
    named = {threading.main_thread().native_id: "main", run._store.writer._thread.native_id: "writer",
             flusher._thread.native_id: "flusher"}
    shares = {name: cpu.pop(tid, 0.0) for tid, name in named.items()}
    shares["other"] = sum(cpu.values())  # DuckDB's own threads and the rest (they do not hold the GIL)
    stored = nx.sql("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [run.run_id]).n[0]
    status = nx.sql("SELECT status FROM runs WHERE run_id = ?", [run.run_id]).status[0]
    bare2 = sgd(steps)
    print(json.dumps({"bare": min(bare, bare2), "list": listed, "nx": logged, "end_ms": end_ms,
                      "stored": int(stored), "status": status, "cpu": shares}))


def trial(steps: int, folder: str, index: int, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(Path(folder) / f"loop-{steps}-{index}-{len(os.listdir(folder))}.duckdb"),
           "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0", **extra_env}
    out = subprocess.run([sys.executable, __file__, "--child", str(steps)], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"trial failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def variants(args) -> dict[str, dict[str, str]]:
    """The code and settings each trial runs with: this checkout, and optionally an
    older copy of the package (``--before``) or other switch intervals (``--switch``)."""
    found = {}
    if args.before:
        found["before"] = {"PYTHONPATH": args.before}
    for value in args.switch or []:
        found[f"switch {value}"] = {"NOTEBOOK_EXP_GIL_SWITCH_INTERVAL": value}
    if not args.switch:
        found["now" if args.before else "notebook_exp"] = {}
    return found


def report(name: str, steps: int, results: list[dict]) -> None:
    bare = statistics.median(r["bare"] for r in results)
    listed = statistics.median(r["list"] / r["bare"] - 1 for r in results)
    logged = statistics.median(r["nx"] / r["bare"] - 1 for r in results)
    end_ms = statistics.median(r["end_ms"] for r in results)
    lost = [r for r in results if r["stored"] != steps or r["status"] != "completed"]
    slowdowns = ", ".join(f"{(r['nx'] / r['bare'] - 1) * 100:+.1f}" for r in results)
    ends = ", ".join(f"{r['end_ms']:.0f}" for r in results)
    stored = "all points stored" if not lost else f"{len(lost)} trials lost points"
    cpu = {part: statistics.median(r["cpu"][part] for r in results) * 1000 for part in results[0]["cpu"]}
    threads = ", ".join(f"{part} {ms:.0f}" for part, ms in cpu.items())
    print(f"{name:>12} {steps:>7,} steps, {bare / steps * 1e6:.1f} us/step bare: list-append logger "
          f"{listed * 100:+.1f}%, notebook_exp {logged * 100:+.1f}% (median of {len(results)}; "
          f"per trial {slowdowns}); run.end() until durable {end_ms:.1f} ms (per trial {ends}); {stored}; "
          f"CPU ms of the loop and end by thread: {threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--before", help="PYTHONPATH of an older notebook_exp to compare with, trial by trial")
    parser.add_argument("--switch", nargs="*", help="gil_switch_interval values to compare (0: not lowered)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    runs = variants(args)
    with tempfile.TemporaryDirectory() as folder:
        for steps in args.steps:
            results: dict[str, list[dict]] = {name: [] for name in runs}
            for index in range(args.trials):
                names = list(runs)
                names = names[index % len(names):] + names[:index % len(names)]  # rotate: same noise for all
                for name in names:
                    results[name].append(trial(steps, folder, index, runs[name]))
            for name, found in results.items():
                report(name, steps, found)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
