"""Early stopping's costs: the stop rule per logged point (off run.log's path), run.log
with and without a rule's sink, and the time from a rule's decision to the GPU being free.

Budgets (the configs-and-sweeps issue): the rule adds nothing to ``run.log`` (its cost
budget is bench_log.py's: <= 1.0 us per call, <= 2x the floor); the rule's own work is
done in the flusher's thread, per point of its metric; a stopped run's GPU goes to the
next queued run at once (bounded by its next ``run.log`` and the store's commit of its end).

    python benchmarks/bench_sweeps.py [--sweeps 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def rule_per_point(rule_name: str, runs: int = 8, batch: int = 500, batches: int = 200) -> float:
    """ns per point the rule's sink and monitor spend on its metric (a flush of ``batch``
    points per run, ``runs`` runs of one sweep, every point a new best), as the flusher's
    thread calls them."""
    from notebook_exp.models import MetricBatch
    from notebook_exp.scheduler.stopping import ASHA, MedianStop, StopMonitor

    rule = MedianStop("val/loss", grace=10**9) if rule_name == "MedianStop" else ASHA("val/loss", min_step=10)
    monitor = StopMonitor(rule, scheduler=None)  # decisions are made, nothing is stopped
    sinks = []
    for r in range(runs):
        sink = monitor.sink()
        sink.start_run(type("Info", (), {"run_id": f"run{r}"})())
        sinks.append(sink)
    elapsed = 0
    for b in range(batches):
        for r, sink in enumerate(sinks):
            steps = range(b * batch, (b + 1) * batch)
            points = array("d", [x for s in steps for x in (s, 0.0, 1.0 + math.exp(-s / 5000))])  # all alike:
            # nobody is stopped, so every batch is judged
            batch_obj = MetricBatch(f"run{r}", [("val/loss", points), ("train/loss", points)])
            start = time.perf_counter_ns()
            sink.log_metrics(batch_obj)
            elapsed += time.perf_counter_ns() - start
    return elapsed / (runs * batches * batch)


def log_with_and_without_a_rule(rounds: int = 21, calls: int = 20_000) -> tuple[float, float]:
    """Median ns per ``run.log`` call in a run with the DuckDB sink only, and with a rule's sink too."""
    import notebook_exp as nx
    from notebook_exp.scheduler.stopping import MedianStop, StopMonitor

    monitor = StopMonitor(MedianStop("loss"), scheduler=None)
    results = []
    for sinks in (["duckdb"], ["duckdb", monitor.sink]):
        with nx.start_run("bench-log", experiment="bench-sweeps", sinks=sinks) as run:
            samples = []
            for r in range(rounds):
                start = time.perf_counter_ns()
                for i in range(calls):
                    run.log(loss=0.5, step=r * calls + i)
                samples.append((time.perf_counter_ns() - start) / calls)
        results.append(statistics.median(samples))
    return results[0], results[1]


def train(run, bad: bool, steps: int):
    for step in range(steps):
        run.log(**{"val/loss": (3.0 if bad else 0.0) + math.exp(-step / 200)}, step=step)
        time.sleep(0.001)


def decision_to_gpu(sweeps_n: int) -> tuple[list[float], list[float], float]:
    """Per stopped run: seconds from the rule's decision to its GPU being free (its end
    stored, the lease released) and to the next queued run starting on it; and the
    share of the steps the sweeps ran against the same sweeps without the rule."""
    import notebook_exp as nx
    from notebook_exp.scheduler import sweeps
    from notebook_exp.scheduler.stopping import MedianStop

    freed, started, ran, planned = [], [], 0, 0
    for _ in range(sweeps_n):
        order = [{"bad": False, "steps": 400}, {"bad": True, "steps": 4000}, {"bad": False, "steps": 400},
                 {"bad": True, "steps": 4000}, {"bad": False, "steps": 50}]
        sweep = sweeps.sweep(train, order, stop=MedianStop("val/loss", grace=100, min_runs=1), gpus=1,
                             experiment="bench-sweeps")
        nx.wait(sweep, timeout=300)
        by_id = {job.run_id: job for job in sweep}
        for decision in sweep.decisions:
            job = by_id[decision.run_id]
            freed.append(job.ended_at - decision.at)
            after = [j.started_at for j in sweep if j.gpus == job.gpus and j.started_at >= decision.at]
            if after:
                started.append(min(after) - decision.at)
        for job in sweep:
            last = nx.sql("SELECT last_step FROM metric_summary WHERE run_id = ? AND key = 'val/loss'",
                          [job.run_id])
            ran += int(last["last_step"][0]) + 1
            planned += job.params["steps"]
    return freed, started, ran / planned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=5, help="sweeps run for the decision -> GPU figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NOTEBOOK_EXP_STORE"] = str(Path(folder) / "bench.duckdb")
        os.environ["NOTEBOOK_EXP_LOCK_DIR"] = str(Path(folder) / "locks")
        os.environ.setdefault("NOTEBOOK_EXP_FAKE_GPUS", "2")
        os.environ.setdefault("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        for name in ("MedianStop", "ASHA"):
            print(f"{name}: {rule_per_point(name):.0f} ns per point of its metric, in the flusher's thread "
                  "(run.log does not call it)")
        plain, ruled = log_with_and_without_a_rule()
        print(f"run.log, 1 metric/call: {plain / 1000:.3f} us/call with the DuckDB sink, {ruled / 1000:.3f} us/call "
              f"with a stop rule's sink too (ratio {ruled / plain:.2f}x)")
        freed, started, share = decision_to_gpu(args.sweeps)
        flush = float(os.environ.get("NOTEBOOK_EXP_FLUSH_INTERVAL", "0.5"))
        print(f"decision -> GPU free (run ended, end stored, lease released): p50 {pct(freed, 0.5) * 1000:.0f} ms, "
              f"max {max(freed) * 1000:.0f} ms over {len(freed)} stopped runs")
        if started:
            print(f"decision -> next queued run started on it: p50 {pct(started, 0.5) * 1000:.0f} ms, "
                  f"max {max(started) * 1000:.0f} ms")
        print(f"steps run with MedianStop: {share:.2f} of the steps without it "
              f"(the rule sees points {flush:g} s flush_interval after they are logged)")
        from notebook_exp.testing import shutdown

        shutdown()


if __name__ == "__main__":
    main()
