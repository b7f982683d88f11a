"""Hands a run's batches to its sinks, each on its own worker thread.

The failure policy lives here and only here (docs/architecture.md §6):

* ``start_run`` failing fails the run's start loudly (``SinkError``);
* a later call failing is retried ``retries`` times with exponential backoff and
  jitter, then the sink is disabled for the run with one warning; what it then
  misses is counted as dropped; other sinks are untouched;
* ``end_run`` and ``close`` failures are logged and never mask the run's outcome.

Threads: a ``Dispatcher`` owns the worker threads of its run's sinks. ``finish``
ends them in order; ``stop`` ends them at once (what is still queued is dropped
and counted). Every dispatcher whose workers have not all ended is stopped by a
shutdown step (``_exit``, order 25: after live runs were ended, before the
stores close), so no worker outlives the interpreter's or a test's shutdown.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections import deque

from ..exceptions import SinkError
from ..models import RunInfo, RunStatus
from .base import Sink

__all__ = ["Dispatcher", "SinkWorker", "stop_all"]

log = logging.getLogger("notebook_exp.sinks")

BACKOFF_BASE = 0.05
STOP_TIMEOUT = 5.0  # seconds ``stop`` waits for a dispatcher's workers, all together
SHUTDOWN_ORDER = 25  # after live runs end (20), before the stores commit and close (90)
_FINAL = ("end_run", "close")


def _label(sink: Sink) -> str:
    return getattr(sink, "name", "") or type(sink).__name__


class SinkWorker:
    """One sink of one run: a queue and the thread that drains it in order."""

    def __init__(self, sink: Sink, run_id: str, retries: int, queue_rows: int) -> None:
        self.sink = sink
        self.run_id = run_id
        self.retries = retries
        bound = sink.max_pending_rows
        self.limit = None if bound is None else min(bound, queue_rows)
        self.dropped = 0
        self.disabled = False
        self._queue: deque = deque()
        self._pending_rows = 0
        self._closed = False
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._loop, name=f"notebook_exp-sink[{_label(sink)}:{run_id[:8]}]", daemon=True
        )
        self._thread.start()

    def put(self, method: str, args: tuple, rows: int = 0) -> None:
        with self._cond:
            if self._closed:
                if method == "__sync__":
                    args[0].set()
                return
            if method != "__sync__" and (self.disabled or (
                self.limit is not None and rows and self._pending_rows + rows > self.limit
            )):
                self.dropped += rows
                return
            self._queue.append((method, args, rows))
            self._pending_rows += rows
            self._cond.notify()

    def sync(self):
        """Queue ``flush`` and return how to wait until the worker did it."""
        event = threading.Event()
        self.put("flush", ())
        self.put("__sync__", (event,))
        return event.wait

    def finish(self, status: RunStatus, error: str | None) -> None:
        """Queue ``end_run`` and ``close``; no more puts are taken (idempotent; a no-op
        once stopped)."""
        with self._cond:
            if self._closed:
                return
            self._queue.append(("end_run", (status, error), 0))
            self._queue.append(("close", (), 0))
            self._closed = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> bool:
        """End the worker now (idempotent): calls still queued are dropped (their points
        counted in ``dropped``) but a queued ``end_run`` and ``close``; a sink whose run
        never finished is closed without ``end_run``. The call in progress, if any, is
        not interrupted (a retry's backoff is). Waits at most ``timeout`` seconds;
        returns whether the thread ended."""
        with self._cond:
            if not self._stopping.is_set():
                self._stopping.set()
                kept = deque()
                for method, args, rows in self._queue:
                    if method == "__sync__":
                        args[0].set()  # nobody waits on a stopped worker
                    elif method in _FINAL:
                        kept.append((method, args, rows))
                    else:
                        self.dropped += rows
                        self._pending_rows -= rows
                if not self._closed:
                    kept.append(("close", (), 0))
                    self._closed = True
                self._queue = kept
                self._cond.notify()
        return self.join(timeout)

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                method, args, rows = self._queue.popleft()
            if method == "__sync__":
                args[0].set()
            elif not self.disabled or method in _FINAL:
                self._call(method, args, rows)
            with self._cond:
                self._pending_rows -= rows
            if method == "close":
                return

    def _call(self, method: str, args: tuple, rows: int) -> None:
        fn = getattr(self.sink, method)
        if method in _FINAL:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - never masks the run's own outcome
                log.exception("sink %s: %s failed for run %s", _label(self.sink), method, self.run_id)
            return
        for attempt in range(self.retries + 1):
            try:
                fn(*args)
                return
            except Exception as exc:  # noqa: BLE001 - isolate the plugin
                if attempt == self.retries:
                    self._disable(method, exc, rows)
                    return
                if self._stopping.wait(BACKOFF_BASE * 2**attempt * random.uniform(0.5, 1.5)):
                    with self._cond:
                        self.dropped += rows  # stopped during the backoff: no more tries
                    return

    def _disable(self, method: str, exc: Exception, rows: int) -> None:
        with self._cond:
            self.disabled = True
            self.dropped += rows + sum(r for _m, _a, r in self._queue)
        warnings.warn(
            f"sink {_label(self.sink)!r} disabled for run {self.run_id} after "
            f"{self.retries + 1} failed attempts of {method}: {exc!r}",
            RuntimeWarning,
            stacklevel=2,
        )


class InlineWorker(SinkWorker):
    """A non-blocking sink (``threaded = False``), called in the caller's thread.

    Same failure policy as a threaded worker; calls are serialised by a lock."""

    def __init__(self, sink: Sink, run_id: str, retries: int, queue_rows: int) -> None:  # noqa: D107
        self.sink = sink
        self.run_id = run_id
        self.retries = retries
        self.limit = None
        self.dropped = 0
        self.disabled = False
        self._closed = False
        self._stopping = threading.Event()
        self._queue = deque()
        self._cond = threading.Condition()

    def put(self, method: str, args: tuple, rows: int = 0) -> None:
        with self._cond:
            if method == "__sync__":
                args[0].set()
                return
            if self._closed:
                return
            if self.disabled:
                self.dropped += rows
                return
            self._call(method, args, rows)

    def finish(self, status: RunStatus, error: str | None) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._call("end_run", (status, error), 0)
            self._call("close", (), 0)

    def stop(self, timeout: float | None = None) -> bool:
        """Close a sink whose run never finished, without ``end_run`` (idempotent)."""
        self._stopping.set()
        with self._cond:
            if not self._closed:
                self._closed = True
                self._call("close", (), 0)
        return True

    def join(self, timeout: float | None) -> bool:
        return True

    def sync(self):
        """Ask the sink to ``flush`` (under the lock) and return how to wait for it
        (``wait_flushed``, called outside the lock: one run's wait never holds up
        another's flush)."""
        self.put("flush", ())
        if self.disabled:
            return lambda _timeout: True
        return self.sink.wait_flushed


_live: set[Dispatcher] = set()  # dispatchers with workers that may still run
_live_lock = threading.Lock()


class Dispatcher:
    """The sinks of one run, and the owner of their worker threads: ``start`` starts
    them, ``finish`` ends them in order, ``stop`` ends them at once."""

    def __init__(self, run: RunInfo, sinks: list[Sink], retries: int, queue_rows: int) -> None:
        self.run = run
        self.sinks = sinks
        self.retries = retries
        self.queue_rows = queue_rows
        self.workers: list[SinkWorker] = []

    def start(self) -> None:
        """Call every sink's ``start_run`` here and now; ``SinkError`` on failure."""
        started: list[Sink] = []
        for sink in self.sinks:
            try:
                sink.start_run(self.run)
            except Exception as exc:
                for done in started:
                    _quiet_close(done)
                _quiet_close(sink)
                raise SinkError(
                    f"sink {_label(sink)!r} failed to start run {self.run.run_id}: {exc!r}"
                ) from exc
            started.append(sink)
        from .. import _exit

        _exit.on_shutdown(stop_all, SHUTDOWN_ORDER)
        with _live_lock:
            _live.add(self)
        self.workers = [
            (SinkWorker if sink.threaded else InlineWorker)(sink, self.run.run_id, self.retries, self.queue_rows)
            for sink in self.sinks
        ]

    def publish(self, method: str, *args, rows: int = 0) -> None:
        for worker in self.workers:
            worker.put(method, args, rows)

    def sync(self, timeout: float | None = None) -> bool:
        """Ask every sink to ``flush`` and wait until all did (or ``timeout``)."""
        waits = [worker.sync() for worker in self.workers]
        deadline = None if timeout is None else time.monotonic() + timeout
        for wait in waits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not wait(left):
                return False
        return True

    def finish(self, status: RunStatus, error: str | None, timeout: float | None = None) -> dict[str, int]:
        """End every sink and wait for them; returns points dropped per sink."""
        for worker in self.workers:
            worker.finish(status, error)
        if self._join_all(timeout, f"did not finish within {timeout} s; it is stopped at shutdown"):
            self._forget()
        return {_label(w.sink): w.dropped for w in self.workers if w.dropped}

    def _join_all(self, timeout: float | None, why: str) -> bool:
        """Wait, ``timeout`` seconds in all, for every worker; warn ``why`` for each that
        did not end; returns whether all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = True
        for worker in self.workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not worker.join(left):
                ended = False
                log.warning("sink %s of run %s %s", _label(worker.sink), self.run.run_id, why)
        return ended

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> bool:
        """End every worker now (idempotent; see ``SinkWorker.stop``), waiting at most
        ``timeout`` seconds for all of them; returns whether they all ended. A worker
        stuck in a sink call is left behind with a warning."""
        for worker in self.workers:
            worker.stop(0)
        ended = self._join_all(timeout, "is stuck in a call; leaving it behind")
        self._forget()
        return ended

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)


def stop_all(timeout: float | None = STOP_TIMEOUT) -> None:
    """Stop the workers of every dispatcher not finished yet (a shutdown step; idempotent)."""
    with _live_lock:
        dispatchers = list(_live)
    for dispatcher in dispatchers:
        dispatcher.stop(timeout)


def _quiet_close(sink: Sink) -> None:
    try:
        sink.close()
    except Exception:  # noqa: BLE001
        log.exception("sink %s: close failed", _label(sink))
