"""``Run``: the handle a training loop logs through, and ``start_run``.

The hot path is :meth:`Run.log`: it appends ``(key, step, time, value)``
tuples to the run's buffer and returns. No lock, no I/O; the flusher thread
hands the buffer to the sinks (see ``tracking.flusher``, ``sinks.dispatch``).
A tensor on a device is kept as it is and read at the flush (``tracking.values``).
``start_run(resume=True)`` continues a stored run (``tracking.resume``);
``start_run(capture=[...])`` captures a framework's own logging calls
(``tracking.capture``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import threading
import time
import traceback
import uuid
import warnings
from array import array
from pathlib import Path
from typing import Any

from .. import _exit
from ..collectors import is_telemetry, telemetry
from ..collectors.base import RunContext
from ..collectors.registry import RunCollectors
from ..config import Settings, get_settings
from ..exceptions import (
    ConfigError,
    InvalidMetric,
    RunCancelled,
    RunInterrupted,
    RunTimedOut,
    StoreError,
    StoreLocked,
)
from ..models import MetricBatch, RunInfo, RunStatus
from ..sinks import registry
from ..sinks.dispatch import Dispatcher
from . import capture as captures
from . import resume as resuming
from .flusher import flusher
from .values import (
    as_step,
    as_value,
    check_key,
    clean_params,
    clean_tags,
    encode_png,
    histogram,
    resolve,
)

__all__ = ["Run", "current_run", "start_run"]

log = logging.getLogger("notebook_exp.tracking")

_STEP_MAX = 2**53  # steps are stored exactly up to here
_STEP_MIN = -_STEP_MAX
_time = time.time
_monotonic = time.monotonic
#: Seconds ``start_run`` waits at most for the store's writer to have started and
#: committed the run's row (a held store is not waited for).
START_WAIT = 2.0
_NUMBERS = (float, int)  # what a buffer holds read already (the rest: device tensors, read at flush)
_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("notebook_exp_run", default=None)


class Progress:
    """A run's progress: ``n`` of ``total`` (None when unknown) since ``started``."""

    __slots__ = ("n", "total", "started", "updated")

    def __init__(self) -> None:
        self.n = 0
        self.total: int | None = None
        self.started: float | None = None
        self.updated: float | None = None

    def touch(self) -> None:
        now = _monotonic()
        if self.started is None:
            self.started = now
        self.updated = now

    @property
    def active(self) -> bool:
        return self.started is not None

    def rate(self) -> float | None:
        """Items per second so far."""
        if self.started is None or self.updated is None or self.updated <= self.started:
            return None
        return self.n / (self.updated - self.started)

    def eta(self) -> float | None:
        """Seconds left at the current rate (None without a total or a rate)."""
        rate = self.rate()
        if not rate or self.total is None:
            return None
        return max(0.0, (self.total - self.n) / rate)


