"""One DuckDB store file as seen from this process.

DuckDB lets one process at a time hold a file read-write, and a reader that
keeps it open blocks every writer (docs/architecture.md §3). So a ``Store`` keeps an
in-memory connection and attaches the file only for short sessions::

    ATTACH 'store.duckdb' AS store   -- retried on lock conflicts, jittered 2-10 ms
    ... one transaction ...
    DETACH store

A read-write attach first takes the writers' turn, an ``flock`` of
``<store>.writers.lock`` held while attached, so writers of this package that wait
for each other retry on a cheap system call rather than a DuckDB ATTACH, and a
reader kept waiting holds ``<store>.readers.lock`` shared, during which writers
take no new turn (docs/architecture.md "Many writers"). The writer may hold its attachment for a bounded window when it
has more to write. Once the writer has been idle a while it calls
``Store.on_writer_idle``, which may launch automatic compaction in a detached
process (``compact.py``). All sessions of one process go through one lock, so the
writer thread and in-process readers never step on each other, and all run with a
short GIL switch interval (``_gil``), so a busy training loop does not stretch them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: DuckDB's lock alone
    fcntl = None

from ..exceptions import StoreError, StoreLocked
from ..models import RunStatus
from . import schema
from ._gil import quick_gil_handoff
from ._host import HOST, utcnow

__all__ = ["Store", "close_all", "get_store", "utcnow"]

log = logging.getLogger("notebook_exp.store")

_PID_RE = re.compile(r"PID (\d+)")
DEFAULT_WARN_AFTER = 5.0
#: ``Store.on_writer_idle`` launches the compactor only for a file at least this big (``check`` wants 1 MB
#: and a quarter of the file saved) ...
AUTO_COMPACT_MIN_BYTES = 4_000_000
#: ... and only once it grew by this factor since the last launch from this process.
AUTO_COMPACT_GROWTH = 1.25
#: Whether writers of this package take turns through ``<store>.writers.lock`` (see ``Store._take_turn``).
DEFAULT_USE_TURN = True
#: Whether writers let readers that wait for the file go first (see ``Store._wait_as_reader``).
DEFAULT_READERS_FIRST = True
#: What the launched process runs (``store/compact.py``: ``main``, then ``auto_compact``).
_AUTO_COMPACT = "import sys; from notebook_exp.store.compact import main; sys.exit(main())"


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc)
    return (
        "Could not set lock" in text
        or "Conflicting lock" in text
        or "Unique file handle conflict" in text  # another connection of this process has it open
    )


def holder_pid(exc: Exception) -> int | None:
    """The PID DuckDB names in a lock-conflict error, if any."""
    match = _PID_RE.search(str(exc))
    if match:
        return int(match.group(1))
    return os.getpid() if "Unique file handle conflict" in str(exc) else None


class Store:
    """A store file and this process's one connection to it."""

    def __init__(self, path: str | os.PathLike, lock_timeout: float = 120.0, *, spill_dir=None,
                 outage_points: int | None = None, auto_compact: bool = False) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout = lock_timeout
        #: Where spills go (None: ``<store file>.spill`` beside the store; see ``spill.py``).
        self.spill_dir = Path(spill_dir).expanduser().absolute() if spill_dir is not None else None
        #: Points the writer holds in memory during an outage before it spills them.
        self.outage_points = outage_points
        self._lock = threading.RLock()
        self._conn = None
        self._mode: str | None = None  # None, "ro" or "rw"
        self._ready = False  # schema checked and lost runs recovered
        self._writer = None
        self._writer_lock = threading.Lock()
        self._waiting_for: int | None = None
        self._records = None
        self.warn_after = DEFAULT_WARN_AFTER
        #: Whether ``on_writer_idle`` launches automatic compaction.
        self.auto_compact = auto_compact
        self._compactor = None  # the last process ``on_writer_idle`` launched
        self._compacted_at = 0  # the file's size when it did
        #: ``<store>.writers.lock``: the writers' turn (see ``_take_turn``); its descriptor while this process has it
        self._turn_path = self.path.with_name(self.path.name + ".writers.lock")
        self._turn_fd: int | None = None
        #: Whether writers take the turn file before DuckDB's lock (False: DuckDB's lock alone).
        self.use_turn = DEFAULT_USE_TURN
        #: ``<store>.readers.lock``: held shared by readers waiting for the file (``_wait_as_reader``).
        self._readers_path = self.path.with_name(self.path.name + ".readers.lock")
        #: Whether writers let waiting readers go first (``_readers_waiting``).
        self.readers_first = DEFAULT_READERS_FIRST

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- connection ---------------------------------------------------------
    def _connection(self):
        if self._conn is None:
            import duckdb

            from .. import _exit

            _exit.install()  # duckdb registered its own atexit callback: ours must run before it
            self._conn = duckdb.connect(
                ":memory:",
                config={
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                },
            )
            # A query past 2 s would draw DuckDB's progress-bar widget into whatever cell is running
            # (a background flush under load did, in a notebook); not settable in ``config``.
            self._conn.execute("SET enable_progress_bar = false")
            # A store this process creates gets small blocks (``schema.BLOCK_SIZE``); an existing
            # file keeps its own.
            self._conn.execute(f"SET default_block_size = {schema.BLOCK_SIZE}")
        return self._conn

    def _try_attach(self, write: bool) -> int | None:
        """Attach the file now, under ``self._lock``: None once attached, else the PID
        (or 0 when unknown) of the process whose lock stands in the way."""
        want = "rw" if write else "ro"
        if self._mode != want:  # a read never reuses a read-write attachment: queries stay read-only
            if self._mode is not None:
                self._detach()
            if write:
                self._make_parent()
                holder = self._take_turn()
                if holder is not None:
                    return holder
            elif not self.path.exists():
                raise StoreError(f"no store at {self.path} (nothing has been logged there yet)")
            conn = self._connection()
            quoted = str(self.path).replace("'", "''")
            import duckdb

            try:
                conn.execute(f"ATTACH '{quoted}' AS store" + ("" if write else " (READ_ONLY)"))
            except BaseException as exc:
                self._give_turn()
                if not isinstance(exc, duckdb.Error):
                    raise
                if not _is_lock_conflict(exc):
                    raise StoreError(f"cannot open store {self.path}: {exc}") from exc
                return holder_pid(exc) or 0
            conn.execute("USE store")
            self._mode = want
        if write and not self._ready:
            self._prepare(self._conn)
        return None

    def _acquire(self, write: bool, timeout: float | None) -> None:
        """Take ``self._lock`` and attach the file, waiting at most ``timeout`` seconds
        (None: for ever) for this process's other sessions and other processes' locks.

        Between two tries the lock is let go, so this process's other sessions (an
        in-kernel viewer, a flush) are never stuck behind a writer that waits out
        another process. A reader that found the file held says so (``_wait_as_reader``)
        until it gets in. Raises ``StoreLocked`` naming the holder's PID.
        """
        waiting: list[int] = []
        try:
            self._tries(write, timeout, waiting)
        finally:
            for fd in waiting:
                os.close(fd)  # closing the only descriptor drops its shared lock

    def _tries(self, write: bool, timeout: float | None, waiting: list[int]) -> None:
        start = time.monotonic()
        warned = False
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if not self._lock.acquire(timeout=-1 if left is None else max(left, 0.0)):
                raise StoreLocked(str(self.path), os.getpid(), time.monotonic() - start)
            try:
                holder = self._try_attach(write)
            except BaseException:
                self._lock.release()
                raise
            if holder is None:
                if write:
                    self._waiting_for = None
                return
            self._lock.release()
            waited = time.monotonic() - start
            if not write:
                self._wait_as_reader(waiting)
            if write:
                self._waiting_for = holder
            if timeout is not None and waited >= timeout:
                raise StoreLocked(str(self.path), holder or None, waited)
            if not warned and waited >= self.warn_after:
                warned = True
                log.warning(
                    "store %s is held by process %s for %.0f s; still waiting",
                    self.path, holder or "?", waited,
                )
            time.sleep(random.uniform(0.002, 0.010))

    def _wait_as_reader(self, waiting: list[int]) -> None:
        """Hold a shared ``flock`` of ``<store>.readers.lock`` while a reader waits for the
        file (its descriptor goes into ``waiting``; nothing where it cannot be made):
        writers of this package do not take their next turn while one is held, so a
        waiting reader gets the file when the current window ends rather than after
        every writer's next one. Taken again at each try: a writer looking at that very
        moment makes one try fail."""
        if fcntl is None or not self.use_turn:
            return
        if not waiting:
            try:
                waiting.append(os.open(self._readers_path, os.O_RDWR | os.O_CREAT, 0o666))
            except OSError:
                return
        with contextlib.suppress(OSError):
            fcntl.flock(waiting[0], fcntl.LOCK_SH | fcntl.LOCK_NB)

    def _readers_waiting(self) -> bool:
        """Whether a reader of this package waits for the file (``_wait_as_reader``)."""
        try:
            fd = os.open(self._readers_path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # (and with it the lock, if it was taken)
        return False

    def _take_turn(self) -> int | None:
        """Take the writers' turn: an exclusive ``flock`` of ``<store>.writers.lock``, held
        while this process has the store attached read-write. None once taken (or when the
        file cannot be made: DuckDB's lock alone decides then), else the PID written in it
        (0 when unknown). Writers of this package that wait for each other then fail on a
        2 us system call instead of a DuckDB ATTACH (0.6 ms of CPU each, measured), which
        with four writer processes on two cores took the CPU the writer holding the file
        needed (``benchmarks/bench_writers.py``; docs/architecture.md "Many writers")."""
        if self._turn_fd is not None or fcntl is None or not self.use_turn:
            return None
        if self.readers_first and self._readers_waiting():
            return 0
        try:
            fd = os.open(self._turn_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = int(os.pread(fd, 20, 0) or 0)
            except (OSError, ValueError):
                holder = 0
            finally:
                os.close(fd)
            if holder and not _process_alive(holder, None):
                return None  # a dead writer's descriptor lives on in a child it forked: DuckDB's lock decides
            return holder
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._turn_fd = fd
        return None

    def _give_turn(self) -> None:
        fd, self._turn_fd = self._turn_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked child's copy of the descriptor must not keep it
            os.close(fd)

    def _detach(self) -> None:
        try:
            if self._mode is not None:
                self._detach_file()
        finally:
            self._give_turn()

    def _detach_file(self) -> None:
        conn = self._conn
        try:
            conn.execute("USE memory")
            conn.execute("DETACH store")
        except Exception as exc:  # noqa: BLE001 - e.g. a transaction left aborted, a full disk: start clean
            log.warning("detaching %s failed (%s); reopening the connection", self.path,
                        str(exc).splitlines()[0])
            self._conn = None
            try:
                conn.close()  # closing the in-memory database releases the file
            except Exception:  # noqa: BLE001
                pass
        self._mode = None

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of store {self.path}: {exc}") from exc
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"cannot write store {self.path}: permission denied")

    def _prepare(self, conn) -> None:
        """First write session of this process (or the first after an outage): the
        schema, then every pending spill (older than anything queued now), then runs
        of dead processes."""
        from . import spill

        def transaction(work) -> None:
            conn.execute("BEGIN")
            try:
                work()
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise

        def create() -> None:
            conn.execute(schema.TABLES)
            conn.execute(schema.MIGRATIONS)
            conn.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [schema.SCHEMA_VERSION],
            )

        transaction(create)
        spill.ingest(conn, self.path, self.spill_dir, HOST)
        transaction(lambda: _recover_lost_runs(conn))
        self._ready = True

    @contextlib.contextmanager
    def session(self, write: bool = False, timeout: float | None = -1.0, keep: bool = False) -> Iterator:
        """Attach the file (read-write or read-only) and yield the connection.

        ``timeout`` is how long to wait, in all, for this process's other sessions
        and another process's lock: ``None`` waits for ever (writers never drop
        data), the default is the store's ``lock_timeout``; past it ``StoreLocked``
        names the holder. With ``keep`` the file stays attached afterwards until
        :meth:`release` (the writer's bounded window).
        """
        if timeout is not None and timeout < 0:
            timeout = self.lock_timeout
        with quick_gil_handoff():
            self._acquire(write, timeout)
            try:
                yield self._conn
            finally:
                try:
                    if not keep:
                        self._detach()
                finally:
                    self._lock.release()

    @property
    def waiting_for(self) -> int | None:
        """The PID of the process whose lock this process's writer is waiting out
        right now (0 when DuckDB did not name it), else None."""
        return self._waiting_for

    @property
    def outage(self):
        """The writer's current ``Outage`` (reason, since) while the store cannot be written, else None."""
        writer = self._writer
        return writer.outage if writer is not None else None

    @property
    def ready(self) -> bool:
        """Whether this process already created or checked the file and schema."""
        return self._ready

    def release(self) -> None:
        """Detach the file if a kept session left it attached (DETACH checkpoints: DuckDB work too)."""
        with self._lock, quick_gil_handoff():
            self._detach()

    def on_writer_idle(self):
        """The writer's thread calls this once nothing was written for a while. With
        ``auto_compact`` on, a file of at least ``AUTO_COMPACT_MIN_BYTES`` that grew by
        ``AUTO_COMPACT_GROWTH`` since the last launch, and no compactor of this process still
        running, it launches automatic compaction in a detached process at the lowest
        priority (``compact.auto_compact``, which waits for the store to stay unwritten,
        checks it, and compacts or not) and returns it; else None. Never raises: it costs
        this process one ``stat`` and, rarely, one fork, and no GIL beyond that."""
        try:
            return self._launch_compactor()
        except Exception:  # noqa: BLE001 - a training process must not notice
            log.warning("could not launch automatic compaction of %s", self.path, exc_info=True)
            return None

    def _launch_compactor(self):
        if not self.auto_compact:
            return None
        if self._compactor is not None and self._compactor.poll() is None:
            return None  # still at it (poll also reaps it once it is done)
        size = self.path.stat().st_size
        if size < self._compacted_at:
            self._compacted_at = size  # it was compacted: grow from here
        if size < max(AUTO_COMPACT_MIN_BYTES, AUTO_COMPACT_GROWTH * self._compacted_at):
            return None
        import subprocess
        import sys

        self._compacted_at = size
        out = open(self.path.with_name(self.path.name + ".auto-compact.log"), "ab")
        with out:
            self._compactor = subprocess.Popen(
                [sys.executable, "-c", _AUTO_COMPACT, "--auto", str(self.path), "--lock-timeout",
                 str(self.lock_timeout)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True,
            )
        log.info("launched automatic compaction of %s (process %d)", self.path, self._compactor.pid)
        return self._compactor

    def recover(self) -> int:
        """Queue a check for runs of dead processes (see ``_recover_lost_runs``); returns its write's sequence."""
        return self.writer.submit_call(_recover_lost_runs)

    def ensure(self, timeout: float | None = -1.0) -> bool:
        """Create the file and schema now (and ingest spills, recover lost runs);
        raises ``StoreError`` naming the path if it cannot be written. Waits at most
        ``timeout`` seconds (default ``lock_timeout``) for a lock; with ``timeout=0``
        it never waits: it returns False, having checked what it could, when the file
        is held (the writer prepares the store once it gets the file)."""
        if self._ready:
            return True
        try:
            with self.session(write=True, timeout=timeout):
                return True
        except StoreLocked as exc:
            if timeout != 0:
                raise
            if exc.pid == os.getpid():
                return True  # this process's writer has the file: it prepares the store
            self._make_parent()
            return False

    def reset(self) -> None:
        """Drop the connection (after an outage: DuckDB may have invalidated it); the
        next write session opens a fresh one and prepares the store again."""
        with self._lock:
            self._detach()
            self._ready = False
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - it is being thrown away
                    pass
                self._conn = None

    # -- reading ------------------------------------------------------------
    def query(self, sql: str, params=None, timeout: float | None = -1.0):
        """Run a read-only query and return a pandas DataFrame.

        The file is held only while DuckDB runs the query; the conversion to
        pandas (and pandas' first import, which takes seconds) happens after.
        """
        import pandas  # noqa: F401 - imported before the file is taken

        return self.query_arrow(sql, params, timeout).to_pandas()

    def query_arrow(self, sql: str, params=None, timeout: float | None = -1.0):
        """Run a read-only query and return a pyarrow Table (``timeout``: see :meth:`session`)."""
        with self.session(write=False, timeout=timeout) as conn:
            return conn.sql(sql, params=params).to_arrow_table()

    # -- writing ------------------------------------------------------------
    @property
    def records(self):
        """The writes of runs to this store (``records.RunRecords``: the one writer path)."""
        if self._records is None:
            from .records import RunRecords

            self._records = RunRecords(self)
        return self._records

    @property
    def writer(self):
        """This process's background writer for the store (started lazily).

        Never takes the session lock, which the writer holds through each commit:
        queueing a write must not wait for the disk."""
        writer = self._writer
        if writer is not None and not writer.stopped:
            return writer
        with self._writer_lock:
            if self._writer is None or self._writer.stopped:
                from .writer import DEFAULT_OUTAGE_POINTS, StoreWriter

                self._writer = StoreWriter(self, outage_points=self.outage_points or DEFAULT_OUTAGE_POINTS,
                                           spill_dir=self.spill_dir)
            return self._writer

    def close(self) -> None:
        """Flush and stop the writer and drop the connection."""
        writer = self._writer
        if writer is not None:
            writer.stop()
        with self._lock:
            self._detach()
            self._ready = False  # the next writer re-checks the schema and lost runs
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _process_alive(pid: int, started: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


LOST_QUEUED = "lost: queued by process {pid}, which exited before the run started; nx.resubmit() queues it again"


def _recover_lost_runs(conn) -> None:
    """Runs of this host whose process is gone: ``running`` ones become
    ``failed`` (lost), ``queued`` ones ``cancelled`` (their scheduler died)."""
    rows = conn.execute(
        "SELECT run_id, status, pid, pid_started FROM runs WHERE status IN (SELECT unnest(?)) AND host = ?",
        [RunStatus.values(active=True), HOST],
    ).fetchall()
    alive: dict[tuple, bool] = {}
    for run_id, status, pid, started in rows:
        if pid is None:
            continue
        if (pid, started) not in alive:
            alive[(pid, started)] = _process_alive(pid, started)
        if alive[(pid, started)]:
            continue
        if status == RunStatus.RUNNING:
            new_status, reason = RunStatus.FAILED, f"lost: process {pid} on {HOST} exited without ending the run"
        else:
            new_status, reason = RunStatus.CANCELLED, LOST_QUEUED.format(pid=pid)
        conn.execute(
            "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE run_id = ?",
            [new_status.value, reason, utcnow(), run_id],
        )
        conn.execute(
            "INSERT INTO events VALUES (?, ?, 'lost', ?, ?, ?)", [run_id, utcnow(), reason, HOST, os.getpid()]
        )


_stores: dict[Path, Store] = {}
_stores_lock = threading.Lock()


def get_store(path: str | os.PathLike, lock_timeout: float | None = None, settings=None) -> Store:
    """The process-wide ``Store`` for a path (one connection per file). ``settings``
    (default: the process's) gives its lock timeout (unless ``lock_timeout``), spill
    folder and outage bound when the store is first opened in this process."""
    from .. import _exit

    _exit.on_shutdown(close_all, order=90)  # last: commits what every other step queued
    key = Path(path).expanduser().absolute()
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if settings is None:
                from ..config import get_settings

                settings = get_settings()
            store = Store(key, lock_timeout if lock_timeout is not None else settings.lock_timeout,
                          spill_dir=settings.spill_dir, outage_points=settings.outage_points,
                          auto_compact=settings.auto_compact)
            _stores[key] = store
        return store


def close_all() -> None:
    """Flush and close every store this process opened (at exit, in tests)."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        try:
            store.close()
        except Exception:  # never mask anything at shutdown
            log.exception("closing %s failed", store)
