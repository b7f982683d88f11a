"""Automatic compaction: ``Store.on_writer_idle`` (called by an idle writer) launches a detached,
lowest-priority process that waits for the store to stay unwritten, checks it and
compacts it (``compact.auto_compact``). Real files, real processes, real SIGKILL.

One fragmented store (20 runs x 5,000 steps, a flush every 250 points: 6 MB, about
60 B/point) is logged once per module; every test uses a copy.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import psutil
import pytest

from notebook_exp.store import get_store
from notebook_exp.store.compact import check, compact

pytestmark = pytest.mark.slow

RUNS, STEPS = 20, 5_000

FRAGMENT = """
    import math
    import notebook_exp as nx
    from notebook_exp.testing import shutdown
    for i in range(20):
        with nx.start_run(f"r{i}", experiment="auto") as run:
            for step in range(5000):
                run.log(loss=round(math.exp(-step / 900), 4), step=step)
                if step % 250 == 249:
                    run.flush()  # one small commit (and checkpoint) each: a fragmented file
    shutdown()
"""

WRITER = """
    import sys, time
    import notebook_exp as nx
    step = 0
    with nx.start_run("live", experiment="auto") as run:
        for _ in range(100):
            run.log(x=float(step), step=step)
            step += 1
        run.flush()
        print(run.run_id, flush=True)
        deadline = time.monotonic() + float(sys.argv[1])
        while time.monotonic() < deadline:
            for _ in range(100):
                run.log(x=float(step), step=step)
                step += 1
            time.sleep(0.005)
    print(step, flush=True)
"""

AUTO = "import sys; from notebook_exp.store.compact import main; sys.exit(main())"

#: ``auto_compact`` that waits at the ``copied`` point until the file ``sys.argv[2]`` appears.
PAUSED = """
    import os, sys, time
    from notebook_exp.store.compact import auto_compact
    def pause(point):
        if point == "copied":
            print("paused", flush=True)
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.01)
    print(auto_compact(sys.argv[1], quiet=0.5, pause=pause), flush=True)
"""


def python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def auto(path, *args) -> str:
    """The automatic compaction's own entry point, as ``Store.on_writer_idle`` launches it; its last line."""
    done = subprocess.run([sys.executable, "-c", AUTO, "--auto", str(path), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """A store logged in small flushes into a file with DuckDB's 256 KiB blocks, as every store
    made before new stores got ``schema.BLOCK_SIZE`` blocks: fragmented enough to compact."""
    path = tmp_path_factory.mktemp("fragmented") / "store.duckdb"
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{path}' AS store (BLOCK_SIZE 262144)")
    conn.close()
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(path), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0",
           "NOTEBOOK_EXP_CAPTURE_GIT": "false"}
    proc = python(FRAGMENT, env=env)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert os.path.getsize(path) > 4_000_000
    return path


@pytest.fixture
def store(fragmented, store_path, settings_env):
    settings_env(TELEMETRY_INTERVAL="0", CAPTURE_GIT="false", FLUSH_INTERVAL="0.05")
    shutil.copy(fragmented, store_path)
    return store_path


def snapshot(path, tmp_path):
    copy = tmp_path / "before.duckdb"
    shutil.copy(path, copy)
    return copy


def differences(a, b, where: str = "") -> dict:
    """Per table, how many rows (as multisets) one file has that the other has not."""
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    conn.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    try:
        found = {}
        for (table,) in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'a'").fetchall():
            columns = [c for (c,) in conn.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'a' AND table_name = ? "
                "ORDER BY column_index", [table]).fetchall()]
            names = ", ".join(f'"{c}"' for c in columns)
            filter_ = f" WHERE {where}" if where and "run_id" in columns else ""
            one, other = (f'SELECT {names} FROM {db}."{table}"{filter_}' for db in "ab")
            extra = conn.execute(f"SELECT count(*) FROM ({one} EXCEPT ALL {other})").fetchone()[0]
            missing = conn.execute(f"SELECT count(*) FROM ({other} EXCEPT ALL {one})").fetchone()[0]
            if extra or missing:
                found[table] = (extra, missing)
        return found
    finally:
        conn.close()


def leftovers(path) -> list[str]:
    return sorted(glob.glob(f"{path}.compact-*") + glob.glob(f"{path}.wal*"))


def stored(path, run_id) -> tuple:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute("SELECT count(*), count(DISTINCT step), min(step), max(step) FROM metrics "
                            "WHERE run_id = ?", [run_id]).fetchone()
    finally:
        conn.close()


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_an_idle_writer_launches_a_detached_compaction_of_its_fragmented_store(store, tmp_path):
    before = snapshot(store, tmp_path)
    target = get_store(store)
    target.auto_compact = True

    compactor = target.on_writer_idle()  # what the writer's thread calls once it has been idle a while

    assert compactor is not None
    assert os.getsid(compactor.pid) == compactor.pid  # its own session: a kernel's interrupt never reaches it
    assert target.on_writer_idle() is None  # one at a time from a process
    assert compactor.wait(timeout=300) == 0
    log = (tmp_path / "store.duckdb.auto-compact.log").read_text()
    assert "compacted" in log, log
    after = check(store)
    assert after.row_groups == 1 and not after.would_help, after
    assert os.path.getsize(store) < os.path.getsize(before) / 3  # 60 B/point as logged, about 11 now
    assert differences(before, store) == {}
    assert leftovers(store) == []
    assert target.on_writer_idle() is None  # the file shrank and has not grown since: nothing to launch


