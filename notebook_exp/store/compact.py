"""Compaction: rewrite a store so its metrics sit sorted in full row groups.

Small flushes leave a store fragmented: every writer session checkpoints its few
rows into segments and blocks of their own, and blocks freed by later
checkpoints stay in the file. Measured (DuckDB 2.0.1, ``benchmarks/bench_compact.py``,
docs/architecture.md "Compaction"): 100 runs x 1,000 steps of one metric take
55 B per point as logged and 11.9 compacted; with three metrics per step 18.4
and 8.3; one 10 M point run 3.1 and 2.1.

``compact(path)`` (``notebook-exp compact``) builds a new file beside the store,
``<store>.compact-<pid>.tmp``, and swaps it in by an atomic rename::

    plan      one read-only session: schema checks, the runs in the order they
              were created, each (run, key)'s summary row
    copy      one streamed INSERT into the new file; its rows come from short
              read-only sessions, one per chunk of about CHUNK_POINTS points
              (whole runs, or a long run's keys and step ranges), sorted by run,
              key, step and cut into batches of exactly one row group
    catch up  one read-only session re-syncs the (run, key)s whose summary
              changed meanwhile (runs still logging)
    final     one read-only session (readers go on, writers wait): re-syncs what
              changed since (summary rows; and, should the store's count of rows
              differ from the new file's, every key whose count does), copies every other
              table, checkpoints and closes the new file, fsyncs it, locks it
              exclusively, renames it over the store, fsyncs the folder, lets the
              new file go after SWAP_FENCE seconds and the old one after SWAP_GRACE

A read-only attach takes a shared lock and never writes a WAL, so readers keep
reading throughout and writers wait at most one session (they retry, as for any
lock). A re-sync appends a key's new tail when the rows the copy already holds
are still there unchanged (same count and sum of row hashes up to the copied
last step), and re-copies the key otherwise (a retried run's data cleared).

What keeps the store valid whatever happens:

* The store file is never written: a kill -9, a full disk or an error at any
  moment leaves it as it was, or (after the rename) replaced by the complete,
  checkpointed, fsynced new file. Leftover ``<store>.compact-*`` files of a killed
  compaction are removed by the next one (``<store>.compact.lock`` keeps two
  compactions of one store apart).
* ``<store>.wal`` is named by path, not inode: a WAL the old file left behind (a
  writer killed mid-flush) would be refused by the new file ("WAL does not match
  database file") and keep everyone out. So the final session first checks there
  is none (a read-only attach replays a WAL without removing it); if there is,
  it folds it in with one read-write session of the store and starts again.
  Nothing can create one while the final session holds the shared lock.
* DuckDB attaches a file in three steps (strace): it opens it unlocked and reads
  its 12 KiB of headers, closes it, then opens it again and locks it, and reads
  blocks where the first headers say. Across a rename that mixes two files: a
  process that locked the old file just before the rename would commit into a
  file nobody reads again, and one that read the old headers and then locked the
  new file would read the new file with the old file's block size, block count
  and free list ("Corrupt database file: computed checksum ... in block at
  location 12288", or "Failed to deserialize": seen with a writer and a reader
  polling during compaction, and reproduced by swapping files under a polling
  reader), and a writer would allocate blocks the new file uses. So the new file
  is locked exclusively before the rename and for SWAP_FENCE seconds after it:
  whoever read the old headers fails to lock the new file and starts again from
  the new headers. The old file stays held (shared) for SWAP_GRACE seconds, so
  an open of it from just before the rename fails its lock too. Both windows
  only have to outlast two consecutive system calls of another process.
* Spills beside the store (``<store>.spill``) are named by path too; spills a
  writer ingests during compaction land in the old file and are re-synced.
* A store whose schema is newer than this code, or holds tables, columns, views,
  indexes or sequences this code does not create, is refused: a rewrite would
  drop them.

The new file uses BLOCK_SIZE (64 KiB) blocks: DuckDB 2.0 gives the catalog, each
table's rows and each primary-key index blocks of their own, so with the default
256 KiB a store pays about 2 MB before its first point, with 64 KiB about 0.5 MB
(100 runs x 1,000 steps compact to 29.0 B/point with 256 KiB blocks and 11.9 with
64 KiB; the 10 M point run to 2.5 and 2.1). Under 64 KiB DuckDB stops bit-packing
integers (steps and timestamps are then stored as 8 bytes each).

Automatic compaction: a process whose store writer has had nothing to write for a while
calls ``Store.on_writer_idle`` (``store/core.py``), which, when ``auto_compact`` is on and the file is
big enough and has grown since its last launch, starts ``main`` in a detached process
(its own session, ``nice`` 19, idle I/O class) and returns at once: the training process
pays one ``stat`` and one fork, never the compaction's CPU or GIL. That process runs
``auto_compact``: one per store on the machine (``<store>.auto-compact.lock``), it waits
until the store's file and WAL stay unchanged for ``AUTO_QUIET`` seconds, compacts only
when ``check`` says it would help and no run is queued or running, and abandons the
compaction (``compact(..., abandon=...)``: the store unchanged, its partial copy removed)
as soon as anyone writes the store before the final session. It prints one line on what it
did into ``<store>.auto-compact.log``.

Test seam: ``compact(..., pause=fn)`` calls ``fn(point)`` at each of ``POINTS``
(``"planned"``, ``"copying"`` with a copy session open, ``"copied"``, ``"final"``
with the final session open, ``"built"`` just before the rename, ``"swapped"``
just after it), so a test can stop or kill the compaction at a chosen moment.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import StoreError, StoreLocked
from . import schema
from ._gil import quick_gil_handoff

__all__ = ["AUTO_MAX_WAIT", "AUTO_QUIET", "BLOCK_SIZE", "CHUNK_POINTS", "POINTS", "SWAP_FENCE", "SWAP_GRACE",
           "CompactResult", "Fragmentation", "auto_compact", "check", "compact", "main", "maybe_compact"]

log = logging.getLogger("notebook_exp.store")

#: Block size of the compacted file (bytes), new stores' too (``schema.BLOCK_SIZE``); see the module docstring.
BLOCK_SIZE = schema.BLOCK_SIZE
#: Points copied per read-only session (measured: such a session holds the store about 20-150 ms).
CHUNK_POINTS = 100_000
#: DuckDB's row group size: the copy hands it batches of exactly this many rows.
ROW_GROUP = 122_880
#: Pause between two copy sessions, so waiting writers get the file.
SESSION_GAP = 0.02
#: Seconds the old file stays held after the rename (see the module docstring)...
SWAP_GRACE = 1.0
#: ... and the new one, exclusively, so nobody opens it with the old file's header.
SWAP_FENCE = 0.25
#: How often the final session starts again because a WAL appeared before it gave up.
FINAL_TRIES = 5
#: The moments ``pause`` is called at, in order.
POINTS = ("planned", "copying", "copied", "final", "built", "swapped")
#: ``check``: points it compacts as a sample (two row groups) to measure bytes per point.
SAMPLE_POINTS = 2 * 122_880
#: ``check`` says compaction helps when it would save this share of the file...
HELPS_SAVING = 0.25
#: ... and at least this many bytes.
HELPS_BYTES = 1_000_000

#: ``auto_compact``: seconds nobody may have written the store before it starts...
AUTO_QUIET = 10.0
#: ... how long it waits for such a spell before it gives up (the next idle writer launches it again) ...
AUTO_MAX_WAIT = 300.0
#: ... and how often it looks (a stat of the file and its WAL).
AUTO_POLL = 0.5

#: Tables whose rows are kept sorted by run, key and step.
_SORTED = {"texts", "histograms", "images"}
_NO_SPACE = ("No space left", "Disk quota", "ENOSPC", "not enough space")


class _Abandoned(StoreError):
    """``compact(..., abandon=...)`` gave up before its final session; the store is unchanged."""


@dataclass
class CompactResult:
    """What one compaction did."""

    path: Path
    points: int
    bytes_before: int
    bytes_after: int
    seconds: float
    #: Read-only sessions of the store (copy chunks, catch-up, final).
    sessions: int
    #: The longest the store was held by one of them (writers waited at most this, plus their retry).
    longest_hold: float
    #: How long the final session held the store.
    final_hold: float
    #: (run, key)s re-synced because they changed during the copy.
    resynced: int
    block_size: int
    #: How long each read-only session held the store, in order.
    holds: list[float]

    @property
    def bytes_per_point_before(self) -> float:
        return self.bytes_before / self.points if self.points else float("nan")

    @property
    def bytes_per_point_after(self) -> float:
        return self.bytes_after / self.points if self.points else float("nan")

    def __str__(self) -> str:
        return (f"compacted {self.path}: {self.points:,} points, {_mb(self.bytes_before)} -> {_mb(self.bytes_after)} "
                f"({self.bytes_per_point_before:.1f} -> {self.bytes_per_point_after:.1f} bytes/point) in "
                f"{self.seconds:.1f} s; {self.sessions} read-only sessions, the longest {self.longest_hold * 1000:.0f} ms "
                f"(writers waited at most that long)")


@dataclass
class Fragmentation:
    """How fragmented a store is (``check``)."""

    path: Path
    points: int
    bytes: int
    block_size: int
    total_blocks: int
    free_blocks: int
    row_groups: int
    #: What a compacted file would take, estimated (see ``check``).
    estimate: int
    would_help: bool
    reason: str

    @property
    def bytes_per_point(self) -> float:
        return self.bytes / self.points if self.points else float("nan")

    def __str__(self) -> str:
        return (f"{self.path}: {self.points:,} points in {_mb(self.bytes)} = {self.bytes_per_point:.1f} bytes/point; "
                f"{self.row_groups} row groups of metrics (full ones would be {_ideal(self.points)}), "
                f"{self.free_blocks} of {self.total_blocks} blocks free, {self.block_size // 1024} KiB blocks; "
                f"compacted about {_mb(self.estimate)}. Compaction "
                + ("would help: " if self.would_help else "would not help much: ") + self.reason)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def _ideal(points: int) -> int:
    return -(-points // ROW_GROUP)


# -- connections and sessions -------------------------------------------------------
def _quote(path: Path | str) -> str:
    return str(path).replace("'", "''")


def _connect(temp_dir: Path):
    import duckdb

    from .. import _exit

    _exit.install()  # duckdb registered its own atexit callback: ours must run before it
    config = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "temp_directory": str(temp_dir),
    }
    conn = duckdb.connect(":memory:", config=config)
    conn.execute("SET enable_progress_bar = false")  # a long copy must not draw on the user's terminal
    return conn


def _no_space(exc: BaseException) -> bool:
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(exc) for marker in _NO_SPACE)


class _Compactor:
    def __init__(self, path: Path, block_size: int, lock_timeout: float, pause, given: Path | None = None,
                 abandon: Callable[[], bool] | None = None) -> None:
        self.path = path
        self.abandon = abandon or (lambda: False)
        #: WALs DuckDB may have made for the store: beside the file, and beside the link a process used
        self.wals = [p.with_name(p.name + ".wal") for p in {path, given or path}]
        self.block_size = block_size
        self.lock_timeout = lock_timeout
        self.pause = pause or (lambda point: None)
        self.prefix = f"{path.name}.compact-{os.getpid()}"
        self.tmp = path.with_name(self.prefix + ".tmp")
        self.temp_dir = path.with_name(self.prefix + ".spill.tmp")
        self.holds: list[float] = []
        self.built_size = 0
        self.final_hold = 0.0
        self.resynced = 0
        self.fingerprints: dict[tuple[str, str], int] = {}  # (run, key) -> summary row hash when copied
        self.new_counts: dict[tuple[str, str], int] = {}
        self.error: BaseException | None = None

    # -- holding the store --------------------------------------------------------
    def _attach_old(self, conn, alias: str = "old", write: bool = False, path: Path | None = None) -> None:
        import duckdb

        from .core import _is_lock_conflict, holder_pid

        start = time.monotonic()
        while True:
            try:
                conn.execute(f"ATTACH '{_quote(path or self.path)}' AS {alias}" + ("" if write else " (READ_ONLY)"))
                return
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(f"cannot open store {self.path}: {exc}") from exc
                waited = time.monotonic() - start
                if waited >= self.lock_timeout:
                    raise StoreLocked(str(self.path), holder_pid(exc), waited) from exc
            time.sleep(random.uniform(0.002, 0.010))

    @contextlib.contextmanager
    def held(self, conn, alias: str = "old") -> Iterator[float]:
        """The store attached read-only as ``alias`` for the block; counts the session and its length."""
        with quick_gil_handoff():
            self._attach_old(conn, alias)
            started = time.monotonic()
            try:
                yield started
            finally:
                try:
                    conn.execute(f"DETACH {alias}")
                finally:
                    self.holds.append(time.monotonic() - started)

    # -- the phases ---------------------------------------------------------------
    def run(self) -> CompactResult:
        started = time.monotonic()
        before = self.path.stat().st_size
        self.temp_dir.mkdir(exist_ok=True)
        reader = writer = None
        try:
            reader, writer = _connect(self.temp_dir), _connect(self.temp_dir)
            reader.sql("SELECT 1 AS warm").to_arrow_table()  # imports pyarrow now, not in a session (0.5 s)
            _known_objects(reader)
            plan = self.plan(reader)
            self.create(writer, plan)
            self.pause("planned")
            self.copy(reader, writer, plan)
            self.pause("copied")
            self.give_up_if_asked()
            self.catch_up(writer)
            writer.execute("CHECKPOINT new")
            self.give_up_if_asked()
            points = self.final(writer)
        except BaseException as exc:
            for conn in (reader, writer):
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
            reader = writer = None
            self.remove_temp()
            if self.built_size and not self.tmp.exists() or isinstance(exc, StoreError):
                raise  # (the first: interrupted after the swap, which stands)
            if _no_space(exc):
                free = shutil.disk_usage(self.path.parent).free
                raise StoreError(
                    f"compaction of {self.path} stopped: no space left on its disk ({_mb(free)} free; the compacted "
                    f"copy needs up to {_mb(before)}): the store is unchanged and the partial copy was removed"
                ) from exc
            if isinstance(exc, Exception):
                import duckdb

                if isinstance(exc, (duckdb.Error, OSError)):
                    raise StoreError(f"compaction of {self.path} failed ({exc}); the store is unchanged") from exc
            raise
        finally:
            for conn in (reader, writer):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return CompactResult(self.path, points, before, self.built_size, time.monotonic() - started,
                             len(self.holds), max(self.holds), self.final_hold, self.resynced, self.block_size,
                             self.holds)

    def give_up_if_asked(self) -> None:
        if self.abandon():
            raise _Abandoned(f"abandoned the compaction of {self.path}: someone wrote the store meanwhile; "
                             "the store is unchanged")

    def remove_temp(self) -> None:
        for name in glob.glob(glob.escape(str(self.tmp)) + "*"):
            with contextlib.suppress(OSError):
                os.unlink(name)

    def plan(self, conn) -> dict:
        """What to copy, in one read-only session: the schema checks, the storage
        version, the runs in creation order with each (run, key)'s count."""
        with self.held(conn):
            self.check_schema(conn)
            tags = conn.execute("SELECT tags FROM duckdb_databases() WHERE database_name = 'old'").fetchone()[0]
            rows = conn.execute(
                """SELECT s.run_id, s.key, s.count, s.first_step, s.last_step
                   FROM old.metric_summary s LEFT JOIN old.runs r ON r.run_id = s.run_id
                   ORDER BY r.created_at NULLS LAST, s.run_id, s.key"""
            ).fetchall()
            arrow_schema = conn.sql("SELECT * FROM old.metrics LIMIT 0").to_arrow_table().schema
        runs: dict[str, list[tuple]] = {}
        for run_id, key, count, first, last in rows:
            runs.setdefault(run_id, []).append((key, count or 0, first, last))
        version = (tags or {}).get("storage_version", "").rstrip("+") or None
        return {"runs": runs, "order": list(runs), "chunks": _chunks(runs), "schema": arrow_schema,
                "storage_version": version}

    def check_schema(self, conn) -> None:
        """Refuse a store this code cannot rewrite without loss."""
        version = conn.execute("SELECT value FROM old.meta WHERE key = 'schema_version'").fetchone()
        if version is not None and _int(version[0]) > int(schema.SCHEMA_VERSION):
            raise StoreError(
                f"store {self.path} has schema version {version[0]}, newer than this notebook_exp's "
                f"({schema.SCHEMA_VERSION}); compaction would drop what it does not know: upgrade notebook_exp")
        unknown = _objects(conn, "old") - _known_objects(conn)
        if unknown:
            raise StoreError(f"store {self.path} holds {', '.join(sorted(unknown))}, which this notebook_exp does not "
                             "create; compaction would drop them, so it leaves the store as it is")

    def create(self, conn, plan: dict) -> None:
        """The new file, with the current schema."""
        import duckdb

        self.remove_temp()
        options = [f"BLOCK_SIZE {int(self.block_size)}"]
        if plan["storage_version"]:
            options.append(f"STORAGE_VERSION '{plan['storage_version']}'")
        try:
            conn.execute(f"ATTACH '{_quote(self.tmp)}' AS new ({', '.join(options)})")
        except duckdb.Error as exc:
            if _no_space(exc):
                raise
            log.warning("cannot create %s with %s (%s); using DuckDB's defaults", self.tmp, options, exc)
            self.remove_temp()
            conn.execute(f"ATTACH '{_quote(self.tmp)}' AS new")
            self.block_size = conn.execute(
                "SELECT block_size FROM pragma_database_size() WHERE database_name = 'new'").fetchone()[0]
        conn.execute("USE new")
        conn.execute(schema.TABLES)
        conn.execute(schema.MIGRATIONS)
        conn.execute("DELETE FROM new.meta")  # the store's own rows are copied at the end
        conn.execute("USE memory")

    def copy(self, reader, writer, plan: dict) -> None:
        """Every planned chunk into the new file, in one INSERT fed from short sessions."""
        import pyarrow as pa

        arrow_schema = plan["schema"]
        reader.register("__order", _table(plan["order"], pairs=False, pos=list(range(len(plan["order"])))))

        def batches():
            pending: list = []
            size = 0
            try:
                for i, (sql, params) in enumerate(plan["chunks"]):
                    if i:
                        self.give_up_if_asked()
                    with self.held(reader):
                        table = reader.sql(sql, params=params).to_arrow_table()
                        self.record(reader, params)
                        if i == 0:
                            self.pause("copying")
                    if table.schema != arrow_schema:
                        table = table.cast(arrow_schema)
                    pending.append(table)
                    size += table.num_rows
                    if size >= ROW_GROUP:
                        merged = pa.concat_tables(pending)
                        full = size // ROW_GROUP * ROW_GROUP
                        for offset in range(0, full, ROW_GROUP):
                            yield from merged.slice(offset, ROW_GROUP).combine_chunks().to_batches()
                        pending, size = [merged.slice(full)], size - full
                    time.sleep(SESSION_GAP)
                if not plan["chunks"]:
                    self.pause("copying")
                if size:
                    yield from pa.concat_tables(pending).combine_chunks().to_batches()
            except BaseException as exc:  # noqa: BLE001 - re-raised by copy() once DuckDB gives up
                self.error = exc
                raise

        stream = pa.RecordBatchReader.from_batches(arrow_schema, batches())
        writer.register("__compact_stream", stream)
        try:
            writer.execute("INSERT INTO new.metrics SELECT * FROM __compact_stream")
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise
        finally:
            writer.unregister("__compact_stream")
        self.new_counts = {(r, k): n for r, k, n in writer.execute(
            "SELECT run_id, key, count(*) FROM new.metrics GROUP BY ALL").fetchall()}

    def record(self, conn, params: list) -> None:
        """Remember the summary rows of what a chunk copied (the first time each (run, key) is seen)."""
        runs, keys = params[0], params[1] if len(params) > 1 else None
        rows = conn.execute(
            f"SELECT run_id, key, {_FINGERPRINT} FROM old.metric_summary WHERE run_id IN (SELECT unnest(?))"
            + (" AND key IN (SELECT unnest(?))" if keys is not None else ""),
            [runs, keys] if keys is not None else [runs],
        ).fetchall()
        for run_id, key, fingerprint in rows:
            self.fingerprints.setdefault((run_id, key), fingerprint)

    def changed(self, conn) -> list[tuple[str, str]]:
        """(run, key)s whose summary row in the attached store changed since it was copied
        (every write of this package updates it: new points, a retried run's rows cleared)."""
        now = dict(((r, k), f) for r, k, f in conn.execute(
            f"SELECT run_id, key, {_FINGERPRINT} FROM old.metric_summary").fetchall())
        found = {k for k, f in now.items() if self.fingerprints.get(k) != f}
        found |= {k for k in self.fingerprints if k not in now}
        return sorted(found)

    def miscounted(self, conn) -> list[tuple[str, str]]:
        """(run, key)s whose count of rows differs between the store and the new file: rows
        written without their summary row (plain SQL, another tool). The store's total is
        read first (a few ms); only when it differs are the rows counted per key."""
        total = conn.execute("SELECT count(*) FROM old.metrics").fetchone()[0]
        if total == sum(self.new_counts.values()):
            return []
        old = {(r, k): n for r, k, n in conn.execute(
            "SELECT run_id, key, count(*) FROM old.metrics GROUP BY ALL").fetchall()}
        return sorted(k for k in old.keys() | self.new_counts.keys() if old.get(k) != self.new_counts.get(k))

    def sync(self, conn, keys: list[tuple[str, str]]) -> None:
        """Make the new file's rows of ``keys`` those of the attached store: append each
        key's tail when the rows already copied are unchanged, else copy the key again."""
        if not keys:
            return
        self.resynced += len(keys)
        conn.register("__keys", _table(keys))
        try:
            copied = {(r, k): (n, s, h) for r, k, n, s, h in conn.execute(
                """SELECT m.run_id, m.key, count(*), max(m.step), sum(hash(m.step, m.ts, m.value))
                   FROM new.metrics m SEMI JOIN __keys k ON m.run_id = k.run_id AND m.key = k.key
                   GROUP BY ALL""").fetchall()}
            conn.register("__copied", _table(list(copied), last=[v[1] for v in copied.values()]))
            stored = {(r, k): (n, h) for r, k, n, h in conn.execute(
                """SELECT m.run_id, m.key, count(*), sum(hash(m.step, m.ts, m.value))
                   FROM old.metrics m JOIN __copied c ON m.run_id = c.run_id AND m.key = c.key AND m.step <= c.last
                   GROUP BY ALL""").fetchall()}
            tails = [k for k, (n, _s, h) in copied.items() if stored.get(k) == (n, h)]
            again = [k for k in keys if k not in tails]
            conn.unregister("__copied")
            conn.register("__tails", _table(tails, last=[copied[k][1] for k in tails]))
            conn.register("__again", _table(again))
            conn.execute("BEGIN")
            try:
                conn.execute("DELETE FROM new.metrics m USING __again a WHERE m.run_id = a.run_id AND m.key = a.key")
                conn.execute(
                    """INSERT INTO new.metrics
                       SELECT m.* FROM old.metrics m JOIN __tails t
                           ON m.run_id = t.run_id AND m.key = t.key AND m.step > t.last
                       UNION ALL
                       SELECT m.* FROM old.metrics m SEMI JOIN __again a ON m.run_id = a.run_id AND m.key = a.key
                       ORDER BY run_id, key, step""")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            counts = {(r, k): n for r, k, n in conn.execute(
                "SELECT m.run_id, m.key, count(*) FROM new.metrics m SEMI JOIN __keys k "
                "ON m.run_id = k.run_id AND m.key = k.key GROUP BY ALL").fetchall()}
            summaries = {(r, k): f for r, k, f in conn.execute(
                f"SELECT s.run_id, s.key, {_FINGERPRINT} FROM old.metric_summary s SEMI JOIN __keys k "
                "ON s.run_id = k.run_id AND s.key = k.key").fetchall()}
            for k in keys:
                for known, now in ((self.new_counts, counts), (self.fingerprints, summaries)):
                    if k in now:
                        known[k] = now[k]
                    else:
                        known.pop(k, None)
        finally:
            for name in ("__keys", "__copied", "__tails", "__again"):
                with contextlib.suppress(Exception):
                    conn.unregister(name)

    def catch_up(self, conn) -> None:
        """Re-sync, in one short session, what changed while the copy ran."""
        with self.held(conn):
            self.sync(conn, self.changed(conn))

    def final(self, conn) -> int:
        """The final session: the last re-sync, the other tables, the swap. Returns the points."""
        for _attempt in range(FINAL_TRIES):
            points = self.final_session(conn)
            if points is not None:
                return points
            self.fold_wal(conn)  # a writer died mid-flush and left its WAL: fold it in, then start again
        raise StoreError(f"compaction of {self.path} gave up: a WAL kept appearing beside it (writers crashing?)")

    def final_session(self, conn) -> int | None:
        """One try of the final session; None (nothing done) when the store has a WAL."""
        with quick_gil_handoff():
            self._attach_old(conn)
            started = time.monotonic()
            held = None
            try:
                if any(_exists(wal) for wal in self.wals):
                    return None
                self.pause("final")
                self.check_schema(conn)
                self.sync(conn, self.changed(conn))
                self.sync(conn, self.miscounted(conn))
                points = self.copy_tables(conn)
                conn.execute("CHECKPOINT new")
                conn.execute("DETACH new")
                self.verify(conn)
                _fsync(self.tmp)
                if any(_exists(wal) for wal in [*self.wals, self.tmp.with_name(self.tmp.name + ".wal")]):
                    raise StoreError(f"compaction of {self.path}: a WAL appeared beside the files; not swapping")
                with contextlib.suppress(OSError):
                    os.chmod(self.tmp, stat.S_IMODE(self.path.stat().st_mode))
                built = self.tmp.stat().st_size
                self.pause("built")
                with _fenced(self.tmp):
                    os.replace(self.tmp, self.path)
                    self.built_size = built
                    _fsync(self.path.parent)
                    self.pause("swapped")
                    time.sleep(SWAP_FENCE)
                held = self.final_hold = time.monotonic() - started  # from now on others open the new file
                time.sleep(max(0.0, SWAP_GRACE - SWAP_FENCE))
                return points
            finally:
                if held is None:
                    held = time.monotonic() - started
                conn.execute("DETACH old")
                self.holds.append(held)

    def fold_wal(self, conn) -> None:
        """One read-write session of the store (by the path whose WAL is there), which
        replays the WAL a writer left behind and checkpoints it away."""
        for wal in self.wals:
            if _exists(wal):
                log.info("compaction of %s: folding in the WAL a writer left (%s)", self.path, wal)
                with quick_gil_handoff():
                    self._attach_old(conn, "fold", write=True, path=wal.with_name(wal.name[:-len(".wal")]))
                    conn.execute("DETACH fold")

    def copy_tables(self, conn) -> int:
        """Every table but metrics, as the store has it now; returns the store's points."""
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'old' AND schema_name = 'main' "
            "AND table_name <> 'metrics' ORDER BY table_name").fetchall()]
        conn.execute("BEGIN")
        try:
            for table in tables:
                conn.execute(f'DELETE FROM new."{table}"')
                order = " ORDER BY run_id, key, step" if table in _SORTED else ""
                conn.execute(f'INSERT INTO new."{table}" BY NAME SELECT * FROM old."{table}"{order}')
            # the new file has this code's schema: its version is the newer of the store's and this code's
            conn.execute(_VERSION_UPSERT, [schema.SCHEMA_VERSION])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn.execute("SELECT count(*) FROM old.metrics").fetchone()[0]

    def verify(self, conn) -> None:
        """The closed new file opens and holds as many rows per table as the store."""
        conn.execute(f"ATTACH '{_quote(self.tmp)}' AS built (READ_ONLY)")
        try:
            tables = [t for (t,) in conn.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'old' AND schema_name = 'main'"
            ).fetchall()]
            for table in tables:
                old = conn.execute(f'SELECT count(*) FROM old."{table}"').fetchone()[0]
                new = conn.execute(f'SELECT count(*) FROM built."{table}"').fetchone()[0]
                if old != new:
                    raise StoreError(f"compaction of {self.path}: the new file holds {new} rows of {table}, the "
                                     f"store {old}; not swapping (the store is unchanged)")
        finally:
            conn.execute("DETACH built")


