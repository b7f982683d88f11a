"""The process's flusher: moves live runs' buffers to their sinks.

One daemon thread per process, started with the first run and stopped by
``stop()`` (idempotent; at exit and by the test fixtures). Every ``POLL``
seconds it asks each live run to flush; a run hands over its buffer when it
holds ``flush_rows`` points or ``flush_interval`` has passed since its last
flush, or when it holds ``idle_flush_rows`` points and the store's writer is
idle (``Run._flush``). A tick that finds nothing due costs a few microseconds
of this thread's time per run.
"""

from __future__ import annotations

import logging
import threading

from .._threads import Ticking

log = logging.getLogger("notebook_exp.tracking")

POLL = 0.02


class Flusher(Ticking):
    """Owner of the flush thread."""

    thread_name = "notebook_exp-flusher"

    def __init__(self, poll: float = POLL) -> None:
        super().__init__(poll)
        self._runs: dict[str, object] = {}
        self._lock = threading.Lock()

    def add(self, run) -> None:
        with self._lock:
            self._runs[run.run_id] = run
        self.ensure_started()

    def remove(self, run) -> None:
        with self._lock:
            self._runs.pop(run.run_id, None)

    def live(self) -> list:
        with self._lock:
            return list(self._runs.values())

    def step(self) -> None:
        for run in self.live():
            try:
                run._flush()
            except Exception:  # noqa: BLE001 - one broken run must not stop the others
                log.exception("flushing run %s failed", run.run_id)


flusher = Flusher()
