"""Compaction (``notebook_exp.store.compact``) with real files, real processes and SIGKILL.

One fragmented store is logged once per module (a sweep of 100 runs x 1,000 steps,
ten runs at a time, three metrics per step, flushed every 20 ms, into a file with
256 KiB blocks), and every test compacts a copy of it.
"""

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest
from filelock import FileLock

from notebook_exp.exceptions import StoreError
from notebook_exp.store import get_store
from notebook_exp.store.compact import ROW_GROUP, check, compact

pytestmark = pytest.mark.slow

RUNS, STEPS, KEYS = 100, 1_000, 3

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
            run.log_text("note", f"{run.name} done", step=1000)
            run.log_histogram("weights", [rng.gauss(0, 1) for _ in range(100)], step=1000)
            run.end(on_recorded=lambda: None)
    shutdown()
"""

WRITER = """
    import sys, time
    import notebook_exp as nx
    step = 0
    with nx.start_run("live", experiment="compaction") as run:
        print(run.run_id, flush=True)
        deadline = time.monotonic() + float(sys.argv[1])
        while time.monotonic() < deadline:
            for _ in range(100):
                run.log(x=float(step), y=step / 2, step=step)
                step += 1
            time.sleep(0.002)
    print(step, flush=True)
"""

READER = """
    import sys, time
    import notebook_exp as nx
    from notebook_exp.exceptions import NotebookExpError
    ok = failed = 0
    counts = set()
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        try:
            counts.add(int(nx.sql("SELECT count(*) AS n FROM metrics").n[0]))
            ok += 1
        except NotebookExpError as exc:
            failed += 1
            print("reader error:", exc, file=sys.stderr)
        time.sleep(0.01)
    print(ok, failed, *sorted(counts))
"""

KILLED = """
    import sys, time
    from notebook_exp.store.compact import compact
    def pause(point):
        if point == sys.argv[2]:
            print("paused", point, flush=True)
            time.sleep(600)
    compact(sys.argv[1], pause=pause)
    print("finished", flush=True)
"""

DIES_MID_FLUSH = """
    import sys, time, duckdb
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{sys.argv[1]}' AS s")
    conn.execute("INSERT INTO s.events VALUES ('from-the-wal', now(), 'note', 'committed, never checkpointed', 'h', 1)")
    print("committed", flush=True)
    time.sleep(600)
"""


def python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """The sweep's store, logged once (no telemetry, no git: exactly the points above), into
    a file with DuckDB's default 256 KiB blocks, as every store made so far has."""
    path = tmp_path_factory.mktemp("fragmented") / "store.duckdb"
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{path}' AS store (BLOCK_SIZE 262144)")
    conn.close()
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(path), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0",
           "NOTEBOOK_EXP_CAPTURE_GIT": "false", "NOTEBOOK_EXP_FLUSH_INTERVAL": "0.02"}
    proc = python(SWEEP, env=env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert not glob.glob(f"{path}.wal*")
    return path


@pytest.fixture
def store(fragmented, store_path, settings_env):
    """A copy of the fragmented store at this test's store path."""
    settings_env(TELEMETRY_INTERVAL="0", CAPTURE_GIT="false", FLUSH_INTERVAL="0.05")
    shutil.copy(fragmented, store_path)
    return store_path


def snapshot(path, tmp_path):
    copy = tmp_path / "before.duckdb"
    shutil.copy(path, copy)
    return copy


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def differences(a, b, where: str = "") -> dict:
    """Per table, the rows one file has and the other has not (as multisets), with
    ``where`` applied to tables that have a run_id; empty when they hold the same."""
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    conn.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    try:
        found = {}
        tables = {db: {t for (t,) in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [db]).fetchall()} for db in "ab"}
        assert tables["a"] == tables["b"]
        for table in sorted(tables["a"]):
            columns = [c for (c,) in conn.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'a' AND table_name = ? "
                "ORDER BY column_index", [table]).fetchall()]
            names = ", ".join(f'"{c}"' for c in columns)
            filter_ = f" WHERE {where}" if where and "run_id" in columns else ""
            one = f'SELECT {names} FROM a."{table}"{filter_}'
            other = f'SELECT {names} FROM b."{table}"{filter_}'
            extra = conn.execute(f"SELECT count(*) FROM ({one} EXCEPT ALL {other})").fetchone()[0]
            missing = conn.execute(f"SELECT count(*) FROM ({other} EXCEPT ALL {one})").fetchone()[0]
            if extra or missing:
                found[table] = (extra, missing)
        return found
    finally:
        conn.close()


