"""Many writers, one file: aggregate committed points/s with 1, 2 and 4 writer processes,
the lock hand-off between them, and what a reader waits meanwhile.

Budget (issue 17, 2 cores): 4 processes >= 1 M points/s aggregate, or the measured
ceiling explained.

Each writer is a real process that waits for a common start, then either

- ``log``: logs ``--points`` points through ``run.log`` (one scalar per call) and
  ends the run (``run.end()`` returns once everything is durable), or
- ``direct``: hands the store writer pre-built ``MetricBatch`` es of 50,000 points
  (what one ``flush_rows`` flush carries) and waits for ``flush()``: the same
  commits without the logging cost, to separate the two;

while one reader process runs a short query (``SELECT ... FROM metric_summary``)
every 10 ms. Aggregate = all points / (last durable - first start). Per writer the
store's own sessions are timed from the inside: time spent waiting for another
process's lock, lock conflicts (retries) per commit, commit p50/p99.

Each configuration runs with each lock hand-off (``--turn fair,on,off``, interleaved):
``fair`` as shipped (the writers' turn file, ``Store._take_turn``, and waiting readers
first, ``Store._wait_as_reader``), ``on`` (the turn file only), ``off`` (DuckDB's lock
alone, as before).

Alternatives (``--alternatives``), measured the same way with ``direct`` writers:

- ``hold=S``: the writer keeps the file attached for windows of S seconds (and
  up to 4x the points per transaction) instead of ``DEFAULT_HOLD``;
- ``queue``: one writer process per machine, fed by the others over pipes
  (points sent as raw float64 triples, the way a queue would carry them);
- ``staging``: one file per process (no lock hand-off at all); the reader then
  has to attach every file and union them per query.

    python benchmarks/bench_writers.py [--points 1000000] [--writers 1,2,4] [--alternatives]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

QUIET = {"NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0", "NOTEBOOK_EXP_CAPTURE_GIT": "false"}

#: Instruments ``Store`` from inside a writer process: lock waits and conflicts.
PROBE = """
    import os, time
    from notebook_exp.store import core
    if os.environ.get("BENCH_TURN") == "off":
        core.DEFAULT_USE_TURN = False  # DuckDB's lock alone, as before the writers' turn file
    if os.environ.get("BENCH_TURN") == "on":
        core.DEFAULT_READERS_FIRST = False  # the turn file, but writers do not let waiting readers first
    stats = {"conflicts": 0, "waits": [], "sessions": 0}
    _try, _acquire = core.Store._try_attach, core.Store._acquire
    def _try_attach(self, write):
        holder = _try(self, write)
        if holder is not None:
            stats["conflicts"] += 1
        return holder
    def _acq(self, write, timeout):
        started = time.perf_counter()
        before = stats["conflicts"]
        try:
            return _acquire(self, write, timeout)
        finally:
            stats["sessions"] += 1
            if stats["conflicts"] > before:
                stats["waits"].append(time.perf_counter() - started)
    core.Store._try_attach, core.Store._acquire = _try_attach, _acq

    def tune(store, hold, txn_points):
        from notebook_exp.store import writer as writer_mod
        if txn_points:
            writer_mod.MAX_TXN_POINTS = txn_points
        if hold:
            store.writer.hold = hold

    def cpu():
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def go(start_file):
        print("ready", flush=True)
        while not __import__("os").path.exists(start_file):
            time.sleep(0.001)
        stats["cpu0"] = cpu()
        return time.time()

    def report(store, started, points, **extra):
        commits = sorted(store.writer.commit_seconds)
        print(json.dumps({"started": started, "ended": time.time(), "points": points, "commits": commits,
                          "cpu": cpu() - stats.get("cpu0", 0.0), **stats, **extra}), flush=True)
"""

LOG_WRITER = PROBE + """
    import json, sys
    import notebook_exp as nx
    from notebook_exp.store import get_store
    from notebook_exp.testing import shutdown
    start_file, points, hold, txn = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    run = nx.start_run(f"log-{__import__('os').getpid()}", experiment="writers")
    store = get_store(nx.get_settings().store_path)
    store.writer.flush()
    tune(store, hold, txn)
    started = go(start_file)
    log = run.log
    for step in range(points):
        log(loss=step * 1e-6, step=step)
    run.end()
    report(store, started, points)
    shutdown()
