"""The thread executor: the run executes in this process (the notebook's kernel).

It sees the notebook's namespace and objects as they are. Cancellation and
timeouts are cooperative: the run's next ``run.log`` raises ``RunCancelled`` /
``RunTimedOut``. Code that never logs gets the same exception injected into
its thread after ``cancel_grace`` seconds (raised at its next Python bytecode:
a thread stuck inside a C call cannot be stopped; use ``executor="process"``).
"""

from __future__ import annotations

import ctypes
import threading

from ...models import RunStatus
from ..output import route, unroute
from .base import Executor, stop_exception, stopped_outcome


class ThreadExecutor(Executor):
    """Runs each attempt on its own thread of this process."""

    name = "thread"

    def __init__(self, scheduler) -> None:
        super().__init__(scheduler)
        self._threads: dict[str, threading.Thread] = {}

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
                            settings=scheduler.settings, columns={"attempts": job.attempts, "gpus": job.gpus},
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
            scheduler.records.output(job)
            scheduler.attempt_ended(job, status, error, result, run=run)

    def stop(self, job, reason: str) -> None:
        if job.stop_reason:
            return
        job.stop_reason = reason
        exc = stop_exception(job, reason)
        if job.run is not None:
            job.run.interrupt(exc)
        timer = threading.Timer(self.scheduler.settings.cancel_grace, self._force, args=(job, type(exc)))
        timer.daemon = True
        timer.start()

    def _force(self, job, exc_type: type[BaseException]) -> None:
        """The fallback for code that never logs: raise in the run's thread."""
        thread = self._threads.get(job.run_id)
        if thread is None or job.done or thread.ident is None:
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
