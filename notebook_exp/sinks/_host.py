"""The sink host: a child process that runs sinks off the training process's GIL.

Why: a sink busy in Python (MLflow's SQL store, TensorBoard's pure-Python
checksums, W&B's per-row work) holds the GIL on its worker thread, and a training
loop busy in Python waits for it.

Measured on 2 cores (``benchmarks/bench_sinks.py``, a loop whose numpy work
uses both cores, logging ~10k points/s): with tensorboard and mlflow on threads
the loop ran 0.93x its duckdb-only time per step; with them in the host, 1.51x,
because the host takes a core the loop's BLAS wanted. So no built-in sink is
isolated by default; the host is for machines with cores to spare, or a sink
that holds the GIL while the loop is pure Python.

How: a sink whose ``process`` setting is true (default: ``Sink.isolated``,
false for every built-in sink) is wrapped by the registry in a
:class:`ProcessSink`. That proxy is an ordinary threaded sink in the training
process: its worker thread applies the sink's route, sends each call (pickled;
a metric batch is its arrays, a memory copy) to the host, and waits for the
answer, so the dispatcher's retries, circuit breaker, rate limit and bounds work
unchanged. The host unpickles the sink (made and configured in the training
process, not started) and calls it, one thread per sink, in order, with the
training process's environment and working directory of when the run started.

One host serves every run of a process; it starts with the first isolated sink
and stops at shutdown (``_exit``, order 26: after the sink workers). If it dies,
every call in flight and every later call of its sinks fails (the dispatcher's
policy applies), and the next run starts a new host. If the training process
dies, the host sees its pipe close and ends each sink still open as failed
("the process that logged this run ended without ending it"), then exits.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import traceback
import uuid
import warnings
from multiprocessing.connection import Connection

from ..exceptions import SinkError
from ..models import RunInfo, RunStatus
from .base import Sink

__all__ = ["SHUTDOWN_ORDER", "ProcessSink", "SinkHost", "host", "stop_host"]

log = logging.getLogger("notebook_exp.sinks")

SHUTDOWN_ORDER = 26  # after the sink workers stopped (25), before the stores close (90)
STOP_TIMEOUT = 10.0  # seconds the host gets to close its sinks at shutdown before it is killed
_ORPHANED = "the process that logged this run ended without ending it"


class SinkHostDied(SinkError):
    """The sink host process is gone; its sinks' calls fail."""


class SinkHost:
    """The training process's side of one host process: sends calls, routes answers."""

    def __init__(self) -> None:
        down_r, down_w = os.pipe()  # calls, to the host
        up_r, up_w = os.pipe()  # answers, from the host
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "notebook_exp.sinks._host", str(down_r), str(up_w)],
                pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(down_r)
            os.close(up_w)
        self._out = Connection(down_w, readable=False)
        self._in = Connection(up_r, writable=False)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, list] = {}  # call id -> [event, ok, answer, warnings]
        self._ids = itertools.count()
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="notebook_exp-sinkhost", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def call(self, key: str, method: str, args: tuple):
        """Call ``method(*args)`` on sink ``key`` in the host and wait for it; what it
        raised there is raised here as ``SinkError`` with the host's traceback."""
        slot = [threading.Event(), False, None, ()]
        with self._lock:
            if self.dead is not None:
                raise SinkHostDied(f"the sink host {self.dead}")
            call_id = next(self._ids)
            self._pending[call_id] = slot
        try:
            with self._send_lock:
                self._out.send((call_id, key, method, args))
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            raise SinkHostDied(f"the sink host cannot be reached: {exc!r}") from None
        slot[0].wait()
        for category, message in slot[3]:  # what the sink warned about there, warned about here
            warnings.warn(message, _category(category), stacklevel=3)
        if not slot[1]:
            raise SinkError(slot[2])
        return slot[2]

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, answer, warned = self._in.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                slot = self._pending.pop(call_id, None)
            if slot is not None:
                slot[1], slot[2], slot[3] = ok, answer, warned
                slot[0].set()
        code = self._proc.wait()
        with self._lock:
            self.dead = f"process {self._proc.pid} exited (status {code})"
            pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot[2] = f"the sink host {self.dead} during the call"
            slot[0].set()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the pipe (the host closes what is still open and exits); kill it if it
        has not exited within ``timeout`` seconds. Idempotent."""
        with self._send_lock:
            try:
                self._out.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("sink host %s did not exit in %s s; killing it", self._proc.pid, timeout)
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)
        try:
            self._in.close()
        except OSError:
            pass


def _category(name: str) -> type[Warning]:
    """A warning class by name: a builtin one, else the builtin it is named after."""
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    for base in (DeprecationWarning, FutureWarning, RuntimeWarning):
        if name.endswith(base.__name__):
            return base
    return UserWarning


_host: SinkHost | None = None
_host_lock = threading.Lock()


def host() -> SinkHost:
    """This process's sink host, started (again, if the last one died) on first use."""
    global _host
    with _host_lock:
        if _host is None or _host.dead is not None:
            from .. import _exit

            _exit.on_shutdown(stop_host, SHUTDOWN_ORDER)
            _host = SinkHost()
        return _host


def stop_host() -> None:
    """Stop this process's sink host, if one runs (a shutdown step; idempotent)."""
    global _host
    with _host_lock:
        current, _host = _host, None
    if current is not None:
        current.stop()