def leftovers(path) -> list[str]:
    return sorted(glob.glob(f"{path}.compact-*") + glob.glob(f"{path}.wal*"))


def layout(path) -> tuple[list, int]:
    """The metrics' (run, key, step) in storage order, and their row groups."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        rows = conn.execute("SELECT run_id, key, step FROM metrics ORDER BY rowid").fetchall()
        groups = conn.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('metrics')").fetchone()[0]
        return rows, groups
    finally:
        conn.close()


def test_a_fragmented_store_shrinks_to_ten_bytes_per_point_sorted_and_with_every_row(store, tmp_path):
    before = snapshot(store, tmp_path)
    found = check(store)
    assert found.points == RUNS * STEPS * KEYS
    assert found.would_help, found
    assert found.bytes_per_point > 12

    result = compact(store)

    assert result.points == RUNS * STEPS * KEYS
    assert result.bytes_after == os.path.getsize(store)
    assert result.bytes_per_point_after <= 10, result
    assert result.bytes_after < 0.6 * result.bytes_before, result
    assert differences(before, store) == {}
    assert not check(store).would_help
    rows, groups = layout(store)
    assert groups == -(-len(rows) // ROW_GROUP)  # full row groups, but the last
    runs = [run_id for i, (run_id, _k, _s) in enumerate(rows) if i == 0 or rows[i - 1][0] != run_id]
    assert len(runs) == len(set(runs)) == RUNS  # each run's points in one stretch
    assert all(rows[i - 1][1:] < rows[i][1:] for i in range(1, len(rows)) if rows[i - 1][0] == rows[i][0])
    assert leftovers(store) == []
    assert get_store(store).ensure(timeout=10)  # the package takes it for writing as before


def test_a_writer_logging_throughout_loses_and_duplicates_nothing(store, tmp_path):
    before = snapshot(store, tmp_path)
    writer = python(WRITER, 5)
    run_id = writer.stdout.readline().strip()
    assert run_id, writer.stderr.read()
    results = []
    while writer.poll() is None:  # each copy pauses once, so the run's rows change under it
        results.append(compact(store, pause=lambda point: time.sleep(1.0) if point == "copied" else None))
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    logged = int(out.strip())

    assert len(results) >= 2
    assert sum(r.resynced for r in results) > 0  # the run's new rows were re-synced, not just copied once
    conn = duckdb.connect(str(store), read_only=True)
    stored = conn.execute("SELECT key, count(*), count(DISTINCT step), min(step), max(step) FROM metrics "
                          "WHERE run_id = ? GROUP BY key ORDER BY key", [run_id]).fetchall()
    summary = conn.execute("SELECT key, count FROM metric_summary WHERE run_id = ? ORDER BY key", [run_id]).fetchall()
    conn.close()
    assert stored == [(key, logged, logged, 0, logged - 1) for key in ("x", "y")]
    assert summary == [("x", logged), ("y", logged)]
    assert differences(before, store, where=f"run_id <> '{run_id}'") == {}
    assert leftovers(store) == []


def test_a_reader_keeps_reading_while_the_store_is_compacted(store):
    total = RUNS * STEPS * KEYS
    reader = python(READER, 4)
    time.sleep(1.0)
    compactions = 0
    while reader.poll() is None:
        compact(store)
        compactions += 1
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    ok, failed, *counts = map(int, out.split())
    assert compactions >= 2
    assert failed == 0, err
    assert ok > 0 and counts == [total]


#: Early, mid-copy (a copy session open), the final session open, just before and just after the rename.
KILL_POINTS = ("planned", "copying", "final", "built", "swapped")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_any_moment_leaves_a_whole_store_and_the_next_compaction_cleans_up(store, tmp_path, point):
    before = snapshot(store, tmp_path)
    child = python(KILLED, store, point)
    line = child.stdout.readline().strip()
    assert line == f"paused {point}", child.stderr.read()
    left = leftovers(store)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    child.stderr.close()

    assert any(name.endswith(".tmp") for name in left)  # it was mid-way: its files are there
    assert differences(before, store) == {}  # the old store, or (swapped) the whole new one
    conn = duckdb.connect(str(store))  # read-write: nobody holds it any more
    conn.close()
    result = compact(store)
    assert leftovers(store) == []
    assert result.bytes_per_point_after <= 10
    assert differences(before, store) == {}


OPENS = """
    import sys, duckdb
    try:
        duckdb.connect(sys.argv[1], read_only=True).close()
        print("opened")
    except duckdb.IOException as exc:
        print("locked" if "Could not set lock" in str(exc) else exc)
