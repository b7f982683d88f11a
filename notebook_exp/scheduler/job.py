"""``Job``: the notebook's handle on a submitted run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..exceptions import RunCancelled, RunFailed
from ..models import RunStatus
from .spec import ExperimentSpec

__all__ = ["Job"]

MAX_OUTPUT = 1_000_000  # characters of captured output kept per run (the tail)


class Job:
    """A submitted run. ``status`` moves queued → running → completed | failed | cancelled.

    ``wait()`` blocks until the run ends and returns its status; ``result()``
    returns what the function returned (or raises ``RunFailed`` /
    ``RunCancelled``); ``cancel()`` stops it; ``set_priority(p)`` moves it in
    the queue; ``queue_position`` is 0 for the next run to start, ``None`` once
    it left the queue. Other processes reach it by its ``run_id``
    (``nx.cancel``, ``nx.set_priority``, ``notebook-exp cancel``).
    """

    def __init__(self, spec: ExperimentSpec, run_id: str, scheduler, seq: int) -> None:
        self.spec = spec
        self.run_id = run_id
        self.seq = seq
        self._scheduler = scheduler
        self.status = RunStatus.QUEUED
        self.attempts = 0
        self.error: str | None = None
        self.gpus: list[int] = []
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.not_before = 0.0  # monotonic time before which a retry may not start
        self.deadline: float | None = None  # monotonic timeout of the current attempt
        self.run = None  # the Run of the current attempt (thread executor)
        self.stop_reason: str | None = None  # "cancel" or "timeout" once asked to stop
        self.node: str | None = None  # where the attempt runs, "host (ip)" (ray executor)
        self.placement = None  # its node, worker pid and GPUs (ray executor: _ray_cluster.Placement)
        self.waiting: str | None = None  # why an attempt that has its node waits (a GPU leased there)
        self.cancel_reason: str | None = None  # the error a cancelled attempt records ("cancelled by ...")
        self._result: Any = None
        self._done = threading.Event()
        self._output: list[str] = []
        self._output_len = 0
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Job, str, Any], None]] = []
        from ..tracking.run import Progress

        self._progress = Progress()  # reported by a process run's child

    # -- what users read ------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name or f"{self.spec.experiment or 'default'}-{self.run_id[:6]}"

    @property
    def experiment(self) -> str:
        return self.spec.experiment or "default"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.spec.params)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def queue_position(self) -> int | None:
        return self._scheduler.position(self)

    @property
    def progress(self):
        """The run's ``Progress`` (n, total, rate(), eta()), from whichever process runs it."""
        return self.run.progress_state if self.run is not None else self._progress

    @property
    def output(self) -> str:
        """Everything the run printed so far (stdout and stderr, the last 1 MB)."""
        with self._lock:
            return "".join(self._output)

    def __repr__(self) -> str:
        return f"<Job {self.name!r} ({self.run_id}) {self.status.value}>"

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run ends; returns its final status (``TimeoutError`` if it doesn't in time)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.name} ({self.run_id}) is still {self.status.value} after {timeout} s")
        return self.status

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; raises ``RunFailed`` or ``RunCancelled`` otherwise."""
        status = self.wait(timeout)
        if status == RunStatus.COMPLETED:
            return self._result
        if status == RunStatus.CANCELLED:
            raise RunCancelled(f"run {self.name} ({self.run_id}) was cancelled: {self.error or ''}".strip())
        raise RunFailed(self.run_id, self.error or "")

    def cancel(self, by: str | None = None) -> bool:
        """Stop the run (queued: at once; running: see the executor). False if it already ended.
        ``by`` names who asked in the run's events (default: this process's user, host and pid)."""
        return self._scheduler.cancel(self, by=by)

    def set_priority(self, priority: int, by: str | None = None) -> bool:
        """Move the queued run to ``priority`` (0-10, higher first); False once it runs or ended."""
        return self._scheduler.set_priority(self, priority, by=by)[0]

    # -- events for widgets -------------------------------------------------
    def subscribe(self, listener: Callable[[Job, str, Any], None], replay: bool = True) -> None:
        """Call ``listener(job, event, data)`` on ``status`` and ``output`` events (from any
        thread; keep it quick). With ``replay`` it first gets the output printed so far,
        exactly once."""
        with self._lock:
            if replay and self._output:
                listener(self, "output", "".join(self._output))
            self._listeners.append(listener)

    def _emit(self, event: str, data: Any = None) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, event, data)
            except Exception:  # noqa: BLE001 - a broken widget must not break the run
                pass

    def _write(self, text: str) -> None:
        if not text:
            return
        with self._lock:  # listeners see each piece once, in order (see subscribe)
            self._output.append(text)
            self._output_len += len(text)
            if self._output_len > 2 * MAX_OUTPUT:
                joined = "".join(self._output)[-MAX_OUTPUT:]
                self._output, self._output_len = [joined], len(joined)
            self._emit("output", text)

    def _set_status(self, status: RunStatus, error: str | None = None, done: bool = True) -> None:
        """Move to ``status``. A terminal status also ends the job unless ``done`` is
        False, in which case ``_finalize()`` ends it (once the store has it)."""
        self.status = status
        if error is not None:
            self.error = error
        if status.terminal:
            self.ended_at = time.time()
            if done:
                self._finalize()
                return
        self._emit("status", status)

    def _finalize(self) -> None:
        """The final status is stored: wake ``wait()`` and tell listeners."""
        self._done.set()
        self._emit("status", self.status)
