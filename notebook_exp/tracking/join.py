"""Points into a run another process owns: the other ranks of a distributed job.

Under ``torch.distributed`` (torchrun, Lightning DDP) one job is one run, owned by
rank 0. A non-zero rank that logs too (``NotebookExpLogger(all_ranks=True)``)
joins that run with :func:`join_run`: a :class:`JoinedRun` writes metric points
into it through this process's own short-lock store writer (and its own flusher
turn), only to the DuckDB store, and never writes the run's row or status, which
stay rank 0's. ``end`` flushes its points and stops; a shutdown step flushes
joined runs still open (order 20, with the live runs).
"""

from __future__ import annotations

import logging

from .. import _exit
from ..models import RunInfo, RunStatus
from .run import Run

__all__ = ["JoinedRun", "end_joined_runs", "join_run"]

log = logging.getLogger("notebook_exp.tracking")


def _nothing() -> None:
    """An ``on_recorded`` that asks for nothing (``end`` then returns without waiting)."""


class JoinedRun(Run):
    """Writes points into a run another process owns (rank 0 of a distributed job):
    only metrics and only to the store; it never writes the run's row or status.
    ``end`` flushes its points and stops."""

    def _record_end(self, status, error, requeue=False, on_recorded=None) -> None:
        _joined.pop(id(self), None)
        if on_recorded is not None:
            on_recorded()
            return
        try:
            self._store.writer.flush(self.settings.lock_timeout, run_id=self.run_id)
        except Exception:  # noqa: BLE001 - the owner's run must not fail for a rank's points
            log.exception("rank points of run %s could not be stored", self.run_id)


_joined: dict[int, JoinedRun] = {}  # id(run) -> run, until it ends


def join_run(run_id: str, *, store=None) -> JoinedRun:
    """A writer into the existing run ``run_id`` (owned by another process)."""
    from ..config import get_settings
    from ..sinks.duckdb import DuckDBSink
    from ..store import get_store, utcnow
    from .flusher import flusher

    settings = get_settings()
    store_obj = get_store(store if store is not None else settings.store_path, settings=settings)
    now = utcnow()
    info = RunInfo(run_id=run_id, experiment="", name="", created_at=now, started_at=now,
                   store_path=str(store_obj.path))
    run = JoinedRun(info, settings, [DuckDBSink()], store_obj)
    run._dispatcher.start()
    _joined[id(run)] = run
    _exit.on_shutdown(end_joined_runs, order=20, name="notebook_exp.tracking.join.end_joined_runs")
    flusher.add(run)
    return run


def end_joined_runs() -> None:
    """A shutdown step: flush and stop every joined run still open (idempotent)."""
    for run in list(_joined.values()):
        try:
            run.end(RunStatus.COMPLETED, on_recorded=_nothing)
        except Exception:  # noqa: BLE001 - never mask anything at shutdown
            log.exception("ending joined run %s failed", run.run_id)
