"""Hands a run's batches to its sinks, each on its own worker thread.

The failure policy lives here and only here (docs/architecture.md §6):

* ``start_run`` failing fails the run's start loudly (``SinkError``);
* a later call failing is retried ``retries`` times with exponential backoff and
  jitter, then the sink is disabled for the run with one warning; what it then
  misses is counted as dropped; other sinks are untouched;
* with a circuit breaker (``breaker_failures``, remote-style sinks: see
  ``sinks.flow``) a failing call is kept instead: after that many consecutive
  failures the breaker opens, the sink's batches are held (up to its bound) and
  one probe call follows each cool-down; a recovered sink gets what it missed. At
  the run's end an open breaker gets one last probe, at most one cool-down later;
  if that fails too, what is still held is dropped and counted;
* a failure is warned about once per sink and run, and recorded once in the run's
  events (``sink_failed``, ``sink_disabled``), as is every change of a breaker's
  state (``sink_breaker``);
* ``end_run`` and ``close`` failures are logged and never mask the run's outcome.

What each sink receives is decided on its own worker thread by its route
(``sinks.routing``: include/exclude keys, telemetry, processors), and a rate
limit (``rate``) paces its calls; queued metric batches are merged into one
call when the worker falls behind.

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
from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink
from .flow import Breaker, BreakerState, RateLimiter
from .routing import Route

__all__ = ["Dispatcher", "SinkWorker", "stop_all"]

log = logging.getLogger("notebook_exp.sinks")

BACKOFF_BASE = 0.05
#: Most points merged into one ``log_metrics`` call from batches queued behind each other.
MERGE_ROWS = 500_000
SYNC_POLL = 0.05  # seconds between looks at a breaker while ``run.flush`` waits on its sink
STOP_TIMEOUT = 5.0  # seconds ``stop`` waits for a dispatcher's workers, all together
SHUTDOWN_ORDER = 25  # after live runs end (20), before the stores commit and close (90)
_FINAL = ("end_run", "close")
_KEYED = ("log_text", "log_histogram", "log_image")  # their first argument is a key


def _label(sink: Sink) -> str:
    return getattr(sink, "name", "") or type(sink).__name__


class SinkWorker:
    """One sink of one run: a queue and the thread that drains it in order."""

    def __init__(self, sink: Sink, run_id: str, retries: int, queue_rows: int,
                 route: Route | None = None, on_event=None) -> None:
        self.sink = sink
        self.run_id = run_id
        self.retries = retries
        bound = sink.max_pending_rows
        self.limit = None if bound is None else min(bound, queue_rows)
        self.dropped = 0
        self.disabled = False
        self.route = route
        self._on_event = on_event
        self._warned = False
        self._queue: deque = deque()
        self._pending_rows = 0
        self._closed = False
        self._closed_at: float | None = None
        self._end_probe = False
        self._stopping = threading.Event()
        self._wake = threading.Event()  # finish or stop: an open breaker's wait is cut short
        self._cond = threading.Condition()
        settings = sink.settings
        failures = sink.breaker_failures if settings.breaker_failures is None else settings.breaker_failures
        self.breaker = Breaker(failures, settings.breaker_cooldown, self._breaker_changed) if failures else None
        self.limiter = RateLimiter(settings.rate, settings.burst) if settings.rate else None
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
        """Queue ``flush`` and return how to wait until the worker did it. The wait
        gives up (False) as soon as the sink's breaker is open: a training loop that
        calls ``run.flush()`` is not held up by a backend that is down."""
        event = threading.Event()
        self.put("flush", ())
        self.put("__sync__", (event,))
        if self.breaker is None:
            return event.wait

        def wait(timeout: float | None) -> bool:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not event.wait(SYNC_POLL if deadline is None else min(SYNC_POLL, deadline - time.monotonic())):
                if self.breaker.state is not BreakerState.CLOSED:
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return True

        return wait

    def finish(self, status: RunStatus, error: str | None) -> None:
        """Queue ``end_run`` and ``close``; no more puts are taken (idempotent; a no-op
        once stopped)."""
        with self._cond:
            if self._closed:
                return
            self._queue.append(("end_run", (status, error), 0))
            self._queue.append(("close", (), 0))
            self._closed = True
            self._closed_at = time.monotonic()
            self._cond.notify()
        self._wake.set()

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
        self._wake.set()
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
                if method == "log_metrics" and self._queue and self._queue[0][0] == "log_metrics":
                    args, rows = self._merge(args[0], rows)
            if method == "__sync__":
                args[0].set()
            elif not self.disabled or method in _FINAL:
                self._call(method, args, rows)
            with self._cond:
                self._pending_rows -= rows
            if method == "close":
                return

    def _merge(self, first: MetricBatch, rows: int) -> tuple[tuple, int]:
        """``first`` and the metric batches queued right behind it, as one batch (under
        the lock; at most ``MERGE_ROWS`` points)."""
        batches = [first]
        while self._queue and self._queue[0][0] == "log_metrics" and rows + self._queue[0][2] <= MERGE_ROWS:
            _method, (batch,), more = self._queue.popleft()
            batches.append(batch)
            rows += more
        return (MetricBatch.merged(batches) if len(batches) > 1 else first,), rows

    def _routed(self, method: str, args: tuple) -> tuple | None:
        """``args`` as this sink receives them (None: nothing for it)."""
        route = self.route
        if route is None:
            return args
        if method == "log_metrics":
            batch = route.batch(args[0])
            return None if batch is None else (batch,)
        if method in _KEYED and not route.wants(args[0]):
            return None
        return args

    def _call(self, method: str, args: tuple, rows: int) -> None:
        fn = getattr(self.sink, method)
        if method in _FINAL:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - never masks the run's own outcome
                log.exception("sink %s: %s failed for run %s", _label(self.sink), method, self.run_id)
            return
        args = self._routed(method, args)
        if args is None:
            return
        if self.breaker is not None:
            self._call_guarded(fn, method, args, rows)
            return
        for attempt in range(self.retries + 1):
            self._pace()
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

    def _pace(self) -> None:
        """Wait until the rate limit lets the next call through, and book it."""
        limiter = self.limiter
        if limiter is not None:
            delay = limiter.delay()
            if delay:
                self._stopping.wait(delay)
            limiter.take()

    def _call_guarded(self, fn, method: str, args: tuple, rows: int) -> None:
        """Call through the circuit breaker: retry until the call succeeds, holding it
        (and, in the queue, what follows) while the breaker is open; give up only when
        stopped, or when the run ended and its last probe failed."""
        breaker = self.breaker
        while not self._stopping.is_set():
            self._pace()
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - isolate the plugin
                self._failed_once(method, exc)
                breaker.failure(exc)
                if breaker.state is BreakerState.OPEN:
                    if not self._wait_to_probe():
                        break
                    breaker.probe()
                else:
                    delay = min(breaker.base_cooldown, BACKOFF_BASE * 2 ** (breaker.consecutive - 1))
                    self._stopping.wait(delay * random.uniform(0.5, 1.5))
                continue
            breaker.success()
            return
        self._give_up(rows)

    def _wait_to_probe(self) -> bool:
        """Wait out an open breaker's cool-down; False: give up instead (stopped, or the
        run ended and its one last probe, at most one cool-down after the end, failed)."""
        while not self._stopping.is_set():
            deadline = self.breaker.reopen_at
            if self._closed_at is not None:
                if self._end_probe:
                    return False
                deadline = min(deadline, self._closed_at + self.breaker.base_cooldown)
            left = deadline - time.monotonic()
            if left <= 0:
                if self._closed_at is not None:
                    self._end_probe = True
                return True
            self._wake.wait(left)
            self._wake.clear()
        return False

    def _give_up(self, rows: int) -> None:
        with self._cond:
            self.disabled = True
            held = rows + sum(r for _m, _a, r in self._queue)
            self.dropped += held
        self._event("sink_gave_up", f"{_label(self.sink)}: its breaker is still open at the run's end; "
                                    f"{held} points were not delivered")

    def _failed_once(self, method: str, exc: Exception) -> None:
        if self._warned:
            return
        self._warned = True
        detail = f"{_label(self.sink)}: {method} failed: {exc!r}"
        self._event("sink_failed", detail)
        warnings.warn(
            f"sink {_label(self.sink)!r} is failing for run {self.run_id} ({method}: {exc!r}); its batches are "
            f"held and retried through its circuit breaker (further failures are not warned about)",
            RuntimeWarning,
            stacklevel=2,
        )

    def _breaker_changed(self, state: BreakerState, detail: str) -> None:
        self._event("sink_breaker", f"{_label(self.sink)}: {state}: {detail}")

    def _event(self, event: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(event, detail)

    def _disable(self, method: str, exc: Exception, rows: int) -> None:
        with self._cond:
            self.disabled = True
            self.dropped += rows + sum(r for _m, _a, r in self._queue)
        message = f"{self.retries + 1} failed attempts of {method}: {exc!r}"
        self._event("sink_disabled", f"{_label(self.sink)}: {message}")
        warnings.warn(
            f"sink {_label(self.sink)!r} disabled for run {self.run_id} after {message}",
            RuntimeWarning,
            stacklevel=2,
        )


class InlineWorker(SinkWorker):
    """A non-blocking sink (``threaded = False``), called in the caller's thread.

    Same failure policy as a threaded worker; calls are serialised by a lock."""

    def __init__(self, sink: Sink, run_id: str, retries: int, queue_rows: int,  # noqa: D107
                 route: Route | None = None, on_event=None) -> None:
        self.sink = sink
        self.run_id = run_id
        self.retries = retries
        self.limit = None
        self.dropped = 0
        self.disabled = False
        self.route = route
        self._on_event = on_event
        self.breaker = None  # flow control is for threaded sinks: an inline one never blocks
        self.limiter = None
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

    def __init__(self, run: RunInfo, sinks: list[Sink], retries: int, queue_rows: int, processors=()) -> None:
        self.run = run
        self.sinks = sinks
        self.retries = retries
        self.queue_rows = queue_rows
        self.processors = list(processors)
        self.workers: list[SinkWorker] = []

    def start(self) -> None:
        """Call every sink's ``start_run`` here and now; ``SinkError`` on failure
        (``ConfigError`` for a processor that cannot be made)."""
        routes = [Route.for_sink(sink, self.processors, self._event, _label(sink)) for sink in self.sinks]
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
            (SinkWorker if sink.threaded else InlineWorker)(
                sink, self.run.run_id, self.retries, self.queue_rows, route, self._event
            )
            for sink, route in zip(self.sinks, routes)
        ]

    def _event(self, event: str, detail: str) -> None:
        """Record ``event`` in the run's events (its control plane, in the store)."""
        if not self.run.store_path:
            log.warning("run %s: %s: %s", self.run.run_id, event, detail)
            return
        try:
            from ..store import get_store

            get_store(self.run.store_path).records.event(self.run.run_id, event, detail)
        except Exception:  # noqa: BLE001 - an event is never worth failing a sink's thread
            log.exception("run %s: could not record %s: %s", self.run.run_id, event, detail)

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
