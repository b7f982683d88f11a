"""The process's flusher: moves live runs' buffers to their sinks.

One daemon thread per process, started with the first run and stopped by
``stop()`` (idempotent; at exit and by the test fixtures). Every ``POLL``
seconds it asks each live run to flush; a run hands over its buffer when it
holds ``flush_rows`` points or ``flush_interval`` has passed since its last
flush.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("notebook_exp.tracking")

POLL = 0.02


class Flusher:
    """Owner of the flush thread."""

    def __init__(self, poll: float = POLL) -> None:
        self.poll = poll
        self._runs: dict[str, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, run) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="notebook_exp-flusher", daemon=True)
                self._thread.start()

    def remove(self, run) -> None:
        with self._lock:
            self._runs.pop(run.run_id, None)

    def live(self) -> list:
        with self._lock:
            return list(self._runs.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            for run in self.live():
                try:
                    run._flush()
                except Exception:  # noqa: BLE001 - one broken run must not stop the others
                    log.exception("flushing run %s failed", run.run_id)

    def stop(self) -> None:
        """Stop the thread (the runs' own ``end`` flushes what is left)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None


flusher = Flusher()
