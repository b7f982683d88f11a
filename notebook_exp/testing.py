"""Fakes for users' tests (and ours), used through the same interfaces as the real thing.

* :class:`MemorySink` keeps everything a run sends to it, in memory.
* :func:`temporary_store` points notebook_exp at a fresh store file for a block.
* :class:`FakeGpus` declares N virtual GPUs for a block, with readings a test sets.
* :func:`make_settings` builds a validated ``Settings`` without the environment.
* :func:`inline_scheduler` runs submitted runs one at a time, each to its end
  before ``submit`` returns (:class:`InlineScheduler`, :class:`InlineExecutor`);
  :func:`use_scheduler` makes any ``Scheduler`` the one ``nx.submit`` uses.
* :class:`StoreHolder` is another process holding the store file open with plain
  duckdb, as a user's open connection would (a real lock, not a fake).
* :func:`shutdown` ends live runs and stops every background thread (test fixtures);
  :func:`leaked_threads` then names the package's threads still alive.

A typical test::

    import notebook_exp as nx
    from notebook_exp import testing

    def test_training_logs_a_loss():
        with testing.temporary_store(), testing.FakeGpus(2) as gpus:
            with testing.inline_scheduler(inventory=gpus.inventory):
                job = nx.submit(train, {"lr": 0.1}, gpus=1)  # returns once the run ended
            assert job.status == nx.RunStatus.COMPLETED
            assert not nx.metrics(job.run_id, "loss").empty
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .config import Settings, reset_settings
from .exceptions import ConfigError
from .inventory import DEFAULT_FAKE_MEMORY, FakeGpuBackend, GpuInventory
from .models import MetricBatch, RunInfo, RunStatus
from .sinks.base import Sink

if TYPE_CHECKING:  # imported on first use (module __getattr__): the scheduler is not light
    from .scheduler.executors.inline import InlineExecutor, InlineScheduler

__all__ = [
    "FakeGpus",
    "InlineExecutor",
    "InlineScheduler",
    "MemorySink",
    "StoreHolder",
    "THREAD_PREFIX",
    "inline_scheduler",
    "leaked_threads",
    "make_settings",
    "package_threads",
    "shutdown",
    "temporary_store",
    "use_scheduler",
]

#: Every thread notebook_exp starts is named ``notebook_exp-<what>[...]``.
THREAD_PREFIX = "notebook_exp-"


class MemorySink(Sink):
    """A sink that records every call (thread-safe to read while a run is live)::

        sink = MemorySink()
        with nx.start_run(sinks=[sink]) as run:
            run.log(loss=0.5, step=1)
        assert sink.methods[0] == "start_run" and sink.status == nx.RunStatus.COMPLETED
        assert [(key, step, value) for key, step, _ts, value in sink.points] == [("loss", 1, 0.5)]

    ``calls`` holds ``(method, args)`` in order, ``points`` every metric point
    ``(key, step, ts, value)``; ``run``, ``status``, ``error`` and ``closed`` what
    ``start_run``, ``end_run`` and ``close`` received. One instance serves one run;
    pass the class (``sinks=[MemorySink]``) to give each run of a sweep its own.
    """

    name = "memory"
    max_pending_rows = None
    wants_telemetry = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.points: list[tuple[str, int, float, float]] = []
        self.run: RunInfo | None = None
        self.status: RunStatus | None = None
        self.error: str | None = None
        self.closed = False
        self._lock = threading.Lock()

    def _record(self, method: str, *args) -> None:
        with self._lock:
            self.calls.append((method, args))

    def start_run(self, run: RunInfo) -> None:
        self.run = run
        self._record("start_run", run)

    def log_params(self, params) -> None:
        self._record("log_params", params)

    def set_tags(self, tags) -> None:
        self._record("set_tags", tags)

    def log_metrics(self, batch: MetricBatch) -> None:
        with self._lock:
            self.points.extend(batch)
        self._record("log_metrics", batch)

    def log_text(self, key, step, ts, text) -> None:
        self._record("log_text", key, step, ts, text)

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._record("log_histogram", key, step, ts, bin_edges, counts)

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._record("log_image", key, step, ts, png, width, height)

    def log_artifact(self, name, path) -> None:
        self._record("log_artifact", name, path)

    def flush(self) -> None:
        self._record("flush")

    def end_run(self, status: RunStatus, error: str | None) -> None:
        self.status, self.error = status, error
        self._record("end_run", status, error)

    def close(self) -> None:
        self.closed = True
        self._record("close")

    @property
    def methods(self) -> list[str]:
        """The names of the calls received, in order."""
        with self._lock:
            return [m for m, _ in self.calls]


@contextlib.contextmanager
def temporary_store(path: str | os.PathLike | None = None) -> Iterator[Path]:
    """Use a fresh store file (in a temporary folder unless ``path``) inside the block::

        with temporary_store() as path:
            nx.start_run("r").end()
            assert len(nx.runs()) == 1

    On exit everything is shut down (:func:`shutdown`) and the previous store setting
    comes back. Enter it before :class:`FakeGpus` or :func:`inline_scheduler`: the
    scheduler those start keeps the store of that moment."""
    with contextlib.ExitStack() as stack:
        if path is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="notebook_exp-"))
            path = Path(folder) / "store.duckdb"
        with _environment(NOTEBOOK_EXP_STORE=str(path)):
            try:
                yield Path(path)
            finally:
                shutdown()


def make_settings(**overrides: Any) -> Settings:
    """A ``Settings`` with the given fields and the defaults for the others, validated,
    without reading (or changing) the environment or a config file::

        settings = make_settings(store=tmp_path / "s.duckdb", max_concurrent=1)
        Scheduler(settings)                        # or nx.start_run(settings=settings)

    Values are what the fields take; strings are read as from the environment
    (``sinks="duckdb,jsonl"``). An unknown field or a bad value raises
    ``ConfigError`` (a ``ValueError``) naming the field."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; known: {', '.join(Settings.model_fields)}")
    try:
        given = _GivenSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
            f" (got {error['input']!r})"
            for error in exc.errors()
        )
        raise ConfigError(f"bad settings: {problems}") from exc
    return Settings.model_construct(_fields_set=given.model_fields_set, **dict(given))


