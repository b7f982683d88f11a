"""What the scheduler writes about runs: queued rows, saved functions, output,
retries, final statuses and the audit trail. All writes go through the store's
background writer (never waiting on the disk unless asked)."""

from __future__ import annotations

import json
import logging
import os

from ..models import RunStatus
from .job import Job

log = logging.getLogger("notebook_exp.scheduler")

MAX_PAYLOAD = 20_000_000  # bytes of pickled function kept for resubmission


class RunRecords:
    """The scheduler's writes for one store."""

    def __init__(self, store) -> None:
        self.store = store

    def queued(self, job: Job, git: dict | None = None) -> None:
        """The run's row, status ``queued`` (``git``: where its code came from), and its ``queued`` event."""
        from ..store import utcnow
        from ..store.core import HOST

        spec, now = job.spec, utcnow()
        writer = self.store.writer
        writer.submit(
            """INSERT INTO runs (run_id, experiment, name, status, params, tags, created_at, host, pid,
                                 pid_started, executor, priority, attempts, source, spec, git)
               VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)""",
            [job.run_id, job.experiment, job.name, json.dumps(spec.params), spec.tags, now, HOST,
             os.getpid(), _pid_started(), spec.executor, spec.priority, spec.source,
             json.dumps(spec.describe()), json.dumps(git) if git else None],
        )
        self.event(job, "queued", f"priority {spec.priority}" + (f", after {', '.join(spec.after)}" if spec.after else ""))

    def payload(self, job: Job) -> None:
        """Keep the function and params so a later process can resubmit a lost run."""
        import cloudpickle

        try:
            data = cloudpickle.dumps({"fn": job.spec.fn, "spec": job.spec.model_dump(exclude={"fn"})})
        except Exception as exc:  # noqa: BLE001 - resubmission is a convenience, never a blocker
            log.info("run %s cannot be saved for resubmission: %s", job.run_id, exc)
            return
        if len(data) <= MAX_PAYLOAD:
            self.store.writer.submit("INSERT INTO payloads VALUES (?, ?)", [job.run_id, data])

    def output(self, job: Job) -> None:
        """Store what the run printed with the run (``runs.output``)."""
        text = job.output
        if text:
            self.store.writer.submit("UPDATE runs SET output = ? WHERE run_id = ?", [text, job.run_id])

    def event(self, job: Job, event: str, detail: str | None = None) -> None:
        """Append to the run's audit trail (``events``)."""
        self.store.writer.event(job.run_id, event, detail)

    def requeued(self, job: Job, error: str | None, on_commit=None) -> None:
        """The attempt failed and the run waits for another: status ``queued``, a ``retry`` event."""

        self.store.writer.submit(
            "UPDATE runs SET status = 'queued', ended_at = NULL, error = ? WHERE run_id = ?", [error, job.run_id]
        )
        self.store.writer.event(job.run_id, "retry", error, on_commit=on_commit)

    def clear_attempt_data(self, job: Job) -> None:
        """A retried run's data is its last attempt's: drop what the failed one logged
        (its error stays in ``events``)."""
        for table in ("metrics", "metric_summary", "texts", "histograms", "images", "artifacts"):
            self.store.writer.submit(f"DELETE FROM {table} WHERE run_id = ?", [job.run_id])

    def final(self, job: Job, status: RunStatus, error: str | None, on_commit=None) -> int:
        """Write a final status the run's own process did not write (it never started,
        was killed, or was lost)."""
        from ..store import utcnow

        writer = self.store.writer
        writer.submit(
            "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE run_id = ?",
            [status.value, error, utcnow(), job.run_id],
        )
        return writer.event(job.run_id, status.value, error, on_commit=on_commit)


def _pid_started() -> float:
    from ..tracking.run import _pid_started as started

    return started()