class _Key:
    """One metric key of a run: its next automatic step and its buffered points,
    ``step, time, value`` triples in a flat ``array('d')`` (one atomic ``fromlist``
    per point, so the flusher can take them without a lock).

    Once the key gets a value to read at flush (a tensor on a device), ``defer``
    moves it for good to ``mixed``, a list of ``[step, time, value]`` (one atomic
    ``append`` per point): ``add`` then appends there, floats and tensors alike, so
    the key's points stay in the order logged. The flusher takes ``mixed`` before
    ``points``; every point still in ``points`` was logged before the first one in
    ``mixed``."""

    __slots__ = ("next", "points", "add", "mixed")

    def __init__(self, first_step: int = 0) -> None:
        self.next = first_step
        self.points = array("d")
        self.add = self.points.fromlist
        self.mixed: list | None = None

    def defer(self) -> None:
        if self.mixed is None:
            self.mixed = []
            self.add = self.mixed.append

    def take(self) -> tuple[array | None, list | None]:
        """What is buffered now (the flusher's, under the run's flush lock): the
        points array and the mixed list's entries, each None when empty."""
        taken = None
        mixed = self.mixed
        if mixed:
            m = len(mixed)
            taken = mixed[:m]
            del mixed[:m]  # entries are only appended, so these are exactly the ones taken
        points = self.points
        n = len(points)
        chunk = None
        if n:
            chunk = points[:n]
            del points[:n]  # points are only added at the end, so these are exactly the ones taken
        return chunk, taken


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class Run:
    """A run being logged. Use :func:`start_run` (or the scheduler) to get one.

    ``run.log(loss=0.3, acc=0.9, step=10)`` records points; without ``step``
    each key counts up from its last step (0 first). Values are floats, ints,
    bools, numpy or one-element torch scalars; NaN and ±inf are kept.
    """

    def __init__(self, info: RunInfo, settings: Settings, sinks: list, store) -> None:
        self.info = info
        self.run_id = info.run_id
        self.settings = settings
        self._store = store
        self._keys: dict[str, _Key] = {}
        self._rich_next: dict[str, int] = {}
        self._first_steps: dict[str, int] = {}  # a resumed run's keys go on from their stored steps
        self._captures: list = []  # handles of this run's captures (tracking.capture)
        self._interrupt: RunInterrupted | None = None
        self._flush_lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._ending = False  # set under _flush_lock by end(): only its last, forced flush follows
        self._last_flush = _monotonic()
        self._flush_rows = settings.flush_rows
        self._flush_interval = settings.flush_interval
        self._idle_rows = settings.idle_flush_rows
        self._dispatcher = Dispatcher(
            info, sinks, settings.sink_retries, settings.sink_queue_rows, processors=settings.processors
        )
        #: Last ``(step, value)`` of each key as of the latest flush (see :meth:`last_values`).
        self.latest: dict[str, tuple[int, float]] = {}
        #: Progress declared with :meth:`progress` / :meth:`track`.
        self.progress_state = Progress()
        self.points = 0
        self.status = info.status
        self.error: str | None = None
        self.dropped: dict[str, int] = {}
        #: Physical ids of the GPUs leased to this run (same ids as nvidia-smi).
        self.gpus: list[int] = []
        #: The device string the run's code should use ("cpu", "cuda:0", ...).
        self.device = "cpu"
        #: The GPU inventory ``gpus`` were leased from (the scheduler's), for telemetry.
        self.gpu_inventory = None
        #: The run's collectors (``collectors.registry.RunCollectors``); set by ``start_run``.
        self.collectors: RunCollectors | None = None

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def experiment(self) -> str:
        return self.info.experiment

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.info.params)

    @property
    def tags(self) -> list[str]:
        return list(self.info.tags)

    @property
    def store_path(self) -> Path:
        return self._store.path

    def __repr__(self) -> str:
        return f"<Run {self.name!r} ({self.run_id}) {self.status.value}>"

    # -- the hot path -------------------------------------------------------
    def log(self, step: int | None = None, **metrics: Any) -> None:
        """Record metrics: ``run.log(loss=0.3, acc=0.9, step=10)``.

        Values are floats, ints, bools, numpy scalars and one-element tensors: a
        CPU tensor is read now, a tensor on a device is kept and read at the next
        flush, off this thread (no device sync here). Steps are integers within
        ±2**53 (kept exactly). Raises ``InvalidMetric`` (a ``TypeError``) naming the key of a value that is not a real number,
        or a key that is empty, over-long or a telemetry name while telemetry is
        on (``sys/cpu_percent``, ``gpu/0/power_w``, ...); nothing of that call is logged. Inside a run that was cancelled or timed out,
        raises ``RunCancelled`` / ``RunTimedOut`` instead.
        """
        if self._interrupt is not None:
            raise self._interrupt
        t = _time()
        if step is not None and (step.__class__ is not int or not _STEP_MIN <= step <= _STEP_MAX):
            step = as_step(step)
        keys = self._keys
        if len(metrics) == 1:
            for k, v in metrics.items():  # noqa: B007 - the one item, fastest way out
                pass
            if v.__class__ is not float:
                v = as_value(k, v)
                if v.__class__ is not float:  # a device tensor, read at flush
                    rec = keys.get(k) or self._new_key(k)
                    rec.defer()
                    step = rec.next if step is None else step
                    rec.next = step + 1
                    rec.add([step, t, v])
                    return
            rec = keys.get(k)
            if rec is None:
                rec = self._new_key(k)
            if step is None:
                step = rec.next
            rec.next = step + 1
            rec.add([step, t, v])
            return
        for k, v in metrics.items():
            if v.__class__ is not float or k not in keys:
                metrics = self._checked(metrics)  # validates all before anything is appended
                break
        for k, v in metrics.items():
            rec = keys[k]
            s = rec.next if step is None else step
            rec.next = s + 1
            rec.add([s, t, v])

    def _new_key(self, key: str) -> _Key:
        check_key(key)
        if self.settings.telemetry_interval and is_telemetry(key):
            raise InvalidMetric(
                f"{key!r} is a telemetry key that notebook_exp records itself; log it under another "
                "name, or turn telemetry off (NOTEBOOK_EXP_TELEMETRY_INTERVAL=0)"
            )
        rec = self._keys[key] = _Key(self._first_steps.get(key, 0))
        return rec

    def _checked(self, metrics: dict[str, Any]) -> dict[str, Any]:
        values = {}
        for k, v in metrics.items():
            values[k] = v if v.__class__ is float else as_value(k, v)
            if k not in self._keys:
                check_key(k)
        for k, v in values.items():
            rec = self._keys.get(k) or self._new_key(k)
            if v.__class__ is not float:  # a device tensor, read at flush
                rec.defer()
        return values

    def _log_telemetry(self, values: dict[str, float]) -> None:
        """Append readings of the telemetry sampler (its thread; never interrupted)."""
        t = _time()
        for k, v in values.items():
            rec = self._keys.get(k)
            if rec is None:
                rec = self._keys[k] = _Key(self._first_steps.get(k, 0))
            step = rec.next
            rec.next = step + 1
            rec.add([step, t, v])

    # -- other records ------------------------------------------------------
    def _rich_step(self, key: str, step: Any) -> int:
        check_key(key)
        step = self._rich_next.get(key, 0) if step is None else as_step(step)
        self._rich_next[key] = step + 1
        return step

    def log_params(self, params: dict[str, Any] | None = None, **more: Any) -> None:
        """Add or update params (merged into those given at start)."""
        merged = dict(self.info.params)
        merged.update(clean_params({**(params or {}), **more}))
        self.info.params = merged
        self._store.records.params(self.run_id, merged)
        self._dispatcher.publish("log_params", dict(merged))

    def set_tags(self, tags) -> None:
        """Replace the run's tags with ``tags`` (a string or a list of strings)."""
        self.info.tags = clean_tags(tags)
        self._store.records.tags(self.run_id, self.info.tags)
        self._dispatcher.publish("set_tags", list(self.info.tags))

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        """Record a piece of text (a sample, a config dump, a note)."""
        self._dispatcher.publish("log_text", key, self._rich_step(key, step), _time(), str(text))

    def log_histogram(self, key: str, values: Any, step: int | None = None, bins: int = 64) -> None:
        """Record the distribution of ``values`` (bin edges and counts, not the values)."""
        edges, counts = histogram(values, bins)
        self._dispatcher.publish("log_histogram", key, self._rich_step(key, step), _time(), edges, counts)

    def log_image(self, key: str, image: Any, step: int | None = None) -> None:
        """Record an image (PIL image or HxW[xC] array; floats in [0, 1] are scaled) as PNG."""
        png, width, height = encode_png(image)
        self._dispatcher.publish("log_image", key, self._rich_step(key, step), _time(), png, width, height)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a file into the store's ``artifacts/<run_id>/`` folder and record it.

        ``name`` (default: the file's name) may hold sub-folders (``"ckpt/last.pt"``)
        but stays inside the run's folder: an absolute name or one with ``..`` raises
        ``ConfigError``."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"artifact {source} is not a file")
        name = artifact_name(name if name is not None else source.name)
        dest = self._store.path.parent / "artifacts" / self.run_id / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        self._dispatcher.publish("log_artifact", name, str(dest))
        return dest

    # -- progress -------------------------------------------------------------
    def progress(self, total: int | None = None, n: int | None = None, advance: int = 0) -> None:
        """Declare or move the run's progress bar: ``run.progress(total=1000)``, then
        ``run.progress(advance=1)`` or ``run.progress(n=i)``. Widgets show rate and ETA."""
        state = self.progress_state
        if total is not None:
            state.total = int(total)
        if n is not None:
            state.n = int(n)
        state.n += advance
        state.touch()

    def track(self, iterable, total: int | None = None):
        """Iterate ``iterable`` and advance the progress bar: ``for batch in run.track(loader):``."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.progress(total=total, n=0)
        state = self.progress_state
        for item in iterable:
            yield item
            state.n += 1
            state.touch()

    def last_values(self) -> dict[str, tuple[int, float]]:
        """The last ``(step, value)`` of every key, including points not flushed yet
        (a value still on a device shows from the flush that reads it: reading it here
        would wait for the device)."""
        values = dict(self.latest)
        for key, rec in list(self._keys.items()):
            tail = rec.points[-3:]  # one atomic slice: a whole (step, time, value) triple
            if len(tail) == 3:
                values[key] = (int(tail[0]), tail[2])
            for step, _t, value in reversed(rec.mixed[-16:] if rec.mixed else ()):
                if isinstance(value, _NUMBERS):
                    values[key] = (int(step), float(value))
                    break
        return values

    # -- flushing and ending ------------------------------------------------
    def _writer_idle(self) -> bool:
        writer = self._store._writer  # never start one here: the run's records started it
        return writer is not None and writer.rested

    def _flush(self, force: bool = False) -> int:
        """Hand the buffered points to the sinks if due or if ``force``. Due: ``flush_rows``
        points or ``flush_interval`` reached, or ``idle_flush_rows`` points while the
        store's writer is idle and rested (small batches while it has nothing to do, so
        ``end`` commits only a short tail; large ones under load, when it stays busy)."""
        recs = list(self._keys.values())
        pending = sum(len(rec.points) for rec in recs) // 3 + sum(len(rec.mixed) for rec in recs if rec.mixed)
        if not pending or (
            not force and pending < self._flush_rows and _monotonic() - self._last_flush < self._flush_interval
            and not (self._idle_rows and pending >= self._idle_rows and self._writer_idle())
        ):
            return 0
        with self._flush_lock:
            if self._ending and not force:
                return 0  # end() flushes last: a batch taken now would reach sinks it has closed
            chunks, mixed = [], []
            for key, rec in list(self._keys.items()):
                points, taken = rec.take()
                if taken:
                    mixed.append((len(chunks), taken))
                if points is not None or taken:
                    chunks.append((key, points if points is not None else array("d")))
            if mixed:
                _read_deferred(chunks, mixed)
            self._last_flush = _monotonic()
            for key, points in chunks:
                self.latest[key] = (int(points[-3]), points[-1])
            batch = MetricBatch(self.run_id, chunks)
            self.points += len(batch)
            self._dispatcher.publish("log_metrics", batch, rows=len(batch))
        return len(batch)

    def flush(self, timeout: float | None = None) -> bool:
        """Push everything logged so far through every sink and wait until stored.

        Returns True once every sink has it (the store committed it), False if
        ``timeout`` seconds passed first. While the store cannot be written (a full
        disk, an I/O error) it raises ``StoreUnavailable`` at once, whose ``pending``
        counts this run's points held in memory: they are retried, and spilled to disk
        if the run ends first (see ``notebook_exp.store.writer``)."""
        self._flush(force=True)
        return self._dispatcher.sync(timeout)

    def interrupt(self, exc: RunInterrupted) -> None:
        """Make the run's next ``log`` raise ``exc`` (cancellation, timeout)."""
        self._interrupt = exc

    def end(
        self,
        status: RunStatus | str = RunStatus.COMPLETED,
        error: str | None = None,
        *,
        requeue: bool = False,
        on_recorded=None,
    ) -> None:
        """Flush, end every sink, and record the final status (idempotent). Returns
        once the store has it, or at once if ``on_recorded`` is given: it is then
        called (from the store's writer thread, and must not wait on it) when the
        final status is committed.

        ``requeue`` (the scheduler's, for retries) records the run as ``queued``
        again with a ``retry`` event instead of a final status.
        """
        status = RunStatus(status)
        with self._end_lock:
            if self.status.terminal:
                return
            self.status = status
        self.error = error
        handles, self._captures = self._captures, []
        captures.stop(handles)  # the framework's methods are its own again, however the run ends
        flusher.remove(self)
        telemetry.sampler.unwatch(self)
        with self._flush_lock:  # a flush the flusher thread is in the middle of publishes first
            self._ending = True
        try:
            self._flush(force=True)
        finally:
            self.dropped = self._dispatcher.finish(status, error, timeout=self.settings.lock_timeout)
            self._record_end(status, error, requeue, on_recorded)
            _live.pop(self.run_id, None)
            if _current.get() is self:
                _current.set(None)

    def _record_end(self, status: RunStatus, error: str | None, requeue: bool = False, on_recorded=None) -> None:
        dropped = sum(self.dropped.values())
        if dropped:
            warnings.warn(
                f"run {self.run_id}: sinks dropped points: "
                + ", ".join(f"{k}: {v}" for k, v in self.dropped.items()),
                RuntimeWarning,
                stacklevel=3,
            )
        seq = self._store.records.ended(self.run_id, status.value, error, dropped, requeue=requeue,
                                        on_commit=on_recorded)
        if on_recorded is None:
            self._settle(self._store.writer, seq)

    def _settle(self, writer, seq: int) -> None:
        """Wait, at most ``lock_timeout``, until the run's end is stored or spilled."""
        timeout = self.settings.lock_timeout
        if not writer.wait(seq, timeout, spill=True):
            holder = self._store.waiting_for
            if holder is not None:
                raise StoreLocked(str(self._store.path), holder or None, timeout)
            raise writer.unavailable(self.run_id)
        info = writer.spill_of(seq)
        if info is not None:
            warnings.warn(
                f"run {self.run_id} ended while store {self._store.path} could not be written ({info.reason}): "
                f"its last {info.runs.get(self.run_id, 0):,} points and its final status are in spill {info.path}, "
                "ingested when a writer next opens the store (or: notebook-exp recover)",
                RuntimeWarning, stacklevel=4,
            )
        lost = writer.dropped.get(self.run_id, 0)
        if lost:
            warnings.warn(f"run {self.run_id}: {lost:,} points were dropped while the store could not be written "
                          "(counted in runs.dropped)", RuntimeWarning, stacklevel=4)

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> Run:
        _current.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end(RunStatus.COMPLETED)
            return False
        try:
            self.end(*outcome(exc))
        except StoreError as store_error:  # the user's exception goes on; the store's is told with it
            warnings.warn(f"run {self.run_id}: its end could not be stored: {store_error}", RuntimeWarning,
                          stacklevel=2)
            if hasattr(exc, "add_note"):
                exc.add_note(f"notebook_exp: the run's end could not be stored: {store_error}")
        return False