class _GivenSettings(Settings):
    """``Settings`` from the constructor's arguments only (see :func:`make_settings`)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_others):
        return (init_settings,)


class FakeGpus:
    """``count`` virtual GPUs for a block, whose readings the test sets::

        with FakeGpus(2) as gpus:
            gpus.backend.set(1, memory_used=15 * 2**30, utilization=90.0)
            assert len(nx.gpus()) == 2
            job = nx.submit(train, gpus=1)           # leases one of them

    Inside the block the process's scheduler (what ``nx.submit``, ``nx.gpus`` and the
    widgets use) is a fresh one leasing from :attr:`inventory`, so readings set on
    :attr:`backend` are what ``nx.gpus()`` shows and what the runs holding a GPU log
    as telemetry. The ``fake_gpus`` (and ``reserved_gpus``) settings say the same, so
    child processes (``executor="process"``, subprocesses the test starts) and
    schedulers made in the block declare the same GPUs, with their own idle
    readings. On exit that scheduler is stopped and the settings come back.

    ``memory`` is each GPU's total memory in bytes, ``name`` the prefix of their
    names ("Virtual GPU 0", ...), ``reserved`` physical ids never leased. Every GPU
    is visible (``CUDA_VISIBLE_DEVICES`` is not consulted). Without entering it,
    :attr:`inventory` is a plain ``GpuInventory`` for ``Scheduler(inventory=...)`` or
    ``LeaseManager``. Enter it once the store is chosen (inside
    :func:`temporary_store`); to combine it with other settings, enter
    ``use_scheduler(Scheduler(settings, inventory=gpus.inventory))`` inside it.
    """

    def __init__(
        self,
        count: int,
        *,
        memory: int = DEFAULT_FAKE_MEMORY,
        name: str = "Virtual GPU",
        reserved: Iterable[int] = (),
    ) -> None:
        self.count = count
        self.reserved = sorted(int(r) for r in reserved)
        #: The ``FakeGpuBackend``: ``backend.set(index, memory_used=..., utilization=...,
        #: temperature=..., power=...)`` changes what the GPUs read.
        self.backend = FakeGpuBackend(count, memory_total=memory, name=name)
        #: The ``GpuInventory`` over :attr:`backend` that the block's scheduler leases from.
        self.inventory = GpuInventory(self.backend, cuda_visible_devices=None, reserved=self.reserved)
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> FakeGpus:
        from .scheduler.core import Scheduler

        if self._stack is not None:
            raise ConfigError("this FakeGpus is already in use; make another")
        with contextlib.ExitStack() as stack:
            stack.enter_context(_environment(
                NOTEBOOK_EXP_FAKE_GPUS=str(self.count),
                NOTEBOOK_EXP_RESERVED_GPUS=",".join(map(str, self.reserved)),
            ))
            stack.enter_context(use_scheduler(Scheduler(inventory=self.inventory)))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __repr__(self) -> str:
        return f"FakeGpus({self.count})"


@contextlib.contextmanager
def use_scheduler(scheduler) -> Iterator[Any]:
    """Make ``scheduler`` the process's scheduler (what ``nx.submit``, ``nx.wait``,
    ``nx.gpus`` and the widgets use) for the block; yields it::

        with use_scheduler(Scheduler(make_settings(store=path, max_concurrent=1))):
            nx.submit(fn)

    The scheduler in place before is stopped first; ``scheduler`` is stopped on exit,
    and the next ``nx.submit`` starts a default one again."""
    from . import _exit
    from .scheduler import core

    with core._scheduler_lock:
        previous, core._scheduler = core._scheduler, scheduler
    _exit.on_shutdown(core.stop_scheduler, order=10)  # the step get_scheduler registers
    try:
        if previous is not None and previous is not scheduler:
            previous.stop()
        yield scheduler
    finally:
        with core._scheduler_lock:
            if core._scheduler is scheduler:
                core._scheduler = None
        scheduler.stop()


@contextlib.contextmanager
def inline_scheduler(
    settings: Settings | None = None, inventory=None, *, wait: bool = True
) -> Iterator[Any]:
    """Run the block's submissions inline, deterministically; yields the scheduler::

        with inline_scheduler():
            job = nx.submit(train, {"lr": 0.1})
            assert job.status == nx.RunStatus.COMPLETED   # submit waited for it

    ``"thread"`` runs (the default executor) go through :class:`InlineExecutor`: one at
    a time, in queue order, each to its end before the next starts; with ``wait``
    ``submit`` returns once the job ended (without, it only queues and
    ``nx.wait`` waits). ``settings`` (default: the process's) and ``inventory``
    (e.g. ``FakeGpus(2).inventory``) are the scheduler's. Cancellation and timeouts
    are cooperative only: a run that never calls ``run.log`` cannot be stopped."""
    from .scheduler.executors.inline import InlineScheduler

    with use_scheduler(InlineScheduler(settings, inventory, wait=wait)) as scheduler:
        yield scheduler


def shutdown() -> None:
    """Run the package's shutdown steps, as at exit: stop the scheduler, end live
    runs, stop every background thread, flush and close every store. A test
    fixture calls it after each test (then :func:`leaked_threads`)."""
    from . import _exit

    _exit.shutdown()


def package_threads() -> list[threading.Thread]:
    """The threads of notebook_exp alive now (named ``notebook_exp-...``); take it
    before a test to pass as ``leaked_threads(ignore=...)``."""
    return [thread for thread in threading.enumerate() if thread.name.startswith(THREAD_PREFIX)]


def leaked_threads(ignore: Iterable[threading.Thread] = (), timeout: float = 2.0) -> list[str]:
    """Names (sorted) of the package's threads still alive after waiting up to
    ``timeout`` seconds, all together, for them to end; threads in ``ignore`` (those
    alive before the test) and the calling thread are not counted::

        before = package_threads()
        ...                                       # the test
        shutdown()
        assert not leaked_threads(before), "a background thread outlived the test"
    """
    skip = set(ignore) | {threading.current_thread()}
    deadline = time.monotonic() + timeout
    alive = []
    for thread in package_threads():
        if thread in skip:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread.name)
    return sorted(alive)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (the settings' source) for the block, then restore them;
    the process's settings are read again on both sides."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    reset_settings()
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()


def __getattr__(name: str):
    if name in ("InlineExecutor", "InlineScheduler"):  # the scheduler is imported on first use
        from .scheduler.executors import inline

        return getattr(inline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


HOLD = (
    "import duckdb, sys, time\n"
    "deadline = time.monotonic() + 30\n"
    "while True:\n"  # the viewer may be between two reads of its own: take the file when it lets go
    "    try:\n"
    "        con = duckdb.connect(sys.argv[1])\n"
    "        break\n"
    "    except duckdb.IOException:\n"
    "        if time.monotonic() > deadline:\n"
    "            raise\n"
    "        time.sleep(0.005)\n"
    "print('held', flush=True)\n"
    "sys.stdin.readline()\n"
    "con.close()\n"
    "print('released', flush=True)\n"
)


class StoreHolder:
    """Another process holding a store file with a plain ``duckdb.connect``, as a user's
    notebook or script can: while it holds it, no other process can open the file.

    ``with StoreHolder(path) as holder:`` returns once the process holds the file
    (it waits, up to 30 s, for a moment when nobody else has it) and holds it until
    ``holder.release()`` or the block ends; ``holder.pid`` is its process id."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> StoreHolder:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(self.path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if line.strip() != "held":
            self.proc.kill()
            raise RuntimeError(f"the holder could not open {self.path}: {line!r}")
        return self

    def release(self) -> None:
        """Close the holder's connection and wait for its process to end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(30)

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