def test_idle_launches_nothing_when_turned_off_or_for_a_small_store(store, tmp_path):
    target = get_store(store)
    target.auto_compact = False
    assert target.on_writer_idle() is None
    small = get_store(tmp_path / "small.duckdb")
    small.auto_compact = True
    small.ensure()
    assert small.on_writer_idle() is None  # under AUTO_COMPACT_MIN_BYTES: not worth a check
    assert not (tmp_path / "small.duckdb.auto-compact.log").exists()
    assert not (tmp_path / "store.duckdb.auto-compact.log").exists()


def test_a_store_someone_keeps_writing_is_left_alone(store, tmp_path):
    before = snapshot(store, tmp_path)
    writer = python(WRITER, 8)
    run_id = writer.stdout.readline().strip()
    assert run_id, writer.stderr.read()
    inode = os.stat(store).st_ino

    said = auto(store, "--quiet", "2", "--max-wait", "4")

    assert said.startswith("skipped") and "still written to" in said, said
    logged = int(finish(writer).strip().splitlines()[-1])
    assert os.stat(store).st_ino == inode  # never swapped
    assert stored(store, run_id) == (logged, logged, 0, logged - 1)
    assert differences(before, store, where=f"run_id <> '{run_id}'") == {}
    assert leftovers(store) == []


def test_an_already_compact_store_or_one_with_live_runs_is_not_compacted(store):
    compact(store)
    inode, size = os.stat(store).st_ino, os.path.getsize(store)
    said = auto(store, "--quiet", "0.5")
    assert said.startswith("not needed"), said
    assert (os.stat(store).st_ino, os.path.getsize(store)) == (inode, size)


def test_a_store_with_a_running_run_waits(store):
    conn = duckdb.connect(str(store))
    conn.execute("UPDATE runs SET status = 'running' WHERE name = 'r3'")
    conn.close()
    inode = os.stat(store).st_ino
    said = auto(store, "--quiet", "0.5")
    assert said.endswith("runs are queued or running"), said
    assert os.stat(store).st_ino == inode


def test_one_automatic_compaction_per_store_on_the_machine(store):
    from filelock import FileLock

    with FileLock(f"{store}.auto-compact.lock"):  # another process's, as flock locks are per open file
        said = auto(store, "--quiet", "0.5")
    assert "another automatic compaction" in said, said
    assert check(store).would_help  # untouched


def test_a_writer_coming_back_mid_compaction_abandons_it_and_loses_nothing(store, tmp_path):
    before = snapshot(store, tmp_path)
    go = tmp_path / "go"
    compactor = python(PAUSED, store, go)
    assert compactor.stdout.readline().strip() == "paused", compactor.stderr.read()
    writer = python(WRITER, 2)
    run_id = writer.stdout.readline().strip()  # its first points are committed
    assert run_id, writer.stderr.read()
    go.touch()

    said = finish(compactor).strip().splitlines()[-1]
    logged = int(finish(writer).strip().splitlines()[-1])

    assert said.startswith("abandoned") and "the store is unchanged" in said, said
    assert stored(store, run_id) == (logged, logged, 0, logged - 1)
    assert differences(before, store, where=f"run_id <> '{run_id}'") == {}
    assert leftovers(store) == []
    assert check(store).would_help  # still fragmented: the next idle writer launches it again


def test_kill_9_of_the_launched_compaction_leaves_the_store_valid(store, tmp_path):
    before = snapshot(store, tmp_path)
    target = get_store(store)
    target.auto_compact = True
    compactor = target.on_writer_idle()
    assert compactor is not None
    partial = f"{store}.compact-{compactor.pid}.tmp"
    deadline = time.monotonic() + 120
    while not os.path.exists(partial) and compactor.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert os.path.exists(partial), "the compaction never started its copy"
    assert psutil.Process(compactor.pid).nice() == 19  # the lowest priority
    os.kill(compactor.pid, signal.SIGKILL)
    assert compactor.wait(timeout=30) == -signal.SIGKILL

    assert differences(before, store) == {}  # the old store, whole
    duckdb.connect(str(store)).close()  # opens read-write: nobody holds it
    result = compact(store)  # the next compaction (automatic or not) runs and cleans up
    assert leftovers(store) == []
    assert result.bytes_after < result.bytes_before / 3
    assert differences(before, store) == {}
