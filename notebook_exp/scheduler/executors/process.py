"""The process executor: each attempt runs in a fresh Python interpreter.

The function and the notebook globals it references are shipped with
cloudpickle; ``CUDA_VISIBLE_DEVICES`` is set to the leased GPUs (empty for
CPU-only runs), so the run's code uses ``run.device`` (``"cuda:0"``). The child
logs straight into the store with short-lock writes, so its run survives the
kernel dying; it inherits the lease's lock files, so the GPUs stay leased for as
long as it lives. Its stdout and stderr are captured into the run. Cancel and
timeout send SIGTERM (the run sees ``RunCancelled``), then SIGKILL after
``cancel_grace`` seconds: code stuck in a C call is killed too.

The child reports its outcome in a result file and says whether the store has
it (it started and ended the run there). When it does not, this process records
the final status itself: the child's reason (a sink that failed to load, a
store it could not open), or, when the child died without a result (a signal,
``os._exit``, a crash before the run began), ``lost: the run's process ended
with ...`` and the last lines the child wrote to stderr.

The executor owns its threads: per child a monitor (``notebook_exp-proc[...]``)
that reads its status pipe and records the outcome, two readers of its stdout
and stderr, and the SIGKILL timer armed by a cancel. A timer is cancelled once
its child is gone; ``close()`` kills every child still running and waits,
within a bound, for the monitors (which wait for their readers).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ...collectors import system
from ...exceptions import ConfigError
from ...models import RunStatus
from .base import CLOSE_TIMEOUT, Executor, stopped_outcome

log = logging.getLogger("notebook_exp.scheduler")

TAIL_LINES = 20  # lines of a lost child's stderr quoted in the run's reason, at most
TAIL_CHARS = 2000  # characters of it, at most


def check_picklable(fn) -> bytes:
    """cloudpickle ``fn`` or raise ``ConfigError`` naming the global it can't ship."""
    import cloudpickle

    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - find the culprit for a clear message
        code = getattr(fn, "__code__", None)
        namespace = getattr(fn, "captured", None) or getattr(fn, "__globals__", {})
        names = code.co_names if code else list(namespace)
        for name in names:
            if name in namespace:
                try:
                    cloudpickle.dumps(namespace[name])
                except Exception as inner:  # noqa: BLE001
                    raise ConfigError(
                        f"the process executor cannot ship global {name!r} used by "
                        f"{getattr(fn, '__qualname__', fn)}: {type(inner).__name__}: {inner}"
                    ) from None
        raise ConfigError(f"the process executor cannot ship {getattr(fn, '__qualname__', fn)}: {exc}") from None


def check_sinks_picklable(sinks) -> None:
    """``ConfigError`` unless every ``sinks=`` entry can be shipped to the child."""
    import cloudpickle

    for sink in sinks or ():
        try:
            cloudpickle.dumps(sink)
        except Exception as exc:  # noqa: BLE001 - say which one
            raise ConfigError(
                f"the process executor cannot ship sink {sink!r}: {type(exc).__name__}: {exc}"
            ) from None


