"""A process-executor run whose scheduler is killed (kill -9) stops and says why, instead of running on."""

import os
import signal
import subprocess
import sys
import textwrap
import time

OWNER = """
    import time
    import notebook_exp as nx

    def work(run):
        while True:
            run.log(k=1.0)
            time.sleep(0.05)

    job = nx.submit(work, name="orphan", executor="process")
    while job.status.value != "running":
        time.sleep(0.02)
    print(job.run_id, flush=True)
    time.sleep(600)
"""


def stored(read_only, path, sql, args):
    """``read_only``, waiting while the run's writer holds the file."""
    import duckdb

    deadline = time.monotonic() + 20
    while True:
        try:
            return read_only(path, sql, args)
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_run_whose_scheduler_is_killed_ends_failed_and_its_process_exits(store_path, read_only, request):
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: (owner.kill(), owner.communicate()))
    run_id = owner.stdout.readline().strip()
    deadline = time.monotonic() + 30
    child = None
    while child is None and time.monotonic() < deadline:
        rows = stored(read_only, store_path, "SELECT pid FROM runs WHERE run_id = ? AND pid <> ?", [run_id, owner.pid])
        child = rows[0][0] if rows else None
        time.sleep(0.1)
    assert child is not None and alive(child)

    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the run's process outlived its scheduler"
    (status, error), = stored(read_only, store_path, "SELECT status, error FROM runs WHERE run_id = ?", [run_id])
    assert status == "failed" and f"scheduler that started this run (pid {owner.pid}) exited" in error
