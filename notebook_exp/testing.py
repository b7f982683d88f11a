"""Fakes for tests, demos and CI, used through the same interfaces as the real thing.

* :class:`MemorySink` keeps everything a run sends to it, in memory.
* :func:`temporary_store` points notebook_exp at a fresh store file for a block.
* :func:`shutdown` ends live runs and stops every background thread (test fixtures).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .models import MetricBatch, RunInfo, RunStatus
from .sinks.base import Sink

__all__ = ["MemorySink", "shutdown", "temporary_store"]


class MemorySink(Sink):
    """A sink that records every call (thread-safe to read while a run is live)."""

    name = "memory"
    max_pending_rows = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.points: list[tuple[str, int, float, float]] = []
        self.run: RunInfo | None = None
        self.status: RunStatus | None = None
        self.error: str | None = None
        self.closed = False
        self._lock = threading.Lock()

    def _record(self, method: str, *args) -> None:
        with self._lock:
            self.calls.append((method, args))

    def start_run(self, run: RunInfo) -> None:
        self.run = run
        self._record("start_run", run)

    def log_params(self, params) -> None:
        self._record("log_params", params)

    def set_tags(self, tags) -> None:
        self._record("set_tags", tags)

    def log_metrics(self, batch: MetricBatch) -> None:
        with self._lock:
            self.points.extend(batch)
        self._record("log_metrics", batch)

    def log_text(self, key, step, ts, text) -> None:
        self._record("log_text", key, step, ts, text)

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._record("log_histogram", key, step, ts, bin_edges, counts)

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._record("log_image", key, step, ts, png, width, height)

    def log_artifact(self, name, path) -> None:
        self._record("log_artifact", name, path)

    def flush(self) -> None:
        self._record("flush")

    def end_run(self, status: RunStatus, error: str | None) -> None:
        self.status, self.error = status, error
        self._record("end_run", status, error)

    def close(self) -> None:
        self.closed = True
        self._record("close")

    @property
    def methods(self) -> list[str]:
        """The names of the calls received, in order."""
        with self._lock:
            return [m for m, _ in self.calls]


@contextlib.contextmanager
def temporary_store(path: str | os.PathLike | None = None) -> Iterator[Path]:
    """Use a fresh store file (in a temporary folder unless ``path``) inside the block."""
    from .config import reset_settings

    with contextlib.ExitStack() as stack:
        if path is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="notebook_exp-"))
            path = Path(folder) / "store.duckdb"
        old = os.environ.get("NOTEBOOK_EXP_STORE")
        os.environ["NOTEBOOK_EXP_STORE"] = str(path)
        reset_settings()
        try:
            yield Path(path)
        finally:
            shutdown()
            if old is None:
                os.environ.pop("NOTEBOOK_EXP_STORE", None)
            else:
                os.environ["NOTEBOOK_EXP_STORE"] = old
            reset_settings()


def shutdown() -> None:
    """Run the package's shutdown steps, as at exit: stop the scheduler, end live
    runs, stop every background thread, flush and close every store."""
    from . import _exit

    _exit.shutdown()