class ProcessExecutor(Executor):
    """Runs each attempt in ``python -m notebook_exp.scheduler._child``."""

    name = "process"

    def __init__(self, scheduler) -> None:
        super().__init__(scheduler)
        self._procs: dict[str, subprocess.Popen] = {}
        self._monitors: dict[str, threading.Thread] = {}
        self._kills: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()

    def start(self, job, lease) -> None:
        import cloudpickle

        spec, scheduler = job.spec, self.scheduler
        if job.stop_reason:  # cancelled between launch and start
            status, error = stopped_outcome(job, job.stop_reason)
            scheduler.attempt_ended(job, status, error, None)
            return
        folder = Path(tempfile.mkdtemp(prefix="notebook_exp-run-"))
        payload = folder / "payload.pkl"
        payload.write_bytes(cloudpickle.dumps({
            "fn": spec.fn, "params": spec.params, "name": job.name, "experiment": job.experiment,
            "tags": spec.tags, "sinks": spec.sinks, "run_id": job.run_id, "gpus": list(job.gpus),
            "store": str(scheduler.store.path), "attempts": job.attempts,
            "capture": spec.capture, "resume": bool(spec.resume),
        }))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTEBOOK_EXP_STORE": str(scheduler.store.path)}
        env["CUDA_VISIBLE_DEVICES"] = scheduler.inventory.visible_devices_value(job.gpus) if job.gpus else ""
        status_read, status_write = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "notebook_exp.scheduler._child", str(payload), str(status_write)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                pass_fds=[status_write, *(lease.lock_fds() if lease is not None else ())], start_new_session=True,
            )
        finally:
            os.close(status_write)
        self._procs[job.run_id] = proc
        system.separate(proc.pid)  # the child samples its own telemetry
        if job.stop_reason:  # cancelled while the child was being started
            self._terminate(job, proc)
        monitor = threading.Thread(target=self._monitor, args=(job, proc, folder, status_read),
                                   name=f"notebook_exp-proc[{job.run_id[:8]}]", daemon=True)
        with self._lock:
            self._monitors[job.run_id] = monitor
        monitor.start()

    def _monitor(self, job, proc: subprocess.Popen, folder: Path, status_fd: int) -> None:
        stderr = _Tail()
        readers = [
            threading.Thread(target=_pump, args=(stream, job, tail), daemon=True,
                             name=f"notebook_exp-proc-{label}[{job.run_id[:8]}]")
            for label, stream, tail in (("out", proc.stdout, None), ("err", proc.stderr, stderr))
        ]
        for reader in readers:
            reader.start()
        with os.fdopen(status_fd, "rb") as status:
            for line in status:
                word, *rest = line.split()
                if word == b"running":
                    self.scheduler.running(job)
                elif word == b"progress" and len(rest) == 2:
                    job._progress.n = int(rest[0])
                    job._progress.total = None if rest[1] == b"-" else int(rest[1])
                    job._progress.touch()
        proc.wait()
        self._disarm(job.run_id)  # nothing left to kill
        system.rejoin(proc.pid)
        for reader in readers:
            reader.join()
        self._procs.pop(job.run_id, None)
        try:
            status, error, result, recorded = self._outcome(job, proc.returncode, folder / "payload.pkl.result", stderr)
            shutil.rmtree(folder, ignore_errors=True)
            self.scheduler.records.output(job)
            self.scheduler.attempt_ended(job, status, error, result, recorded=recorded)
        finally:
            with self._lock:
                self._monitors.pop(job.run_id, None)

    def _outcome(self, job, code: int, result_file: Path, stderr: _Tail):
        """``(status, error, result, recorded)`` of an attempt whose child exited with ``code``."""
        import cloudpickle

        if job.stop_reason:
            status, error = stopped_outcome(job, job.stop_reason)
            return status, error, None, False
        if result_file.exists():
            try:
                data = cloudpickle.loads(result_file.read_bytes())
                return RunStatus(data["status"]), data.get("error"), data.get("result"), bool(data.get("recorded"))
            except Exception as exc:  # noqa: BLE001
                return RunStatus.FAILED, f"the run's result could not be read: {exc!r}", None, False
        error = f"lost: the run's process ended with {_exit_status(code)} before recording an outcome"
        tail = stderr.tail()
        return RunStatus.FAILED, error + (f"; the end of its stderr:\n{tail}" if tail else ""), None, False

    def stop(self, job, reason: str) -> None:
        if job.stop_reason:
            return
        job.stop_reason = reason
        proc = self._procs.get(job.run_id)
        if proc is not None:  # else start() sees stop_reason
            self._terminate(job, proc)

    def _terminate(self, job, proc: subprocess.Popen) -> None:
        """SIGTERM now, SIGKILL after ``cancel_grace`` seconds if it still runs."""
        _signal(proc, signal.SIGTERM)
        timer = threading.Timer(self.scheduler.settings.cancel_grace, _signal, args=(proc, signal.SIGKILL))
        timer.name = f"notebook_exp-proc-kill[{job.run_id[:8]}]"
        timer.daemon = True
        with self._lock:
            previous = self._kills.pop(job.run_id, None)
            self._kills[job.run_id] = timer
        if previous is not None:
            previous.cancel()
        timer.start()
        if proc.poll() is not None:  # already gone: the monitor may have disarmed before we armed
            self._disarm(job.run_id)

    def _disarm(self, run_id: str) -> None:
        """Cancel the SIGKILL timer of ``run_id``'s child, if one is armed."""
        with self._lock:
            timer = self._kills.pop(run_id, None)
        if timer is not None:
            timer.cancel()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Kill every child still running, cancel the SIGKILL timers and wait, at most
        ``timeout`` seconds in all, for the monitors to record the outcomes (idempotent)."""
        for proc in list(self._procs.values()):
            _signal(proc, signal.SIGKILL)
        with self._lock:
            timers = list(self._kills.values())
            self._kills.clear()
            monitors = list(self._monitors.values())
        for timer in timers:
            timer.cancel()
        deadline = time.monotonic() + timeout
        for thread in timers + monitors:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not end within %.0f s of the scheduler stopping", thread.name, timeout)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _exit_status(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


class _Tail:
    """The end of what a child wrote to one stream (its stderr, quoted when it is lost)."""

    def __init__(self) -> None:
        self._text = ""

    def write(self, text: str) -> None:
        self._text = (self._text + text)[-2 * TAIL_CHARS:]

    def tail(self) -> str:
        """The last ``TAIL_LINES`` lines, at most ``TAIL_CHARS`` characters."""
        return "\n".join(self._text.rstrip().splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]


def _pump(stream, job, tail: _Tail | None = None) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        text = chunk.decode("utf-8", "replace")
        job._write(text)
        if tail is not None:
            tail.write(text)
    stream.close()
