"""The built-in DuckDB sink: metrics, texts, histograms, images and artifacts into the store.

Registered as the ``duckdb`` entry point. It never drops data: its queue is
unbounded and the store's writer waits out any lock (see ``store.writer``).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink

__all__ = ["DuckDBSink"]


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


class DuckDBSink(Sink):
    """Writes a run's data into its DuckDB store (the run's ``store_path``)."""

    name = "duckdb"
    max_pending_rows = None  # never drop
    threaded = False  # every method only queues work for the store's writer

    def __init__(self) -> None:
        self._store = None
        self._run_id = ""

    @property
    def _writer(self):
        return self._store.writer  # the store restarts its writer if it was stopped

    def start_run(self, run: RunInfo) -> None:
        from ..store import get_store

        self._run_id = run.run_id
        self._store = get_store(run.store_path)

    def log_metrics(self, batch: MetricBatch) -> None:
        self._writer.submit_metrics(batch)

    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        self._writer.submit(
            "INSERT INTO texts VALUES (?, ?, ?, ?, ?)", [self._run_id, key, step, _ts(ts), text]
        )

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._writer.submit(
            "INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
            [self._run_id, key, step, _ts(ts), list(bin_edges), list(counts)],
        )

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._writer.submit(
            "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
            [self._run_id, key, step, _ts(ts), width, height, png],
        )

    def log_artifact(self, name: str, path: str) -> None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        self._writer.submit(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
            [self._run_id, name, path, os.path.getsize(path), digest.hexdigest(), _ts(os.path.getmtime(path))],
        )

    def flush(self) -> None:
        """Nothing to start: the store's writer commits everything queued, in order."""

    def wait_flushed(self, timeout: float | None) -> bool:
        """Wait until the writer committed everything queued so far (``StoreUnavailable``
        while the store cannot be written, with this run's points pending)."""
        return self._writer.flush(timeout, run_id=self._run_id)

    def end_run(self, status: RunStatus, error: str | None) -> None:
        """Nothing to wait for: the run records its end after this, and the writer
        commits in order, so the run's end is stored only after its data."""
