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
later process can ``resubmit`` what a dead one left queued. Each run's row names
this scheduler as its owner (``runs.owner_*``), and other processes ask it to
cancel or reorder its runs through the store (``control``): the dispatcher
reads their requests on its rounds and answers them like ``cancel`` and
``set_priority`` calls made here.

The dispatcher's loop lives in ``dispatcher``: it never does store I/O under
the scheduler's lock, and an unexpected error while it handles a job fails
that job alone. ``after`` ids are checked at submit: one that is neither a job
here nor a run in the store is refused.
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

from ..collectors.base import RunContext
from ..collectors.registry import RunCollectors
from ..config import Settings, get_settings
from ..exceptions import ConfigError
from ..models import RunStatus
from ..tracking.run import new_run_id
from ._records import JobRecords
from .control import ControlInbox, ControlResult, act, check_priority, requester
from .deps import LOOKUP_TIMEOUT, DependencyStatuses
from .dispatcher import DispatchLoop
from .job import Job
from .spec import ExperimentSpec, check_sinks

__all__ = ["Scheduler", "get_scheduler", "running_scheduler", "stop_scheduler"]

log = logging.getLogger("notebook_exp.scheduler")


class Scheduler(DispatchLoop):
    """Queue, leases and executors of one process. Use ``get_scheduler()``.

    ``inventory`` is the ``GpuInventory`` to lease from (default: detected from
    the settings); tests pass fake GPUs, or a subclass that fails on purpose.
    ``max_concurrent`` caps the attempts running at once.
    """

    def __init__(self, settings: Settings | None = None, inventory=None, max_concurrent: int | None = None):
        from ..store import get_store

        self.settings = settings or get_settings()
        self.store = get_store(self.settings.store_path, settings=self.settings)
        self.records = JobRecords(self.store)
        self.dependencies = DependencyStatuses(self.store)
        self.control = ControlInbox(self.store)
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
            from ..inventory import GpuInventory

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
            from .executors import make

            self._executors[name] = make(name, self)  # ray: MissingDependency without the extra
        return self._executors[name]

    # -- submitting ---------------------------------------------------------
    def submit(self, spec: ExperimentSpec) -> Job:
        """Queue a validated spec; returns its ``Job`` at once.

        Nothing is queued when it raises: ``ConfigError`` for an ``after`` id that is
        neither a job here nor a run in the store, or what ``process`` cannot ship;
        ``SinkError`` for a ``Sink`` instance that retries would share;
        ``GpuUnavailable`` for more GPUs than the machine has (unless ``wait_for_gpus``),
        and for ``gpu_ids`` naming a GPU the machine does not have or that is reserved.
        """
        if self._stopping:
            raise ConfigError("the scheduler is stopped")
        check_sinks(spec.sinks, retries=spec.retries)
        executor = self.executor(spec.executor)  # unknown or unavailable executors fail here
        executor.check(spec)  # what it cannot run (ray: gpu_ids, shipping, options, the cluster's nodes)
        pinned = getattr(spec, "gpu_ids", None)
        if pinned and not spec.gpus:
            spec = spec.model_copy(update={"gpus": len(pinned)})  # pinned without a count: all of them
        if pinned:
            self.leases.check_pinned(pinned, spec.gpus)  # even with wait_for_gpus: no wait brings a GPU back
        if spec.gpus and not spec.wait_for_gpus and executor.local_leases:
            self.leases.check(spec.gpus, spec.gpu_memory, pinned)
        if spec.executor == "process":
            from .executors.process import check_picklable, check_sinks_picklable

            check_picklable(spec.fn)
            check_sinks_picklable(spec.sinks)
        self.store.ensure(timeout=0)  # a held store: the run is queued anyway, its rows wait in the writer
        self._check_dependencies(spec)
        if spec.resume:
            spec = self._resumable(spec)
        job = Job(spec, spec.resume or new_run_id(), self, next(self._seq))
        if job.run_id in spec.after:
            raise ConfigError("a run cannot wait for itself")
        collectors, fields, info = self._collect(job) if not spec.resume else (None, {}, None)
        with self._cond:
            self._jobs[job.run_id] = job
            self.records.queued(job, fields, info)
            self.control.claim(job)
            self.records.payload(job)
            heapq.heappush(self._heap, (-spec.priority, job.seq, job))
            self._cond.notify_all()
        if collectors is not None:
            collectors.report()
        return job

    def _resumable(self, spec: ExperimentSpec) -> ExperimentSpec:
        """``ConfigError`` unless the run to resume is stored and no live process owns it
        (nor a job of this scheduler); the spec takes its name and experiment."""
        from ..tracking.resume import merged
        from ..tracking.run import resumable

        if spec.resume in self._jobs and not self._jobs[spec.resume].done:
            raise ConfigError(f"run {spec.resume!r} is a job of this scheduler that has not ended")
        stored = resumable(spec.resume, self.store, self.settings)
        merged(stored, spec.name, spec.experiment, {}, [])  # a different name or experiment: ConfigError
        return spec.model_copy(update={"name": stored.name, "experiment": stored.experiment})

    def _collect(self, job: Job) -> tuple[RunCollectors, dict, dict]:
        """What the job's collectors record at submission (git, environment, source: cached,
        so a sweep runs git once); a collector that fails is noted, never raised."""
        collectors = RunCollectors(job.run_id, self.settings, self.store.records)
        context = RunContext(job.run_id, job.name, job.experiment, self.settings, fn=job.spec.fn,
                             source=job.spec.source, scheduled=True)
        fields, info = collectors.collect(context)
        return collectors, fields, info

    def _check_dependencies(self, spec: ExperimentSpec) -> None:
        """``ConfigError`` for an ``after`` id that is neither a job here nor a run in the
        store; one the store cannot tell about now (held by another process) is accepted."""
        for dep in spec.after:
            if dep not in self._jobs and self.dependencies.exists(dep, LOOKUP_TIMEOUT) is False:
                raise ConfigError(
                    f"unknown run id {dep!r} in after=: it is neither a run of this scheduler "
                    f"nor a run in the store {self.store.path}"
                )

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

    def is_running(self, job: Job) -> bool:
        """Whether an attempt of ``job`` holds a slot (launched, starting or running)."""
        with self._cond:
            return job.run_id in self._running or job.status == RunStatus.RUNNING

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
        A job the scheduler failed meanwhile (see ``_fail``) keeps that outcome.
        """
        failed_already = job.status.terminal
        if failed_already:
            status, error, result, recorded = job.status, job.error, None, False
        elif status == RunStatus.CANCELLED and job.cancel_reason:
            error = job.cancel_reason  # who asked, rather than the executor's generic reason
        retry = (
            status == RunStatus.FAILED
            and not failed_already
            and job.stop_reason is None
            and job.attempts <= job.spec.retries
            and not self._stopping
        )
        with self._cond:
            self._running.pop(job.run_id, None)
            self._cond.notify_all()

        def on_recorded() -> None:
            self._release(job)
            with self._cond:
                if job.status.terminal:
                    pass  # the scheduler failed it meanwhile (see _fail): that outcome stays
                elif retry:
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
            self.control.requeued(job)

    def _finish(self, job: Job, status: RunStatus, error: str | None) -> None:
        """End a job from outside its attempt (cancelled while queued, a dependency
        failed, a scheduler error). Its status changes now; ``wait()`` returns once the
        store has it, or at once if the store cannot take it."""
        job._set_status(status, error, done=False)
        try:
            self.records.final(job, status, error, on_commit=job._finalize)
        except Exception:  # noqa: BLE001 - e.g. the store's writer stopped: the job still ends
            log.exception("recording the end of run %s failed", job.run_id)
            job._finalize()
        self._cond.notify_all()

    # -- control: cancelling, priorities, requests ------------------------------
    def cancel(self, job: Job, reason: str | None = None, *, by: str | None = None) -> bool:
        """Cancel ``job``: a queued one ends at once, a running one is stopped by its
        executor (within ``cancel_grace``). False if it already ended.

        Without ``reason`` this is someone's request: a ``cancel`` event names who
        asked (``by``, default this process: ``user@host pid N (program)``) and the
        run's error says "cancelled by" ``by`` (by default "cancelled by user"). ``reason`` is the scheduler's own
        (it stops), recorded as the error without a request event."""
        with self._cond:
            if job.status.terminal:
                return False
            queued = job.status == RunStatus.QUEUED and job.run_id not in self._running
            if reason is None:
                who = by or requester()
                reason = f"cancelled by {by}" if by else "cancelled by user"  # the event names this process
                stopping = "" if queued else f"; stopping it (cancel_grace {self.settings.cancel_grace:g} s)"
                self.records.event(job, "cancel", f"by {who}{stopping}")
            if queued:
                self._finish(job, RunStatus.CANCELLED, reason)
                return True
            job.cancel_reason = job.cancel_reason or reason
        self.executor(job.spec.executor).stop(job, "cancel")
        return True

    def set_priority(self, job: Job, priority: int, *, by: str | None = None) -> tuple[bool, str]:
        """Give queued ``job`` a new priority (0-10): it moves in the queue at once, a
        ``priority`` event names who asked. Returns ``(done, message)``; a job that
        runs or ended keeps its priority (``done`` False). ``ConfigError`` for a bad value."""
        priority = check_priority(priority)
        who = by or requester()
        with self._cond:
            if job.status != RunStatus.QUEUED or job.run_id in self._running:
                state = "already " + job.status.value if job.status.terminal else "running"
                return False, f"run {job.run_id} is {state}: a priority only orders queued runs"
            old = job.spec.priority
            job.spec = job.spec.model_copy(update={"priority": priority})
            self._heap = [(-priority, seq, item) if item is job else (p, seq, item) for p, seq, item in self._heap]
            heapq.heapify(self._heap)
            self.control.priority_changed(job, old, priority, who)
            self._cond.notify_all()
        return True, f"run {job.run_id}: priority {old} -> {priority}, now at position {self.position(job)}"

    def _serve_requests(self) -> None:
        """Answer the control requests other processes left for this scheduler's runs
        (``control``); called by the dispatcher, off the lock, each round."""
        if not self.control.due():
            return
        with self._cond:
            watched = self.control.watched(self._jobs.values())
        for request in self.control.take(watched):
            job = self._jobs.get(request.run_id)
            try:
                if job is None:
                    raise LookupError("not a job of this scheduler")
                result = act(self, job, request.action, request.value, request.requested_by, request)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the others
                log.exception("answering the %s request %s failed", request.action, request.request_id)
                result = ControlResult(request.run_id, request.action, "refused", f"the owner failed: {exc!r}",
                                       request.requested_by, request.request_id)
            self.control.answer(request, result)

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


def running_scheduler() -> Scheduler | None:
    """This process's scheduler if one runs (none is started)."""
    scheduler = _scheduler
    return scheduler if scheduler is not None and not scheduler._stopping else None


def stop_scheduler(cancel: bool = True, timeout: float | None = 30) -> None:
    """Stop this process's scheduler if it runs (idempotent)."""
    global _scheduler
    with _scheduler_lock:
        scheduler, _scheduler = _scheduler, None
    if scheduler is not None:
        scheduler.stop(cancel=cancel, timeout=timeout)
