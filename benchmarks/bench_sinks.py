"""Sinks: the training thread's cost with 0, 1 and 3 extra sinks, and the points/s each sink sustains.

1. A real loop (numpy work; ``run.log`` of 10 metrics every ``--every`` steps) runs with the
   duckdb sink alone, then with 1 and 3 extra sinks. Extra sinks run on their own
   worker threads, which share the GIL with the loop: the figure is the whole
   loop's time per step, not only the ``run.log`` call. Configurations are
   interleaved, round after round and each first in turn, so all see the same
   machine noise; medians are printed with the ratio to duckdb alone. Sinks run
   on threads of this process (the default); ``--host`` runs tensorboard, mlflow
   and wandb in the sink host process instead (``process=True``).
2. Each sink alone, fed batches directly (10 keys x 1,000 points per batch, the
   shape a 0.5 s flush of a busy loop gives): points/s from the first call to the
   end of ``close`` (everything written).

    python benchmarks/bench_sinks.py [--rounds 5] [--steps 2000] [--extra jsonl,tensorboard,mlflow]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from array import array
from pathlib import Path


def loop(run, steps: int, work, every: int) -> float:
    """Seconds per step of a loop doing ``work()``, logging 10 metrics every ``every`` steps."""
    started = time.perf_counter()
    for i in range(steps):
        loss = work()
        if i % every == 0:
            run.log(step=i, loss=loss, a=0.1, b=0.2, c=0.3, d=0.4, e=0.5, f=0.6, g=0.7, h=0.8, lr=1e-3)
    return (time.perf_counter() - started) / steps


def training_thread(rounds: int, steps: int, extra: list[str], size: int, every: int) -> None:
    import numpy as np

    import notebook_exp as nx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, size))

    def work():
        return float((x @ x)[0, 0])  # BLAS, which releases the GIL, like a model's step in torch

    configs = {"duckdb only": ["duckdb"], "+1 sink": ["duckdb", *extra[:1]], f"+{len(extra)} sinks": ["duckdb", *extra]}
    times: dict[str, list[float]] = {name: [] for name in configs}
    calls: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds + 1):  # round 0 warms up, and is not counted
        for name in names[r % len(names):] + names[:r % len(names)]:  # each goes first in turn
            sinks = configs[name]
            with nx.start_run(f"loop-{r}", experiment="bench-sinks", sinks=sinks) as run:
                per_step = loop(run, steps, work, every)
                started = time.perf_counter()
                for i in range(steps):  # the call alone, same run
                    run.log(step=steps + i, loss=0.5, a=0.1, b=0.2, c=0.3, d=0.4, e=0.5, f=0.6, g=0.7, h=0.8,
                            lr=1e-3)
                per_call = (time.perf_counter() - started) / steps
            if r:
                times[name].append(per_step)
                calls[name].append(per_call)
    base = statistics.median(times["duckdb only"])
    base_call = statistics.median(calls["duckdb only"])
    for name, sinks in configs.items():
        t, c = statistics.median(times[name]), statistics.median(calls[name])
        print(f"loop, {name:<12} ({', '.join(sinks)}): {t * 1e6:7.1f} us/step ({t / base:.2f}x); "
              f"run.log of 10 metrics {c * 1e6:5.2f} us/call ({c / base_call:.2f}x)")


def sink_throughput(name: str, batches: int, store: Path) -> None:
    from notebook_exp.models import MetricBatch, RunInfo, RunStatus
    from notebook_exp.sinks import registry
    from notebook_exp.store import get_store

    get_store(store).ensure()
    sink = registry.create(name)
    info = RunInfo(run_id=f"tp{name}"[:16], experiment="bench-sinks", name=f"throughput-{name}",
                   params={"lr": 0.1}, store_path=str(store))
    now = time.time()
    chunk_batches = []
    for b in range(batches):
        chunks = []
        for k in range(10):
            points = array("d")
            for i in range(1000):
                step = b * 1000 + i
                points.extend((step, now + step * 1e-3, 1.0 / (step + 1)))
            chunks.append((f"m{k}", points))
        chunk_batches.append(MetricBatch(info.run_id, chunks))
    sink.start_run(info)
    started = time.perf_counter()
    for batch in chunk_batches:
        sink.log_metrics(batch)
    sink.flush()
    if not sink.wait_flushed(120):
        print(f"{name}: not flushed in 120 s")
    sink.end_run(RunStatus.COMPLETED, None)
    sink.close()
    elapsed = time.perf_counter() - started
    points = batches * 10_000
    print(f"sink {name:<12}: {points / elapsed:12,.0f} points/s ({points:,} points in {elapsed:.2f} s, to close)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="loop steps per run")
    parser.add_argument("--every", type=int, default=5, help="log 10 metrics every N steps of the loop")
    parser.add_argument("--size", type=int, default=200, help="the loop's work: a SIZE x SIZE matmul per step")
    parser.add_argument("--extra", default="jsonl,tensorboard,mlflow", help="the extra sinks, in order")
    parser.add_argument("--throughput", default="duckdb,jsonl,tensorboard,mlflow,wandb",
                        help="sinks to measure alone")
    parser.add_argument("--host", action="store_true", help="run tensorboard, mlflow, wandb in the sink host")
    parser.add_argument("--batches", type=int, default=10, help="batches of 10,000 points per sink")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NOTEBOOK_EXP_STORE"] = str(Path(folder) / "bench.duckdb")
        os.environ.setdefault("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0")
        os.environ.setdefault("WANDB_SILENT", "true")
        if args.host:
            for name in ("TENSORBOARD", "MLFLOW", "WANDB"):
                os.environ[f"NOTEBOOK_EXP_{name}_PROCESS"] = "true"
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        training_thread(args.rounds, args.steps, [s for s in args.extra.split(",") if s], args.size,
                        args.every)
        for name in [s for s in args.throughput.split(",") if s]:
            sink_throughput(name, args.batches, Path(folder) / "bench.duckdb")


if __name__ == "__main__":
    main()
