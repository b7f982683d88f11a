"""The store under real faults: a full disk (tmpfs), a file held by another process,
spills and their ingestion, exit with runs left open."""

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import pytest

import notebook_exp as nx
from notebook_exp.config import reset_settings
from notebook_exp.exceptions import ConfigError, StoreLocked, StoreUnavailable
from notebook_exp.store import get_store

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def quiet(settings_env):
    """Count exactly the points logged: no telemetry, no git."""
    settings_env(TELEMETRY_INTERVAL="0", CAPTURE_GIT="false")


def use_store(monkeypatch, path):
    monkeypatch.setenv("NOTEBOOK_EXP_STORE", str(path))
    reset_settings()
    return path


def flush_until_stored(run, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if run.flush(timeout=5):
                return True
        except StoreUnavailable:
            time.sleep(0.2)
    return False


def counts(read_only, path, run_id):
    return read_only(path, "SELECT count(*), count(DISTINCT (key, step)) FROM metrics WHERE run_id = ?", [run_id])[0]


# -- a full disk -------------------------------------------------------------------
def test_a_full_disk_holds_points_reports_them_and_stores_each_once_when_space_returns(
        small_disk, fill, monkeypatch, read_only):
    path = use_store(monkeypatch, small_disk / "store.duckdb")
    run = nx.start_run("full-disk")
    for i in range(1000):
        run.log(a=float(i), b=0.0, step=i)
    assert run.flush(timeout=30)
    ballast = fill(small_disk)
    for i in range(1000, 101_000):
        run.log(a=float(i), b=1.0, step=i)
    with pytest.raises(StoreUnavailable, match="No space left") as info:
        for _ in range(50):  # the flusher hands the points over within a flush interval
            run.flush(timeout=5)
            time.sleep(0.1)
    assert 0 < info.value.pending <= 200_000
    assert info.value.pending == get_store(path).writer.pending(run.run_id)
    ballast.unlink()
    assert flush_until_stored(run)
    run.end()
    assert counts(read_only, path, run.run_id) == (202_000, 202_000)
    assert read_only(path, "SELECT status, dropped, spilled FROM runs") == [("completed", 0, 0)]


#: Put before a child's code: ``fill(disk)`` writes a ballast file until the disk is full.
FILL = """
def fill(disk):
    with open(disk / "ballast", "wb") as fh:
        try:
            while True:
                fh.write(b"\\0" * 65536)
                fh.flush()
        except OSError:
            pass
"""

SPILLING_CHILD = """
    import warnings
    from pathlib import Path
    import notebook_exp as nx
    disk, steps = Path(DISK), STEPS
    run = nx.start_run("spilled")
    for i in range(1000):
        run.log(a=float(i), step=i)
    assert run.flush(timeout=30)
    fill(disk)
    for i in range(1000, 1000 + steps):
        run.log(a=float(i), step=i)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run.end()
    print("RUN", run.run_id)
    for w in seen:
        print("WARNING", w.message)
"""


def spill_in_a_child(run_python, small_disk, tmp_path, monkeypatch, steps=50_000, **env):
    """A child whose run ends while the disk is full; this process shares its temp dir."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the folder it found
    env = {"NOTEBOOK_EXP_STORE": str(small_disk / "store.duckdb"), "TMPDIR": str(temp), **env}
    code = FILL + textwrap.dedent(SPILLING_CHILD).replace("DISK", repr(str(small_disk))).replace("STEPS", str(steps))
    proc = run_python(code, env=env)
    run_id = proc.stdout.split("RUN ")[1].split()[0]
    return run_id, proc.stdout, temp


def test_a_run_that_ends_during_the_outage_is_spilled_and_ingested_once_by_the_next_writer(
        small_disk, monkeypatch, run_python, tmp_path, read_only):
    path = use_store(monkeypatch, small_disk / "store.duckdb")
    run_id, out, temp = spill_in_a_child(run_python, small_disk, tmp_path, monkeypatch)
    assert "is in spill" in out or "are in spill" in out
    # the folder beside the store is on the full disk: the spill went to the temp dir
    spills = list((temp / "notebook_exp-spill").glob("*/*"))
    assert len(spills) == 1 and (spills[0] / "metrics.arrow").exists()
    header = json.loads((spills[0] / "ops.json").read_text())
    assert header["runs"] == {run_id: 50_000} and "No space left" in header["reason"]
    # what the store holds until a writer ingests the spill: the points committed, the run not ended
    assert counts(read_only, path, run_id) == (1000, 1000)
    assert read_only(path, "SELECT status FROM runs") == [("running",)]

    copy = tmp_path / "copy-of-spill"
    shutil.copytree(spills[0], copy)
    (small_disk / "ballast").unlink()
    cli = [sys.executable, "-m", "notebook_exp.cli", "recover", "--store", str(path)]
    listed = subprocess.run([*cli, "--list"], capture_output=True, text=True, check=True).stdout
    assert "1 spill(s) waiting" in listed and "50,000 points of 1 run(s)" in listed
    assert spills[0].exists()  # --list only lists
    done = subprocess.run(cli, capture_output=True, text=True, check=True).stdout  # the next writer
    assert "ingested 1 spill(s), 50,000 points" in done
    assert not spills[0].exists()
    assert counts(read_only, path, run_id) == (51_000, 51_000)
    assert read_only(path, "SELECT status, spilled, dropped FROM runs") == [("completed", 50_000, 0)]
    (detail,), = read_only(path, "SELECT detail FROM events WHERE event = 'spilled'")
    assert "50000 points were kept in spill" in detail and "No space left" in detail

    # a process killed between the ingest's commit and the folder's removal: never twice
    shutil.copytree(copy, spills[0])
    nx.testing.shutdown()
    get_store(path).ensure()
    assert not spills[0].exists()
    assert counts(read_only, path, run_id) == (51_000, 51_000)
    assert read_only(path, "SELECT count(*) FROM spills") == [(1,)]


def test_past_the_memory_bound_with_no_spill_possible_points_are_dropped_and_counted(
        small_disk, monkeypatch, run_python, tmp_path, read_only):
    """The spill folder and the temp dir are on the full disk too: nothing can be kept."""
    path = use_store(monkeypatch, small_disk / "store.duckdb")
    code = textwrap.dedent("""
        import time, warnings
        from pathlib import Path
        import notebook_exp as nx
        from notebook_exp.exceptions import StoreUnavailable
        from notebook_exp.store import get_store
        disk = Path(DISK)
        run = nx.start_run("bounded")
        run.log(a=0.0, step=0)
        assert run.flush(timeout=30)
        fill(disk)
        for i in range(1, 100_001):
            run.log(a=float(i), step=i)
            if i % 5000 == 0:
                time.sleep(0.3)  # several flushes: the bound is passed during the outage
        writer = get_store(disk / "store.duckdb").writer
        time.sleep(1)
        print("DROPPED", writer.dropped[run.run_id])
        (disk / "ballast").unlink()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if run.flush(timeout=5):
                    break
            except StoreUnavailable:
                time.sleep(0.2)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run.end()
        print("RUN", run.run_id)
        print("WARNINGS", [str(w.message) for w in seen])
    """).replace("DISK", repr(str(small_disk)))
    code = FILL + code
    (small_disk / "tmp").mkdir()
    proc = run_python(code, env={"NOTEBOOK_EXP_STORE": str(path), "NOTEBOOK_EXP_OUTAGE_POINTS": "20000",
                                 "NOTEBOOK_EXP_FLUSH_ROWS": "5000", "NOTEBOOK_EXP_SPILL_DIR": str(small_disk / "spill"),
                                 "TMPDIR": str(small_disk / "tmp")})
    dropped = int(proc.stdout.split("DROPPED ")[1].split()[0])
    run_id = proc.stdout.split("RUN ")[1].split()[0]
    assert dropped > 0
    assert "points were dropped" in proc.stdout
    stored, distinct = counts(read_only, path, run_id)
    assert stored == distinct and stored + dropped == 100_001
    assert read_only(path, "SELECT status, dropped FROM runs") == [("completed", dropped)]
    (detail,), = read_only(path, "SELECT detail FROM events WHERE event = 'dropped'")
    assert detail.startswith(f"{dropped} points dropped")


# -- a store held by another process ---------------------------------------------------------
def test_start_run_returns_at_once_while_another_process_holds_the_store(store_path, hold, read_only):
    get_store(store_path).ensure()
    nx.testing.shutdown()
    holder = hold(store_path, "rw", 3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        started = time.perf_counter()
        run = nx.start_run("patient")
        took = time.perf_counter() - started
    assert holder.poll() is None  # still holding: start_run did not wait for it
    assert took < 1.0, f"start_run took {took * 1000:.0f} ms"
    assert any(f"process {holder.pid}" in str(w.message) for w in seen)
    for i in range(5000):
        run.log(x=float(i))
    assert get_store(store_path).waiting_for == holder.pid
    run.end()  # waits for the holder (well within lock_timeout)
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(5000,)]
    assert read_only(store_path, "SELECT status FROM runs") == [("completed",)]


@pytest.mark.filterwarnings("ignore:store .* is held by")
def test_ending_on_a_held_store_waits_lock_timeout_and_keeps_the_users_error(
        store_path, hold, settings_env, read_only):
    get_store(store_path).ensure()
    nx.testing.shutdown()
    settings_env(TELEMETRY_INTERVAL="0", CAPTURE_GIT="false", LOCK_TIMEOUT="1")
    holder = hold(store_path, "rw", 4)
    with pytest.raises(StoreLocked, match=f"process {holder.pid}"):
        with nx.start_run("plain"):
            pass
    with warnings.catch_warnings(record=True), pytest.raises(ValueError, match="the user's own") as info:
        with nx.start_run("raises") as run:
            run.log(x=1.0)
            raise ValueError("the user's own error")
    assert any("could not be stored" in note for note in info.value.__notes__)
    holder.communicate(timeout=10)
    assert get_store(store_path).writer.flush(timeout=30)
    rows = dict(read_only(store_path, "SELECT name, status FROM runs"))
    assert rows == {"plain": "completed", "raises": "failed"}


@pytest.mark.filterwarnings("ignore:store .* is held by")
def test_flush_honours_its_timeout_and_never_holds_up_other_runs(store_path, hold):
    get_store(store_path).ensure()
    nx.testing.shutdown()
    holder = hold(store_path, "rw", 4)
    first, second = nx.start_run("first"), nx.start_run("second")
    first.log(x=1.0)
    results = {}

    def flush_first():
        started = time.monotonic()
        results["flushed"] = first.flush(timeout=2)
        results["took"] = time.monotonic() - started

    thread = threading.Thread(target=flush_first)
    thread.start()
    time.sleep(0.2)
    for i in range(100):
        first.log(x=float(i))  # the flusher also visits the run whose flush waits
        second.log(y=float(i))
    writer = get_store(store_path).writer
    deadline = time.monotonic() + 1.5
    while writer.pending(second.run_id) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.pending(second.run_id) == 100  # the second run's points moved on meanwhile
    thread.join(10)
    assert results["flushed"] is False and 1.9 < results["took"] < 3.5
    holder.communicate(timeout=10)
    assert second.flush(timeout=30)
    first.end()
    second.end()


# -- artifacts ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x.txt", "../../x.txt", "a/../../x.txt", "/tmp/x.txt", "..", ""])
def test_artifact_names_cannot_leave_the_runs_folder(store_path, tmp_path, name):
    source = tmp_path / "file.txt"
    source.write_text("data")
    with nx.start_run() as run:
        with pytest.raises(ConfigError, match="inside the run's folder"):
            run.log_artifact(source, name=name)
    assert not (store_path.parent / "x.txt").exists() and not (tmp_path / "x.txt").exists()


def test_artifact_names_may_have_sub_folders(store_path, tmp_path):
    source = tmp_path / "file.txt"
    source.write_text("data")
    with nx.start_run() as run:
        dest = run.log_artifact(source, name="ckpt/./last.txt")
    assert dest == store_path.parent / "artifacts" / run.run_id / "ckpt" / "last.txt"
    assert dest.read_text() == "data"


def test_a_script_exiting_while_another_process_holds_the_store_spills_and_exits_promptly(
        store_path, run_python, read_only, monkeypatch, tmp_path):
    from notebook_exp.testing import StoreHolder

    get_store(store_path).ensure()
    nx.testing.shutdown()
    monkeypatch.setenv("NOTEBOOK_EXP_SPILL_DIR", str(tmp_path / "spill"))
    reset_settings()
    code = "import notebook_exp as nx\nrun = nx.start_run('left-open')\nfor i in range(5000):\n    run.log(x=float(i))\n"
    with StoreHolder(store_path):
        started = time.monotonic()
        run_python(code)  # never ends its run; exits while the file is held
        took = time.monotonic() - started
        assert len(list((tmp_path / "spill").iterdir())) == 1
    assert took < 15, f"the script took {took:.1f} s to exit"
    get_store(store_path).ensure()  # the next writer
    assert read_only(store_path, "SELECT count(*), count(DISTINCT step) FROM metrics WHERE key = 'x'") == [(5000, 5000)]
    assert read_only(store_path, "SELECT status, spilled FROM runs") == [("completed", 5000)]
