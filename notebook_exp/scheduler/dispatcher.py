"""The scheduler's dispatcher: the one thread that starts queued jobs.

Each round it reads, outside the scheduler's lock, the status of ``after`` runs
that belong to other processes (see ``deps``) and answers the control requests
other processes left for its runs (see ``control``: a ``stat`` of the store's
doorbell, and one short read when it rang); then, under the lock, it starts
every job whose dependencies completed and whose GPUs can be leased, in queue
order, and stops attempts past their timeout; then it sleeps until something
changes, at most ``CONTROL_EVERY`` seconds while it has jobs, so a request is
seen within that. Starting an executor happens after the lock is let go.

It cannot die: an unexpected error while it handles a job fails that job alone
(status failed, with the reason; the traceback is logged) and the queue goes
on. An error it cannot pin on one job is logged and the next round goes on.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
import traceback
from typing import Any

from ..exceptions import GpuUnavailable
from ..models import RunStatus
from .control import CONTROL_EVERY
from .deps import LOOKUP_EVERY, LOOKUP_TIMEOUT
from .job import Job

__all__ = ["DispatchLoop"]

log = logging.getLogger("notebook_exp.scheduler")

RECOVER_EVERY = 5.0  # seconds between checks for runs whose process died (while work is pending)
GPU_POLL = 0.05  # how often jobs waiting for a GPU leased by another process look again
# (a failing try costs ~1-3 ms of CPU; a GPU freed in this process is taken at once)
ERROR_PAUSE = 0.1  # seconds the dispatcher pauses after an error it could not pin on one job


class DispatchLoop:
    """The dispatcher half of ``Scheduler``, which mixes it in: it works on the
    scheduler's queue (``_heap``), slots (``_running``), leases (``_held``) and
    dependency statuses, under the scheduler's lock (``_cond``)."""

    # -- the dispatcher -----------------------------------------------------
    def _loop(self) -> None:
        while self._cycle():
            pass

    def _cycle(self) -> bool:
        """One round: read dependency statuses (off the lock), start what can start,
        stop what ran out of time; wait. False once stopped and drained. An error it
        cannot pin on one job is logged and the next round goes on."""
        to_start: list[tuple[Job, Any]] = []
        try:
            self._look_up_dependencies()
            self._serve_requests()
            with self._cond:
                if self._stopping and not self._heap:
                    return False
                wait = min(self._dispatch(), self._check_deadlines())
                self._maybe_recover()
                if self._heap or self._running:
                    wait = min(wait, CONTROL_EVERY)  # the next look at the doorbell
                to_start, self._to_start = self._to_start, []
                if not to_start:
                    self._cond.wait(wait)
        except Exception:  # noqa: BLE001 - the dispatcher must outlive any one failure
            log.exception("the scheduler's dispatcher hit an unexpected error; it goes on")
            time.sleep(ERROR_PAUSE)
        for job, lease in to_start:  # thread and process starts take a while: not under the lock
            self._start(job, lease)
        return True

    def _look_up_dependencies(self) -> None:
        """Read from the store, outside the lock, the status of ``after`` runs of queued
        jobs that are not this scheduler's (at most every ``LOOKUP_EVERY`` s each)."""
        with self._cond:
            wanted = [
                dep for _p, _s, job in self._heap if job.status == RunStatus.QUEUED
                for dep in job.spec.after if dep not in self._jobs
            ]
            due = self.dependencies.due(wanted)
        if due:
            self.dependencies.read(due, LOOKUP_TIMEOUT)

    def _maybe_recover(self) -> None:
        """While runs are pending, look for runs of dead processes every few seconds,
        so a killed holder's run is marked lost while others wait for its GPU."""
        now = time.monotonic()
        if (self._heap or self._running) and now - self._last_recover >= RECOVER_EVERY:
            self._last_recover = now
            try:
                self.store.recover()  # queued for the writer: no I/O here
            except Exception:  # noqa: BLE001 - try again next time
                log.exception("queueing the check for lost runs failed")

    def _dispatch(self) -> float:
        """Start every job that can start; returns how long to sleep at most.

        Jobs are tried in queue order, and a later one may start when an earlier
        one cannot (it waits for a dependency, or for more GPUs than are free).
        But once a job found too few GPUs, no later job asking as many or more
        starts in this round: GPUs freed by another thread while the round went
        on would otherwise go to whichever job happened to ask next rather than
        to the first in the queue.
        """
        wait = 1.0
        now = time.monotonic()
        blocked = []
        short = math.inf  # the fewest GPUs a job of this round asked for and did not get
        try:
            while self._heap and len(self._running) < self.max_concurrent:
                item = heapq.heappop(self._heap)
                job = item[2]
                if job.status != RunStatus.QUEUED:
                    continue  # cancelled while queued
                try:
                    hold, starved = self._try_launch(job, now, short)
                except Exception as exc:  # noqa: BLE001 - fail this job, not the queue
                    self._fail(job, "dispatching the run", exc)
                    continue
                if hold is not None:
                    blocked.append(item)
                    wait = min(wait, hold)
                    if starved and not job.spec.gpu_memory and not getattr(job.spec, "gpu_ids", None):
                        short = min(short, job.spec.gpus)  # a pinned or memory-bound ask says less
        finally:
            for item in blocked:
                heapq.heappush(self._heap, item)
        return wait

    def _try_launch(self, job: Job, now: float, short: float = math.inf) -> tuple[float | None, bool]:
        """Launch ``job`` if it can start now.

        Returns ``(None, False)`` once it is launched or ended (it will never
        start), else how long to wait before trying again and whether it waits
        for GPUs: its GPUs are taken, or a job ahead of it asked for ``short``
        GPUs, no more than it needs, and did not get them."""
        ready, hold = self._readiness(job, now)
        if ready is False:
            return None, False  # a dependency failed: the job was cancelled
        if ready is None:
            return hold, False
        lease = None
        if job.spec.gpus and self.executor(job.spec.executor).local_leases:  # ray: its worker leases on its node
            if job.spec.gpus >= short:
                return GPU_POLL, True
            try:
                lease = self.leases.try_acquire(job.run_id, job.spec.gpus, job.spec.gpu_memory,
                                                getattr(job.spec, "gpu_ids", None))
            except GpuUnavailable as exc:
                self._finish(job, RunStatus.FAILED, str(exc))
                return None, False
            if lease is None:
                return GPU_POLL, True
        self._launch(job, lease)
        return None, False

    def _readiness(self, job: Job, now: float) -> tuple[bool | None, float]:
        """True: may start; None: not yet (and how long to wait); False: never.

        A dependency that is queued or running, or whose status cannot be read yet,
        is waited for; one that failed or was cancelled cancels the job."""
        if job.not_before > now:
            return None, job.not_before - now
        for dep in job.spec.after:
            status, error = self._status_of(dep)
            if status == RunStatus.COMPLETED:
                continue
            if status is not None and status.terminal:
                reason = f"dependency {dep} {status.value}"
                self._finish(job, RunStatus.CANCELLED, reason + (f": {error.strip().splitlines()[-1]}" if error else ""))
                return False, 0
            return None, LOOKUP_EVERY
        return True, 0

    def _status_of(self, run_id: str) -> tuple[RunStatus | None, str | None]:
        """A job's status, or what was last read from the store (no I/O here)."""
        job = self._jobs.get(run_id)
        if job is not None:
            return job.status, job.error
        return self.dependencies.get(run_id)

    def _launch(self, job: Job, lease) -> None:
        if lease is not None:
            self._held[job.run_id] = lease
        job.attempts += 1
        job.gpus = list(lease.gpus) if lease is not None else []
        job.deadline = time.monotonic() + job.spec.timeout if job.spec.timeout else None
        job.stop_reason = None
        self._running[job.run_id] = job
        self._to_start.append((job, lease))

    def _start(self, job: Job, lease) -> None:
        try:
            self.executor(job.spec.executor).start(job, lease)
        except Exception as exc:  # noqa: BLE001 - a run that cannot start fails, the queue goes on
            log.exception("starting run %s failed", job.run_id)
            try:
                self.attempt_ended(job, RunStatus.FAILED, f"could not start: {exc!r}", None)
            except Exception as inner:  # noqa: BLE001
                self._fail(job, "ending a run that could not start", inner)

    def _check_deadlines(self) -> float:
        now, wait = time.monotonic(), 1.0
        for job in list(self._running.values()):
            if job.deadline is None or job.stop_reason or job.status.terminal:
                continue
            if now >= job.deadline:
                try:
                    self.executor(job.spec.executor).stop(job, "timeout")
                except Exception as exc:  # noqa: BLE001 - fail this job, not the queue
                    self._fail(job, "stopping the run at its timeout", exc, live=True)
            else:
                wait = min(wait, job.deadline - now)
        return wait

    def _fail(self, job: Job, doing: str, exc: BaseException, live: bool = False) -> None:
        """``doing`` something for ``job`` raised ``exc``: fail that job alone, with the
        reason, and log the traceback. A job whose attempt has not started gives back
        its slot and lease now; a ``live`` attempt keeps them until it really ends."""
        log.error("run %s: unexpected error while %s", job.run_id, doing, exc_info=exc)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with self._cond:
            if job.status.terminal:
                return
            if not live:
                self._running.pop(job.run_id, None)
                self._to_start = [item for item in self._to_start if item[0] is not job]
                self._release(job)
            self._finish(job, RunStatus.FAILED, f"scheduler error while {doing}: {exc!r}\n{trace}")

    def _release(self, job: Job) -> None:
        """Give back the job's lease, if it holds one."""
        lease = self._held.pop(job.run_id, None)
        if lease is not None:
            try:
                lease.release()
            except Exception:  # noqa: BLE001 - the lock files go when this process does
                log.exception("releasing the GPUs of run %s failed", job.run_id)
