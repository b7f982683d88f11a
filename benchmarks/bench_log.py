"""run.log on the hot path: cost per call against a bare-function floor, sustained
throughput into DuckDB with a reader polling, and the delay until a reader sees a point.

Budgets (issue 2, on a 2-core machine): one metric <= 1.0 us median per call and
<= 2x the floor; 10 metrics per call <= 0.5 us per point; >= 1,000,000 points/s
sustained into DuckDB; visible to a reader within 1 s.

    python benchmarks/bench_log.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

_time = time.time


def floor_factory():
    buf = []
    append = buf.append

    def floor(step=None, **metrics):
        t = _time()
        for key, value in metrics.items():
            append((key, step, t, value))

    return floor, buf


def per_call(fn, calls: int, ten: bool) -> float:
    """Mean ns per call over ``calls`` calls (one sample)."""
    if ten:
        start = time.perf_counter_ns()
        for i in range(calls):
            fn(step=i, a=0.1, b=0.2, c=0.3, d=0.4, e=0.5, f=0.6, g=0.7, h=0.8, i=0.9, j=1.0)
    else:
        start = time.perf_counter_ns()
        for i in range(calls):
            fn(loss=0.5, step=i)
    return (time.perf_counter_ns() - start) / calls


def hot_path(rounds: int = 31, calls: int = 20_000) -> None:
    import notebook_exp as nx

    floor, floor_buf = floor_factory()
    with nx.start_run("bench-hot", experiment="bench") as run:
        for ten in (False, True):
            logs, floors = [], []
            for _ in range(rounds):  # interleaved, so both see the same machine noise
                logs.append(per_call(run.log, calls, ten))
                floors.append(per_call(floor, calls, ten))
                floor_buf.clear()
            log_ns, floor_ns = statistics.median(logs), statistics.median(floors)
            per = 10 if ten else 1
            label = "10 metrics/call" if ten else "1 metric/call  "
            print(
                f"run.log {label}: {log_ns / 1000:.3f} us/call = {log_ns / per / 1000:.3f} us/point; "
                f"floor {floor_ns / 1000:.3f} us/call; ratio {log_ns / floor_ns:.2f}x"
            )


READER = """
import sys, time
import notebook_exp as nx
from notebook_exp.exceptions import NotebookExpError
deadline = time.monotonic() + float(sys.argv[1])
seen_t, delays, polls = None, [], 0
while time.monotonic() < deadline:
    try:
        frame = nx.sql("SELECT max(last_value) AS t FROM metric_summary WHERE key = 'clock'")
        polls += 1
        t = frame.t[0]
        if t == t and t is not None and t != seen_t:
            delays.append(time.time() - t)
            seen_t = t
    except NotebookExpError:
        pass
    time.sleep(0.02)
delays.sort()
print(polls, len(delays), delays[len(delays) // 2] if delays else -1, delays[-1] if delays else -1)
"""


def sustained(seconds: float, per_call_metrics: int, rate: float | None = None) -> None:
    """Log for ``seconds`` (flat out, or paced at ``rate`` points/s) with a reader polling."""
    import notebook_exp as nx

    names = [f"m{i}" for i in range(per_call_metrics)]
    values = dict.fromkeys(names, 0.5)
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(READER), str(seconds + 2)],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    time.sleep(1.0)  # let the reader start polling
    with nx.start_run(f"bench-sustained-{per_call_metrics}", experiment="bench") as run:
        started = time.perf_counter()
        deadline = started + seconds
        step = 0
        calls = 1000 if rate is None else max(1, int(rate / per_call_metrics / 100))  # 100 bursts/s
        while True:
            for _ in range(calls):
                run.log(step=step, **values)
                step += 1
            run.log(clock=time.time())
            now = time.perf_counter()
            if now >= deadline:
                break
            if rate is not None:  # hold the pace
                ahead = step * per_call_metrics / rate - (now - started)
                if ahead > 0:
                    time.sleep(ahead)
    elapsed = time.perf_counter() - started  # includes the final flush and commit
    points = run.points
    polls, changes, p50, worst = reader.communicate()[0].split()
    committed = nx.sql("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [run.run_id]).n[0]
    commits = sorted(run._store.writer.commit_seconds)
    p99 = commits[int(len(commits) * 0.99) - 1] * 1000 if commits else float("nan")
    pace = "flat out" if rate is None else f"paced at {rate:,.0f} points/s"
    print(
        f"sustained, {per_call_metrics} metrics/call, {pace}: {committed / elapsed:,.0f} points/s committed "
        f"({committed:,} of {points:,} points in {elapsed:.2f} s, reader polling: {polls} queries); "
        f"log->visible p50 {float(p50) * 1000:.0f} ms, max {float(worst) * 1000:.0f} ms; "
        f"writer commit p99 {p99:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each sustained run")
    parser.add_argument("--pace", type=float, nargs="*", default=[500_000, 1_000_000],
                        help="points/s of the paced runs (visibility at a sustainable rate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NOTEBOOK_EXP_STORE"] = str(Path(folder) / "bench.duckdb")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        hot_path()
        sustained(args.seconds, 10)
        sustained(args.seconds, 1)
        for rate in args.pace:  # visibility at rates the store sustains
            sustained(args.seconds, 10, rate=rate)


if __name__ == "__main__":
    main()
