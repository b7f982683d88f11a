"""Several processes on one machine: GPU leases hold across schedulers; dead holders free GPUs."""

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.store import get_store

pytestmark = pytest.mark.slow

SUBMITTER = """
    import sys, time
    import notebook_exp as nx

    def work(run, i):
        for k in range(20):
            run.log(k=float(k))
            time.sleep(0.01)

    jobs = [nx.submit(work, {"i": i}, gpus=1, experiment=sys.argv[1]) for i in range(6)]
    print(nx.wait(jobs, timeout=120))
"""


def test_two_schedulers_never_share_a_gpu(fake_gpus, read_only, store_path):
    fake_gpus(2)  # the submitters inherit the setting
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(SUBMITTER), f"proc{i}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    rows = read_only(store_path, "SELECT experiment, status, gpus, started_at, ended_at FROM runs")
    assert len(rows) == 12 and {r[1] for r in rows} == {"completed"}
    assert {r[0] for r in rows} == {"proc0", "proc1"}
    by_gpu = {}
    for _exp, _status, gpus, started, ended in rows:
        assert len(gpus) == 1
        by_gpu.setdefault(gpus[0], []).append((started, ended))
    assert set(by_gpu) == {0, 1}
    for spans in by_gpu.values():
        spans.sort()
        for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
            assert e1 <= s2, "two runs held one GPU at once"


HOLDER = """
    import threading, time
    import notebook_exp as nx
    import notebook_exp.scheduler

    job = nx.submit(lambda run: threading.Event().wait(), gpus=1, name="holder")
    while job.status.value != "running":
        time.sleep(0.01)
    notebook_exp.scheduler.get_scheduler().store.writer.flush()  # its running row is committed first
    print("holding", job.gpus, flush=True)  # from the main thread: a run's prints go to its job
    threading.Event().wait()
"""


def test_a_killed_holder_frees_its_gpu_and_its_run_is_marked_lost(fake_gpus, read_only, store_path, request):
    fake_gpus(1)  # this process's scheduler and, through the setting, the holder's
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: (holder.kill(), holder.communicate()))
    assert holder.stdout.readline().startswith("holding [0]")
    started = []
    job = nx.submit(lambda run: started.append(time.monotonic()), gpus=1, name="waiter")
    time.sleep(0.5)
    assert job.status == RunStatus.QUEUED  # the GPU is taken by the other process
    killed = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert job.wait(10) == RunStatus.COMPLETED
    assert started[0] - killed < 1.0  # handed over promptly
    deadline = time.monotonic() + 15
    while read_only(store_path, "SELECT status FROM runs WHERE name = 'holder'") != [("failed",)]:
        assert time.monotonic() < deadline, "the dead holder's run was not marked lost"
        nx.submit(lambda run: time.sleep(0.2)).wait(10)  # keep this scheduler busy: it checks while working
    (error,), = read_only(store_path, "SELECT error FROM runs WHERE name = 'holder'")
    assert error.startswith(f"lost: process {holder.pid}")


RESTARTED = """
    import threading, time
    import notebook_exp as nx
    import notebook_exp.scheduler

    def step(run, n):
        run.log(n=float(n))
        if n == 0:
            threading.Event().wait()
        return n

    jobs = [nx.submit(step, {"n": n}, name=f"r{n}", experiment="restart") for n in range(3)]
    while jobs[0].status.value != "running":
        time.sleep(0.01)
    nx.scheduler.get_scheduler().store.writer.flush()  # the queued rows are on disk
    print("first running", flush=True)
    threading.Event().wait()
"""


def test_a_restarted_kernel_sees_what_was_lost_and_resubmits_it(settings_env, read_only, store_path, request):
    settings_env(max_concurrent=1)  # for the child kernel, which reads its environment
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RESTARTED)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: (proc.kill(), proc.communicate()))
    assert proc.stdout.readline().strip() == "first running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert sorted(read_only(store_path, "SELECT name, status FROM runs")) == [
        ("r0", "running"), ("r1", "queued"), ("r2", "queued"),
    ]
    get_store(store_path).ensure()  # what a restarted kernel does first
    rows = {name: (status, error) for name, status, error in read_only(store_path, "SELECT name, status, error FROM runs")}
    assert rows["r0"][0] == "failed" and rows["r0"][1].startswith("lost: process")
    assert rows["r1"][0] == rows["r2"][0] == "cancelled" and "nx.resubmit()" in rows["r1"][1]
    jobs = nx.resubmit()
    assert sorted(j.name for j in jobs) == ["r1", "r2"]
    assert sorted(j.result(timeout=30) for j in jobs) == [1, 2]
    assert nx.resubmit() == []  # nothing left to resubmit
