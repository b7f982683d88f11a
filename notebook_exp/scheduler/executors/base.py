"""The ``Executor`` contract."""

from __future__ import annotations

from typing import Any

from ...exceptions import RunCancelled, RunTimedOut

CLOSE_TIMEOUT = 5.0  # seconds ``close()`` waits for an executor's threads, all together


class Executor:
    """Runs one attempt of a job at a time per call, without blocking the scheduler.

    ``start(job, lease)`` returns at once (the inline executor of
    ``notebook_exp.testing`` is the exception: it runs the attempt before it
    returns); the executor calls ``scheduler.running(job)`` when the run's code
    starts and, exactly once, ``scheduler.attempt_ended(job, status, error,
    result, run=..., recorded=...)`` when the attempt is over. ``stop(job,
    reason)`` ("cancel" or "timeout") asks a running attempt to stop and makes
    sure it does. ``close()``, called once the scheduler stopped (and safe to
    call again), releases the executor's resources: it owns every thread and
    timer it starts, and ends them or waits for them, at most ``timeout``
    seconds in all.
    """

    name = ""
    #: Whether the scheduler leases a job's GPUs on this machine before ``start`` (False for
    #: ``ray``: Ray places the run, and its worker leases the GPUs Ray gave it on its own node).
    local_leases = True

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def check(self, spec) -> None:
        """Refuse (``ConfigError``, ``GpuUnavailable``) what this executor cannot run, at
        submit, before anything is queued. Nothing by default."""

    def start(self, job, lease: Any) -> None:
        raise NotImplementedError

    def stop(self, job, reason: str) -> None:
        raise NotImplementedError

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Nothing to release by default."""


def stop_exception(job, reason: str) -> BaseException:
    """The exception a stopped run sees."""
    if reason == "timeout":
        return RunTimedOut(f"the run passed its {job.spec.timeout:g} s timeout")
    return RunCancelled("cancelled by user")


def stopped_outcome(job, reason: str):
    """Status and reason recorded for a run stopped for ``reason``."""
    from ...models import RunStatus

    if reason == "timeout":
        return RunStatus.FAILED, f"timeout: the run passed its {job.spec.timeout:g} s limit"
    return RunStatus.CANCELLED, "cancelled by user"
