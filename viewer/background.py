"""Store reads off the event loop: ``Reads`` and the thread pool they run on.

A Panel server runs the callbacks of every browser session on one event loop,
so a store read made there (DuckDB's lock wait, the pause between reads)
would freeze every tab at once. Views hand their reads over instead::

    state.reads.submit("runs", read=lambda: state.list_runs(), apply=table.load)

``read()`` runs on a small thread pool shared by the process; ``apply(result)``
runs on the session's loop, in a next-tick callback of its ``Document``, the
one place bokeh and Panel models may be changed. Pool threads never touch the
Document: they only wake the loop (``call_soon_threadsafe``), which adds the
callback. Without a server session (tests, a notebook) both run at once, on
the caller's thread.

Per key only the latest submission is applied, so a filter typed quickly or a
zoom that supersedes a refresh never shows an older answer. A read that finds
the store busy or unusable (``StoreError``: ``StoreLocked`` after the state's
short lock wait) sets the status to "store busy, retrying ..." and is kept;
:meth:`Reads.retry` (the app's periodic refresh calls it) submits it again,
and the status clears once nothing is waiting any more. Periodic reads are
not kept: the next period submits them again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from notebook_exp.exceptions import StoreError, StoreLocked

__all__ = ["BUSY", "DEFAULT_WORKERS", "Reads", "busy_message", "read_pool", "stop_pool"]

log = logging.getLogger("notebook_exp.viewer")

DEFAULT_WORKERS = 4  # reads of one file queue on its gate anyway; a few let other stores' reads pass
BUSY = "store busy, retrying"
DEFAULT_RETRY_EVERY = 0.5  # seconds between tries of a download that found the store busy
DEFAULT_DOWNLOAD_PATIENCE = 30.0  # how long a download keeps trying before it gives up

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def read_pool() -> ThreadPoolExecutor:
    """The process's pool for viewer reads (started on first use, stopped at shutdown)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from notebook_exp import _exit

            _exit.on_shutdown(stop_pool, order=30)
            _pool = ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix="notebook_exp-viewer-read")
        return _pool


