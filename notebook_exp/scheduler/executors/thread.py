"""The thread executor: the run executes in this process (the notebook's kernel).

It sees the notebook's namespace and objects as they are. Cancellation and
timeouts are cooperative: the run's next ``run.log`` raises ``RunCancelled`` /
``RunTimedOut``. Code that never logs gets the same exception injected into
its thread after ``cancel_grace`` seconds (raised at its next Python bytecode:
a thread stuck inside a C call cannot be stopped; use ``executor="process"``).

The executor owns its threads: each attempt's run thread and the force-stop
timer armed by ``stop``. A timer is cancelled as soon as its attempt ends;
``close()`` (when the scheduler stops) forces at once what ``stop`` asked for
and waits, within a bound, for those threads to end.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

from ...models import RunStatus
from .._output import route, unroute
from .base import CLOSE_TIMEOUT, Executor, stop_exception, stopped_outcome

log = logging.getLogger("notebook_exp.scheduler")


class ThreadExecutor(Executor):
    """Runs each attempt on its own thread of this process."""

    name = "thread"

    def __init__(self, scheduler) -> None:
        super().__init__(scheduler)
        self._threads: dict[str, threading.Thread] = {}
        self._timers: dict[str, tuple[threading.Timer, object, type[BaseException]]] = {}
        self._lock = threading.Lock()

    def start(self, job, lease) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name=f"notebook_exp-run[{job.run_id[:8]}]", daemon=True)
        self._threads[job.run_id] = thread
        thread.start()

    def _run(self, job) -> None:
        from ...tracking.run import outcome, start_run

        scheduler, spec = self.scheduler, job.spec
        run, status, error, result = None, RunStatus.FAILED, None, None
        route(job)
        try:
            run = start_run(job.name, job.experiment, spec.params, spec.tags, spec.sinks, run_id=job.run_id,
                            resume=bool(spec.resume), capture=spec.capture, settings=scheduler.settings,
                            columns={"attempts": job.attempts, "gpus": job.gpus},
                            gpu_inventory=scheduler.inventory if job.gpus else None)
            run.gpus = list(job.gpus)
            run.device = f"cuda:{scheduler.inventory.cuda_ordinal(job.gpus[0])}" if job.gpus else "cpu"
            job.run = run
            scheduler.running(job)
            if job.stop_reason:
                raise stop_exception(job, job.stop_reason)
            result = spec.fn(run, **spec.params)
            status = RunStatus.COMPLETED
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
            status, error = stopped_outcome(job, job.stop_reason) if job.stop_reason else outcome(exc)
        finally:
            unroute()
            self._threads.pop(job.run_id, None)
            self._disarm(job)
            scheduler.records.output(job)
            scheduler.attempt_ended(job, status, error, result, run=run)

    def stop(self, job, reason: str) -> None:
        if job.stop_reason:
            return
        exc = self._interrupt(job, reason)
        timer = threading.Timer(self.scheduler.settings.cancel_grace, self._force, args=(job, type(exc)))
        timer.name = f"notebook_exp-run-stop[{job.run_id[:8]}]"
        timer.daemon = True
        with self._lock:
            self._timers[job.run_id] = (timer, job, type(exc))
        timer.start()
        if job.done or job.run_id not in self._threads:  # the attempt ended meanwhile
            self._disarm(job)

    def _interrupt(self, job, reason: str) -> BaseException:
        """Record why ``job`` stops and make its run's next ``log`` raise; returns the exception."""
        job.stop_reason = reason
        exc = stop_exception(job, reason)
        if job.run is not None:
            job.run.interrupt(exc)
        return exc

    def _disarm(self, job) -> None:
        """Cancel ``job``'s force-stop timer, if one is armed."""
        with self._lock:
            entry = self._timers.pop(job.run_id, None)
        if entry is not None:
            entry[0].cancel()

    def _force(self, job, exc_type: type[BaseException]) -> None:
        """The fallback for code that never logs: raise in the run's thread."""
        with self._lock:
            self._timers.pop(job.run_id, None)
        thread = self._threads.get(job.run_id)
        if thread is None or job.done or thread.ident is None:
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the executor's threads (idempotent): attempts ``stop`` was asked to end are
        forced now rather than at the end of their grace, and their run threads and the
        timers are waited for, at most ``timeout`` seconds in all. An attempt nobody
        asked to stop (``Scheduler.stop(cancel=False)`` ran out of time) goes on."""
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer, job, exc_type in timers:
            timer.cancel()
            self._force(job, exc_type)
        stopping = [
            thread for run_id, thread in list(self._threads.items())
            if getattr(self.scheduler.job(run_id), "stop_reason", None)
        ]
        deadline = time.monotonic() + timeout
        for thread in [timer for timer, _job, _exc in timers] + stopping:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and thread in stopping:
                log.warning("%s did not stop (stuck in a C call?); leaving it behind", thread.name)
