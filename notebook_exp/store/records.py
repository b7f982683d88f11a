"""``RunRecords``: every write a run makes to the store goes through this module.

A run's records fall in two planes, and both are written here:

* **the control plane**: the ``runs`` row (name, params, tags, status, where and
  when it ran, the scheduler's columns), the ``events`` audit trail and the
  scheduler's saved ``payloads``. These are written for every run, whatever its
  sinks, because the store *is* the scheduler's persisted queue and the ledger
  that lost-run recovery, ``notebook-exp queue``, ``nx.runs`` and the viewer
  read (``docs/architecture.md``, "One writer path"). Callers: ``tracking.run``
  and the scheduler.
* **the data plane**: metrics, texts, histograms, images and artifacts. These
  reach the store only through the DuckDB sink (``sinks/duckdb.py``), which
  calls the methods below like any other sink would write its own backend; a
  run with ``sinks=["jsonl"]`` keeps its row and status here and its points in
  the JSONL files.

Every method only queues work on the store's writer (``store.writer``) and
returns at once; those that end something return the write's sequence number
(wait on it with ``writer.wait``) or take ``on_commit``. All SQL is fixed text
with ``?`` parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any

from ..models import RunStatus
from ._host import HOST, pid_started, utcnow

__all__ = ["ATTEMPT_TABLES", "RunRecords"]

#: What a retried run's failed attempt logged, cleared before the next attempt.
ATTEMPT_TABLES = ("metrics", "metric_summary", "texts", "histograms", "images", "artifacts")

_STARTED = ("status", "started_at", "host", "pid", "pid_started", "error", "ended_at")


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


def _insert(conn, run_id: str, created_at, row: dict[str, Any]) -> None:
    names = ["run_id", "created_at", *row]
    conn.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                 [run_id, created_at, *row.values()])


def _collected(git: dict | None, source: str | None, info: dict | None) -> dict[str, Any]:
    """The ``runs`` columns of what a run's collectors recorded."""
    return {"git": json.dumps(git) if git else None, "source": source, "info": json.dumps(info) if info else None}


def start_existing(conn, run_id: str, row: dict[str, Any], now, columns: dict | None) -> None:
    """Start a run the store may already hold (queued by a scheduler, which wrote its
    name, params and tags): update only what starting changes; insert if it is new."""
    changed = {name: row[name] for name in (*_STARTED, *(columns or {}))}
    assignments = ", ".join(f"{name} = ?" for name in changed)
    updated = conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*changed.values(), run_id]).fetchone()
    if not updated or not updated[0]:
        _insert(conn, run_id, now, row)


def resume_existing(conn, run_id: str, row: dict[str, Any]) -> None:
    """A stored run continues: write ``row`` (status, params, tags, where it runs, cleared
    end and error, the scheduler's columns) over its row; its start time stays."""
    assignments = ", ".join(f"{name} = ?" for name in row)
    conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*row.values(), run_id])


