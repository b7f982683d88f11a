"""Faults the scheduler must survive with an honest status for every run: an error
inside its dispatcher, a store another process holds, children that die."""

import logging
import sys
import time

import pytest

import notebook_exp as nx
from notebook_exp.config import get_settings
from notebook_exp.exceptions import ConfigError, SinkError
from notebook_exp.inventory import FakeGpuBackend, GpuInventory
from notebook_exp.models import RunStatus
from notebook_exp.scheduler.core import Scheduler, get_scheduler
from notebook_exp.scheduler.spec import validate
from notebook_exp.store import get_store
from notebook_exp.testing import StoreHolder


class FlakyInventory(GpuInventory):
    """One fake GPU whose free-memory reading raises the first ``failures`` times, as
    a driver falling over would. Passed as ``Scheduler(inventory=...)``: the leasing of
    a job asking for ``gpu_memory`` then raises inside the dispatcher."""

    def __init__(self, failures: int = 1) -> None:
        super().__init__(FakeGpuBackend(1))
        self.failures = failures

    def free_memory(self, index: int) -> int:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("NVML driver fell over")
        return super().free_memory(index)


@pytest.fixture
def scheduler():
    """Make schedulers of our own; each is stopped after the test."""
    made = []

    def make(**kwargs) -> Scheduler:
        made.append(Scheduler(get_settings(), **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.stop(timeout=30)


def stored(store_path, read_only, run_id):
    """``(status, error)`` of a run, read with plain duckdb once this process wrote everything."""
    get_store(store_path).writer.flush(timeout=30)
    return read_only(store_path, "SELECT status, error FROM runs WHERE run_id = ?", [run_id])[0]


def test_an_error_inside_the_dispatcher_fails_only_that_job(scheduler, store_path, read_only, caplog):
    queue = scheduler(inventory=FlakyInventory(failures=1))
    first = queue.submit(validate(fn=lambda run: "never", gpus=1, gpu_memory=1, name="first"))
    later = queue.submit(validate(fn=lambda run: "done", gpus=1, gpu_memory=1, name="later"))
    assert first.wait(30) == RunStatus.FAILED
    assert later.wait(30) == RunStatus.COMPLETED and later.result() == "done"
    assert "scheduler error while dispatching the run" in first.error
    assert "RuntimeError('NVML driver fell over')" in first.error and "Traceback" in first.error
    assert first.attempts == 0 and later.gpus == [0]  # the one GPU was free for the later job
    status, error = stored(store_path, read_only, first.run_id)
    assert status == "failed" and "NVML driver fell over" in error
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any("NVML driver fell over" in str(r.exc_info[1]) for r in logged)
    third = queue.submit(validate(fn=lambda run: 3))  # the dispatcher still runs
    assert third.result(timeout=30) == 3


def finished_elsewhere(run_python, fail: bool = False) -> str:
    """The id of a run another process started and ended (failed if ``fail``)."""
    body = "raise ValueError('bad data')" if fail else "run.log(x=1.0)"
    code = f"import notebook_exp as nx\ntry:\n    with nx.start_run('elsewhere') as run:\n        {body}\n" \
           "except ValueError:\n    pass\nprint(run.run_id)"
    return run_python(code).stdout.split()[-1]


def test_a_dependency_is_waited_for_while_another_process_holds_the_store(store_path, run_python, read_only, request):
    dep = finished_elsewhere(run_python)
    get_scheduler().store.ensure()  # this process knows the store before it is held
    holder = StoreHolder(store_path).__enter__()
    request.addfinalizer(lambda: holder.__exit__(None, None, None))
    seen = []
    job = nx.submit(lambda run: "after", after=[dep])  # the store can't be read: accepted
    job.subscribe(lambda _job, event, data: seen.append(data) if event == "status" else None)
    ghost = nx.submit(lambda run: None, after=["not-a-run-yet"])
    time.sleep(1.5)  # the dispatcher tries to read the dependency's status a few times
    assert job.status == RunStatus.QUEUED and ghost.status == RunStatus.QUEUED
    holder.release()
    assert job.result(timeout=60) == "after"
    assert RunStatus.CANCELLED not in seen and seen[-1] == RunStatus.COMPLETED
    assert ghost.status == RunStatus.QUEUED  # no row for it (yet): still waited for
    assert ghost.cancel()
    assert stored(store_path, read_only, job.run_id) == ("completed", None)
    events = read_only(store_path, "SELECT event FROM events WHERE run_id = ?", [job.run_id])
    assert ("cancelled",) not in events


def test_a_dependency_that_failed_in_another_process_cancels(store_path, run_python):
    dep = finished_elsewhere(run_python, fail=True)
    job = nx.submit(lambda run: None, after=dep)
    assert job.wait(30) == RunStatus.CANCELLED
    assert job.error.startswith(f"dependency {dep} failed") and "bad data" in job.error


def test_an_unknown_dependency_is_refused_at_submit(store_path):
    assert nx.submit(lambda run: None).wait(30) == RunStatus.COMPLETED
    with pytest.raises(ConfigError, match="unknown run id 'no-such-run'"):
        nx.submit(lambda run: None, after=["no-such-run"])
    assert len(nx.runs()) == 1


def test_a_live_run_of_this_process_is_a_known_dependency(store_path):
    live = nx.start_run("live")  # its row is still on its way to the store
    job = nx.submit(lambda run: "next", after=live.run_id)
    time.sleep(0.3)
    assert job.status == RunStatus.QUEUED
    live.end()
    assert job.result(timeout=30) == "next"


def test_a_process_run_whose_sink_cannot_load_is_failed_not_left_queued(store_path, read_only, tmp_path,
                                                                        monkeypatch):
    """A sink installed where the kernel runs but not where the child does (here: on this
    process's sys.path only) fails the run in the child, honestly."""
    from notebook_exp import _plugins

    dist = tmp_path / "parentonly-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: parentonly\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[notebook_exp.sinks]\nparent-only = parent_only_sink:ParentOnly\n")
    (tmp_path / "parent_only_sink.py").write_text(
        "from notebook_exp.testing import MemorySink\nclass ParentOnly(MemorySink):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _plugins.reset()
    try:
        job = nx.submit(lambda run: None, executor="process", sinks=["parent-only"])
        assert job.wait(60) == RunStatus.FAILED
    finally:
        monkeypatch.undo()
        _plugins.reset()
    assert "SinkError" in job.error and "unknown sink 'parent-only'" in job.error
    status, error = stored(store_path, read_only, job.run_id)
    assert status == "failed" and "unknown sink 'parent-only'" in error
    with pytest.raises(SinkError, match="unknown sink 'no-such-sink'"):  # unknown here too: refused at once
        nx.submit(lambda run: None, executor="process", sinks=["no-such-sink"])


def test_children_that_die_are_failed_as_lost_with_their_stderr(store_path, read_only, tmp_path, monkeypatch):
    (tmp_path / "parent_only.py").write_text("def work(run):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not in the child
    from parent_only import work

    def kill_itself(run):  # defined here: shipped by value, not by this module's name
        import os
        import signal

        run.log(x=1.0)
        print("about to be killed", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def exit_hard(run):
        import os

        print("disk on fire", file=sys.stderr, flush=True)
        os._exit(3)

    killed = nx.submit(kill_itself, executor="process")
    exited = nx.submit(exit_hard, executor="process")
    crashed = nx.submit(work, executor="process")  # the child cannot unpickle it: dies at import
    assert nx.wait([killed, exited, crashed], timeout=120) == [RunStatus.FAILED] * 3
    expected = {
        killed: ("signal 9 (SIGKILL)", "about to be killed"),
        exited: ("exit code 3", "disk on fire"),
        crashed: ("exit code 1", "No module named 'parent_only'"),
    }
    for job, (how, said) in expected.items():
        assert job.error.startswith(f"lost: the run's process ended with {how}"), job.error
        assert said in job.error.split("stderr:", 1)[1]
        status, error = stored(store_path, read_only, job.run_id)
        assert status == "failed" and error == job.error
