"""Compaction (``notebook-exp compact``): bytes per point before and after, how long
it takes, and what a writer and a reader using the store meanwhile waited.

Budget (issue 17): <= 10 bytes per point after compaction, for 100 runs x 1,000
steps and for one 10 M point run; readers and writers keep working.

Stores, each logged by a real process through ``run.log`` (no telemetry, no git):

- ``sequential``: 100 runs x 1,000 steps, one metric, one run after another;
- ``sweep``: 100 runs x 1,000 steps, ten runs at a time, three metrics per step
  (loss, acc, lr), flushed every 20 ms (the store ``tests/store/test_compact.py`` uses);
- ``long``: one run of 10 M points.

Each is compacted once (and a copy once more with DuckDB's default 256 KiB blocks,
the measurement behind ``BLOCK_SIZE``). While the sweep and the long run are
compacted, two probe processes use the store: a writer that logs 1,000 points and
waits for them to be durable (``run.flush()``) in a loop, and a reader that runs
one short query in a loop; their latencies inside the compaction's window are
printed next to the same probes' latencies without compaction.

    python benchmarks/bench_compact.py [--long-points 10000000]
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
import textwrap
import time
from pathlib import Path

QUIET = {"NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0", "NOTEBOOK_EXP_CAPTURE_GIT": "false"}

SEQUENTIAL = """
    import math, random, sys, time
    import notebook_exp as nx
    from notebook_exp.testing import shutdown
    rng = random.Random(0)
    for i in range(100):
        with nx.start_run(f"r{i}", experiment="sequential", params={"i": i}) as run:
            for step in range(1000):
                run.log(loss=round(math.exp(-step / 300) + rng.gauss(0, 0.01), 4), step=step)
                if step % 100 == 99:
                    time.sleep(0.01)
    shutdown()
"""

SWEEP = """
    import math, random, sys, time
    import notebook_exp as nx
    from notebook_exp.testing import shutdown
    rng = random.Random(0)
    for group in range(10):
        runs = [nx.start_run(f"g{group}-r{i}", experiment="sweep", params={"lr": 10 ** -rng.randint(1, 5), "i": i})
                for i in range(10)]
        for step in range(1000):
            for run in runs:
                run.log(loss=round(math.exp(-step / 300) + rng.gauss(0, 0.01), 4),
                        acc=round(1 - 0.5 * math.exp(-step / 200), 3), lr=run.params["lr"], step=step)
            if step % 50 == 49:
                time.sleep(0.005)
        for run in runs:
            run.end(on_recorded=lambda: None)
    shutdown()
"""

LONG = """
    import sys
    import notebook_exp as nx
    from notebook_exp.testing import shutdown
    with nx.start_run("long", experiment="long") as run:
        log = run.log
        for step in range(int(sys.argv[1])):
            log(loss=round(1.0 / (1 + step * 1e-5) + (step % 7) * 1e-4, 4), step=step)
    shutdown()
"""

WRITER_PROBE = """
    import json, sys, time
    import notebook_exp as nx
    import os
    stop, samples, step = sys.argv[1], [], 0
    with nx.start_run("probe-writer", experiment="probes") as run:
        print(run.run_id, flush=True)
        while not os.path.exists(stop):
            for _ in range(1000):
                run.log(x=float(step), step=step)
                step += 1
            started = time.time()
            run.flush()
            samples.append((started, time.time() - started))
            time.sleep(0.01)
    print(json.dumps({"samples": samples, "points": step}), flush=True)
"""

READER_PROBE = """
    import json, os, sys, time
    from notebook_exp.store.queries import read
    stop, samples = sys.argv[1], []
    read(lambda conn: conn.execute("SELECT 1").fetchall())
    print("ready", flush=True)
    while not os.path.exists(stop):
        started = time.time()
        read(lambda conn: conn.execute("SELECT count(*), sum(count) FROM metric_summary").fetchall())
        samples.append((started, time.time() - started))
        time.sleep(0.01)
    print(json.dumps({"samples": samples}), flush=True)