class ProcessSink(Sink):
    """A sink that runs in the sink host; this side is its proxy (see the module docstring)."""

    threaded = True

    def __init__(self, inner: Sink) -> None:
        import cloudpickle

        self.name = inner.name or type(inner).__name__.lower()
        self.inner_type = type(inner)
        self.settings = inner.settings
        self.max_pending_rows = inner.max_pending_rows
        self.wants_telemetry = inner.wants_telemetry
        self.breaker_failures = inner.breaker_failures
        self.requires = inner.requires
        self._payload = cloudpickle.dumps(inner)
        self._key = uuid.uuid4().hex
        self._host: SinkHost | None = None

    def __repr__(self) -> str:
        return f"ProcessSink({self.inner_type.__qualname__}, host={self._host.pid if self._host else None})"

    def _call(self, method: str, *args):
        if self._host is None:
            raise SinkError(f"sink {self.name!r} was not started")
        return self._host.call(self._key, method, args)

    def start_run(self, run: RunInfo) -> None:
        self._host = host()
        self._host.call(self._key, "__create__", (self._payload, dict(os.environ), os.getcwd()))
        self._call("start_run", run)

    def log_params(self, params) -> None:
        self._call("log_params", params)

    def set_tags(self, tags) -> None:
        self._call("set_tags", tags)

    def log_metrics(self, batch) -> None:
        self._call("log_metrics", batch)

    def log_text(self, key, step, ts, text) -> None:
        self._call("log_text", key, step, ts, text)

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._call("log_histogram", key, step, ts, bin_edges, counts)

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._call("log_image", key, step, ts, png, width, height)

    def log_artifact(self, name, path) -> None:
        self._call("log_artifact", name, path)

    def flush(self) -> None:
        self._call("flush")

    def end_run(self, status: RunStatus, error: str | None) -> None:
        self._call("end_run", status, error)

    def close(self) -> None:
        if self._host is not None:
            try:
                self._call("close")
            finally:
                self._host = None


# -- the host process ------------------------------------------------------------------


class _Hosted:
    """One sink in the host: its calls, in order, on a thread of its own."""

    def __init__(self, key: str, answer) -> None:
        self.key = key
        self.sink: Sink | None = None
        self.started = False
        self.closed = False
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self._answer = answer
        self.thread = threading.Thread(target=self._loop, name=f"notebook_exp-hosted[{key[:8]}]", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.calls.get()
            if item is None:
                return
            call_id, method, args = item
            _warned.list = []
            try:
                result = self._do(method, args)
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self._answer(call_id, False, f"{detail} (in the sink host)\n{traceback.format_exc(limit=-8)}",
                             _warned.list)
            else:
                self._answer(call_id, True, result, _warned.list)
            _warned.list = None
            if method == "close":
                return

    def _do(self, method: str, args: tuple):
        if method == "__create__":
            import cloudpickle

            payload, env, cwd = args
            with _env_lock:  # what the sink reads of its environment when it starts
                os.environ.clear()
                os.environ.update(env)
                try:
                    os.chdir(cwd)
                except OSError:
                    pass
                self.sink = cloudpickle.loads(payload)
            return None
        if method == "start_run":
            with _env_lock:
                self.sink.start_run(*args)
            self.started = True
            return None
        if method == "close":
            self.closed = True
        return getattr(self.sink, method)(*args)

    def orphaned(self) -> None:
        """The training process is gone: end the run as failed if it started, close."""
        if self.sink is None or self.closed:
            return
        try:
            if self.started:
                self.sink.end_run(RunStatus.FAILED, _ORPHANED)
        except Exception:  # noqa: BLE001
            log.exception("sink host: end_run of an orphaned sink failed")
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            log.exception("sink host: close of an orphaned sink failed")


_env_lock = threading.Lock()
_warned = threading.local()  # the warnings of the call running on this thread
_show_warning = warnings.showwarning


def _capture(message, category, filename, lineno, file=None, line=None) -> None:
    found = getattr(_warned, "list", None)
    if found is None:
        _show_warning(message, category, filename, lineno, file, line)
    elif len(found) < 100:
        found.append((category.__name__, str(message)))


def _serve(down: Connection, up: Connection) -> None:
    send_lock = threading.Lock()

    def answer(call_id: int, ok: bool, result, warned) -> None:
        with send_lock:
            try:
                up.send((call_id, ok, result, tuple(warned)))
            except Exception as exc:  # noqa: BLE001 - an answer that cannot be pickled
                up.send((call_id, False, f"the answer of the call could not be sent back: {exc!r}", ()))

    hosted: dict[str, _Hosted] = {}
    while True:
        try:
            call_id, key, method, args = down.recv()
        except (EOFError, OSError):
            break
        entry = hosted.get(key)
        if entry is None:
            entry = hosted[key] = _Hosted(key, answer)
        entry.calls.put((call_id, method, args))
        if method == "close":
            hosted.pop(key, None)
            entry.calls.put(None)
    for entry in hosted.values():  # the training process closed the pipe: finish what is open
        entry.calls.put(None)
    for entry in hosted.values():
        entry.thread.join()
        entry.orphaned()


def main(argv: list[str]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process, which ends the runs
    warnings.simplefilter("always")  # each goes back with its call; the training process's filters decide
    warnings.showwarning = _capture
    down = Connection(int(argv[0]), writable=False)
    up = Connection(int(argv[1]), readable=False)
    try:
        _serve(down, up)
    finally:
        from .. import _exit

        _exit.shutdown()  # the hosted sinks' own shutdown steps (wandb's service), then nothing else runs


if __name__ == "__main__":
    main(sys.argv[1:])
