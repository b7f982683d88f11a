"""The ray executor's figures, from one local Ray (4 logical CPUs, 2 virtual GPUs):

* points/s from 2 Ray workers to committed DuckDB rows (budget >= 50,000 points/s),
  timed from the first run running to the last row committed;
* submit -> running of trivial Ray runs: what the first submit spends joining the
  cluster and starting the inbox actor, the first run (Ray starts a worker for it)
  and p50/p99 of the next ones (warm worker pool);
* ``run.log`` cost on a Ray worker against the thread executor (ns per call, and
  against a bare function call in the same process, which says how fast that
  process runs Python at all);
* why workers batch: points/s through the inbox actor with one message per point
  against lists of 5,000 points (the issue measured 460 points/s one by one through
  a Ray queue, 29k-76k points/s in batches of 100).

    python benchmarks/bench_ray.py [--points 1000000] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LOG_CALLS = 300_000


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def start_ray():
    """A local Ray, started the way ``executor="ray"`` starts one (it says so)."""
    import ray

    from notebook_exp.config import get_settings
    from notebook_exp.scheduler._ray_cluster import connect

    for attempt in range(3):  # on 2 busy cores the raylet can give up on its agents (fixed 15 s)
        try:
            started = time.perf_counter()
            cluster = connect(get_settings())
            return cluster, time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001
            print(f"Ray did not start (try {attempt + 1}): {exc}", file=sys.stderr)
            ray.shutdown()
    raise SystemExit("Ray did not start")


def throughput(points: int) -> tuple[float, int]:
    """2 Ray runs logging ``points`` each as fast as they can: points/s into committed rows."""
    import threading

    import notebook_exp as nx
    from notebook_exp.models import RunStatus
    from notebook_exp.scheduler.core import get_scheduler

    def flood(run, n):
        log = run.log
        for i in range(n):
            log(loss=1.0 / (i + 1), step=i)

    running = threading.Event()
    first: list[float] = []

    def on_status(job, event, data):
        if event == "status" and data == RunStatus.RUNNING and not first:
            first.append(time.perf_counter())
            running.set()

    jobs = [nx.submit(flood, {"n": points}, executor="ray", name=f"flood-{i}") for i in range(2)]
    for job in jobs:
        job.subscribe(on_status)
    for job in jobs:
        assert job.wait(1200) == RunStatus.COMPLETED, job.error
    get_scheduler().store.writer.flush(600)  # every queued row committed
    done = time.perf_counter()
    rows = int(nx.sql("SELECT count(*) AS n FROM metrics WHERE key = 'loss'").n[0])
    assert rows == 2 * points, (rows, 2 * points)
    return rows / (done - first[0]), rows


def submit_to_running(runs: int) -> tuple[float, float, list[float]]:
    """Seconds to make the executor (join the cluster, start the inbox actor: the first
    submit's part), the first run's submit -> running (Ray starts a worker for it), and
    the next runs' (the worker pool warm)."""
    import notebook_exp as nx
    from notebook_exp.scheduler.core import get_scheduler

    started = time.perf_counter()
    get_scheduler().executor("ray")
    setup = time.perf_counter() - started
    latencies = []
    for _ in range(runs + 1):
        submitted = time.time()
        job = nx.submit(lambda run: None, executor="ray")
        job.wait(300)
        latencies.append(job.started_at - submitted)
    return setup, latencies[0], latencies[1:]


def log_cost(executor: str) -> tuple[float, float]:
    """ns per ``run.log(loss=0.5)`` in a run of ``executor``, and per call of a bare function
    taking the same arguments in the same process (the floor: what the process's own
    speed is; best of 3 each)."""
    import notebook_exp as nx

    def measure(run, calls):
        import time

        def bare(step=None, **metrics):
            return None

        def best_of(fn):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(calls):
                    fn(loss=0.5)
                best = min(best, (time.perf_counter() - started) / calls)
            return best * 1e9

        return best_of(run.log), best_of(bare)

    return nx.submit(measure, {"calls": LOG_CALLS}, executor=executor).result(timeout=600)


def inbox_rates(total: int = 2_000) -> tuple[float, float]:
    """Points/s through the inbox actor: one message per point, and 5,000 points per list."""
    import array

    import ray

    from notebook_exp.scheduler._ray_inbox import Inbox

    inbox = ray.remote(Inbox).options(num_cpus=0).remote()
    ray.get(inbox.ping.remote())

    @ray.remote(num_cpus=0)
    def send(inbox, messages: int, per: int) -> None:
        points = array.array("d", range(per * 3))
        for _ in range(messages):
            ray.get(inbox.put.remote("bench", "k", [("metrics", points)], per * 24))

    rates = []
    for messages, per in ((total, 1), (200, 5_000)):
        started = time.perf_counter()
        task = send.remote(inbox, messages, per)
        got = 0
        while got < messages:
            got += sum(len(items) for _key, items in ray.get(inbox.take.remote("bench", 0.2)))
        ray.get(task)
        rates.append(messages * per / (time.perf_counter() - started))
    ray.kill(inbox)
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="points each of the 2 flooding runs logs")
    parser.add_argument("--runs", type=int, default=20, help="trivial runs timed submit -> running")
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # Ray's processes may cache their bytecode
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "notebook_exp-pycache"))
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NOTEBOOK_EXP_STORE"] = str(Path(folder) / "bench.duckdb")
        os.environ["NOTEBOOK_EXP_FAKE_GPUS"] = "2"
        os.environ["NOTEBOOK_EXP_LOCK_DIR"] = str(Path(folder) / "locks")
        os.environ.setdefault("NOTEBOOK_EXP_RAY_LOCAL_CPUS", "4")
        os.environ["NOTEBOOK_EXP_TELEMETRY_INTERVAL"] = "0"
        import ray

        from notebook_exp.testing import shutdown

        print(f"python {sys.version.split()[0]}, ray {ray.__version__}, {os.cpu_count()} cores")
        _cluster, took = start_ray()
        print(f"local Ray started in {took:.1f} s")
        try:
            setup, cold, warm = submit_to_running(args.runs)
            print(f"first executor='ray' submit: {setup * 1000:.0f} ms to join the cluster and start the inbox actor")
            print(f"submit->running: first run {cold * 1000:.0f} ms (Ray starts a worker), then p50 "
                  f"{statistics.median(warm) * 1000:.0f} ms, p99 {pct(warm, 0.99) * 1000:.0f} ms over {len(warm)} runs")
            rate, rows = throughput(args.points)
            print(f"2 Ray workers -> committed DuckDB rows: {rate:,.0f} points/s ({rows:,} rows; budget 50,000 points/s)")
            (thread_ns, thread_floor), (ray_ns, ray_floor) = log_cost("thread"), log_cost("ray")
            print(f"run.log cost: {ray_ns:.0f} ns per call on a Ray worker ({ray_ns / ray_floor:.1f}x a bare call "
                  f"there), {thread_ns:.0f} ns in a thread run ({thread_ns / thread_floor:.1f}x a bare call there)")
            single, batched = inbox_rates()
            print(f"through the inbox actor: {single:,.0f} points/s one message per point, "
                  f"{batched:,.0f} points/s in lists of 5,000 ({batched / single:,.0f}x)")
        finally:
            shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
