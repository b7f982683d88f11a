"""The inline executor, for tests: each attempt runs to its end inside ``start``.

``start`` is called by the scheduler's dispatcher thread, so attempts run there,
one at a time, in queue order (priority, then submission), and the next starts
only once the previous ended. Nothing runs beside the run's code: no run thread
and no force-stop. Cancellation and timeouts are cooperative only (the run's
next ``run.log`` raises ``RunCancelled`` / ``RunTimedOut``): code that never logs
cannot be stopped, and the dispatcher waits for it.

It is not a name ``submit(executor=...)`` takes: :class:`InlineScheduler` (a
``Scheduler`` whose ``"thread"`` executor is inline) is how it is used, through
``notebook_exp.testing.inline_scheduler()``.
"""

from __future__ import annotations

import threading
import time

from ..core import Scheduler
from .base import CLOSE_TIMEOUT
from .thread import ThreadExecutor

__all__ = ["InlineExecutor", "InlineScheduler"]


class InlineExecutor(ThreadExecutor):
    """Runs each attempt synchronously in the thread that calls ``start``."""

    name = "inline"

    def __init__(self, scheduler) -> None:
        super().__init__(scheduler)
        self._deadlines: dict[str, threading.Timer] = {}

    def start(self, job, lease) -> None:
        if job.deadline is not None:
            timer = threading.Timer(max(0.0, job.deadline - time.monotonic()), self.stop, args=(job, "timeout"))
            timer.name = f"notebook_exp-inline-timeout[{job.run_id[:8]}]"
            timer.daemon = True
            with self._lock:
                self._deadlines[job.run_id] = timer
            timer.start()
        try:
            self._run(job)
        finally:
            with self._lock:
                timer = self._deadlines.pop(job.run_id, None)
            if timer is not None:
                timer.cancel()

    def stop(self, job, reason: str) -> None:
        """Make the run's next ``log`` raise; never raise in the thread that runs it
        (it is the scheduler's dispatcher)."""
        if not job.stop_reason:
            self._interrupt(job, reason)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel the timeout timers and wait for them, at most ``timeout`` seconds."""
        with self._lock:
            timers = list(self._deadlines.values())
            self._deadlines.clear()
        deadline = time.monotonic() + timeout
        for timer in timers:
            timer.cancel()
            timer.join(max(0.0, deadline - time.monotonic()))


class InlineScheduler(Scheduler):
    """A ``Scheduler`` for deterministic tests: its ``"thread"`` runs go through
    :class:`InlineExecutor` (``"process"`` runs still run in a child), one at a
    time (``max_concurrent`` defaults to 1), in queue order.

    With ``wait`` (the default) ``submit`` returns once the job ended, as a call
    would, so ``nx.submit(fn).status`` is already final; retries and ``after``
    work as usual. A submit made from inside a run (the dispatcher's thread)
    only queues, or it would wait for itself. A job that can never start
    (``wait_for_gpus`` on GPUs another process holds forever) blocks its submit.
    """

    def __init__(self, settings=None, inventory=None, max_concurrent: int | None = 1, *, wait: bool = True):
        self.wait_on_submit = wait
        super().__init__(settings, inventory, max_concurrent)

    def executor(self, name: str):
        if name == "thread":
            with self._cond:
                if name not in self._executors:
                    self._executors[name] = InlineExecutor(self)
                return self._executors[name]
        return super().executor(name)

    def submit(self, spec):
        job = super().submit(spec)
        if self.wait_on_submit and threading.current_thread() is not self._thread:
            job.wait()
        return job
