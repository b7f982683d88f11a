"""The background writer: batches every write of this process into short transactions.

Writes are queued (``submit``) and committed by one thread per store, in
submission order, in one transaction per cycle: ATTACH, the run/event rows,
every pending metric batch as one sorted Arrow insert plus the summary upsert,
COMMIT, DETACH. While more work keeps arriving the file stays attached for at
most ``DEFAULT_HOLD`` seconds so high-rate logging does not pay ATTACH/DETACH
per flush; between windows it is detached so readers get in.

Its sessions, like every store session, and the Arrow building before them run
with a short GIL switch interval (``_gil.quick_gil_handoff``), so a training
loop busy in Python does not stretch its commits.

Nothing is dropped: a lock held by another process is waited out (retried
with jitter, warned about after a few seconds); queued work is cleared only
after its transaction committed. ``flush()`` waits until everything submitted
before it is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..exceptions import StoreError
from ..models import MetricBatch
from . import schema
from ._gil import quick_gil_handoff

log = logging.getLogger("notebook_exp.store")

DEFAULT_HOLD = 0.25
#: Metric points per transaction at most, so one commit never swallows a whole backlog
#: (keeps commits, and so readers' waits, short when logging outruns the disk).
MAX_TXN_POINTS = 100_000
#: Pause after a window that ended with work still queued, so waiting readers
#: (which retry every 2-10 ms) get the file before the writer takes it again.
READER_GAP = 0.015


class StoreWriter:
    """Commits queued statements and metric batches to a ``Store``."""

    def __init__(self, store, hold: float = DEFAULT_HOLD) -> None:
        self.store = store
        self.hold = hold
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._submitted = 0
        self._committed = 0
        self._failed: dict[int, BaseException] = {}
        self._callbacks: dict[int, object] = {}
        self._stopping = False
        self.stopped = False
        self.commit_seconds: deque[float] = deque(maxlen=10_000)
        self._thread = threading.Thread(
            target=self._loop, name=f"notebook_exp-writer[{store.path.name}]", daemon=True
        )
        self._thread.start()

    # -- submitting ---------------------------------------------------------
    def submit(self, sql: str, params=None, on_commit=None) -> int:
        """Queue one statement; returns its sequence number. ``on_commit()`` is called
        (from the writer thread) once it is committed, or given up."""
        return self._put(("sql", sql, params), on_commit)

    def event(self, run_id: str | None, event: str, detail: str | None = None, on_commit=None) -> int:
        """Append to the audit trail (``events``): one row, timestamped now. Events of
        a transaction are inserted together, after its other writes."""
        import os

        from .core import HOST, utcnow

        row = (run_id, utcnow(), event, detail[:4000] if detail else None, HOST, os.getpid())
        return self._put(("event", row, None), on_commit)

    def submit_call(self, fn) -> int:
        """Queue ``fn(conn)``, run inside the next transaction (read-then-write work)."""
        return self._put(("call", fn, None))

    def submit_metrics(self, batch: MetricBatch) -> int:
        """Queue a metric batch; it is inserted sorted by run, key, step."""
        return self._put(("metrics", batch, None))

    def _put(self, op, on_commit=None) -> int:
        with self._cond:
            if self._stopping:
                raise StoreError(f"the writer of {self.store.path} is stopped")
            self._submitted += 1
            self._queue.append((self._submitted, op))
            if on_commit is not None:
                self._callbacks[self._submitted] = on_commit
            self._cond.notify_all()
            return self._submitted

    def wait(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until write ``seq`` committed; re-raise its error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._committed < seq:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
            error = self._failed.pop(seq, None)
        if error is not None:
            raise StoreError(f"write to {self.store.path} failed: {error}") from error
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed."""
        with self._cond:
            seq = self._submitted
        return self.wait(seq, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the thread (idempotent)."""
        with self._cond:
            if self.stopped:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------
    def _take(self, block: bool) -> list:
        """The next transaction's ops, in order: everything queued, but at most
        ``MAX_TXN_POINTS`` metric points (always at least one op)."""
        with self._cond:
            while block and not self._queue and not self._stopping:
                self._cond.wait()
            ops, points = [], 0
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

        try:
            while True:
                ops = self._take(block=True)
                if not ops:
                    break  # stopping and drained
                try:
                    self._write_window(ops)
                except Exception:  # noqa: BLE001 - the writer must outlive any one failure
                    log.exception("the writer of %s hit an unexpected error", self.store.path)
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
        try:
            while True:
                self._commit(ops)
                saturated = time.monotonic() - opened >= self.hold
                more = None if saturated else self._take(block=False)
                if not more:
                    break
                self._done(ops)
                ops = more
        except BaseException as exc:
            with self._cond:
                for seq, _op in ops:
                    self._failed.setdefault(seq, exc)
            raise
        finally:
            self.store.release()
            self._done(ops)
        if saturated:
            time.sleep(READER_GAP)  # let readers in between windows

    def _commit(self, ops: list) -> None:
        with quick_gil_handoff():  # numpy and Arrow work: as exposed to a busy loop as DuckDB's
            for _seq, (kind, payload, _params) in ops:
                if kind == "metrics":
                    payload.to_arrow()  # before taking the file: readers wait less, commits are shorter
        started = time.perf_counter()
        for attempt in range(1, 5):
            try:
                with self.store.session(write=True, timeout=None, keep=True) as conn:
                    _run_transaction(conn, ops)
                self.commit_seconds.append(time.perf_counter() - started)
                return
            except Exception as exc:  # noqa: BLE001 - isolate, never lose the queue silently
                self.store.release()
                if attempt < 4:
                    log.warning("write to %s failed (%s); retrying", self.store.path, exc)
                    time.sleep(0.05 * 2**attempt)
        self._commit_one_by_one(ops)

    def _commit_one_by_one(self, ops: list) -> None:
        """Last resort: isolate the write that keeps failing; commit the rest."""
        for op in ops:
            try:
                with self.store.session(write=True, timeout=None, keep=True) as conn:
                    _run_transaction(conn, [op])
            except Exception as exc:  # noqa: BLE001
                log.error("giving up a write to %s that keeps failing: %s", self.store.path, exc)
                with self._cond:
                    self._failed[op[0]] = exc

    def _done(self, ops: list) -> None:
        with self._cond:
            self._committed = max(self._committed, ops[-1][0])
            callbacks = [self._callbacks.pop(seq) for seq, _op in ops if seq in self._callbacks]
            self._cond.notify_all()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a callback must not stop the writer
                log.exception("a commit callback failed")


def _run_transaction(conn, ops: list) -> None:
    """Apply ``ops`` in submission order in one transaction; consecutive metric
    batches are inserted together."""
    batches: list[MetricBatch] = []
    events: list[tuple] = []
    conn.execute("BEGIN")
    try:
        for _seq, (kind, payload, params) in ops:
            if kind == "event":  # append-only and read by nothing here: safe to move last
                events.append(payload)
                continue
            if kind == "metrics":
                if len(payload):
                    batches.append(payload)
                continue
            if batches:
                _insert_metrics(conn, batches)
                batches = []
            if kind == "call":
                payload(conn)
            elif params is None:
                conn.execute(payload)
            else:
                conn.execute(payload, params)
        if batches:
            _insert_metrics(conn, batches)
        if events:
            values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(events))
            conn.execute(f"INSERT INTO events VALUES {values}", [v for row in events for v in row])
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the original error matters
            pass
        raise


def _insert_metrics(conn, batches: list[MetricBatch]) -> None:
    import numpy as np
    import pyarrow as pa

    from .._arrow import dictionary

    def with_run_ids(tables: list) -> pa.Table:
        merged = pa.concat_tables(tables, promote_options="permissive")
        codes = np.repeat(np.arange(len(batches), dtype=np.int32), [t.num_rows for t in tables])
        return merged.append_column("run_id", dictionary(codes, [b.run_id for b in batches]))

    conn.register("__batch", with_run_ids([b.to_arrow() for b in batches]))
    conn.register("__summary", with_run_ids([b.summary() for b in batches]))
    try:
        conn.execute(schema.INSERT_METRICS)
        conn.execute(schema.UPSERT_SUMMARY)
    finally:
        conn.unregister("__batch")
        conn.unregister("__summary")
