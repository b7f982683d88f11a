"""The background writer: batches every write of this process into short transactions.

Writes are queued (``submit``, ``event``, ``submit_call``, ``submit_metrics``;
the op kinds are in ``ops.py``) and committed by one thread per store, in
submission order, in one transaction per cycle: ATTACH, the run/event rows,
every pending metric batch as one sorted Arrow insert plus the summary upsert,
COMMIT, DETACH. While more work keeps arriving the file stays attached for at
most ``DEFAULT_HOLD`` seconds so high-rate logging does not pay ATTACH/DETACH
per flush; between windows it is detached so readers get in. Its sessions, and
the Arrow building before them, run with a short GIL switch interval
(``_gil.quick_gil_handoff``), so a training loop busy in Python does not
stretch its commits. ``rested`` tells runs the writer has had nothing to do for
a while, so they hand over small batches then (``tracking.run``); ``wait_idle`` lets ``start_run``
return only once the thread has started and committed the run's row.

Nothing is reported written that was not. Queued work is cleared only after its
transaction committed (or it went into a spill), and:

* **a lock held by another process** is waited out, retried with jitter, with a
  warning naming the holder after a few seconds;
* **a store that cannot be written** (a full disk, an I/O error, a database
  DuckDB invalidated, a file that cannot be opened) starts an *outage*: the
  writer keeps everything queued, in order, warns once with the reason and the
  points held, and retries with backoff (``BACKOFF`` doubling up to
  ``MAX_BACKOFF``) on a fresh connection. Meanwhile ``flush()`` raises
  ``StoreUnavailable`` with the points pending. When a run ends (``wait(...,
  spill=True)``), when the process exits, or once more than ``outage_points``
  points are held, the queue moves to a spill on disk (``spill.py``), which the
  next writer to open the store ingests exactly once. If the spill cannot be
  written either, metric batches past the bound are dropped and counted per run
  (``dropped``; ``runs.dropped`` and a ``dropped`` event once the store takes
  writes). When the store takes writes again the writer says so, ingests the
  spills first, then commits what it held;
* **a statement that fails by itself** (a bug, a constraint) is retried, then
  isolated: the others commit, and ``wait``/``flush`` raise its error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque

from ..exceptions import StoreError, StoreLocked, StoreUnavailable
from . import batches, spill
from . import ops as store_ops
from ._gil import quick_gil_handoff

log = logging.getLogger("notebook_exp.store")

DEFAULT_HOLD = 0.25
#: Metric points per transaction at most, so one commit never swallows a whole backlog
#: (keeps commits, and so readers' waits, short when logging outruns the disk).
MAX_TXN_POINTS = 100_000
#: Pause after a window that ended with work still queued, so waiting readers
#: (which retry every 2-10 ms) get the file before the writer takes it again.
READER_GAP = 0.015
#: A run hands over a small batch (``idle_flush_rows``) only once the writer has rested
#: REST times its last window, and at least MIN_REST seconds: at most a third of the
#: time holding the file for small commits, so readers get in (``rested``).
REST = 2.0
MIN_REST = 0.05
#: Points held in memory during an outage before they are spilled.
DEFAULT_OUTAGE_POINTS = 5_000_000
#: First retry delay of an outage, doubled per failure up to MAX_BACKOFF (seconds).
BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: Slice of one wait for another process's lock (the writer looks at stop and
#: spill requests between slices), and how long a stopping writer waits for one.
LOCK_SLICE = 0.5
#: Seconds without anything to write, after a write, before the writer calls ``Store.on_writer_idle``
#: (which may launch automatic compaction in a detached process; ``store/compact.py``).
IDLE_AFTER = 30.0
EXIT_LOCK_WAIT = 3.0
STATEMENT_RETRIES = 3

_UNWRITABLE = ("No space left", "Could not write", "invalidated", "Input/output error", "Read-only file system",
               "Disk quota", "I/O error", "IO Error")


class _Unwritable(Exception):
    """The store cannot take writes at all; ``ops`` were not committed."""

    def __init__(self, reason: str, ops: list) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ops = ops


class Outage:
    """A spell during which the store cannot be written."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.since = time.monotonic()
        self.failures = 1
        self.spill_error: str | None = None  # why the last spill failed, if it did