"""


def test_the_new_file_is_locked_through_the_rename_so_nobody_reads_it_with_the_old_headers(store):
    seen = []

    def try_to_open(point):  # another process, as DuckDB locks per process
        if point in ("built", "swapped"):
            seen.append((point, subprocess.run([sys.executable, "-c", textwrap.dedent(OPENS), str(store)],
                                               capture_output=True, text=True, timeout=60).stdout.strip()))

    compact(store, pause=try_to_open)

    # just before the rename the store is held shared (readers open it); just after it the new file is held
    # exclusively, so a process that read the old file's headers fails to lock it and starts again
    assert seen == [("built", "opened"), ("swapped", "locked")]
    assert subprocess.run([sys.executable, "-c", textwrap.dedent(OPENS), str(store)], capture_output=True,
                          text=True, timeout=60).stdout.strip() == "opened"


def test_a_wal_left_by_a_killed_writer_is_folded_in_before_the_swap(store, tmp_path):
    before = snapshot(store, tmp_path)
    dying = python(DIES_MID_FLUSH, store)
    assert dying.stdout.readline().strip() == "committed", dying.stderr.read()
    os.kill(dying.pid, signal.SIGKILL)
    dying.wait()
    dying.stdout.close()
    dying.stderr.close()
    assert glob.glob(f"{store}.wal")

    compact(store)

    assert leftovers(store) == []
    assert differences(before, store) == {"events": (0, 1)}
    conn = duckdb.connect(str(store), read_only=True)
    assert conn.execute("SELECT count(*) FROM events WHERE run_id = 'from-the-wal'").fetchone()[0] == 1
    conn.close()


def test_rows_written_behind_the_summarys_back_during_compaction_are_caught_by_the_counts(store, tmp_path):
    expected = tmp_path / "expected.duckdb"

    def edit_by_hand(point):
        if point != "copied":
            return
        conn = duckdb.connect(str(store))  # plain SQL, not through the package: metric_summary stays as it was
        first = conn.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM metrics WHERE run_id = ? AND step < 10", [first])
        conn.execute("INSERT INTO metrics VALUES ('by-hand', 'k', 1, now()::TIMESTAMP, 1.0)")
        conn.close()
        shutil.copy(store, expected)

    result = compact(store, pause=edit_by_hand)

    assert result.resynced == KEYS + 1  # the first run's keys and the new one
    assert differences(expected, store) == {}


def test_a_store_newer_than_this_code_or_with_unknown_tables_is_left_alone(store):
    conn = duckdb.connect(str(store))
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    unchanged = digest(store)
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        compact(store)
    assert digest(store) == unchanged and leftovers(store) == []

    conn = duckdb.connect(str(store))
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.execute("CREATE TABLE notes (text VARCHAR)")
    conn.execute("ALTER TABLE runs ADD COLUMN mine INTEGER")
    conn.close()
    unchanged = digest(store)
    with pytest.raises(StoreError, match="column notes.text, column runs.mine, table notes"):
        compact(store)
    assert digest(store) == unchanged and leftovers(store) == []


def test_one_compaction_at_a_time(store):
    with FileLock(f"{store}.compact.lock"):
        with pytest.raises(StoreError, match="another compaction"):
            compact(store)
    assert leftovers(store) == []


def test_a_full_disk_stops_compaction_with_the_store_untouched(fragmented, small_disk):
    path = small_disk / "store.duckdb"
    shutil.copy(fragmented, path)
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as fh:  # leave 512 kB: the compacted copy needs about 3 MB
        fh.write(b"\0" * (shutil.disk_usage(small_disk).free - 512 * 1024))
    unchanged = digest(path)

    with pytest.raises(StoreError, match="no space left on its disk") as caught:
        compact(path)

    assert "the store is unchanged" in str(caught.value)
    assert digest(path) == unchanged
    assert leftovers(path) == []
    ballast.unlink()
    assert compact(path).bytes_per_point_after <= 10


def test_abandon_stops_it_between_sessions_with_the_store_untouched(store):
    unchanged = digest(store)
    asked = []

    def abandon():
        asked.append(1)
        return len(asked) >= 2  # the first question goes through, the second gives up

    with pytest.raises(StoreError, match="abandoned the compaction .* the store is unchanged"):
        compact(store, abandon=abandon)
    assert digest(store) == unchanged and leftovers(store) == []
    assert compact(store, abandon=lambda: False).bytes_per_point_after <= 10  # asked, never yes: it finishes
