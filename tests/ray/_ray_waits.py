"""Waiting on a job's own events (status, output) in the Ray tests."""

from __future__ import annotations

import threading
import time

from notebook_exp.models import RunStatus


def wait_for(job, predicate, timeout: float = 90.0) -> None:
    """Wait, on the job's own events (status, output), until ``predicate(job)`` holds."""
    changed = threading.Event()
    job.subscribe(lambda _job, _event, _data: changed.set())
    deadline = time.monotonic() + timeout
    while not predicate(job):
        left = deadline - time.monotonic()
        assert left > 0, f"{job!r}: condition not met within {timeout} s; output so far: {job.output!r}"
        changed.wait(left)
        changed.clear()


def wait_running(job, timeout: float = 90.0) -> None:
    wait_for(job, lambda j: j.status == RunStatus.RUNNING or j.done, timeout)
    assert job.status == RunStatus.RUNNING, (job.status, job.error)


def wait_output(job, text: str, timeout: float = 90.0) -> None:
    wait_for(job, lambda j: text in j.output or j.done, timeout)
    assert text in job.output, (job.status, job.error, job.output)
