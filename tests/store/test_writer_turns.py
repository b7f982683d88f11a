"""The writers' turn file (``<store>.writers.lock``) between real processes."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap

import notebook_exp as nx

HOLDER = """
    import os, sys, time
    from notebook_exp.store import get_store
    store = get_store(sys.argv[1])
    with store._lock:
        assert store._take_turn() is None  # this process has the writers' turn now
    child = os.fork()
    if child == 0:  # like a DataLoader worker forked while the writer held its turn
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    time.sleep(120)
"""


def test_a_turn_left_by_a_killed_writer_in_its_forked_child_does_not_stop_other_writers(store_path, read_only):
    with nx.start_run("first") as run:
        run.log(x=1.0)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(store_path)],
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        turn = store_path.with_name(store_path.name + ".writers.lock")
        fd = os.open(turn, os.O_RDWR)
        try:  # the forked child's copy of the descriptor still holds the lock
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                still_held = False
            except BlockingIOError:
                still_held = True
        finally:
            os.close(fd)
        assert still_held
        with nx.start_run("after", store=store_path) as run:
            run.log(x=2.0)
            assert run.flush(timeout=10)  # not StoreLocked after lock_timeout: the named holder is dead
        assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'")[0][0] == 2
    finally:
        os.kill(child, signal.SIGKILL)
