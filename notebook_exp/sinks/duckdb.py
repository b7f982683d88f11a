"""The built-in DuckDB sink: metrics, texts, histograms, images and artifacts into the store.

Registered as the ``duckdb`` entry point, like any third-party sink. It writes
through the store's one writer path (``store.records``), which also holds the
run's row and events (written for every run, whatever its sinks). It never drops
data: the store's writer waits out locks and outages (see ``store.writer``).
"""

from __future__ import annotations

from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink

__all__ = ["DuckDBSink"]


class DuckDBSink(Sink):
    """Writes a run's data into its DuckDB store (the run's ``store_path``)."""

    name = "duckdb"
    max_pending_rows = None  # never drop
    wants_telemetry = True
    threaded = False  # every method only queues work for the store's writer

    def __init__(self) -> None:
        self._store = None
        self._records = None
        self._run_id = ""

    @property
    def _writer(self):
        return self._store.writer  # the store restarts its writer if it was stopped

    def start_run(self, run: RunInfo) -> None:
        from ..store import get_store

        self._run_id = run.run_id
        self._store = get_store(run.store_path)
        self._records = self._store.records

    def log_metrics(self, batch: MetricBatch) -> None:
        self._records.metrics(batch)

    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        self._records.text(self._run_id, key, step, ts, text)

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._records.histogram(self._run_id, key, step, ts, bin_edges, counts)

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._records.image(self._run_id, key, step, ts, png, width, height)

    def log_artifact(self, name: str, path: str) -> None:
        self._records.artifact(self._run_id, name, path)

    def flush(self) -> None:
        """Nothing to start: the store's writer commits everything queued, in order."""

    def wait_flushed(self, timeout: float | None) -> bool:
        """Wait until the writer committed everything queued so far (``StoreUnavailable``
        while the store cannot be written, with this run's points pending)."""
        return self._writer.flush(timeout, run_id=self._run_id)

    def end_run(self, status: RunStatus, error: str | None) -> None:
        """Nothing to wait for: the run records its end after this, and the writer
        commits in order, so the run's end is stored only after its data."""
