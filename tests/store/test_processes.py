"""The store with real processes: concurrent writers, a polling reader, SIGKILL, locks."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import StoreLocked
from notebook_exp.store import get_store

pytestmark = pytest.mark.slow


def spawn(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ}, **kw,
    )


WRITER = """
    import sys, time
    import notebook_exp as nx
    name, seconds = sys.argv[1], float(sys.argv[2])
    step = 0
    with nx.start_run(name, experiment="concurrency") as run:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(200):
                run.log(x=float(step), step=step)
                step += 1
            time.sleep(0.002)
    print(step)
"""

READER = """
    import sys, time
    import notebook_exp as nx
    from notebook_exp.exceptions import NotebookExpError
    seconds = float(sys.argv[1])
    ok = failed = grew = 0
    last = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            n = int(nx.sql("SELECT count(*) AS n FROM metrics WHERE key = 'x'").n[0])
            assert n >= last, (n, last)
            grew += n > last
            last = n
            ok += 1
        except NotebookExpError as exc:
            if "nothing has been logged" not in str(exc):
                failed += 1
                print("reader error:", exc, file=sys.stderr)
        time.sleep(0.05)
    print(ok, failed, grew)
"""


def test_two_writers_and_a_polling_reader_lose_and_duplicate_nothing(store_path, read_only):
    seconds = 30
    writers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), f"w{i}", str(seconds)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(READER), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logged = []
    for proc in writers:
        out, err = proc.communicate(timeout=seconds + 90)
        assert proc.returncode == 0, err
        logged.append(int(out.strip()))
    out, err = reader.communicate(timeout=seconds + 90)
    assert reader.returncode == 0, err
    ok, failed, grew = map(int, out.split())
    assert failed == 0, err
    assert ok >= grew >= 10  # the reader really polled throughout, and saw the writers' points arrive
    rows = read_only(
        store_path,
        """SELECT r.name, count(*), count(DISTINCT m.step), min(m.step), max(m.step)
           FROM metrics m JOIN runs r USING (run_id) WHERE m.key = 'x' GROUP BY r.name ORDER BY r.name""",
    )
    assert rows == [(f"w{i}", n, n, 0, n - 1) for i, n in enumerate(logged)]
    assert min(logged) > 10_000
    assert read_only(store_path, "SELECT DISTINCT status FROM runs") == [("completed",)]


CRASHER = """
    import sys
    import notebook_exp as nx
    run = nx.start_run("doomed")
    step = 0
    while True:
        for _ in range(1000):
            run.log(x=float(step), step=step)
            step += 1
        run.flush()
        print(step, flush=True)
"""


def test_sigkill_while_logging_leaves_a_clean_store_and_a_lost_run(store_path, read_only):
    proc = spawn(CRASHER)
    reported = 0
    for line in proc.stdout:
        reported = int(line)
        if reported >= 20_000:
            break
    time.sleep(0.05)  # in the middle of more logging and flushing
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    (n, distinct, lo, hi), = read_only(store_path, "SELECT count(*), count(DISTINCT step), min(step), max(step) FROM metrics WHERE key = 'x'")
    assert n == distinct == hi + 1 and lo == 0  # a clean prefix: nothing lost, nothing twice
    assert n >= reported  # every point flushed before the kill survived
    assert read_only(store_path, "SELECT status FROM runs") == [("running",)]
    get_store(store_path).ensure()  # the next writer to open the store notices
    (status, error), = read_only(store_path, "SELECT status, error FROM runs")
    assert status == "failed" and error.startswith(f"lost: process {proc.pid}")
    assert read_only(store_path, "SELECT event FROM events ORDER BY ts") == [("running",), ("lost",)]


def test_a_store_held_by_a_long_reader_is_waited_out_never_dropped(store_path, read_only, hold):
    get_store(store_path).ensure()
    holder = hold(store_path, "ro", 3)
    started = time.monotonic()
    with nx.start_run("patient") as run:
        for i in range(5000):
            run.log(x=float(i))
    waited = time.monotonic() - started
    holder.communicate(timeout=10)
    assert waited > 1.5  # it really had to wait for the reader
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(5000,)]
    assert run.status == nx.RunStatus.COMPLETED


def test_reader_gives_up_on_a_held_store_naming_the_holder(store_path, monkeypatch, hold):
    from notebook_exp.config import reset_settings

    with nx.start_run():
        pass
    from notebook_exp.testing import shutdown

    shutdown()
    monkeypatch.setenv("NOTEBOOK_EXP_LOCK_TIMEOUT", "0.5")
    reset_settings()
    holder = hold(store_path, "rw", 5)
    try:
        with pytest.raises(StoreLocked, match=f"process {holder.pid}") as info:
            nx.sql("SELECT count(*) FROM runs")
        assert info.value.pid == holder.pid
    finally:
        holder.kill()
        holder.communicate()


def test_exit_without_ending_marks_the_run(store_path, read_only, run_python):
    run_python("import notebook_exp as nx\nrun = nx.start_run('left-open')\nrun.log(x=1.0)\n")
    proc = run_python(
        "import notebook_exp as nx\nrun = nx.start_run('crashes')\nrun.log(x=1.0)\nraise RuntimeError('oops')\n",
        check=False,
    )
    assert proc.returncode == 1 and "RuntimeError: oops" in proc.stderr
    rows = dict(
        (name, (status, error)) for name, status, error in read_only(store_path, "SELECT name, status, error FROM runs")
    )
    assert rows["left-open"] == ("completed", None)
    assert rows["crashes"][0] == "failed" and "RuntimeError: oops" in rows["crashes"][1]
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(2,)]


def test_runs_of_this_process_are_not_taken_for_lost(store_path, read_only):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with nx.start_run() as run:
            run.log(x=1.0)
            run.flush()
            get_store(store_path).close()  # the next writer re-checks the file for lost runs
            get_store(store_path).ensure()
            run.log(x=2.0)
    assert read_only(store_path, "SELECT status FROM runs") == [("completed",)]
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(2,)]
