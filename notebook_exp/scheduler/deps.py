"""Statuses of the runs queued jobs wait for (``after=``) that the scheduler does not own.

Such a run was made by another process (or an earlier scheduler of this one),
so its status is in the store, which another process may hold for a while.
It is read off the scheduler's lock, with a short timeout, and kept here; the
dispatcher decides from what was last read. A run whose status cannot be read
yet (the store is held, or its row is not written yet) is waited for, never
given up on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from ..exceptions import StoreError
from ..models import RunStatus

__all__ = ["LOOKUP_EVERY", "LOOKUP_TIMEOUT", "DependencyStatuses"]

log = logging.getLogger("notebook_exp.scheduler")

LOOKUP_TIMEOUT = 0.25  # seconds one read waits for the store's lock before trying again later
LOOKUP_EVERY = 0.5  # seconds between two reads of a dependency that has not ended

_QUERY = "SELECT run_id, status, error FROM runs WHERE run_id IN (SELECT unnest(?))"


class DependencyStatuses:
    """The last status read from ``store`` of each run asked about (thread-safe)."""

    def __init__(self, store) -> None:
        self.store = store
        self._known: dict[str, tuple[RunStatus, str | None]] = {}
        self._read_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> tuple[RunStatus | None, str | None]:
        """Status and error last read; ``(None, None)`` while not read (or no row yet)."""
        with self._lock:
            return self._known.get(run_id, (None, None))

    def due(self, run_ids: Iterable[str]) -> list[str]:
        """Those of ``run_ids`` worth reading now: not ended, not read in the last ``LOOKUP_EVERY`` s."""
        now = time.monotonic()
        with self._lock:
            return sorted(
                run_id for run_id in set(run_ids)
                if not (run_id in self._known and self._known[run_id][0].terminal)
                and now - self._read_at.get(run_id, -LOOKUP_EVERY) >= LOOKUP_EVERY
            )

    def read(self, run_ids: list[str], timeout: float = LOOKUP_TIMEOUT) -> set[str] | None:
        """Read the statuses of ``run_ids`` from the store now; never call it under the
        scheduler's lock. Returns the ids the store has no row for, or ``None`` when the
        store could not be read (held by another process past ``timeout``, not created)."""
        now = time.monotonic()
        with self._lock:
            self._read_at.update(dict.fromkeys(run_ids, now))
        try:
            table = self.store.query_arrow(_QUERY, [list(run_ids)], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - whatever the reason, read again later
            log.debug("statuses of runs %s cannot be read now: %s", run_ids, exc)
            return None
        found = {}
        for run_id, status, error in zip(*(table.column(c).to_pylist() for c in ("run_id", "status", "error"))):
            try:
                found[run_id] = (RunStatus(status), error)
            except ValueError:
                log.warning("run %s has an unknown status %r in the store", run_id, status)
        with self._lock:
            self._known.update(found)
        return set(run_ids) - set(found)

    def exists(self, run_id: str, timeout: float = LOOKUP_TIMEOUT) -> bool | None:
        """Whether the store has run ``run_id``; ``None`` if that cannot be told now.
        A row this process queued but did not write yet counts (the writer is flushed
        before the answer is no)."""
        if self.get(run_id)[0] is not None:
            return True
        missing = self.read([run_id], timeout)
        if missing:
            try:
                flushed = self.store.writer.flush(timeout)
            except StoreError:
                flushed = False
            missing = self.read([run_id], timeout) if flushed else None
        return None if missing is None else not missing
