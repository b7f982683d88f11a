"""Every thread of the package has an owner whose stop() ends it, and the leak check sees one that doesn't."""

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from notebook_exp.models import MetricBatch, RunInfo, RunStatus
from notebook_exp.scheduler.core import Scheduler
from notebook_exp.scheduler.spec import validate
from notebook_exp.sinks import dispatch
from notebook_exp.sinks.dispatch import Dispatcher
from notebook_exp.testing import (
    MemorySink,
    leaked_threads,
    make_settings,
    package_threads,
    shutdown,
)

ROOT = Path(__file__).resolve().parents[1]


def alive(fragment: str) -> list[str]:
    """Names of the package's live threads that contain ``fragment``."""
    return [t.name for t in package_threads() if fragment in t.name]


def wait_until(condition, seconds=10.0, what="the condition"):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.01)


@pytest.fixture
def settings(store_path, tmp_path):
    def make(**overrides):
        return make_settings(store=store_path, lock_dir=tmp_path / "locks", **overrides)

    return make


# -- the leak check ----------------------------------------------------------------


def test_the_leak_check_names_a_package_thread_left_running():
    before = package_threads()
    release = threading.Event()
    leak = threading.Thread(target=release.wait, name="notebook_exp-test-leak", daemon=True)
    other = threading.Thread(target=release.wait, name="someone-elses", daemon=True)
    leak.start()
    other.start()
    try:
        started = time.monotonic()
        assert leaked_threads(before, timeout=0.2) == ["notebook_exp-test-leak"]
        assert time.monotonic() - started >= 0.2  # it gave the thread its grace
        assert leaked_threads([*before, leak], timeout=0) == []
    finally:
        release.set()
        leak.join(5)
        other.join(5)
    assert leaked_threads(before, timeout=0) == []


def test_the_suite_fixture_fails_a_test_that_leaks_a_thread(tmp_path):
    """The autouse fixture of tests/conftest.py, in a pytest run of its own."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent("""
        import threading

        def test_leaves_a_thread_behind():
            threading.Thread(target=threading.Event().wait, name="notebook_exp-forgotten", daemon=True).start()

        def test_clean():
            pass
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "threads of notebook_exp outlived the test: notebook_exp-forgotten" in proc.stdout
    assert "2 passed, 1 error" in proc.stdout  # the leaky test errors at teardown, test_clean does not


# -- the owners ----------------------------------------------------------------------


class StuckRetrySink(MemorySink):
    name = "stuck"

    def log_metrics(self, batch):
        raise ConnectionError("down")


def info(run_id: str) -> RunInfo:
    return RunInfo(run_id=run_id, experiment="threads", name=run_id)


def test_a_dispatcher_stops_the_workers_of_a_run_that_never_ended():
    sinks = [MemorySink(), MemorySink()]
    dispatcher = Dispatcher(info("neverending1"), sinks, retries=0, queue_rows=1000)
    dispatcher.start()
    assert len(alive("neverend")) == 2
    dispatcher.publish("flush")
    assert dispatcher.sync(10)
    assert dispatcher.stop(5)
    assert alive("neverend") == []
    for sink in sinks:
        assert sink.closed and "end_run" not in sink.methods  # closed without an end it never had
    assert dispatcher.stop(5)  # idempotent
    assert dispatcher.finish(RunStatus.COMPLETED, None, timeout=1) == {}  # nothing left to end
    assert "end_run" not in sinks[0].methods