def outcome(exc: BaseException) -> tuple[RunStatus, str]:
    """The status and reason a run ends with when ``exc`` escapes it."""
    if isinstance(exc, (KeyboardInterrupt, RunCancelled)):
        return RunStatus.CANCELLED, str(exc) or "cancelled"
    if isinstance(exc, RunTimedOut):
        return RunStatus.FAILED, "timeout: " + str(exc) if str(exc) else "timeout"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RunStatus.FAILED, text


def _read_deferred(chunks: list[tuple[str, array]], mixed: list[tuple[int, list]]) -> None:
    """Append each key's mixed entries (floats and device tensors, in order) to its
    chunk, the tensors read in one ``resolve`` (a sync per device, on this thread:
    the flusher's)."""
    deferred = [value for _index, taken in mixed for _s, _t, value in taken if not isinstance(value, _NUMBERS)]
    numbers = iter(resolve(deferred) if deferred else ())
    for index, taken in mixed:
        flat = []
        for step, t, value in taken:
            flat += (step, t, value if isinstance(value, _NUMBERS) else next(numbers))
        chunks[index][1].fromlist(flat)


def current_run() -> Run | None:
    """The run of the current context (inside ``with start_run(...)`` or a scheduled run)."""
    return _current.get()


def start_run(
    name: str | None = None,
    experiment: str | None = None,
    params: dict[str, Any] | None = None,
    tags: list[str] | str | None = None,
    sinks: list | None = None,
    *,
    store: str | os.PathLike | None = None,
    settings: Settings | None = None,
    run_id: str | None = None,
    resume: bool | str = False,
    capture: list | str | None = None,
    columns: dict[str, Any] | None = None,
    gpu_inventory=None,
) -> Run:
    """Start a run now and return it; use it as a context manager to end it.

    ``sinks`` takes entry-point names, ``Sink`` classes, factories (callables
    returning a ``Sink``) and ``Sink`` instances (default: the ``sinks`` setting,
    ``NOTEBOOK_EXP_SINKS``); an instance serves this one run only. ``store`` overrides the store
    file (default: the ``store`` setting, ``NOTEBOOK_EXP_STORE``). Raises
    ``StoreError`` naming the path if the store cannot be written (a store held by
    another process is not waited for: the run starts, with one warning naming the
    holder, and its records are committed when the file frees), and
    ``SinkError`` if a sink fails to load or start. ``run_id`` starts a run
    the store may already have (a queued one) under that id, steps from 0;
    with ``resume=True`` it continues the stored run ``run_id`` instead: status
    ``running`` again with a ``resumed`` event, automatic steps after each key's
    stored last step, the stored params updated by ``params``, the stored tags
    plus ``tags`` (``ConfigError`` if there is no such run, or a live process owns
    it, naming its PID; see ``tracking.resume``); ``resume="allow"`` continues it
    if the store holds it and starts it fresh under that id otherwise. ``capture`` names framework
    plugins whose own logging calls made in this thread go to the run:
    ``capture=["tensorboard"]`` captures ``SummaryWriter.add_scalar`` and friends,
    ``[("tensorboard", {"write": False})]`` without the writer's own files
    (default: the ``capture_tensorboard`` setting; see ``tracking.capture``).
    ``columns`` sets more of its ``runs`` columns (the scheduler's attempts and
    gpus); ``gpu_inventory`` is the inventory those gpus were leased from (their
    telemetry is read there). It returns once the store's writer has started and
    committed the run's row (at most ``START_WAIT`` seconds; not waited for while
    another process holds the file), so a training loop does not start beside it.
    """
    from ..store import get_store, utcnow

    settings = settings or get_settings()
    store_obj = get_store(store if store is not None else settings.store_path, settings=settings)
    params = clean_params(params)
    tags = clean_tags(tags)
    if resume not in (False, True, "allow"):
        raise ConfigError(f"resume={resume!r}: use True (the run must be stored), 'allow' (continue it if stored) "
                          "or False")
    if resume and run_id is None:
        raise ConfigError(f"resume={resume!r} continues a stored run: pass its run_id")
    starters = captures.prepare(capture, settings)  # bad entries fail before anything is recorded
    sink_objs = registry.resolve(settings.sinks if sinks is None else sinks)
    existing = run_id is not None
    run_id = run_id or new_run_id()
    now = utcnow()
    held = not store_obj.ensure(timeout=0)
    resumed = None
    if resume:
        resumed = resuming.load(store_obj, run_id, settings.lock_timeout, set(_live), missing_ok=resume == "allow")
    if resumed is not None:
        name, experiment, params, tags = resuming.merged(resumed, name, experiment, params, tags)
    experiment = experiment or "default"
    name = name or f"{experiment}-{run_id[:6]}"
    info = RunInfo(
        run_id=run_id, experiment=experiment, name=name, params=params, tags=tags,
        created_at=resumed.created_at if resumed else now, started_at=resumed.started_at if resumed else now,
        store_path=str(store_obj.path), resumed=resumed is not None,
    )
    if held and resumed is None:
        _warn_held(store_obj, run_id)
    run = Run(info, settings, sink_objs, store_obj)
    run.gpus = list((columns or {}).get("gpus") or [])
    run.gpu_inventory = gpu_inventory
    _exit.on_shutdown(end_live_runs, order=20)
    row = {
        "experiment": experiment, "name": name, "status": RunStatus.RUNNING.value, "params": json.dumps(params),
        "tags": tags, "started_at": now, "error": None, "ended_at": None, **(columns or {}),
    }
    # a queued or resumed run's collectors recorded when it was first created; here only the sampled ones start
    run.collectors = RunCollectors(run_id, settings, store_obj.records, created=not existing)
    if resumed is not None:
        _record_resumed(run, resumed, row)
    else:
        fields, info_fields = {}, None
        if not existing:
            fields, info_fields = run.collectors.collect(RunContext(run_id, name, experiment, settings))
        store_obj.records.started(run_id, row, now, existing=existing, columns=columns, git=fields.get("git"),
                                  source=fields.get("source"), info=info_fields)
    run.collectors.report()
    try:
        run._dispatcher.start()
    except Exception as exc:
        run._record_end(RunStatus.FAILED, str(exc))
        run.status = RunStatus.FAILED
        raise
    _live[run_id] = run
    _current.set(run)
    flusher.add(run)
    telemetry.sampler.watch(run)
    if not held:  # the loop starts beside an idle writer, not its imports and the run's first commit
        store_obj.writer.wait_idle(START_WAIT)
    if starters:
        try:
            run._captures = captures.start(run, starters)
        except BaseException as exc:
            run.end(*outcome(exc))
            raise
    return run