class RunRecords:
    """The writes of runs to one ``Store`` (``store.records``)."""

    def __init__(self, store) -> None:
        self.store = store

    @property
    def _writer(self):
        return self.store.writer  # the store restarts its writer if it was stopped

    # -- the control plane ----------------------------------------------------------
    def started(self, run_id: str, row: dict[str, Any], now, *, existing: bool, columns: dict | None = None,
                git: dict | None = None, source: str | None = None, info: dict | None = None) -> None:
        """The run is running in this process: its row (``row``: column -> value) and a
        ``running`` event. ``existing``: the store may hold the row already (queued: then
        only what starting changes is written). ``git``, ``source`` and ``info`` are what
        its collectors recorded (``runs.git``, ``runs.source``, ``runs.info``)."""
        row = {**row, "host": HOST, "pid": os.getpid(), "pid_started": pid_started(), **_collected(git, source, info)}
        if existing:
            self._writer.submit_call(start_existing, run_id, row, now, columns)
        else:
            self._writer.submit_call(_insert, run_id, now, row)
        self._writer.event(run_id, RunStatus.RUNNING.value)

    def resumed(self, run_id: str, row: dict[str, Any], detail: str | None = None) -> None:
        """A stored run runs again in this process (``start_run(resume=True)``): its row
        (``row``: column -> value; ``started_at`` and ``created_at`` are kept) and a
        ``resumed`` event."""
        row = {**row, "host": HOST, "pid": os.getpid(), "pid_started": pid_started()}
        self._writer.submit_call(resume_existing, run_id, row)
        self._writer.event(run_id, "resumed", detail)

    def queued(self, run_id: str, *, experiment: str, name: str, params: dict, tags: list[str], executor: str,
               priority: int, source: str | None, spec: dict, git: dict | None, detail: str,
               info: dict | None = None) -> None:
        """A scheduled run's row, status ``queued``, and its ``queued`` event (``git``,
        ``source`` and ``info``: what its collectors recorded at submission)."""
        collected = _collected(git, source, info)
        self._writer.submit(
            """INSERT INTO runs (run_id, experiment, name, status, params, tags, created_at, host, pid,
                                 pid_started, executor, priority, attempts, source, spec, git, info)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)""",
            [run_id, experiment, name, RunStatus.QUEUED.value, json.dumps(params), tags, utcnow(), HOST, os.getpid(),
             pid_started(), executor, priority, collected["source"], json.dumps(spec), collected["git"],
             collected["info"]],
        )
        self.event(run_id, RunStatus.QUEUED.value, detail)

    def queued_to_resume(self, run_id: str, *, executor: str, priority: int, spec: dict, detail: str) -> None:
        """A stored run is queued again to be resumed by a scheduler (``submit(resume=...)``):
        status ``queued`` in this process, its scheduling columns, its old payload gone
        (the new submission saves its own), and a ``queued`` event. Its name, params,
        data and start time stay; ``start_run(resume=True)`` merges the rest."""
        self._writer.submit(
            """UPDATE runs SET status = ?, executor = ?, priority = ?, spec = ?, host = ?, pid = ?, pid_started = ?,
                              error = NULL, ended_at = NULL WHERE run_id = ?""",
            [RunStatus.QUEUED.value, executor, priority, json.dumps(spec), HOST, os.getpid(), pid_started(), run_id],
        )
        self._writer.submit("DELETE FROM payloads WHERE run_id = ?", [run_id])
        self.event(run_id, RunStatus.QUEUED.value, detail)

    def params(self, run_id: str, params: dict[str, Any]) -> None:
        self._writer.submit("UPDATE runs SET params = ? WHERE run_id = ?", [json.dumps(params), run_id])

    def tags(self, run_id: str, tags: list[str]) -> None:
        self._writer.submit("UPDATE runs SET tags = ? WHERE run_id = ?", [list(tags), run_id])

    def ended(self, run_id: str, status: str, error: str | None, dropped: int = 0, *, requeue: bool = False,
              on_commit=None) -> int:
        """The run's final status (or ``queued`` again with a ``retry`` event when
        ``requeue``); returns the sequence number of its last write."""
        recorded, event = (RunStatus.QUEUED.value, "retry") if requeue else (status, status)
        self._writer.submit(
            "UPDATE runs SET status = ?, ended_at = ?, error = ?, dropped = coalesce(dropped, 0) + ? WHERE run_id = ?",
            [recorded, None if requeue else utcnow(), error, dropped, run_id],
        )
        return self._writer.event(run_id, event, error, on_commit=on_commit)

    def event(self, run_id: str, event: str, detail: str | None = None, on_commit=None) -> int:
        """Append to the run's audit trail (``events``)."""
        return self._writer.event(run_id, event, detail, on_commit=on_commit)

    def payload(self, run_id: str, data: bytes) -> None:
        """The pickled function and spec, so a later process can resubmit a lost run."""
        self._writer.submit("INSERT INTO payloads VALUES (?, ?)", [run_id, data])

    def resubmitted(self, old: str, new: str) -> int:
        """The old run's saved function now belongs to the new run; its trail says where it went."""
        self._writer.submit("DELETE FROM payloads WHERE run_id = ?", [old])
        return self._writer.event(old, "resubmitted", f"as {new}")

    def output(self, run_id: str, text: str) -> None:
        """What the run printed (``runs.output``)."""
        self._writer.submit("UPDATE runs SET output = ? WHERE run_id = ?", [text, run_id])

    def clear_attempt(self, run_id: str) -> None:
        """A retried run's data is its last attempt's: drop what a failed one logged
        (its error stays in ``events``)."""
        for table in ATTEMPT_TABLES:
            self._writer.submit(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    # -- the data plane (the DuckDB sink) ----------------------------------------------
    def metrics(self, batch) -> int:
        return self._writer.submit_metrics(batch)

    def text(self, run_id: str, key: str, step: int, ts: float, text: str) -> None:
        self._writer.submit("INSERT INTO texts VALUES (?, ?, ?, ?, ?)", [run_id, key, step, _ts(ts), text])

    def histogram(self, run_id: str, key: str, step: int, ts: float, bin_edges, counts) -> None:
        self._writer.submit("INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
                            [run_id, key, step, _ts(ts), list(bin_edges), list(counts)])

    def image(self, run_id: str, key: str, step: int, ts: float, png: bytes, width: int, height: int) -> None:
        self._writer.submit("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [run_id, key, step, _ts(ts), width, height, png])

    def artifact(self, run_id: str, name: str, path: str) -> None:
        """A file stored with the run (its size, sha256 and mtime are recorded)."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        self._writer.submit("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                            [run_id, name, path, os.path.getsize(path), digest.hexdigest(),
                             _ts(os.path.getmtime(path))])