def test_stop_cuts_a_retry_backoff_short_and_counts_what_it_drops(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKOFF_BASE", 30.0)
    sink = StuckRetrySink()
    dispatcher = Dispatcher(info("backingoff"), [sink], retries=3, queue_rows=1000)
    dispatcher.start()
    two = MetricBatch.from_rows("backingoff", [("x", 0, 0.0, 1.0), ("x", 1, 0.0, 2.0)])
    three = MetricBatch.from_rows("backingoff", [("x", step, 0.0, 1.0) for step in range(2, 5)])
    dispatcher.publish("log_metrics", two, rows=2)
    dispatcher.publish("log_metrics", three, rows=3)
    time.sleep(0.1)  # the worker is in its first 30 s backoff
    started = time.monotonic()
    assert dispatcher.stop(5)
    assert time.monotonic() - started < 2
    assert dispatcher.workers[0].dropped == 5 and sink.closed


def test_shutdown_stops_the_workers_of_a_dispatcher_nobody_finished():
    dispatcher = Dispatcher(info("orphaned01"), [MemorySink()], retries=0, queue_rows=1000)
    dispatcher.start()
    assert alive("orphaned") != []
    shutdown()
    assert alive("orphaned") == [] and dispatcher.sinks[0].closed


def test_closing_the_process_executor_ends_its_monitor_and_readers(settings):
    scheduler = Scheduler(settings(cancel_grace=60))
    try:
        job = scheduler.submit(validate(fn=lambda run: __import__("time").sleep(600), executor="process"))
        wait_until(lambda: job.status == RunStatus.RUNNING, 60, "the child's start")
        tag = job.run_id[:8]
        assert {f"notebook_exp-proc[{tag}]", f"notebook_exp-proc-out[{tag}]", f"notebook_exp-proc-err[{tag}]"} <= set(
            alive(tag))
        scheduler.executor("process").close()
        assert alive(tag) == []
        assert job.wait(30) == RunStatus.FAILED and "lost" in job.error
        scheduler.executor("process").close()  # idempotent
    finally:
        scheduler.stop(timeout=30)


def test_a_cancelled_process_run_leaves_no_kill_timer_behind(settings):
    scheduler = Scheduler(settings(cancel_grace=60))
    try:
        job = scheduler.submit(validate(fn=lambda run: __import__("time").sleep(600), executor="process"))
        wait_until(lambda: job.status == RunStatus.RUNNING, 60, "the child's start")
        assert job.cancel()
        assert job.wait(30) == RunStatus.CANCELLED
        wait_until(lambda: alive(job.run_id[:8]) == [], 5, "the end of the run's threads")  # not 60 s later
    finally:
        scheduler.stop(timeout=30)


def test_a_cancelled_thread_run_leaves_no_force_timer_behind(settings):
    scheduler = Scheduler(settings(cancel_grace=60))

    def loop(run):
        while True:
            run.log(x=1.0)
            time.sleep(0.01)

    try:
        job = scheduler.submit(validate(fn=loop))
        wait_until(lambda: job.status == RunStatus.RUNNING, 30, "the run's start")
        assert job.cancel() and job.wait(30) == RunStatus.CANCELLED
        wait_until(lambda: alive(job.run_id[:8]) == [], 5, "the end of the run's threads")
    finally:
        scheduler.stop(timeout=30)


def test_stopping_the_scheduler_forces_a_run_that_never_logs_without_waiting_its_grace(settings):
    scheduler = Scheduler(settings(cancel_grace=60))

    def spin(run):
        while True:
            pass

    job = scheduler.submit(validate(fn=spin))
    wait_until(lambda: job.status == RunStatus.RUNNING, 30, "the run's start")
    started = time.monotonic()
    scheduler.stop(timeout=0.5)
    assert job.wait(10) == RunStatus.CANCELLED
    assert time.monotonic() - started < 10
    wait_until(lambda: alive(job.run_id[:8]) == [] and alive("notebook_exp-scheduler") == [], 5,
               "the end of the scheduler's threads")


def test_a_warning_on_another_thread_is_not_hidden_while_the_writer_summarises_a_batch():
    """The store's writer thread summarises every batch (NaN-ignoring min/max); it must not swap the
    process-wide warning filters meanwhile, or a sink's "is failing" warning raised on its own thread
    in that window is silently dropped (a CI run lost one that way)."""
    import warnings

    import numpy as np

    from notebook_exp.store.batches import _summarize

    keys, per_key = 50, 20_000  # a batch big enough that the writer spends most of its time in it
    names = [f"k{i}" for i in range(keys)]
    codes = np.repeat(np.arange(keys), per_key)
    steps = np.tile(np.arange(per_key, dtype=np.int64), keys)
    micros = np.arange(keys * per_key, dtype=np.int64)
    values = np.where(np.arange(keys * per_key) % 3 == 0, np.nan, 1.0)
    stop = threading.Event()
    summarised = []

    def summarise():
        while not stop.is_set():
            _summarize(names, codes, steps, micros, values)
            summarised.append(1)

    writer = threading.Thread(target=summarise, name="summarise")
    issued = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.start()
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline or len(summarised) < 20:
                warnings.warn(f"sink failing {issued}", RuntimeWarning, stacklevel=1)
                issued += 1
                time.sleep(0.0005)
        finally:
            stop.set()
            writer.join()
    assert len([w for w in caught if "sink failing" in str(w.message)]) == issued