"""

DIRECT_WRITER = PROBE + """
    import json, sys, time, uuid
    from array import array
    import numpy as np
    from notebook_exp.models import MetricBatch
    from notebook_exp.store import get_store
    from notebook_exp.testing import shutdown
    start_file, points, hold, txn, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    store = get_store(path)
    store.ensure()
    tune(store, hold, txn)
    run_id = uuid.uuid4().hex
    BATCH = 50_000
    def batch(first):
        triples = np.empty((BATCH, 3))
        triples[:, 0] = np.arange(first, first + BATCH)
        triples[:, 1] = time.time()
        triples[:, 2] = triples[:, 0] * 1e-6
        return MetricBatch(run_id, [("loss", array("d", triples.tobytes()))])
    started = go(start_file)
    for first in range(0, points, BATCH):
        store.writer.submit_metrics(batch(first))
    store.writer.flush()
    report(store, started, points)
    shutdown()
"""

#: One writer process of the machine, fed by producers over pipes (``queue``).
QUEUE_WRITER = PROBE + """
    import json, socket, sys, threading, time, uuid
    from array import array
    from multiprocessing.connection import Listener
    from notebook_exp.models import MetricBatch
    from notebook_exp.store import get_store
    from notebook_exp.testing import shutdown
    address, producers, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = get_store(path)
    store.ensure()
    listener = Listener(address, "AF_UNIX")
    print("listening", flush=True)
    stats["cpu0"] = cpu()
    total = [0]
    def serve(conn):
        run_id = uuid.uuid4().hex
        while True:
            data = conn.recv_bytes()
            if not data:
                break
            batch = MetricBatch(run_id, [("loss", array("d", data))])
            total[0] += len(batch)
            store.writer.submit_metrics(batch)
        store.writer.flush()
        conn.send_bytes(b"done")
    threads = []
    for _ in range(producers):
        conn = listener.accept()
        threads.append(threading.Thread(target=serve, args=(conn,)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    report(store, 0.0, total[0])
    shutdown()
"""

QUEUE_PRODUCER = """
    import json, sys, time
    import numpy as np
    from multiprocessing.connection import Client
    start_file, points, address = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = Client(address, "AF_UNIX")
    BATCH = 50_000
    print("ready", flush=True)
    import os, resource
    while not os.path.exists(start_file):
        time.sleep(0.001)
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    started = time.time()
    for first in range(0, points, BATCH):
        triples = np.empty((BATCH, 3))
        triples[:, 0] = np.arange(first, first + BATCH)
        triples[:, 1] = time.time()
        triples[:, 2] = triples[:, 0] * 1e-6
        conn.send_bytes(triples.tobytes())
    conn.send_bytes(b"")
    conn.recv_bytes()
    print(json.dumps({"started": started, "ended": time.time(), "points": points,
                      "cpu": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0}), flush=True)
"""

READER = """
    import json, os, sys, time
    import duckdb
    from notebook_exp.store.queries import read
    stop, paths = sys.argv[1], sys.argv[2:]
    samples = []
    if len(paths) == 1:
        def query():
            read(lambda conn: conn.execute("SELECT count(*), sum(count) FROM metric_summary").fetchall(),
                 store=paths[0])
    else:  # staging files: attach every one, union them
        conn = duckdb.connect(":memory:", config={"autoload_known_extensions": False})
        def query():
            names = []
            for i, p in enumerate(paths):
                if not os.path.exists(p):
                    continue
                while True:
                    try:
                        conn.execute(f"ATTACH '{p}' AS s{i} (READ_ONLY)")
                        break
                    except duckdb.IOException:
                        time.sleep(0.002)
                names.append(f"s{i}")
            try:
                if names:
                    union = " UNION ALL ".join(f"SELECT count FROM {n}.metric_summary" for n in names)
                    conn.execute(f"SELECT count(*), sum(count) FROM ({union})").fetchall()
            finally:
                for n in names:
                    conn.execute(f"DETACH {n}")
    print("ready", flush=True)
    while not os.path.exists(stop):
        started = time.time()
        try:
            query()
        except Exception as exc:
            print("reader:", exc, file=sys.stderr)
        samples.append((started, time.time() - started))
        time.sleep(0.01)
    print(json.dumps({"samples": samples}), flush=True)
"""


def python(code: str, *args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def last_json(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"a benchmark process failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1])


def wait_ready(proc: subprocess.Popen, word: str = "ready") -> None:
    line = proc.stdout.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r}, got {line!r}:\n{proc.stderr.read()}")


def experiment(folder: Path, label: str, writers: int, points: int, mode: str, hold: float = 0.0,
               txn: int = 0, turn: str = "fair") -> dict:
    """One measurement: ``writers`` processes of ``mode`` (log | direct | queue | staging);
    ``turn``: "fair" (the default: the writers' turn file, and waiting readers first),
    "on" (the turn file only), "off" (DuckDB's lock alone)."""
    run_dir = Path(tempfile.mkdtemp(dir=folder))
    store = run_dir / "store.duckdb"
    env = {**os.environ, **QUIET, "NOTEBOOK_EXP_STORE": str(store), "BENCH_TURN": turn}
    label += {"off": ", turn off", "on": ", turn, no readers first"}.get(turn, "")
    start, stop = run_dir / "go", run_dir / "stop"
    staged = [run_dir / f"stage-{i}.duckdb" for i in range(writers)]
    procs: list[subprocess.Popen] = []
    try:
        return _measure(label, writers, points, mode, hold, txn, store, env, start, stop, staged, procs)
    finally:  # a failed process must not leave the others waiting for the start for ever
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def _measure(label, writers, points, mode, hold, txn, store, env, start, stop, staged, procs) -> dict:
    server = None
    run_dir = store.parent
    if mode == "queue":
        address = str(run_dir / "queue.sock")
        server = python(QUEUE_WRITER, address, writers, store, env=env)
        procs.append(server)
        wait_ready(server, "listening")
        procs += [python(QUEUE_PRODUCER, start, points, address, env=env) for _ in range(writers)]
    elif mode == "log":
        procs += [python(LOG_WRITER, start, points, hold, txn, env=env) for _ in range(writers)]
    else:
        paths = staged if mode == "staging" else [store] * writers
        procs += [python(DIRECT_WRITER, start, points, hold, txn, p, env=env) for p in paths]
    for proc in procs:
        if proc is not server:
            wait_ready(proc)
    reader = python(READER, stop, *(staged if mode == "staging" else [store]), env=env)
    procs.append(reader)
    wait_ready(reader)
    time.sleep(0.5)
    start.touch()
    results = [last_json(proc) for proc in procs if proc is not server and proc is not reader]
    if server is not None:
        served = last_json(server)
        ended = served["ended"]  # its last commit, not its exit
        for r in results:
            r["ended"] = max(r["ended"], ended)
        results.append({**served, "points": 0, "started": min(r["started"] for r in results), "ended": ended})
    stop.touch()
    read = last_json(reader)
    first = min(r["started"] for r in results)
    last = max(r["ended"] for r in results)
    total = sum(r["points"] for r in results)
    inside = [d for t, d in read["samples"] if first <= t <= last]
    commits = [c for r in results for c in r.get("commits", [])]
    waits = [w for r in results for w in r.get("waits", [])]
    conflicts = sum(r.get("conflicts", 0) for r in results)
    found = {
        "label": label, "writers": writers, "mode": mode, "points": total, "seconds": last - first,
        "rate": total / (last - first), "commits": len(commits),
        "commit_p50": pct(commits, 0.5), "commit_p99": pct(commits, 0.99),
        "conflicts_per_commit": conflicts / max(1, len(commits)),
        "lock_wait_total": sum(waits), "lock_wait_p99": pct(waits, 0.99),
        "cpu": sum(r.get("cpu", 0.0) for r in results),
        "reader_p50": pct(inside, 0.5), "reader_p99": pct(inside, 0.99), "reader_samples": len(inside),
    }
    print(f"{label:<44} {writers} x {points / 1e6:.1f} M  {found['rate'] / 1e6:5.2f} M pts/s "
          f"({found['seconds']:5.1f} s, {found['cpu']:4.1f} cpu-s)  commits {found['commits']:4d} p50 {ms(found['commit_p50'])} "
          f"p99 {ms(found['commit_p99'])}  lock: {found['conflicts_per_commit']:.1f} retries/commit, "
          f"waited {found['lock_wait_total']:.1f} s in all (p99 {ms(found['lock_wait_p99'])})  "
          f"reader p50 {ms(found['reader_p50'])} p99 {ms(found['reader_p99'])} ({len(inside)})", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="points per writer process")
    parser.add_argument("--writers", default="1,2,4")
    parser.add_argument("--modes", default="log,direct")
    parser.add_argument("--alternatives", action="store_true")
    parser.add_argument("--turn", default="fair,on,off",
                        help="lock hand-off variants, interleaved: fair (turn file and readers first, the "
                             "default), on (turn file only), off (DuckDB's lock alone)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import duckdb

    print(f"duckdb {duckdb.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench_writers-"))
    figures = []
    try:
        counts = [int(n) for n in args.writers.split(",")]
        for mode in args.modes.split(","):
            for n in counts:
                for turn in args.turn.split(","):  # interleaved: both see the same machine
                    figures.append(experiment(folder, f"{mode} (run.log)" if mode == "log" else mode, n,
                                              args.points, mode, turn=turn))
        if args.alternatives:
            n = max(counts)
            for hold in (1.0, 2.0):
                figures.append(experiment(folder, f"direct, hold {hold:g} s, 400k/txn", n, args.points, "direct",
                                          hold=hold, txn=400_000))
            figures.append(experiment(folder, "queue: one writer process", n, args.points, "queue"))
            figures.append(experiment(folder, "staging: one file per process", n, args.points, "staging"))
        print(f"\nload afterwards {os.getloadavg()[0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
