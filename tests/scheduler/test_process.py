"""The process executor with real child interpreters and signals."""

import os
import threading
import time

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.models import RunStatus


def test_process_run_logs_from_the_child_and_returns_its_result(fake_gpus):
    fake_gpus(2)

    def train(run, lr):
        import os

        print("visible:", os.environ["CUDA_VISIBLE_DEVICES"], run.device, run.gpus, os.getpid())
        for i in range(100):
            run.log(loss=lr / (i + 1))
        return {"final": lr / 100}

    job = nx.submit(train, {"lr": 0.5}, executor="process", gpus=1)
    assert job.result(timeout=60) == {"final": 0.005}
    visible, device, gpus, pid = job.output.split(" ", 4)[1:5]
    assert device == "cuda:0" and int(pid) != os.getpid()
    assert visible == gpus.strip("[]")  # CUDA_VISIBLE_DEVICES is the lease
    points = nx.metrics(job.run_id, "loss")
    assert len(points) == 100 and points.value.iloc[-1] == pytest.approx(0.005)
    row = nx.runs().iloc[0]
    assert row.status == "completed" and row.executor == "process"
    assert nx.sql("SELECT output FROM runs").output[0] == job.output


def test_cpu_only_process_runs_see_no_gpus(store_path):
    job = nx.submit(lambda run: os.environ.get("CUDA_VISIBLE_DEVICES"), executor="process")
    assert job.result(timeout=60) == ""


def test_process_run_failure_carries_the_child_traceback(store_path):
    def broken(run):
        raise KeyError("missing column")

    job = nx.submit(broken, executor="process")
    assert job.wait(60) == RunStatus.FAILED
    assert "KeyError: 'missing column'" in job.error and "Traceback" in job.error
    assert "KeyError" in nx.runs().error[0]


def test_process_retries_across_attempts(store_path, tmp_path):
    counter = tmp_path / "attempts"

    def flaky(run, path):
        from pathlib import Path

        p = Path(path)
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        run.log(n=float(n))
        if n < 3:
            raise RuntimeError(f"attempt {n}")
        return n

    job = nx.submit(flaky, {"path": str(counter)}, executor="process", retries=2, retry_backoff=0.05)
    assert job.result(timeout=90) == 3 and job.attempts == 3
    events = list(nx.sql("SELECT event FROM events WHERE run_id = ? ORDER BY ts", [job.run_id]).event)
    assert events.count("retry") == 2 and events[-1] == "completed"
    assert list(nx.metrics(job.run_id, "n").value) == [3.0]


def test_process_run_stuck_in_a_c_call_is_killed_at_timeout(use_settings):
    use_settings(cancel_grace=0.5)

    def stuck(run):
        import re

        run.log(started=1.0)
        re.match(r"(a+)+$", "a" * 64 + "b")  # catastrophic backtracking: hours inside C

    started = time.monotonic()
    job = nx.submit(stuck, executor="process", timeout=2)
    assert job.wait(60) == RunStatus.FAILED
    assert job.error.startswith("timeout") and time.monotonic() - started < 30
    assert nx.runs().status[0] == "failed"
    assert "timeout" in nx.runs().error[0]


def test_process_run_is_cancelled_with_sigterm(store_path):
    def loop(run):
        import time

        while True:
            run.log(x=1.0)
            time.sleep(0.01)

    job = nx.submit(loop, executor="process")
    deadline = time.monotonic() + 60
    while job.status != RunStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert job.cancel()
    assert job.wait(30) == RunStatus.CANCELLED
    assert nx.runs().status[0] == "cancelled"


def test_a_child_that_dies_is_failed_as_lost(store_path):
    def die(run):
        import os

        run.log(x=1.0)
        os._exit(3)

    job = nx.submit(die, executor="process")
    assert job.wait(60) == RunStatus.FAILED
    assert "lost" in job.error and "exit code 3" in job.error
    assert nx.runs().status[0] == "failed"


def test_unpicklable_global_is_named_at_submit(store_path):
    global LOCK
    LOCK = threading.Lock()

    def uses_lock(run):
        with LOCK:
            pass

    with pytest.raises(ConfigError, match="'LOCK'"):
        nx.submit(uses_lock, executor="process")
    assert nx.runs().empty
    assert nx.submit(uses_lock).wait(10) == RunStatus.COMPLETED  # fine in a thread


LOCK = None