def stop_pool() -> None:
    """Stop the pool: queued reads are dropped, a running one ends within its lock wait (idempotent)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def busy_message(exc: BaseException) -> str:
    """The status line for a read that failed on the store."""
    if isinstance(exc, StoreLocked):
        holder = f" (held by process {exc.pid})" if exc.pid else ""
        return f"{BUSY}{holder}"
    return f"store unavailable, retrying: {exc}"


@dataclass
class _Job:
    key: str
    seq: int
    read: Callable[[], object]
    apply: Callable[[object], None]
    fail: Callable[[Exception], None] | None
    periodic: bool
    delivered: bool = False


class Reads:
    """The reads of one session: submitted from its loop, applied on its loop.

    ``doc`` is the session's bokeh ``Document`` (``None``: no server, run
    inline) and ``loop`` its event loop (default: the one running, as when a
    session is created); ``on_status`` receives the status line ("" when all
    is well).
    """

    def __init__(self, doc=None, on_status: Callable[[str], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.doc = doc
        self.loop = loop if loop is not None or doc is None else asyncio.get_running_loop()
        self.on_status = on_status
        self.status = ""
        self._seq = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._futures: dict[str, Future] = {}
        self._waiting: dict[str, _Job] = {}
        self._closed = False

    def submit(self, key: str, read: Callable[[], object], apply: Callable[[object], None],
               fail: Callable[[Exception], None] | None = None, periodic: bool = False) -> None:
        """Run ``read()`` off the loop, then ``apply(result)`` on it (unless superseded).

        ``fail(exc)`` receives an error of ``read`` other than ``StoreError``
        (inline without ``fail``, the error propagates). ``periodic`` reads are
        skipped while one of the same key is in flight or waiting for a retry.
        """
        if self._closed or (periodic and (key in self._futures or key in self._waiting)):
            return
        job = _Job(key, next(self._seq), read, apply, fail, periodic)
        self._latest[key] = job.seq
        self._waiting.pop(key, None)
        previous = self._futures.pop(key, None)
        if previous is not None:
            previous.cancel()  # not started yet: nobody wants its answer
        if self.doc is None:
            self._run_inline(job)
            return
        future = read_pool().submit(job.read)
        self._futures[key] = future
        future.add_done_callback(partial(self._schedule, job))

    def retry(self) -> None:
        """Submit again every read that found the store busy."""
        waiting, self._waiting = list(self._waiting.values()), {}
        for job in waiting:
            self.submit(job.key, job.read, job.apply, job.fail)

    def report(self, text: str) -> None:
        """Show ``text`` as the status until the next read succeeds."""
        self._set_status(text)

    @property
    def waiting(self) -> list[str]:
        """Keys of the reads waiting for the store."""
        return list(self._waiting)

    @property
    def in_flight(self) -> list[str]:
        """Keys of the reads submitted and not applied (or dropped) yet."""
        return list(self._futures)

    def close(self) -> None:
        """Drop every pending read (the session ended)."""
        self._closed = True
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._waiting.clear()

    async def call(self, read: Callable[[], object], patience: float = DEFAULT_DOWNLOAD_PATIENCE):
        """``await`` ``read()`` run off the loop, retrying while the store is busy (downloads)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                result = await loop.run_in_executor(read_pool(), read)
            except StoreError as exc:
                self._set_status(busy_message(exc))
                if loop.time() + DEFAULT_RETRY_EVERY > deadline:
                    raise
                await asyncio.sleep(DEFAULT_RETRY_EVERY)
                continue
            self._settle()
            return result

    # -- internals ----------------------------------------------------------------
    def _run_inline(self, job: _Job) -> None:
        try:
            result = job.read()
        except StoreError as exc:
            self._keep(job, exc)
            return
        except Exception as exc:
            if job.fail is None:
                raise
            job.fail(exc)
            return
        job.apply(result)
        self._settle()

    def _schedule(self, job: _Job, future: Future) -> None:
        """(any thread) Wake the session's loop to take the finished read."""
        if self._closed:
            return
        try:
            self.loop.call_soon_threadsafe(self._hand_over, job, future)
        except RuntimeError:  # the loop is closed: the server stopped
            pass

    def _hand_over(self, job: _Job, future: Future) -> None:
        """(the loop) Apply the read in the document's next tick (which holds its lock)."""
        if self._closed:
            return
        try:
            self.doc.add_next_tick_callback(partial(self._finish, job, future))
        except Exception:  # noqa: BLE001 - the session is being destroyed: nobody to tell
            log.debug("session gone; dropping a read", exc_info=True)

    def _finish(self, job: _Job, future: Future) -> None:
        """(the loop) Apply a finished read if it is still the latest of its key."""
        if self._futures.get(job.key) is future:
            del self._futures[job.key]
        if self._closed or job.delivered or self._latest.get(job.key) != job.seq:
            return
        job.delivered = True
        if future.cancelled():  # the pool was stopped under it
            self._keep(job, StoreError("reads were interrupted"))
            return
        from panel.io.state import set_curdoc

        with set_curdoc(self.doc):
            self._deliver(job, future)

    def _deliver(self, job: _Job, future: Future) -> None:
        exc = future.exception()
        try:
            if isinstance(exc, StoreError):
                self._keep(job, exc)
            elif exc is not None and job.fail is not None:
                job.fail(exc)
            elif exc is not None:
                raise exc
            else:
                job.apply(future.result())
                self._settle()
        except Exception as error:  # noqa: BLE001 - keep the session alive; say what went wrong
            log.warning("viewer refresh failed: %s", error)
            self._set_status(f"refresh failed: {error}")

    def _keep(self, job: _Job, exc: Exception) -> None:
        if not job.periodic:
            self._waiting[job.key] = job
        self._set_status(busy_message(exc))

    def _settle(self) -> None:
        """A read succeeded: clear the status unless others still wait for the store."""
        if not self._waiting:
            self._set_status("")

    def _set_status(self, text: str) -> None:
        if text != self.status:
            self.status = text
            if self.on_status is not None:
                self.on_status(text)
