"""The scheduler: one per process, started lazily, stopped at exit.

Its one thread (the dispatcher) starts queued jobs in order — priority (higher
first), then submission order — as soon as their ``after`` runs completed, a
concurrency slot is free, and the GPUs they ask for can be leased. Leases are
file locks shared by every process on the machine (``leases.LeaseManager``),
so two notebooks never get the same GPU. Attempts run on an executor
(``thread`` or ``process``); when one ends the scheduler retries it (with
backoff) or records the final status.

Every state change is written to the store's ``events`` table; queued runs are
in ``runs`` (status ``queued``) with their function saved in ``payloads``, so a
later process can ``resubmit`` what a dead one left queued.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import threading
import time
from typing import Any

from ..collectors.git import git_info
from ..config import Settings, get_settings
from ..exceptions import ConfigError, GpuUnavailable, MissingDependency
from ..models import RunStatus
from ..tracking.run import new_run_id
from .job import Job
from .records import RunRecords
from .spec import ExperimentSpec

__all__ = ["Scheduler", "get_scheduler", "stop_scheduler"]

log = logging.getLogger("notebook_exp.scheduler")

RECOVER_EVERY = 5.0  # seconds between checks for runs whose process died (while work is pending)
GPU_POLL = 0.05  # how often jobs waiting for a GPU leased by another process look again
# (a failing try costs ~1-3 ms of CPU; a GPU freed in this process is taken at once)


class Scheduler:
    """Queue, leases and executors of one process. Use ``get_scheduler()``."""

    def __init__(self, settings: Settings | None = None, inventory=None, max_concurrent: int | None = None):
        from ..store import get_store

        self.settings = settings or get_settings()
        self.store = get_store(self.settings.store_path, self.settings.lock_timeout)
        self.records = RunRecords(self.store)
        self.max_concurrent = max_concurrent or self.settings.max_concurrent or max(2, os.cpu_count() or 2)
        self._inventory = inventory
        self._leases = None
        self._cond = threading.Condition(threading.RLock())
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._held: dict[str, Any] = {}  # run_id -> Lease
        self._to_start: list[tuple[Job, Any]] = []  # launched under the lock, started outside it
        self._executors: dict[str, Any] = {}
        self._stopping = False
        self._last_recover = 0.0
        self._thread = threading.Thread(target=self._loop, name="notebook_exp-scheduler", daemon=True)
        self._thread.start()

    # -- resources ----------------------------------------------------------
    @property
    def inventory(self):
        if self._inventory is None:
            from .gpus import GpuInventory

            self._inventory = GpuInventory.detect(
                self.settings.fake_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), self.settings.reserved_gpus
            )
        return self._inventory

    @property
    def leases(self):
        if self._leases is None:
            from .leases import LeaseManager

            self._leases = LeaseManager(self.inventory, self.settings.lock_dir)
        return self._leases

    def executor(self, name: str):
        if name not in self._executors:
            if name == "thread":
                from .executors.thread import ThreadExecutor

                self._executors[name] = ThreadExecutor(self)
            elif name == "process":
                from .executors.process import ProcessExecutor

                self._executors[name] = ProcessExecutor(self)
            else:
                try:
                    import ray  # noqa: F401
                except ImportError:
                    raise MissingDependency("ray", "ray") from None
                raise ConfigError("executor 'ray' is not available yet in this version")
        return self._executors[name]

    # -- submitting ---------------------------------------------------------
    def submit(self, spec: ExperimentSpec) -> Job:
        """Queue a validated spec; returns its ``Job`` at once."""
        if self._stopping:
            raise ConfigError("the scheduler is stopped")
        self.executor(spec.executor)  # unknown or unavailable executors fail here
        if spec.gpus and not spec.wait_for_gpus:
            self.leases.check(spec.gpus, spec.gpu_memory)
        if spec.executor == "process":
            from .executors.process import check_picklable

            check_picklable(spec.fn)
        if not self.store.ready:
            self.store.ensure()
        git = git_info() if self.settings.capture_git else None  # cached: a sweep runs git once
        with self._cond:
            job = Job(spec, new_run_id(), self, next(self._seq))
            for dep in spec.after:
                if dep == job.run_id:
                    raise ConfigError("a run cannot wait for itself")
            self._jobs[job.run_id] = job
            self.records.queued(job, git)
            self.records.payload(job)
            heapq.heappush(self._heap, (-spec.priority, job.seq, job))
            self._cond.notify_all()
        return job

    # -- queries ------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def job(self, run_id: str) -> Job | None:
        return self._jobs.get(run_id)

    def positions(self) -> dict[str, int]:
        """Queue position (0 = next to start) of every queued job, computed once."""
        with self._cond:
            ordered = sorted(
                (item for item in self._heap if item[2].status == RunStatus.QUEUED), key=lambda item: item[:2]
            )
        return {job.run_id: index for index, (_p, _s, job) in enumerate(ordered)}

    def position(self, job: Job) -> int | None:
        return self.positions().get(job.run_id) if job.status == RunStatus.QUEUED else None

    # -- the dispatcher -----------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping and not self._heap:
                    return
                wait = self._dispatch()
                wait = min(wait, self._check_deadlines())
                self._maybe_recover()
                to_start, self._to_start = self._to_start, []
                if not to_start:
                    self._cond.wait(wait)
            for job, lease in to_start:  # thread and process starts take a while: not under the lock
                self._start(job, lease)

    def _maybe_recover(self) -> None:
        """While runs are pending, look for runs of dead processes every few seconds,
        so a killed holder's run is marked lost while others wait for its GPU."""
        now = time.monotonic()
        if (self._heap or self._running) and now - self._last_recover >= RECOVER_EVERY:
            self._last_recover = now
            self.store.recover()

    def _dispatch(self) -> float:
        """Start every job that can start; returns how long to sleep at most."""
        wait = 1.0
        now = time.monotonic()
        blocked = []
        while self._heap and len(self._running) < self.max_concurrent:
            item = heapq.heappop(self._heap)
            job = item[2]
            if job.status != RunStatus.QUEUED:
                continue  # cancelled while queued
            ready, hold = self._readiness(job, now)
            if ready is False:
                continue  # a dependency failed: the job was cancelled
            if ready is None:
                blocked.append(item)
                wait = min(wait, hold)
                continue
            lease = None
            if job.spec.gpus:
                try:
                    lease = self.leases.try_acquire(job.run_id, job.spec.gpus, job.spec.gpu_memory)
                except GpuUnavailable as exc:
                    self._finish(job, RunStatus.FAILED, str(exc))
                    continue
                if lease is None:
                    blocked.append(item)
                    wait = min(wait, GPU_POLL)
                    continue
            self._launch(job, lease)
        for item in blocked:
            heapq.heappush(self._heap, item)
        return wait

    def _readiness(self, job: Job, now: float) -> tuple[bool | None, float]:
        """True: may start; None: not yet (and how long to wait); False: never."""
        if job.not_before > now:
            return None, job.not_before - now
        for dep in job.spec.after:
            status, error = self._status_of(dep)
            if status == RunStatus.COMPLETED:
                continue
            if status is None or status.terminal:
                reason = f"dependency {dep} {status.value if status else 'is unknown'}"
                self._finish(job, RunStatus.CANCELLED, reason + (f": {error.strip().splitlines()[-1]}" if error else ""))
                return False, 0
            return None, 1.0
        return True, 0

    def _status_of(self, run_id: str) -> tuple[RunStatus | None, str | None]:
        job = self._jobs.get(run_id)
        if job is not None:
            return job.status, job.error
        try:
            frame = self.store.query_arrow("SELECT status, error FROM runs WHERE run_id = ?", [run_id])
        except Exception:  # noqa: BLE001 - treat as not known yet
            return None, None
        if frame.num_rows == 0:
            return None, None
        return RunStatus(frame.column("status")[0].as_py()), frame.column("error")[0].as_py()

    def _launch(self, job: Job, lease) -> None:
        job.attempts += 1
        job.gpus = list(lease.gpus) if lease is not None else []
        job.deadline = time.monotonic() + job.spec.timeout if job.spec.timeout else None
        job.stop_reason = None
        self._running[job.run_id] = job
        if lease is not None:
            self._held[job.run_id] = lease
        self._to_start.append((job, lease))

    def _start(self, job: Job, lease) -> None:
        try:
            self.executor(job.spec.executor).start(job, lease)
        except Exception as exc:  # noqa: BLE001 - a run that cannot start fails, the queue goes on
            log.exception("starting run %s failed", job.run_id)
            self.attempt_ended(job, RunStatus.FAILED, f"could not start: {exc!r}", None)

    def _check_deadlines(self) -> float:
        now, wait = time.monotonic(), 1.0
        for job in list(self._running.values()):
            if job.deadline is None or job.stop_reason:
                continue
            if now >= job.deadline:
                self.executor(job.spec.executor).stop(job, "timeout")
            else:
                wait = min(wait, job.deadline - now)
        return wait

    # -- attempts ending ----------------------------------------------------
    def running(self, job: Job) -> None:
        """Called by executors when the attempt's code starts."""
        job.started_at = job.started_at or time.time()
        job._set_status(RunStatus.RUNNING)

    def attempt_ended(
        self, job: Job, status: RunStatus, error: str | None, result: Any, run=None, recorded: bool = False
    ) -> None:
        """Called by executors (from their thread) when an attempt ends. ``run`` is
        the attempt's Run when it lives in this process; ``recorded`` says the
        run's own process already stored this outcome.

        The concurrency slot is free at once; the job's new status, its lease and
        (for a retry) its place back in the queue follow once the store has the
        outcome, so the GPU changes hands only after the run's end is recorded.
        """
        retry = (
            status == RunStatus.FAILED
            and job.stop_reason is None
            and job.attempts <= job.spec.retries
            and not self._stopping
        )
        with self._cond:
            self._running.pop(job.run_id, None)
            self._cond.notify_all()

        def on_recorded() -> None:
            lease = self._held.pop(job.run_id, None)
            if lease is not None:
                lease.release()
            with self._cond:
                if retry:
                    delay = job.spec.retry_backoff * 2 ** (job.attempts - 1) * random.uniform(0.8, 1.2)
                    job.not_before = time.monotonic() + delay
                    job._set_status(RunStatus.QUEUED, error)
                    heapq.heappush(self._heap, (-job.spec.priority, job.seq, job))
                else:
                    job._result = result
                    job._set_status(status, error)
                self._cond.notify_all()

        if run is not None:
            run.end(status, error, requeue=retry, on_recorded=on_recorded)
        elif retry:
            self.records.requeued(job, error, on_commit=on_recorded)
        elif not recorded:
            self.records.final(job, status, error, on_commit=on_recorded)
        else:
            on_recorded()
        if retry:
            self.records.clear_attempt_data(job)

    def _finish(self, job: Job, status: RunStatus, error: str | None) -> None:
        """End a job that never started (cancelled while queued, dependency failed).
        Its status changes now; ``wait()`` returns once the store has it."""
        job._set_status(status, error, done=False)
        self.records.final(job, status, error, on_commit=job._finalize)
        self._cond.notify_all()

    # -- cancelling and stopping ----------------------------------------------
    def cancel(self, job: Job, reason: str = "cancelled by user") -> bool:
        with self._cond:
            if job.status.terminal:
                return False
            if job.status == RunStatus.QUEUED and job.run_id not in self._running:
                self._finish(job, RunStatus.CANCELLED, reason)
                return True
        self.executor(job.spec.executor).stop(job, "cancel")
        return True

    def stop(self, cancel: bool = True, timeout: float | None = 30) -> None:
        """Stop the scheduler (idempotent). With ``cancel`` (the default), queued runs
        are cancelled and running ones stopped; otherwise queued and running runs
        are drained first. Waits up to ``timeout`` seconds for runs to end."""
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                return
            if cancel:
                for _p, _s, job in list(self._heap):
                    if job.status == RunStatus.QUEUED:
                        self._finish(job, RunStatus.CANCELLED, "cancelled: the scheduler stopped")
                self._heap.clear()
                running = list(self._running.values())
            else:
                running = []
            self._stopping = True
            self._cond.notify_all()
        for job in running:
            self.cancel(job, "cancelled: the scheduler stopped")
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in list(self._jobs.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job._done.wait(left)
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for executor in self._executors.values():
            executor.close()
        if self._leases is not None:
            self._leases.release_all()


_scheduler: Scheduler | None = None
_scheduler_lock = threading.Lock()


def get_scheduler() -> Scheduler:
    """This process's scheduler, started on first use and stopped at exit."""
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None or _scheduler._stopping:
            from .. import _exit

            _exit.on_shutdown(stop_scheduler, order=10)  # first: no new runs start while others end
            _scheduler = Scheduler()
        return _scheduler


def stop_scheduler(cancel: bool = True, timeout: float | None = 30) -> None:
    """Stop this process's scheduler if it runs (idempotent)."""
    global _scheduler
    with _scheduler_lock:
        scheduler, _scheduler = _scheduler, None
    if scheduler is not None:
        scheduler.stop(cancel=cancel, timeout=timeout)
