"""QueueMonitor stops polling once its queue is idle and never waits long on a busy store."""

from __future__ import annotations

import threading
import time

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.scheduler.core import get_scheduler
from notebook_exp.testing import StoreHolder
from notebook_exp.widgets._ticker import ticker
from notebook_exp.widgets.queue_monitor import DEFAULT_RECENT_TIMEOUT, QueueMonitor


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_leaves_the_ticker_once_the_run_ended_and_shows_the_final_state(settings_env):
    settings_env(fake_gpus=1)
    gate = threading.Event()
    job = nx.submit(lambda run: gate.wait(10) and run.log(loss=0.5, step=0), gpus=1, name="short")
    assert wait_until(lambda: job.status == RunStatus.RUNNING)
    monitor = QueueMonitor(get_scheduler())
    assert monitor in ticker and monitor.polling
    assert "running" in monitor.jobs_box.children[0].children[0].value
    gate.set()
    assert job.wait(10) == RunStatus.COMPLETED
    assert wait_until(lambda: monitor not in ticker), "the monitor kept polling an idle queue"
    assert not monitor.polling
    row = monitor.jobs_box.children[0].children[0].value
    assert "short" in row and "completed" in row
    assert monitor.jobs_box.children[0].children[1].disabled  # no cancel for an ended run
    assert "1 completed" in monitor.summary.value
    assert "completed" in monitor.recent.value and "running" not in monitor.recent.value
    assert "free" in monitor.gpus_box.children[0].children[0].value  # the lease is back
    updates = monitor.updates
    time.sleep(0.5)
    assert monitor.updates == updates and not monitor.tick()


def test_an_idle_monitor_never_polls_and_resumes_when_shown_again(store_path):
    monitor = QueueMonitor(get_scheduler())
    assert not monitor.polling and monitor not in ticker  # nothing to follow
    job = nx.submit(lambda run: time.sleep(0.3), name="later")
    monitor._repr_mimebundle_()  # displayed again: follows the queue again
    assert monitor.polling and monitor in ticker
    job.wait(10)
    assert wait_until(lambda: monitor not in ticker)
    assert "later" in monitor.jobs_box.children[0].children[0].value
    assert "completed" in monitor.jobs_box.children[0].children[0].value
    monitor.close()
    monitor.resume()
    assert monitor not in ticker and not monitor.tick()


def test_a_tick_skips_a_held_store_quickly_and_finishes_once_it_is_free(store_path):
    nx.submit(lambda run: None, name="first").wait(10)
    monitor = QueueMonitor(get_scheduler())
    assert wait_until(lambda: monitor not in ticker)
    assert "first" in monitor.recent.value
    done = nx.submit(lambda run: None, name="second")
    done.wait(10)
    with StoreHolder(store_path):
        started = time.monotonic()
        monitor.resume()  # one tick, which reads the store for the final state of the idle queue
        took = time.monotonic() - started
        print(f"a QueueMonitor tick with the store held took {took:.3f} s")
        assert DEFAULT_RECENT_TIMEOUT * 0.9 <= took < 0.5
        assert monitor.polling and monitor in ticker  # the final rows are not drawn yet: it keeps trying
        assert "second" not in monitor.recent.value
    assert wait_until(lambda: monitor not in ticker)
    assert "second" in monitor.recent.value
