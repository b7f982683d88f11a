"""The scheduler in one process: order, dependencies, retries, cancel, timeout, bad input."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError, GpuUnavailable, RunCancelled, RunFailed
from notebook_exp.models import RunStatus


def record(order, label):
    def fn(run):
        order.append(label)

    return fn


def blocker(gate):
    def fn(run):
        gate.wait(30)

    return fn


def wait_running(job, seconds=10):
    deadline = time.monotonic() + seconds
    while job.status != RunStatus.RUNNING:
        assert time.monotonic() < deadline, f"{job} did not start"
        time.sleep(0.005)


def test_priority_then_fifo_order(use_settings):
    use_settings(max_concurrent=1)
    gate, order = threading.Event(), []
    first = nx.submit(blocker(gate), name="blocker")
    wait_running(first)
    jobs = [
        nx.submit(record(order, f"p{priority}-{i}"), priority=priority)
        for i, priority in enumerate([1, 9, 5, 9, 1, 5])
    ]
    assert [j.queue_position for j in jobs] == [4, 0, 2, 1, 5, 3]
    gate.set()
    nx.wait([first, *jobs], timeout=30)
    assert order == ["p9-1", "p9-3", "p5-2", "p5-5", "p1-0", "p1-4"]
    assert first.queue_position is None


def test_after_chain_runs_in_order_and_a_failed_dependency_cancels(store_path):
    order = []
    a = nx.submit(record(order, "a"))
    b = nx.submit(record(order, "b"), after=a)
    c = nx.submit(record(order, "c"), after=[b.run_id])
    assert nx.wait([a, b, c], timeout=30) == [RunStatus.COMPLETED] * 3
    assert order == ["a", "b", "c"]

    def boom(run):
        raise ValueError("broken data")

    bad = nx.submit(boom)
    dependent = nx.submit(record(order, "never"), after=bad)
    assert dependent.wait(30) == RunStatus.CANCELLED
    assert f"dependency {bad.run_id} failed" in dependent.error and "broken data" in dependent.error
    assert "never" not in order
    with pytest.raises(RunCancelled):
        dependent.result()


def test_retries_with_backoff_record_every_attempt(store_path):
    calls = []

    def flaky(run):
        calls.append(time.monotonic())
        run.log(attempt=len(calls))
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    job = nx.submit(flaky, retries=3, retry_backoff=0.1)
    assert job.result(timeout=30) == "ok"
    assert job.attempts == 3 and job.status == RunStatus.COMPLETED
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16  # exponential: ~0.1 s then ~0.2 s
    events = nx.sql("SELECT event, detail FROM events WHERE run_id = ? ORDER BY ts", [job.run_id])
    assert list(events.event) == [
        "queued",
        "running",
        "retry",
        "running",
        "retry",
        "running",
        "completed",
    ]
    assert "attempt 1 failed" in events.detail[2] and "attempt 2 failed" in events.detail[4]
    row = nx.runs().iloc[0]
    assert row.status == "completed" and row.attempts == 3 and pd.isna(row.error)
    points = nx.metrics(job.run_id)
    assert list(zip(points.step, points.value))[0] == (0, 3.0)  # only the last attempt's data
    assert (points.groupby("key").step.min() == 0).all()  # telemetry, too, starts again
    assert nx.dead_letters().empty


def test_failing_after_all_retries_goes_to_the_dead_letters(store_path):
    def always(run):
        raise RuntimeError("still broken")

    job = nx.submit(always, retries=1, retry_backoff=0.01, name="hopeless")
    assert job.wait(30) == RunStatus.FAILED
    with pytest.raises(RunFailed, match="still broken"):
        job.result()
    dead = nx.dead_letters()
    assert list(dead.name) == ["hopeless"] and dead.attempts[0] == 2
    assert "RuntimeError: still broken" in dead.error[0]


def test_cancel_queued_and_running_thread_runs(use_settings):
    use_settings(max_concurrent=1)
    started = threading.Event()

    def loop(run):
        started.set()
        while True:
            run.log(x=1.0)
            time.sleep(0.001)

    running = nx.submit(loop)
    queued = nx.submit(loop)
    assert started.wait(10)
    assert queued.cancel() and queued.status == RunStatus.CANCELLED
    assert running.cancel()
    assert running.wait(10) == RunStatus.CANCELLED
    assert not running.cancel()  # already over
    statuses = dict(zip(nx.runs().run_id, nx.runs().status))
    assert statuses == {running.run_id: "cancelled", queued.run_id: "cancelled"}


def test_thread_timeout_is_raised_at_the_next_log(store_path):
    def slow(run):
        for i in range(10_000):
            run.log(i=float(i))
            time.sleep(0.01)

    job = nx.submit(slow, timeout=0.3)
    assert job.wait(10) == RunStatus.FAILED
    assert job.error.startswith("timeout")
    assert nx.runs().error[0].startswith("timeout")


def test_thread_run_that_never_logs_is_stopped_after_the_grace(use_settings):
    use_settings(cancel_grace=0.2)

    def spin(run):
        while True:
            pass

    job = nx.submit(spin, timeout=0.2)
    assert job.wait(10) == RunStatus.FAILED and job.error.startswith("timeout")


def test_run_device_and_gpus_in_the_thread_executor(fake_gpus):
    fake_gpus(2)
    seen = []
    jobs = [nx.submit(lambda run: seen.append((run.gpus, run.device)), gpus=1) for _ in range(2)]
    nx.wait(jobs, timeout=30)
    assert sorted(seen) == [([0], "cuda:0"), ([1], "cuda:1")] or all(
        d.startswith("cuda:") for _g, d in seen
    )
    assert {tuple(g) for g, _d in seen} <= {(0,), (1,)}


def test_output_of_a_background_run_goes_to_its_job(store_path, capsys):
    def chatty(run):
        print("from the run")

    job = nx.submit(chatty)
    job.wait(10)
    assert job.output == "from the run\n"
    assert "from the run" not in capsys.readouterr().out
    assert nx.sql("SELECT output FROM runs").output[0] == "from the run\n"


def test_current_run_inside_a_scheduled_run():
    seen = []
    job = nx.submit(lambda run: seen.append(nx.current_run() is run))
    job.wait(10)
    assert seen == [True]


def test_gpus_reports_telemetry_and_holders(fake_gpus):
    fake_gpus(2)
    gate = threading.Event()
    job = nx.submit(blocker(gate), gpus=1)
    wait_running(job)
    infos = nx.gpus()
    gate.set()
    job.wait(10)
    assert [g.index for g in infos] == [0, 1]
    assert all(g.memory_total > 0 and g.name for g in infos)
    assert [g.holder for g in infos] == [job.run_id, None]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": -1}, "gpus"),
        ({"priority": 11}, "priority"),
        ({"executor": "nope"}, "unknown executor 'nope'"),
        ({"timeout": 0}, "timeout"),
        ({"params": {"unexpected": 1}}, "unexpected"),
        ({"gpus": 1.5}, "whole number"),
        ({"gpu_memory": "lots"}, "amount of memory"),
    ],
)
def test_bad_submissions_fail_clearly_and_queue_nothing(store_path, kwargs, message):
    def fn(run, lr=0.1):
        pass

    with pytest.raises(ConfigError, match=message):
        nx.submit(fn, **kwargs)
    assert nx.runs().empty


def test_wrong_signature_fails_before_queueing(store_path):
    def no_run_param():
        pass

    with pytest.raises(ConfigError, match="cannot be called as"):
        nx.submit(no_run_param)
    with pytest.raises(ConfigError, match="lr"):
        nx.sweep(lambda run, bs: None, {"lr": [1, 2]})
    assert nx.runs().empty


def test_more_gpus_than_the_machine_has(fake_gpus, store_path):
    fake_gpus(2)
    with pytest.raises(GpuUnavailable, match="2"):
        nx.submit(lambda run: None, gpus=3)
    assert nx.runs().empty
    job = nx.submit(lambda run: None, gpus=3, wait_for_gpus=True)
    assert job.status == RunStatus.QUEUED
    assert job.cancel()


def test_sweep_over_a_grid_and_a_list(store_path):
    jobs = nx.sweep(
        lambda run, lr, bs: run.log(score=lr * bs),
        {"lr": [0.1, 0.2], "bs": [8, 16]},
        experiment="grid",
    )
    nx.wait(jobs, timeout=30)
    table = nx.runs("grid")
    assert sorted(zip(table["params.lr"], table["params.bs"])) == [
        (0.1, 8),
        (0.1, 16),
        (0.2, 8),
        (0.2, 16),
    ]
    assert set(table.name) == {"lr=0.1 bs=8", "lr=0.1 bs=16", "lr=0.2 bs=8", "lr=0.2 bs=16"}
    more = nx.sweep(lambda run, lr: None, [{"lr": 1}, {"lr": 2}], experiment="list")
    assert nx.wait(more, timeout=30) == [RunStatus.COMPLETED] * 2


def test_gpus_freed_during_a_round_go_to_the_first_in_the_queue(use_settings, tmp_path, monkeypatch):
    """Another process frees the GPUs just after the first job of a dispatch round was
    refused them: the next job of that round, asking as many, must not take them."""
    from notebook_exp.inventory import GpuInventory

    inventory = GpuInventory.detect(fake_gpus=2, cuda_visible_devices=None)
    scheduler = use_settings(max_concurrent=4, inventory=inventory)
    holder = subprocess.Popen(  # another process holds both GPUs (the lease files of this lock folder)
        [sys.executable, str(Path(__file__).with_name("_lease_child.py")), str(tmp_path / "locks"), "2", "other", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert json.loads(holder.stdout.readline())["gpus"] == [0, 1]
        order = []
        jobs = [nx.submit(record(order, f"p{p}"), priority=p, gpus=2) for p in (1, 9, 5)]
        assert [j.queue_position for j in jobs] == [2, 0, 1]

        real, freed = scheduler.leases.try_acquire, threading.Event()

        def freed_after_the_refusal(*args, **kwargs):
            lease = real(*args, **kwargs)
            if lease is None and not freed.is_set():  # the round's first ask: let the holder go now
                holder.stdin.close()
                holder.wait(10)
                freed.set()
            return lease

        monkeypatch.setattr(scheduler.leases, "try_acquire", freed_after_the_refusal)
        assert nx.wait(jobs, timeout=30) == [RunStatus.COMPLETED] * 3
        assert freed.is_set() and order == ["p9", "p5", "p1"]
    finally:
        holder.kill()
        holder.wait()