_VERSION_UPSERT = """INSERT INTO new.meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET
    value = CAST(greatest(TRY_CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS VARCHAR)"""

#: One value per (run, key) summary row: equal while the row is unchanged.
_FINGERPRINT = "hash(count, first_step, last_step, last_value, min_value, max_value, last_ts)"


def _table(rows: list, pairs: bool = True, **numbers: list[int]):
    """An Arrow table of ``(run_id, key)`` pairs (``pairs``, else of run ids) plus int64
    columns, built without ``pa.array`` (which imports pandas: seconds, see ``notebook_exp._arrow``)."""
    import numpy as np
    import pyarrow as pa

    from .._arrow import column, strings

    if pairs:
        columns = {"run_id": strings([r for r, _k in rows]), "key": strings([k for _r, k in rows])}
    else:
        columns = {"run_id": strings(list(rows))}
    for name, values in numbers.items():
        columns[name] = column(np.asarray(values, dtype=np.int64), pa.int64())
    return pa.table(columns)


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _objects(conn, database: str) -> set[str]:
    """Tables (with their columns), views, indexes and sequences of a database, as names."""
    found = {f"column {t}.{c}" for t, c in conn.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ? AND NOT internal",
        [database]).fetchall()}
    found |= {f"table {t}" for (t,) in conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND NOT internal", [database]).fetchall()}
    for kind, function, name, where in (("view", "duckdb_views", "view_name", " AND NOT internal"),
                                        ("index", "duckdb_indexes", "index_name", ""),
                                        ("sequence", "duckdb_sequences", "sequence_name", "")):
        found |= {f"{kind} {n}" for (n,) in conn.execute(
            f"SELECT {name} FROM {function}() WHERE database_name = ?{where}", [database]).fetchall()}
    return found


_KNOWN: set[str] | None = None


def _known_objects(conn) -> set[str]:
    """What ``schema.TABLES`` and ``MIGRATIONS`` create (built once, in memory)."""
    global _KNOWN
    if _KNOWN is None:
        conn.execute("ATTACH ':memory:' AS __schema")
        try:
            conn.execute("USE __schema")
            conn.execute(schema.TABLES)
            conn.execute(schema.MIGRATIONS)
            _KNOWN = _objects(conn, "__schema")
        finally:
            conn.execute("USE memory")
            conn.execute("DETACH __schema")
    return _KNOWN


def _chunks(runs: dict[str, list[tuple]]) -> list[tuple[str, list]]:
    """The copy's queries with their parameters, in order: whole runs grouped up to
    CHUNK_POINTS, a longer run by keys, a longer key by step ranges."""
    chunks: list[tuple[str, list]] = []
    group: list[str] = []
    size = 0
    def close_group() -> None:
        nonlocal group, size
        if group:
            chunks.append((_RUNS_SQL, [group]))
            group, size = [], 0

    for run_id, keys in runs.items():
        total = sum(count for _k, count, _f, _l in keys)
        if total <= CHUNK_POINTS:
            if size + total > CHUNK_POINTS:
                close_group()
            group.append(run_id)
            size += total
            continue
        close_group()
        batch: list[str] = []
        batch_size = 0
        for key, count, first, last in keys:
            if count > CHUNK_POINTS and first is not None and last is not None and last > first:
                if batch:
                    chunks.append((_KEYS_SQL, [[run_id], batch]))
                    batch, batch_size = [], 0
                pieces = -(-count // CHUNK_POINTS)
                width = max(1, -(-(last - first + 1) // pieces))
                bounds = [first + i * width for i in range(1, pieces)]
                lows = [-(2**63)] + bounds
                highs = [b - 1 for b in bounds] + [2**63 - 1]
                for low, high in zip(lows, highs):
                    chunks.append((_RANGE_SQL, [[run_id], [key], low, high]))
                continue
            if batch and batch_size + count > CHUNK_POINTS:
                chunks.append((_KEYS_SQL, [[run_id], batch]))
                batch, batch_size = [], 0
            batch.append(key)
            batch_size += count
        if batch:
            chunks.append((_KEYS_SQL, [[run_id], batch]))
    close_group()
    return chunks


# A chunk's rows, in the order of the new file: runs as ``__order`` ranks them (by creation), then key, step.
_CHUNK_SQL = ("SELECT m.* FROM old.metrics m JOIN __order o ON o.run_id = m.run_id WHERE m.run_id IN (SELECT unnest(?))"
              "{where} ORDER BY o.pos, m.key, m.step")
_RUNS_SQL = _CHUNK_SQL.format(where="")
_KEYS_SQL = _CHUNK_SQL.format(where=" AND m.key IN (SELECT unnest(?))")
_RANGE_SQL = _CHUNK_SQL.format(where=" AND m.key IN (SELECT unnest(?)) AND m.step BETWEEN ? AND ?")


def _exists(path: Path) -> bool:
    return bool(glob.glob(glob.escape(str(path)) + "*"))


@contextlib.contextmanager
def _fenced(path: Path) -> Iterator[None]:
    """An exclusive POSIX lock (the kind DuckDB takes) on ``path``'s file for the block.
    Only this process knows the file yet, so it is always free; it goes with the file
    through a rename, and no other descriptor of the file is open here."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """fsync a file (never the store: closing a descriptor of it would drop this process's lock) or a folder."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the entry points -----------------------------------------------------------------
def compact(path: str | os.PathLike, *, block_size: int = BLOCK_SIZE, lock_timeout: float = 120.0,
            pause: Callable[[str], None] | None = None, abandon: Callable[[], bool] | None = None) -> CompactResult:
    """Rewrite the store at ``path`` sorted by run, key and step in full row groups
    (see the module docstring); returns what it did. Readers and writers keep working
    meanwhile; writers wait at most one read-only session at a time.

    Raises ``StoreError`` when there is no store, when the store is newer than this code
    or holds objects it does not create, when another compaction of it is running, when
    the disk fills up (the store is then unchanged), and ``StoreLocked`` when a session
    waited ``lock_timeout`` seconds for the file. ``pause`` is the test seam (``POINTS``).
    ``abandon()``, when given, is asked between the copy's sessions and before the final
    one; once it says yes the compaction stops with a ``StoreError`` ("abandoned ...") and
    the store is unchanged.
    """
    from filelock import FileLock, Timeout

    given = Path(path).expanduser().absolute()
    target = given.resolve()  # a link's target is what is rewritten (processes may use either path)
    if not target.is_file():
        raise StoreError(f"no store at {given} (nothing has been logged there yet)")
    lock = FileLock(str(target.with_name(target.name + ".compact.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StoreError(f"another compaction of {target} is running") from None
    try:
        _remove_leftovers(target)
        return _Compactor(target, block_size, lock_timeout, pause, given, abandon).run()
    finally:
        lock.release()


def _remove_leftovers(target: Path) -> None:
    """Files of a compaction that was killed (the compaction lock is held: none is running)."""
    pattern = glob.escape(str(target.with_name(target.name + ".compact-"))) + "*"
    for name in glob.glob(pattern):
        log.warning("removing %s, left by a compaction that did not finish", name)
        if os.path.isdir(name):
            shutil.rmtree(name, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(name)


def check(path: str | os.PathLike, *, lock_timeout: float = 120.0) -> Fragmentation:
    """How fragmented the store at ``path`` is, from one short read-only session.

    The compacted size is estimated from a sample: the first runs' points (in creation
    order) up to about ``SAMPLE_POINTS`` are compacted into a scratch file, which gives the
    bytes per point of the store's own data in full row groups. To that come one
    ``BLOCK_SIZE`` block for the catalog and, per table with rows, one for its rows and
    one for a primary key's index (what DuckDB 2.0 takes at least), plus what other
    tables take beyond that today. Compaction is said to help when it would save at
    least ``HELPS_SAVING`` of the file and ``HELPS_BYTES``.
    """
    target = Path(path).expanduser().absolute()
    if not target.is_file():
        raise StoreError(f"no store at {target} (nothing has been logged there yet)")
    worker = _Compactor(target, BLOCK_SIZE, lock_timeout, None)
    scratch = Path(tempfile.mkdtemp(prefix="notebook_exp-check-"))
    conn = _connect(scratch)
    try:
        conn.sql("SELECT 1 AS warm").to_arrow_table()
        conn.execute(f"ATTACH '{_quote(scratch / 'sample.duckdb')}' AS sample (BLOCK_SIZE {BLOCK_SIZE})")
        with worker.held(conn):
            size = target.stat().st_size
            block_size, total, free = conn.execute(
                "SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
                "WHERE database_name = 'old'").fetchone()
            points = conn.execute("SELECT count(*) FROM old.metrics").fetchone()[0]
            row_groups, metric_blocks = conn.execute(
                "SELECT count(DISTINCT row_group_id), count(DISTINCT block_id) FILTER (WHERE block_id >= 0) "
                "FROM pragma_storage_info('old.metrics')").fetchone()
            tables, keyed = conn.execute(
                "SELECT count(*) FILTER (WHERE estimated_size > 0), count(*) FILTER (WHERE estimated_size > 0 "
                "AND has_primary_key) FROM duckdb_tables() WHERE database_name = 'old'").fetchone()
            pairs, highs, taken = [], [], 0
            for run_id, key, count, first, last in conn.execute(
                    "SELECT s.run_id, s.key, s.count, s.first_step, s.last_step FROM old.metric_summary s "
                    "LEFT JOIN old.runs r ON r.run_id = s.run_id "
                    "ORDER BY r.created_at NULLS LAST, s.run_id, s.key").fetchall():
                if taken >= SAMPLE_POINTS or not count:
                    break
                share = min(1.0, (SAMPLE_POINTS - taken) / count)
                pairs.append((run_id, key))
                highs.append(2**63 - 1 if share == 1.0 or first is None else int(first + (last - first) * share))
                taken += int(count * share)
            conn.register("__sample", _table(pairs, pos=list(range(len(pairs))), high=highs))
            conn.execute("CREATE TABLE sample.metrics AS SELECT * FROM old.metrics LIMIT 0")
            conn.execute("INSERT INTO sample.metrics SELECT m.* FROM old.metrics m JOIN __sample s ON "
                         "m.run_id = s.run_id AND m.key = s.key AND m.step <= s.high ORDER BY s.pos, m.step")
        conn.execute("CHECKPOINT sample")
        sampled = conn.execute("SELECT count(*) FROM sample.metrics").fetchone()[0]
        sample_blocks = conn.execute("SELECT count(DISTINCT block_id) FILTER (WHERE block_id >= 0) "
                                     "FROM pragma_storage_info('sample.metrics')").fetchone()[0]
    finally:
        conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
    per_point = sample_blocks * BLOCK_SIZE / sampled if sampled else 0.0
    fixed_now = block_size * (1 + tables + keyed)
    others_now = (total - free - metric_blocks) * block_size
    fixed = BLOCK_SIZE * (1 + tables + keyed) + max(0, others_now - fixed_now)
    estimate = int(fixed + per_point * points)
    saving = size - estimate
    if points == 0:
        helps, reason = False, "no metrics"
    elif saving < HELPS_SAVING * size or saving < HELPS_BYTES:
        helps, reason = False, f"it would save about {_mb(max(saving, 0))}"
    else:
        helps, reason = True, f"about {size / estimate:.1f}x smaller ({_mb(size)} -> {_mb(estimate)})"
    return Fragmentation(target, points, size, block_size, total, free, row_groups, estimate, helps, reason)


def _live_runs(path: Path, lock_timeout: float) -> int:
    """How many runs of the store are queued or running (one short read-only session)."""
    worker = _Compactor(path, BLOCK_SIZE, lock_timeout, None)
    conn = _connect(Path(tempfile.gettempdir()))
    try:
        with worker.held(conn):
            return conn.execute("SELECT count(*) FROM old.runs WHERE status IN ('queued', 'running')").fetchone()[0]
    finally:
        conn.close()


def maybe_compact(path: str | os.PathLike, *, lock_timeout: float = 120.0) -> CompactResult | None:
    """Compact the store at ``path`` if ``check`` says it would help and no run in it is
    queued or running; returns what it did, else None."""
    found = check(path, lock_timeout=lock_timeout)
    if not found.would_help or _live_runs(found.path, lock_timeout):
        return None
    return compact(found.path, lock_timeout=lock_timeout)


# -- automatic compaction ---------------------------------------------------------------
def _signature(path: Path) -> tuple:
    """What changes when anyone writes the store: its file's inode, size and mtime, and its WAL's.
    (Read-only sessions, which are all a compaction makes of the store, change none of them.)"""
    found = []
    for name in (path, path.with_name(path.name + ".wal")):
        try:
            st = os.stat(name)
            found.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            found.append(None)
    return tuple(found)


def _wait_quiet(path: Path, quiet: float, max_wait: float) -> bool:
    """Wait until nobody wrote the store for ``quiet`` seconds; False once ``max_wait`` passed first."""
    deadline = time.monotonic() + max_wait
    seen, since = _signature(path), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(AUTO_POLL, quiet))
        now = _signature(path)
        if now != seen:
            seen, since = now, time.monotonic()
    return True


def auto_compact(path: str | os.PathLike, *, quiet: float = AUTO_QUIET, max_wait: float = AUTO_MAX_WAIT,
                 lock_timeout: float = 120.0, pause: Callable[[str], None] | None = None) -> str:
    """Automatic compaction, as the detached process ``launch_auto`` starts runs it; returns
    one line saying what it did.

    At most one runs per store on the machine (``<store>.auto-compact.lock``). It waits
    until nobody has written the store for ``quiet`` seconds (giving up after ``max_wait``:
    the next idle writer launches it again), compacts only when ``check`` says it would help
    and no run is queued or running, and abandons the compaction (the store unchanged) as
    soon as anyone writes the store before its final session: compaction copes with
    writers, but this one runs at the lowest priority, and a starved low-priority process
    must not hold sessions a training process waits for.
    """
    from filelock import FileLock, Timeout

    target = Path(path).expanduser().absolute().resolve()
    lock = FileLock(str(target.with_name(target.name + ".auto-compact.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return f"skipped {target}: another automatic compaction of it is running"
    try:
        if not target.is_file():
            return f"skipped {target}: no store there"
        if not _wait_quiet(target, quiet, max_wait):
            return f"skipped {target}: still written to after {max_wait:.0f} s"
        found = check(target, lock_timeout=lock_timeout)
        if not found.would_help:
            return f"not needed: {found}"
        if _live_runs(target, lock_timeout):
            return f"skipped {target}: runs are queued or running"
        signature = _signature(target)
        try:
            result = compact(target, lock_timeout=lock_timeout, pause=pause,
                             abandon=lambda: _signature(target) != signature)
        except _Abandoned as exc:
            return str(exc)
        return str(result)
    finally:
        lock.release()


def _lower_priority() -> None:
    """The lowest CPU and I/O priority for this process (where the OS has them)."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
    with contextlib.suppress(Exception):
        import psutil

        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)


def main(argv: list[str] | None = None) -> int:
    """``python -c 'from notebook_exp.store.compact import main; main()' --auto PATH``: the
    detached process ``Store.on_writer_idle`` launches (at the lowest priority); prints what it did."""
    import argparse

    parser = argparse.ArgumentParser(description="automatic compaction of one store")
    parser.add_argument("--auto", required=True, metavar="PATH", help="the store")
    parser.add_argument("--quiet", type=float, default=AUTO_QUIET)
    parser.add_argument("--max-wait", type=float, default=AUTO_MAX_WAIT)
    parser.add_argument("--lock-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    _lower_priority()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        print(auto_compact(args.auto, quiet=args.quiet, max_wait=args.max_wait, lock_timeout=args.lock_timeout),
              flush=True)
    except StoreError as exc:
        print(f"failed: {exc}", flush=True)
        return 1
    return 0


