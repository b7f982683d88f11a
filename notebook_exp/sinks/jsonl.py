"""The built-in JSONL sink: one JSON object per line, one file per run.

Registered as the ``jsonl`` entry point. Files go to ``NOTEBOOK_EXP_JSONL_DIR``
(default: ``jsonl/`` beside the store file) as ``<run_id>.jsonl``. Each line has
an ``event`` field: ``start``, ``params``, ``tags``, ``metric``, ``text``,
``histogram``, ``image`` (size only), ``artifact`` and ``end``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from ..config import plugin_settings
from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink

__all__ = ["JSONLSettings", "JSONLSink"]


class JSONLSettings(BaseSettings):
    """Settings of the JSONL sink, from ``NOTEBOOK_EXP_JSONL_<FIELD>``."""

    dir: Path | None = Field(None, description="Folder for the .jsonl files (default: jsonl/ beside the store).")


class JSONLSink(Sink):
    """Appends a run's events to ``<dir>/<run_id>.jsonl``."""

    name = "jsonl"
    wants_telemetry = True

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.path: Path | None = None
        self._fh = None

    def _write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, default=str) + "\n")

    def start_run(self, run: RunInfo) -> None:
        directory = self.directory or plugin_settings("jsonl", JSONLSettings).dir
        if directory is None:
            directory = Path(run.store_path).parent / "jsonl"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{run.run_id}.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")
        self._write(
            {"event": "start", "run_id": run.run_id, "experiment": run.experiment, "name": run.name,
             "params": run.params, "tags": run.tags}
        )
        self._fh.flush()

    def log_params(self, params: dict) -> None:
        self._write({"event": "params", "params": params})

    def set_tags(self, tags: list[str]) -> None:
        self._write({"event": "tags", "tags": tags})

    def log_metrics(self, batch: MetricBatch) -> None:
        lines = [
            json.dumps({"event": "metric", "key": k, "step": s, "ts": t, "value": v})
            for k, s, t, v in batch
        ]
        self._fh.write("\n".join(lines) + "\n")
        self._fh.flush()

    def log_text(self, key, step, ts, text) -> None:
        self._write({"event": "text", "key": key, "step": step, "ts": ts, "text": text})

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._write({"event": "histogram", "key": key, "step": step, "ts": ts,
                     "bin_edges": list(bin_edges), "counts": list(counts)})

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._write({"event": "image", "key": key, "step": step, "ts": ts, "width": width,
                     "height": height, "bytes": len(png)})

    def log_artifact(self, name, path) -> None:
        self._write({"event": "artifact", "name": name, "path": path})

    def end_run(self, status: RunStatus, error: str | None) -> None:
        self._write({"event": "end", "status": str(status), "error": error})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
