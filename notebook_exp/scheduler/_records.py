"""What the scheduler records about its jobs, in the store's terms: ``JobRecords``
turns a ``Job`` into calls of the store's one writer path (``store.records``),
which holds the SQL. Nothing here waits on the disk."""

from __future__ import annotations

import logging

from ..models import RunStatus
from .job import Job

log = logging.getLogger("notebook_exp.scheduler")

MAX_PAYLOAD = 20_000_000  # bytes of pickled function kept for resubmission


class JobRecords:
    """The scheduler's writes for one store."""

    def __init__(self, store) -> None:
        self.store = store
        self.records = store.records

    def queued(self, job: Job, fields: dict | None = None, info: dict | None = None) -> None:
        """The run's row, status ``queued``, and its ``queued`` event. ``fields`` and
        ``info``: what its collectors recorded (``RunCollectors.collect``); the source
        given with the submission is kept when no collector gives one."""
        spec, fields = job.spec, fields or {}
        if spec.resume:
            self.records.queued_to_resume(job.run_id, executor=spec.executor, priority=spec.priority,
                                          spec=spec.describe(), detail=f"priority {spec.priority}, resuming")
            return
        self.records.queued(
            job.run_id, experiment=job.experiment, name=job.name, params=spec.params, tags=spec.tags,
            executor=spec.executor, priority=spec.priority, source=fields.get("source", spec.source),
            spec=spec.describe(), git=fields.get("git"), info=info,
            detail=f"priority {spec.priority}" + (f", after {', '.join(spec.after)}" if spec.after else ""),
        )

    def payload(self, job: Job) -> None:
        """Keep the function and params so a later process can resubmit a lost run."""
        import cloudpickle

        try:
            data = cloudpickle.dumps({"fn": job.spec.fn, "spec": job.spec.model_dump(exclude={"fn"})})
        except Exception as exc:  # noqa: BLE001 - resubmission is a convenience, never a blocker
            log.info("run %s cannot be saved for resubmission: %s", job.run_id, exc)
            return
        if len(data) <= MAX_PAYLOAD:
            self.records.payload(job.run_id, data)

    def output(self, job: Job) -> None:
        """Store what the run printed with the run (``runs.output``)."""
        if job.output:
            self.records.output(job.run_id, job.output)

    def event(self, job: Job, event: str, detail: str | None = None) -> None:
        """Append to the run's audit trail (``events``)."""
        self.records.event(job.run_id, event, detail)

    def requeued(self, job: Job, error: str | None, on_commit=None) -> None:
        """The attempt failed and the run waits for another: status ``queued``, a ``retry`` event."""
        self.records.ended(job.run_id, RunStatus.QUEUED.value, error, requeue=True, on_commit=on_commit)

    def clear_attempt_data(self, job: Job) -> None:
        """A retried run's data is its last attempt's (its error stays in ``events``)."""
        self.records.clear_attempt(job.run_id)

    def final(self, job: Job, status: RunStatus, error: str | None, on_commit=None) -> int:
        """Write a final status the run's own process could not write (killed, lost)."""
        return self.records.ended(job.run_id, status.value, error, on_commit=on_commit)