def unwritable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store cannot be written at all (rather than one bad statement)."""
    import duckdb

    if isinstance(exc, StoreLocked):
        return False
    if isinstance(exc, (OSError, StoreError, duckdb.IOException, duckdb.FatalException)):
        return True
    return any(marker in str(exc) for marker in _UNWRITABLE)


class StoreWriter:
    """Commits queued statements and metric batches to a ``Store``."""

    def __init__(self, store, hold: float = DEFAULT_HOLD, outage_points: int = DEFAULT_OUTAGE_POINTS,
                 spill_dir=None) -> None:
        self.store = store
        self.hold = hold
        self.outage_points = outage_points
        self.spill_dir = spill_dir
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._submitted = 0
        self._settled = 0  # every write up to here is committed, spilled or given up
        self._failed: dict[int, BaseException] = {}
        self._callbacks: dict[int, object] = {}
        self._pending: Counter = Counter()  # run_id -> metric points not yet settled
        self._pending_total = 0
        self._spill_request = False
        self._spilled: list[tuple[int, int, spill.SpillInfo]] = []  # (first seq, last seq, spill)
        self._unrecorded_drops: Counter = Counter()
        self._stopping = False
        self._wrote = False  # committed something since the last idle call
        self.stopped = False
        #: The current outage, if the store cannot be written now.
        self.outage: Outage | None = None
        #: Metric points dropped per run (an outage whose spill failed, past the bound).
        self.dropped: Counter = Counter()
        self.commit_seconds: deque[float] = deque(maxlen=10_000)
        self._busy = False  # between taking ops and announcing them (the thread's)
        self._idle_since = time.monotonic()  # when the last window ended
        self._last_window = 0.0  # how long it held the file (seconds)
        self._started = threading.Event()  # set once the thread imported numpy and pyarrow
        self._thread = threading.Thread(
            target=self._loop, name=f"notebook_exp-writer[{store.path.name}]", daemon=True
        )
        self._thread.start()

    # -- submitting ---------------------------------------------------------
    def submit(self, sql: str, params=None, on_commit=None) -> int:
        """Queue one statement; returns its sequence number. ``on_commit()`` is called
        (from the writer thread) once it is settled: committed, spilled or given up."""
        return self._put(("sql", sql, params), on_commit)

    def event(self, run_id: str | None, event: str, detail: str | None = None, on_commit=None) -> int:
        """Append to the audit trail (``events``): one row, timestamped now. Events of
        a transaction are inserted together, after its other writes."""
        from ._host import HOST, utcnow

        row = (run_id, utcnow(), event, detail[:4000] if detail else None, HOST, os.getpid())
        return self._put(("event", row, None), on_commit)

    def submit_call(self, fn, *args) -> int:
        """Queue ``fn(conn, *args)``, run inside the next transaction (read-then-write
        work). Only functions of this package (with plain arguments) survive a spill."""
        return self._put(("call", fn, args))

    def submit_metrics(self, batch) -> int:
        """Queue a ``MetricBatch``; it is inserted sorted by run, key, step. During an
        outage whose spill failed, a batch past the memory bound is dropped and counted."""
        n = len(batch)
        with self._cond:
            outage = self.outage
            if outage is not None and self._pending_total + n > self.outage_points:
                if outage.spill_error is not None:
                    return self._drop(batch.run_id, n, outage)
                self._spill_request = True
            return self._put(("metrics", batch, None))

    def _drop(self, run_id: str, n: int, outage: Outage) -> int:
        first = not self.dropped
        self.dropped[run_id] += n
        self._unrecorded_drops[run_id] += n
        if first:
            log.error("store %s cannot be written (%s) and neither can a spill (%s): dropping points past "
                      "%d held in memory; counted per run in runs.dropped", self.store.path, outage.reason,
                      outage.spill_error, self.outage_points)
        return self._submitted

    def _put(self, op, on_commit=None, internal: bool = False) -> int:
        with self._cond:
            if self._stopping and not internal:
                raise StoreError(f"the writer of {self.store.path} is stopped")
            if op[0] == "metrics":
                self._pending[op[1].run_id] += len(op[1])
                self._pending_total += len(op[1])
            self._submitted += 1
            self._queue.append((self._submitted, op))
            if on_commit is not None:
                self._callbacks[self._submitted] = on_commit
            self._cond.notify_all()
            return self._submitted

    # -- waiting ------------------------------------------------------------
    def pending(self, run_id: str | None = None) -> int:
        """Metric points queued and not yet committed (of one run, or of all)."""
        with self._cond:
            return self._pending[run_id] if run_id is not None else self._pending_total

    def wait(self, seq: int, timeout: float | None = None, spill: bool = False) -> bool:
        """Wait until write ``seq`` is settled (committed, or kept in a spill); False if
        ``timeout`` passed first. Re-raises its error if it failed by itself. With
        ``spill``, an outage moves the queue to a spill rather than wait it out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._settled < seq:
                if spill and self.outage is not None and not self._spill_request:
                    self._spill_request = True
                    self._cond.notify_all()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(min(left, 1.0) if left is not None else 1.0)
            error = self._failed.pop(seq, None)
        if error is not None:
            raise StoreError(f"write to {self.store.path} failed: {error}") from error
        return True

    @property
    def idle(self) -> bool:
        """Whether the writer has nothing queued and no transaction in progress."""
        return not self._busy and not self._queue

    @property
    def rested(self) -> bool:
        """Whether the writer is idle and has been for ``REST`` times its last window
        (at least ``MIN_REST`` seconds): a run's flush then hands over a small batch
        rather than wait for ``flush_interval`` (``tracking.run``). The rest keeps this
        process's hold on the file to a fraction of the time, so readers and other
        processes' writers get in between its small commits."""
        if self._busy or self._queue:
            return False
        return time.monotonic() - self._idle_since >= max(MIN_REST, REST * self._last_window)

    def wait_idle(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until the thread has started and everything
        submitted so far is settled; never raises (``start_run`` calls it so a training
        loop does not start beside the writer's imports and first commit)."""
        deadline = time.monotonic() + timeout
        if not self._started.wait(timeout):
            return False
        with self._cond:
            seq = self._submitted
            while self._settled < seq and self.outage is None and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._settled >= seq

    def spill_of(self, seq: int) -> spill.SpillInfo | None:
        """The spill that holds write ``seq``, if it went into one."""
        with self._cond:
            for first, last, info in self._spilled:
                if first <= seq <= last:
                    return info
        return None

    def flush(self, timeout: float | None = None, run_id: str | None = None) -> bool:
        """Wait until everything submitted so far is committed; False if ``timeout``
        passed first. Raises ``StoreUnavailable`` (with the points of ``run_id``, or of
        all runs, still pending) while the store cannot be written or writes wait in a
        spill, and ``StoreError`` if a write failed by itself."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            seq = self._submitted
            while self._settled < seq and self.outage is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(min(left, 1.0) if left is not None else 1.0)
            if self.outage is not None or self._spilled:
                raise self.unavailable(run_id)
            errors = [self._failed.pop(s) for s in sorted(self._failed) if s <= seq]
        if errors:
            raise StoreError(f"{len(errors)} write(s) to {self.store.path} failed: {errors[0]}") from errors[0]
        return True

    def unavailable(self, run_id: str | None) -> StoreUnavailable:
        """The ``StoreUnavailable`` that says what is pending (of ``run_id``, or all)."""
        pending = self._pending[run_id] if run_id is not None else self._pending_total
        spilled = [info for _f, _l, info in self._spilled]
        in_spills = sum(info.runs.get(run_id, 0) if run_id else info.points for info in spilled)
        reason = self.outage.reason if self.outage is not None else "its last outage left spills to ingest"
        return StoreUnavailable(str(self.store.path), reason, pending, in_spills,
                                spilled[-1].path if spilled else None)

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued (or spill it, if the store cannot be written or stays
        held for ``EXIT_LOCK_WAIT`` seconds), then stop the thread (idempotent)."""
        with self._cond:
            if self.stopped:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------
    def _take(self, block: bool) -> list | None:
        """The next transaction's ops, in order: everything queued, but at most
        ``MAX_TXN_POINTS`` metric points (always at least one op); None when ``block``
        waited ``IDLE_AFTER`` seconds for work after a write."""
        with self._cond:
            while block and not self._queue and not self._stopping:
                if not self._wrote:
                    self._cond.wait()
                elif not self._cond.wait(IDLE_AFTER) and not self._queue and not self._stopping:
                    self._wrote = False
                    return None
            ops, points = [], 0
            if self._queue:
                self._busy = True  # until the loop announced them (``idle``)
            while self._queue:
                seq, op = self._queue[0]
                if op[0] == "metrics":
                    if ops and points + len(op[1]) > MAX_TXN_POINTS:
                        break
                    points += len(op[1])
                ops.append(self._queue.popleft())
            return ops

    def _loop(self) -> None:
        import numpy  # noqa: F401 - import now, not inside the first commit
        import pyarrow  # noqa: F401

        from .. import _arrow  # noqa: F401 - and what the first batch's Arrow building needs

        self._started.set()
        try:
            while True:
                ops = self._take(block=True)
                if ops is None:
                    self.store.on_writer_idle()  # never raises
                    continue
                if not ops:
                    break  # stopping and drained
                try:
                    self._write_window(ops)
                except _Unwritable as exc:
                    with self._cond:
                        self._queue.extendleft(reversed(exc.ops))
                    self._ride_out(exc.reason)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any one failure
                    log.exception("the writer of %s hit an unexpected error", self.store.path)
                    self._give_up(ops, exc)
                finally:
                    self._busy = False
        finally:
            with self._cond:
                self.stopped = True
                self._cond.notify_all()

    def _write_window(self, ops: list) -> None:
        """Commit ``ops`` and whatever is queued meanwhile, for at most ``hold`` seconds.

        The file is detached before the last commit of a window is announced, so
        whoever waited on ``flush`` can open the file right away.
        """
        opened = time.monotonic()
        saturated = False
        committed = None
        try:
            while True:
                self._commit(ops)
                committed = ops
                self._wrote = True
                saturated = time.monotonic() - opened >= self.hold
                more = None if saturated else self._take(block=False)
                if not more:
                    break
                self._done(committed)
                committed, ops = None, more
        finally:
            self.store.release()
            self._idle_since = time.monotonic()
            self._last_window = self._idle_since - opened
            if committed is not None:
                self._done(committed)
        if saturated:
            time.sleep(READER_GAP)  # let readers in between windows

    def _commit(self, ops: list) -> None:
        with quick_gil_handoff():  # numpy and Arrow work: as exposed to a busy loop as DuckDB's
            for _seq, (kind, payload, _args) in ops:
                if kind == "metrics":
                    batches.tables(payload)  # before taking the file: readers wait less, commits are shorter
        started = time.perf_counter()
        for attempt in range(STATEMENT_RETRIES + 1):
            try:
                self._transaction(ops)
                self.commit_seconds.append(time.perf_counter() - started)
                return
            except _Unwritable:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate, never lose the queue silently
                self.store.release()
                if attempt < STATEMENT_RETRIES:
                    log.warning("write to %s failed (%s); retrying", self.store.path, exc)
                    time.sleep(0.05 * 2 ** (attempt + 1))
        self._commit_one_by_one(ops)

    def _transaction(self, ops: list) -> None:
        """One transaction of ``ops``; waits out other processes' locks (``_Unwritable``
        when stopping and held too long, or when the store cannot be written)."""
        waited_from = None
        warned = False
        while True:
            try:
                with self.store.session(write=True, timeout=LOCK_SLICE, keep=True) as conn:
                    _run_transaction(conn, ops)
                if self.outage is not None:
                    self._recovered()
                return
            except StoreLocked as exc:
                waited_from = waited_from or time.monotonic()
                waited = time.monotonic() - waited_from
                holder = f"process {exc.pid}" if exc.pid else "another process"
                if self._stopping and waited >= EXIT_LOCK_WAIT:
                    raise _Unwritable(f"held by {holder} at exit", ops) from exc
                if not warned and waited >= self.store.warn_after:
                    warned = True
                    log.warning("store %s is held by %s for %.0f s; %d points wait in memory",
                                self.store.path, holder, waited, self.pending())
            except Exception as exc:  # noqa: BLE001 - sorted into outage or bad statement
                if unwritable(exc):
                    raise _Unwritable(f"{type(exc).__name__}: {exc}", ops) from exc
                raise

    def _commit_one_by_one(self, ops: list) -> None:
        """Last resort: isolate the write that keeps failing; commit the rest. The
        caller announces them all, after the file is detached."""
        for index, op in enumerate(ops):
            try:
                self._transaction([op])
            except _Unwritable as exc:
                self.store.release()
                if index:
                    self._done(ops[:index])
                exc.ops = ops[index:]
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("giving up a write to %s that keeps failing: %s", self.store.path, exc)
                with self._cond:
                    self._failed[op[0]] = exc

    def _give_up(self, ops: list, exc: BaseException) -> None:
        with self._cond:
            for seq, _op in ops:
                self._failed.setdefault(seq, exc)
        self._done(ops)

    def _done(self, ops: list) -> None:
        with self._cond:
            self._settled = max(self._settled, ops[-1][0])
            callbacks = [self._callbacks.pop(seq) for seq, _op in ops if seq in self._callbacks]
            for _seq, (kind, payload, _args) in ops:
                if kind == "metrics":
                    self._pending[payload.run_id] -= len(payload)
                    self._pending_total -= len(payload)
                    if self._pending[payload.run_id] <= 0:
                        del self._pending[payload.run_id]
            self._cond.notify_all()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a callback must not stop the writer
                log.exception("a commit callback failed")

    # -- outages ----------------------------------------------------------------
    def _ride_out(self, reason: str) -> None:
        """The store cannot be written: note the outage, wait (backoff), spill if asked."""
        self.store.reset()  # a fresh connection; the next attach re-prepares (and ingests spills)
        with self._cond:
            outage = self.outage
            if outage is None:
                outage = self.outage = Outage(reason)
                log.warning("store %s cannot be written (%s): %d points held in memory and retried; they go "
                            "to a spill if a run ends, the process exits or more than %d are held",
                            self.store.path, reason, self._pending_total, self.outage_points)
            else:
                outage.failures += 1
                outage.reason = reason
            self._cond.notify_all()  # flush() waiters raise now
            deadline = time.monotonic() + min(MAX_BACKOFF, BACKOFF * 2 ** (outage.failures - 1))
            while not self._wants_spill() and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            wants = self._wants_spill()
            self._spill_request = False
        if wants:
            self._spill(reason)

    def _wants_spill(self) -> bool:
        return self._stopping or self._spill_request or self._pending_total > self.outage_points

    def _spill(self, reason: str) -> None:
        from ._host import HOST

        with self._cond:
            ops = list(self._queue)
            self._queue.clear()
            taken = Counter(self._unrecorded_drops)
            drops = self._drop_records()
        if not ops and not drops:
            return
        try:
            info = spill.write(self.store.path, self.spill_dir, ops + drops, reason, HOST)
        except OSError as exc:
            with self._cond:
                if self.outage is not None:
                    self.outage.spill_error = str(exc)
                if not self._stopping:
                    self._queue.extendleft(reversed(ops))
                    self._unrecorded_drops.update(taken)  # recorded later, with the store or a spill
                    return
            log.error("store %s cannot be written (%s) and no spill could be written (%s): %d points and "
                      "%d writes are lost at exit", self.store.path, reason, exc, store_ops.metric_points(ops),
                      len(ops))
            if ops:
                self._give_up(ops, exc)
            return
        with self._cond:
            if ops:
                self._spilled.append((ops[0][0], ops[-1][0], info))
            if self.outage is not None:
                self.outage.spill_error = None
        log.warning("store %s cannot be written (%s): %d points of %d run(s) and %d writes kept in spill %s; "
                    "the next writer to open the store ingests it (or: notebook-exp recover)",
                    self.store.path, reason, info.points, len(info.runs), info.ops, info.path)
        if ops:
            self._done(ops)

    def _drop_records(self) -> list:
        """The dropped counts not yet written, as ``(0, op)`` pairs: ``runs.dropped``
        and a ``dropped`` event per run (call with ``_cond`` held)."""
        from ._host import HOST, utcnow

        records = []
        for run_id, n in self._unrecorded_drops.items():
            detail = f"{n} points dropped: the store could not be written and neither could a spill"
            records.append((0, ("sql", "UPDATE runs SET dropped = coalesce(dropped, 0) + ? WHERE run_id = ?",
                                [n, run_id])))
            records.append((0, ("event", (run_id, utcnow(), "dropped", detail, HOST, os.getpid()), None)))
        self._unrecorded_drops.clear()
        return records

    def _recovered(self) -> None:
        """The first commit after an outage went through: say so; record drops."""
        with self._cond:
            outage, self.outage = self.outage, None
            self._spilled.clear()  # the store was prepared again, which ingested them
            for _zero, op in self._drop_records():
                self._put(op, internal=True)
            self._cond.notify_all()
        log.warning("store %s can be written again after %.1f s (%d failed tries)", self.store.path,
                    time.monotonic() - outage.since, outage.failures)


def _run_transaction(conn, ops: list) -> None:
    """Apply ``ops`` in submission order in one transaction (see ``ops.apply``)."""
    conn.execute("BEGIN")
    try:
        store_ops.apply(conn, ops)
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the original error matters
            pass
        raise