def _record_resumed(run: Run, resumed, row: dict[str, Any]) -> None:
    """The resumed run's steps go on from the stored ones; its row says it runs again."""
    run._first_steps = dict(resumed.next_steps)
    run._rich_next = dict(resumed.rich_next)
    row = {k: v for k, v in row.items() if k not in ("started_at", "experiment", "name")}
    keys = len(resumed.next_steps)
    run._store.records.resumed(run.run_id, row, f"was {resumed.status}; steps go on for {keys} metric keys")


def resumable(run_id: str, store=None, settings: Settings | None = None) -> resuming.Resumed:
    """The stored run ``run_id`` if ``start_run(run_id=run_id, resume=True)`` may continue
    it now (the scheduler checks before it queues one); ``ConfigError`` otherwise."""
    from ..store import Store, get_store

    settings = settings or get_settings()
    if not isinstance(store, Store):
        store = get_store(store if store is not None else settings.store_path, settings=settings)
    return resuming.load(store, run_id, settings.lock_timeout, set(_live))


def artifact_name(name: str) -> str:
    """``name`` as a relative path inside a run's artifact folder; ``ConfigError`` otherwise."""
    text = str(name).replace("\\", "/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not text.strip() or text.startswith("/") or Path(text).is_absolute() or ".." in parts or not parts:
        raise ConfigError(
            f"artifact name {name!r} must be a relative path inside the run's folder (no '..', not absolute)"
        )
    return "/".join(parts)


def _warn_held(store, run_id: str) -> None:
    """The store is held by another process: the run starts anyway, and says so once."""
    holder = store.waiting_for
    who = f"process {holder}" if holder else "another process"
    warnings.warn(
        f"store {store.path} is held by {who}: run {run_id} starts now and its records wait in memory "
        "until the file is free (a reader that keeps the file open blocks writers)",
        RuntimeWarning, stacklevel=3,
    )


_live: dict[str, Run] = {}


def _nothing() -> None:
    """An ``on_recorded`` that asks for nothing (``end`` then returns without waiting)."""


def end_live_runs() -> None:
    """End every run of this process that is still live: ``failed`` if an uncaught
    exception is ending the interpreter, else ``completed``. A shutdown step (see
    ``_exit``): runs at interpreter exit, after the scheduler stopped; idempotent."""
    for run in list(_live.values()):
        try:
            # queue the ends without waiting for the store: closing the stores (the last
            # shutdown step) commits them, or spills them if the file stays held
            if _exit.uncaught:
                run.end(*outcome(_exit.uncaught[-1]), on_recorded=_nothing)
            else:
                run.end(RunStatus.COMPLETED, on_recorded=_nothing)
        except Exception:  # noqa: BLE001 - one run's store error must not keep the others open
            log.exception("ending run %s at shutdown failed", run.run_id)