"""


def python(code: str, *args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def log_store(code: str, path: Path, *args, flush_interval: str | None = None) -> float:
    env = {**os.environ, **QUIET, "NOTEBOOK_EXP_STORE": str(path)}
    if flush_interval:
        env["NOTEBOOK_EXP_FLUSH_INTERVAL"] = flush_interval
    started = time.monotonic()
    proc = python(code, *args, env=env)
    _out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"logging {path.name} failed:\n{err}")
    return time.monotonic() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def quantiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {ms(statistics.median(values))}, p99 {ms(p99)}, max {ms(values[-1])} ({len(values)} samples)"


def probes(path: Path, stop: Path):
    env = {**os.environ, **QUIET, "NOTEBOOK_EXP_STORE": str(path)}
    writer = python(WRITER_PROBE, stop, env=env)
    reader = python(READER_PROBE, stop, env=env)
    run_id = writer.stdout.readline().strip()
    assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
    return writer, reader, run_id


def finish(proc) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"probe failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1])


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def compact_with_probes(path: Path) -> float:
    """Compact ``path`` while the probes run (from 3 s before to 3 s after); print their waits
    inside and outside the compaction's window. Returns the reader's p99 inside it."""
    from notebook_exp.store.compact import compact

    stop = path.with_name(path.name + ".stop-probes")
    writer, reader, run_id = probes(path, stop)
    time.sleep(3.0)  # samples without compaction, before
    started = time.time()
    result = compact(path)
    ended = time.time()
    time.sleep(3.0)  # and after
    stop.touch()
    writer_out, reader_out = finish(writer), finish(reader)
    stop.unlink()
    print("  with a writer and a reader using the store:")
    reader_inside = [d for t, d in reader_out["samples"] if t + d >= started and t <= ended]
    for name, out in (("writer (run.flush of 1,000 points)", writer_out), ("reader (one short query)", reader_out)):
        inside = [d for t, d in out["samples"] if t + d >= started and t <= ended]
        outside = [d for t, d in out["samples"] if t + d < started or t > ended]
        print(f"    {name}: during compaction {quantiles(inside)}; otherwise {quantiles(outside)}")
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    stored, distinct = conn.execute("SELECT count(*), count(DISTINCT step) FROM metrics WHERE run_id = ?",
                                    [run_id]).fetchone()
    conn.close()
    print(f"    the writer logged {writer_out['points']:,} points; stored {stored:,} ({distinct:,} distinct steps)"
          + ("" if stored == distinct == writer_out["points"] else "  <-- MISMATCH"))
    print(f"  that compaction: {result.seconds:.1f} s, {result.resynced} (run, key)s re-synced; {holds(result)}")
    return p99(reader_inside)


def holds(result) -> str:
    values = sorted(result.holds)
    return (f"{result.sessions} read-only sessions, p50 {ms(statistics.median(values))}, max {ms(values[-1])}; "
            f"final session {ms(result.final_hold)}")


def report(label: str, path: Path, logged: float, with_probes: bool) -> dict:
    """Print one store's figures; returns bytes/point before and after and the reader's p99."""
    from notebook_exp.store.compact import check, compact

    found = check(path)
    print(f"{label}: {found.points:,} points, {found.bytes_per_point:.1f} bytes/point as logged "
          f"(logging took {logged:.0f} s)")
    print(f"  check: {found}")
    alone = path.with_name(path.stem + "-alone.duckdb")
    shutil.copy(path, alone)
    result = compact(alone)
    print(f"  compaction, nobody else using the store: {result.bytes_per_point_before:.1f} -> "
          f"{result.bytes_per_point_after:.1f} bytes/point ({result.bytes_before / result.bytes_after:.1f}x smaller) "
          f"in {result.seconds:.1f} s; {holds(result)}")
    after = check(alone)
    print(f"  check afterwards: compaction {'would' if after.would_help else 'would not'} help ({after.reason})")
    shutil.copy(path, alone)
    with_default = compact(alone, block_size=262_144)
    print(f"  the same with DuckDB's default 256 KiB blocks: {with_default.bytes_per_point_after:.1f} bytes/point")
    alone.unlink()
    found = {"before": result.bytes_per_point_before, "after": result.bytes_per_point_after}
    if with_probes:
        found["reader_p99"] = compact_with_probes(path)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-points", type=int, default=10_000_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_compact-"))
    try:
        import duckdb

        print(f"duckdb {duckdb.__version__}, {os.cpu_count()} cores\n")
        sequential = folder / "sequential.duckdb"
        figures = {"100 runs x 1k steps": report("100 runs x 1,000 steps, 1 metric, one run after another",
                                                 sequential, log_store(SEQUENTIAL, sequential), with_probes=False)}
        sweep = folder / "sweep.duckdb"
        figures["sweep, 3 metrics"] = report("100 runs x 1,000 steps x 3 metrics, 10 runs at a time, 20 ms flushes",
                                             sweep, log_store(SWEEP, sweep, flush_interval="0.02"), with_probes=True)
        long = folder / "long.duckdb"
        figures[f"one {args.long_points / 1e6:g} M point run"] = report(
            f"one run of {args.long_points:,} points", long, log_store(LONG, long, args.long_points), with_probes=True)
        print(f"\nissue 17 figures (load {os.getloadavg()[0]:.2f}; budget <= 10 B/point after):")
        for name, found in figures.items():
            reader = f"; reader wait p99 while compacting {ms(found['reader_p99'])}" if "reader_p99" in found else ""
            print(f"  {name}: {found['before']:.1f} -> {found['after']:.1f} B/point{reader}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
