"""The scheduler's latencies: submit -> running per executor, GPU hand-off between
runs (in one process and across two), and draining 1,000 queued trivial runs.

Budgets (issue 3): thread submit->running p50 <= 5 ms; hand-off p50 <= 50 ms;
>= 200 trivial thread runs/s drained; process submit->running p50 <= 1 s.

    python benchmarks/bench_scheduler.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def submit_latency(executor: str, n: int) -> list[float]:
    import notebook_exp as nx

    latencies = []
    for _ in range(n):
        started = time.time()
        job = nx.submit(lambda run: time.time(), executor=executor)
        latencies.append(job.result(timeout=120) - started)
    return latencies


def handoff_in_process(n: int) -> list[float]:
    import notebook_exp as nx

    spans = []
    jobs = [nx.submit(lambda run: (time.time(), time.sleep(0.02), time.time()), gpus=1) for _ in range(n)]
    for job in jobs:
        start, _none, end = job.result(timeout=120)
        spans.append((start, end))
    spans.sort()
    return [b[0] - a[1] for a, b in zip(spans, spans[1:])]


OTHER = """
import sys, time
import notebook_exp as nx
jobs = [nx.submit(lambda run: (time.time(), time.sleep(0.05), time.time()), gpus=1) for _ in range(int(sys.argv[1]))]
for job in jobs:
    start, _none, end = job.result(timeout=300)
    print(start, end, flush=True)
"""


def handoff_across_processes(n: int) -> list[float]:
    """Two processes alternate on one GPU; gaps between one's end and the other's start."""
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(OTHER), str(n)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        spans += [tuple(map(float, line.split())) for line in out.splitlines()]
    spans.sort()
    return [b[0] - a[1] for a, b in zip(spans, spans[1:])]


def drain(n: int) -> float:
    import notebook_exp as nx

    gate = threading.Event()
    blocker = nx.submit(lambda run: gate.wait(60), priority=10)
    jobs = [nx.submit(lambda run: None) for _ in range(n)]
    started = time.perf_counter()
    gate.set()
    nx.wait(jobs, timeout=600)
    elapsed = time.perf_counter() - started
    blocker.wait(10)
    return n / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NOTEBOOK_EXP_STORE"] = str(Path(folder) / "bench.duckdb")
        os.environ["NOTEBOOK_EXP_FAKE_GPUS"] = "1"
        os.environ["NOTEBOOK_EXP_LOCK_DIR"] = str(Path(folder) / "locks")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        thread = submit_latency("thread", 200)
        print(f"thread submit->running: p50 {statistics.median(thread) * 1000:.2f} ms, "
              f"p99 {pct(thread, 0.99) * 1000:.2f} ms (budget p50 5 ms)")
        process = submit_latency("process", 15)
        print(f"process submit->running: p50 {statistics.median(process) * 1000:.0f} ms, "
              f"p99 {pct(process, 0.99) * 1000:.0f} ms (budget p50 1000 ms)")
        local = handoff_in_process(40)
        print(f"GPU hand-off in one process: p50 {statistics.median(local) * 1000:.1f} ms, "
              f"p99 {pct(local, 0.99) * 1000:.1f} ms (budget p50 50 ms)")
        across = handoff_across_processes(15)
        print(f"GPU hand-off across two processes: p50 {statistics.median(across) * 1000:.1f} ms, "
              f"p99 {pct(across, 0.99) * 1000:.1f} ms")
        rate = drain(1000)
        print(f"drain 1000 queued trivial thread runs: {rate:.0f} runs/s (budget 200 runs/s)")
        from notebook_exp.testing import shutdown

        shutdown()


if __name__ == "__main__":
    main()
