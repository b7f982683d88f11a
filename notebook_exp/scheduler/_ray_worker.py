"""The worker side of a Ray run: :func:`run_attempt` is the Ray task.

On the worker, in order:

1. stdout and stderr (file descriptors 1 and 2, so C libraries' output too) go
   to the run instead of Ray's log files (:class:`Capture`);
2. the payload the driver cloudpickled is loaded: the function, with the
   notebook globals it uses, and the run's params, names and settings;
3. the GPUs Ray assigned (``ray.get_gpu_ids()``) become physical ids
   (``_ray_cluster.physical_gpu_ids``) and are leased in the lock folder of the
   worker's machine, so a notebook there never gets the same GPU (a run waits,
   with a ``waiting_for_gpus`` event, while another process holds it);
4. ``started`` goes to the driver with the :class:`~._ray_cluster.Placement`
   (node, pid, GPUs, the worker's environment); the driver starts the run's row
   and sinks and marks the job running;
5. the function runs with a :class:`WorkerRun`: ``run.log`` is the same code and
   cost as everywhere (it buffers here); this process's flusher hands batches to
   the :class:`RelaySink`, which queues them on the :class:`Relay`, whose thread
   sends what piled up as one message list to the driver's ``Inbox`` actor. The
   telemetry sampler of this process reads this node (``sys/*``) and its GPUs
   (``gpu/<id>/*``); texts, histograms, images, params, tags, progress and
   output travel the same way; artifacts are copied when logged and sent in
   ``CHUNK``-byte pieces;
6. the run ends here (last flush, relay drained) and the task returns the
   outcome, cloudpickled: status, error, return value. The driver records it.

Settings: the driver's ``Settings`` travel with the payload. A worker on the
driver's machine (``_ray_cluster.machine_id``) uses them whole, its lock folder
and GPUs included; a worker elsewhere takes ``fake_gpus``, ``reserved_gpus`` and
``lock_dir`` from its own environment. Processors run on the driver.

Cancel and timeout: the driver posts the request to the inbox and the
:class:`Stopper` stops the run the way the thread executor does (its next
``run.log`` raises ``RunCancelled`` / ``RunTimedOut``) and raises the same in the
task's thread at once (``SIGUSR1``); what it logged before is delivered. The
forced ``ray.cancel`` that follows after ``cancel_grace`` kills the process. Nothing here
opens the store: the worker may be on another machine.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, GpuUnavailable, RunCancelled, RunTimedOut
from ..models import MetricBatch, RunInfo, RunStatus
from ..sinks.base import Sink
from ..tracking.run import Run, artifact_name, outcome
from ..tracking.values import clean_params, clean_tags
from ._ray_cluster import current_placement, import_ray, machine_id, physical_gpu_ids

__all__ = ["Capture", "Relay", "RelaySink", "Stopper", "WorkerRun", "run_attempt"]

log = logging.getLogger("notebook_exp.scheduler")

# One message list on its way at a time: an async actor may run two calls of one caller out of
# order (measured: a run's ``output`` landed before its ``started``, and a last batch before
# ``started`` was lost), so each put waits for the one before; what piles up meanwhile goes next.
MAX_IN_FLIGHT = 1
MAX_WAITING_BYTES = 256 * 2**20  # bytes waiting in the driver's box before workers hold back
HOLD_BACK = 0.05  # seconds between looks while holding back
CHUNK = 4 * 2**20  # bytes of an artifact per message
PROGRESS_EVERY = 0.2  # seconds between looks at the run's progress
LEASE_POLL = 0.1  # seconds between tries of a GPU lease another process holds
STOP_POLL = 2.0  # seconds one wait for a stop request lasts (the watcher waits again)
OUTPUT_JOIN = 2.0  # seconds the output readers get to drain once the run ended
CLOSE_TIMEOUT = 60.0  # seconds the relay gets to deliver what is left once the run ended


def run_attempt(key: str, payload: bytes, inbox, box: str) -> bytes:
    """The Ray task of one attempt (see the module docstring); returns the cloudpickled
    outcome ``{"status", "error", "result", "started"}``."""
    import cloudpickle

    relay = Relay(inbox, box, key)
    relay.start()
    capture = Capture(relay, key)
    capture.start()
    stopper = Stopper(inbox, key)
    stopper.start()
    lease, run = None, None
    out: dict[str, Any] = {"status": RunStatus.FAILED.value, "error": None, "result": None, "started": False}
    try:
        try:
            job = cloudpickle.loads(payload)
        except Exception as exc:  # noqa: BLE001 - e.g. a module the function needs is not on this node
            out["error"] = (f"could not start: the run's function could not be loaded on the Ray worker "
                            f"({os.uname().nodename}): {type(exc).__name__}: {exc}")
            return _result(out)
        stopper.timeout = job.get("timeout")
        local = job["machine"] == machine_id()
        settings = worker_settings(job["settings"], local)
        inventory, physical, ray_ids = _gpus(job["gpus"], settings, relay)
        lease = _lease(job["run_id"], job["gpus"], physical, inventory, settings, relay, stopper)
        from ..collectors.environment import environment

        placement = current_placement(physical, ray_ids, local, environment())
        relay.send(("started", placement))
        out["started"] = True
        run = start_worker_run(job, settings, relay, placement, inventory)
        relay.progress = run.progress_state
        try:
            stopper.arm(run)
            try:
                result = job["fn"](run, **job["params"])
            finally:
                stopper.disarm()
            status, error = RunStatus.COMPLETED, None
        except BaseException as exc:  # noqa: BLE001 - every outcome is reported
            result, (status, error) = None, outcome(exc)
        _finally(lambda: run.end(status, error))
        out.update(status=status.value, error=error, result=result)
    except BaseException as exc:  # noqa: BLE001 - cancelled (KeyboardInterrupt) or failed while setting up
        status, error = outcome(exc)
        out.update(status=status.value, error=error)
        if run is not None:
            _finally(lambda: run.end(status, error))
    finally:
        _finally(stopper.close)
        _finally(capture.stop)
        _finally(lambda: relay.close(CLOSE_TIMEOUT))
        if lease is not None:
            _finally(lease.release)
    return _result(out)


def _result(out: dict[str, Any]) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(out)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value
        out["error"] = out.get("error") or f"the return value could not be sent back: {exc!r}"
        out["result"] = None
        return cloudpickle.dumps(out)


def _finally(step) -> None:
    """Run a closing step even when Ray's (one) cancelling ``KeyboardInterrupt`` lands in it."""
    for _ in range(2):
        try:
            step()
            return
        except KeyboardInterrupt:
            continue
        except Exception:  # noqa: BLE001 - the others still run; the driver records the outcome
            log.exception("closing a Ray run failed")
            return


def worker_settings(driver, local: bool):
    """The settings a run uses on this worker (see the module docstring)."""
    update: dict[str, Any] = {"processors": [], "sinks": []}
    if not local:
        from ..config import get_settings

        own = get_settings()
        update.update(fake_gpus=own.fake_gpus, reserved_gpus=own.reserved_gpus, lock_dir=own.lock_dir)
    return driver.model_copy(update=update)


def _gpus(requested: float, settings, relay: Relay):
    """``(inventory, physical ids, Ray's ids)`` of the GPUs Ray assigned this task."""
    if not requested:
        return None, [], []
    from ..inventory import GpuInventory

    ray = import_ray()
    ray_ids = list(ray.get_gpu_ids())
    # every GPU of the machine: Ray already set CUDA_VISIBLE_DEVICES to the assignment
    inventory = GpuInventory.detect(settings.fake_gpus, None, ())
    physical, unknown = physical_gpu_ids(ray_ids, [inventory.identity(i) for i in inventory.visible()])
    if unknown:
        relay.send(("event", "gpu_ids", f"Ray assigned GPU ids {unknown} that name no GPU of this machine "
                                        f"(its GPUs: {inventory.visible()}); they are not in run.gpus"))
    return inventory, physical, ray_ids


def _lease(run_id: str, requested: float, physical: list[int], inventory, settings, relay: Relay, stopper: Stopper):
    """Lease the GPUs Ray assigned, in this machine's lock folder; waits while another
    process holds them (a stop asked meanwhile raises). ``None`` when there is nothing to
    lease (or no way to)."""
    if not requested or not physical:
        return None
    from ..inventory import GpuInventory
    from .leases import SLOTS_PER_GPU, LeaseManager

    amount = float(len(physical)) if requested >= 1 else min(1.0, math.ceil(requested * SLOTS_PER_GPU) / SLOTS_PER_GPU)
    pinned = GpuInventory(inventory.backend, cuda_visible_devices=",".join(map(str, physical)))
    try:
        manager = LeaseManager(pinned, settings.lock_dir)
        waited = False
        while True:
            lease = manager.try_acquire(run_id, amount)
            if lease is not None:
                if waited:
                    relay.send(("event", "gpus_leased", f"GPU {', '.join(map(str, physical))}"))
                return lease
            if not waited:
                waited = True
                holders = {i: [h.run_id for h in found] for i, found in manager.holders().items() if found}
                relay.send(("event", "waiting_for_gpus",
                            f"Ray assigned GPU {', '.join(map(str, physical))}, leased on this machine by "
                            f"{holders or 'another process'}; the run starts when they are free"))
            if stopper.reason:
                raise stopper.exception()
            time.sleep(LEASE_POLL)
    except (GpuUnavailable, ConfigError) as exc:
        relay.send(("event", "gpu_lease_skipped", f"GPU {physical} not leased on this node: {exc}"))
        return None


# -- the run --------------------------------------------------------------------------
class RelaySink(Sink):
    """The worker run's one sink: everything it receives goes to the driver's run."""

    name = "ray_relay"
    threaded = False  # it only queues on the relay
    max_pending_rows = None
    wants_telemetry = True

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def log_params(self, params) -> None:
        self._relay.send(("params", params))

    def set_tags(self, tags) -> None:
        self._relay.send(("tags", tags))

    def log_metrics(self, batch: MetricBatch) -> None:
        self._relay.send(("metrics", batch), nbytes=24 * len(batch))

    def log_text(self, key, step, ts, text) -> None:
        self._relay.send(("text", key, step, ts, text), nbytes=len(text))

    def log_histogram(self, key, step, ts, bin_edges, counts) -> None:
        self._relay.send(("histogram", key, step, ts, list(bin_edges), list(counts)), nbytes=16 * len(counts))

    def log_image(self, key, step, ts, png, width, height) -> None:
        self._relay.send(("image", key, step, ts, png, width, height), nbytes=len(png))

    def log_artifact(self, name, path) -> None:
        self._relay.send_file(name, path)

    def wait_flushed(self, timeout: float | None) -> bool:
        return self._relay.sync(timeout)


class _RelayRecords:
    """What a worker run's collectors record (their failure notes), sent to the driver."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def event(self, run_id: str, event: str, detail: str | None = None, on_commit=None) -> None:
        self._relay.send(("event", event, detail))


class WorkerRun(Run):
    """A run on a Ray worker: it logs like any ``Run`` (same buffer, same flusher), and what it
    records goes to the driver, which stores it. ``store_path`` is the driver's store."""

    def __init__(self, info: RunInfo, settings, relay: Relay, store_path: str) -> None:
        super().__init__(info, settings, [RelaySink(relay)], None)
        self._relay = relay
        self._driver_store = Path(store_path)
        self._whole_flush = threading.Lock()

    def _flush(self, force: bool = False) -> int:
        """``Run._flush``, one at a time from its first look at the buffers: ``end``'s last
        flush then waits for one the flusher thread is in the middle of. (``Run._flush`` looks
        outside its lock; a flush that took the points but had not published them yet let
        ``end`` close the sinks first, and that batch was dropped: 1 run in 3 in a kernel here.)"""
        with self._whole_flush:
            return super()._flush(force)

    @property
    def store_path(self) -> Path:
        return self._driver_store

    def log_params(self, params: dict[str, Any] | None = None, **more: Any) -> None:
        merged = dict(self.info.params)
        merged.update(clean_params({**(params or {}), **more}))
        self.info.params = merged
        self._dispatcher.publish("log_params", dict(merged))

    def set_tags(self, tags) -> None:
        self.info.tags = clean_tags(tags)
        self._dispatcher.publish("set_tags", list(self.info.tags))

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> Path:
        """Copy the file now (the run may change it next) and send it to the driver, which
        stores it in its store's ``artifacts/<run_id>/``; returns where it will be there."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"artifact {source} is not a file")
        name = artifact_name(name if name is not None else source.name)
        self._dispatcher.publish("log_artifact", name, str(self._relay.stage(source)))
        return self._driver_store.parent / "artifacts" / self.run_id / name

    def _record_end(self, status, error, requeue: bool = False, on_recorded=None) -> None:
        """The driver records the end (the worker has no store)."""


def start_worker_run(job: dict, settings, relay: Relay, placement, inventory) -> WorkerRun:
    """The run's ``WorkerRun``, started as ``start_run`` starts a run, minus the store."""
    from ..collectors import telemetry
    from ..collectors.registry import RunCollectors
    from ..tracking import capture as captures
    from ..tracking.flusher import flusher

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    info = RunInfo(run_id=job["run_id"], experiment=job["experiment"], name=job["name"], params=dict(job["params"]),
                   tags=list(job["tags"]), created_at=now, started_at=now, store_path="",
                   resumed=bool(job.get("next_steps")))
    starters = captures.prepare(job["capture"], settings)
    run = WorkerRun(info, settings, relay, job["store"])
    run._first_steps = dict(job.get("next_steps") or {})
    run._rich_next = dict(job.get("rich_next") or {})
    run.gpus = list(placement.gpus)
    run.device = "cuda:0" if run.gpus else "cpu"  # Ray set CUDA_VISIBLE_DEVICES to the assignment
    run.gpu_inventory = inventory
    run.collectors = RunCollectors(run.run_id, settings, _RelayRecords(relay), created=False)
    run.collectors.report()
    run._dispatcher.start()
    run.__enter__()  # current_run() is this run in the task's thread
    flusher.add(run)
    telemetry.sampler.watch(run)
    if starters:
        run._captures = captures.start(run, starters)
    return run


# -- to the driver --------------------------------------------------------------------
class Relay:
    """Sends what a worker run records to the driver's ``Inbox``, from its own thread.

    ``send`` only queues (any thread, never blocks); the thread ships whatever
    piled up as one ``put``, one at a time (so they land in order), and holds
    back while the driver's box holds more than ``MAX_WAITING_BYTES``. ``sync``
    waits until the driver stored everything sent so far. If the inbox is gone,
    the relay drops what it gets (the driver marks the run lost)."""

    def __init__(self, inbox, box: str, key: str) -> None:
        self._inbox = inbox
        self._box = box
        self._key = key
        self._cond = threading.Condition()
        self._pending: list = []
        self._nbytes = 0
        self._inflight: deque = deque()
        self._token = 0
        self._closing = False
        self.broken: BaseException | None = None
        #: The run's ``Progress``, reported when it changes.
        self.progress = None
        self._progress_seen = None
        self._staging: Path | None = None
        self._thread = threading.Thread(target=self._loop, name=f"notebook_exp-ray-relay[{key[:8]}]", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, message: tuple, nbytes: int = 256) -> None:
        with self._cond:
            if self._closing or self.broken is not None:
                return
            self._pending.append(message)
            self._nbytes += nbytes
            self._cond.notify()

    def stage(self, source: Path) -> Path:
        """A copy of ``source`` to send (the caller may change the file next)."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="notebook_exp-ray-artifacts-"))
        copy = self._staging / f"{len(list(self._staging.iterdir()))}-{source.name}"
        shutil.copy2(source, copy)
        return copy

    def send_file(self, name: str, path: str) -> None:
        self.send(("__file__", name, path), nbytes=0)

    def sync(self, timeout: float | None) -> bool:
        """Wait until the driver stored everything sent so far (``run.flush()``)."""
        ray = import_ray()
        with self._cond:
            self._token += 1
            token = self._token
        self.send(("sync", token))
        wait = 3600.0 if timeout is None else max(0.0, timeout)
        try:
            return bool(ray.get(self._inbox.wait_ack.remote(self._key, token, wait), timeout=wait + 30))
        except Exception:  # noqa: BLE001 - the inbox is gone or slow: not stored in time
            return False

    def close(self, timeout: float) -> None:
        """Deliver what is left (at most ``timeout`` seconds) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing and not self._progress_due():
                    self._cond.wait(PROGRESS_EVERY)
                batch, nbytes = self._pending, self._nbytes
                self._pending, self._nbytes = [], 0
                closing = self._closing
            report = self._progress_message()
            if report is not None:
                batch.append(report)
            if batch and self.broken is None:
                try:
                    self._ship(batch, nbytes)
                except Exception as exc:  # noqa: BLE001 - the inbox is gone: nothing more can be sent
                    self._broke(exc)
            if closing and not batch:
                break
        try:
            while self._inflight and self.broken is None:
                self._settle(self._inflight.popleft())
        except Exception as exc:  # noqa: BLE001
            self._broke(exc)

    def _broke(self, exc: BaseException) -> None:
        log.warning("notebook_exp: run %s cannot send to the driver any more: %r", self._key, exc)
        with self._cond:
            self.broken = exc
            self._pending = []

    def _progress_due(self) -> bool:
        state = self.progress
        return state is not None and state.started is not None and state.updated != self._progress_seen

    def _progress_message(self) -> tuple | None:
        if not self._progress_due():
            return None
        state = self.progress
        self._progress_seen = state.updated
        return ("progress", state.n, state.total)

    def _ship(self, batch: list, nbytes: int) -> None:
        segment: list = []
        for message in batch:
            if message[0] == "__file__":
                self._put(segment, nbytes)
                segment, nbytes = [], 0
                self._ship_file(message[1], message[2])
            else:
                segment.append(message)
        self._put(segment, nbytes)

    def _ship_file(self, name: str, path: str) -> None:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            offset = 0
            while True:
                data = fh.read(CHUNK)
                last = offset + len(data) >= size
                self._put([("artifact", name, offset, data, last)], len(data))
                offset += len(data)
                if last:
                    break
        try:
            os.unlink(path)
        except OSError:
            pass

    def _put(self, messages: list, nbytes: int) -> None:
        if not messages:
            return
        while len(self._inflight) >= MAX_IN_FLIGHT:  # the one before has landed first
            self._settle(self._inflight.popleft())
        self._inflight.append(self._inbox.put.remote(self._box, self._key, messages, nbytes))

    def _settle(self, ref) -> None:
        ray = import_ray()
        _acked, waiting = ray.get(ref)
        while waiting > MAX_WAITING_BYTES:  # the driver falls behind: hold back
            time.sleep(HOLD_BACK)
            _acked, waiting = ray.get(self._inbox.put.remote(self._box, self._key, [], 0))


class Stopper:
    """Stops the run when the driver asks (cancel, timeout), as the thread executor does: the
    run's next ``run.log`` raises ``RunCancelled`` / ``RunTimedOut``, and the task's thread gets
    that exception at once through ``SIGUSR1`` (so a ``sleep`` or a blocking call that lets
    signals in ends too; code stuck in C is killed by the forced ``ray.cancel`` that follows).

    The driver's request comes from the inbox (``wait_stop``), which a watcher thread waits
    on; ``ray.cancel`` without force is unreliable for a running task here (measured: a loop of
    1 ms sleeps never saw its ``KeyboardInterrupt``, and a cancelled task's last messages, its
    child tasks, were dropped). The exception is raised only while the run's function runs."""

    def __init__(self, inbox, key: str) -> None:
        self._inbox = inbox
        self._key = key
        self.reason: str | None = None
        #: The attempt's timeout in seconds (the ``RunTimedOut`` message says it).
        self.timeout: float | None = None
        self._run = None
        self._armed = False
        self._thread_id: int | None = None
        self._previous = None
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"notebook_exp-ray-stop[{key[:8]}]", daemon=True)

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():  # a task runs there (not a threaded actor)
            self._thread_id = threading.get_ident()
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        self._watcher.start()

    def exception(self) -> BaseException:
        if self.reason == "timeout":
            limit = f"{self.timeout:g} s " if self.timeout else ""
            return RunTimedOut(f"the run passed its {limit}timeout")
        return RunCancelled("cancelled by user")

    def arm(self, run) -> None:
        """The run's function starts now; raises at once if a stop came first."""
        self._run = run
        if self.reason:
            raise self.exception()
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    def _watch(self) -> None:
        ray = import_ray()
        while not self._closing.is_set():
            try:
                reason = ray.get(self._inbox.wait_stop.remote(self._key, STOP_POLL))
            except Exception:  # noqa: BLE001 - the inbox is gone: the forced cancel still comes
                return
            if reason and not self._closing.is_set():
                self._stop(reason)
                return

    def _stop(self, reason: str) -> None:
        self.reason = reason
        if self._run is not None:
            self._run.interrupt(self.exception())
        if self._armed and self._thread_id is not None:
            signal.pthread_kill(self._thread_id, signal.SIGUSR1)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._armed and self.reason:
            self._armed = False  # once: code that catches it is left to the forced cancel
            raise self.exception()

    def close(self) -> None:
        self._armed = False
        self._closing.set()
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None
        try:
            self._inbox.release.remote(self._key)  # the watcher's wait returns now
        except Exception:  # noqa: BLE001 - the inbox is gone: its wait has failed already
            pass
        self._watcher.join(STOP_POLL + 1)


class Capture:
    """File descriptors 1 and 2 of the worker go to the run (``output`` messages) until ``stop``.

    Both go into one pipe, so what the run printed arrives in the order it was written
    (Ray's unbuffered ``sys.stdout`` writes each piece of a ``print`` on its own)."""

    def __init__(self, relay: Relay, key: str) -> None:
        self._relay = relay
        self._key = key
        self._saved: list[tuple[int, int]] = []
        self._reader: threading.Thread | None = None
        self._read = -1

    def start(self) -> None:
        _flush(sys.stdout)
        _flush(sys.stderr)
        self._read, write = os.pipe()
        for fd in (1, 2):
            self._saved.append((fd, os.dup(fd)))
            os.dup2(write, fd)
        os.close(write)
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"notebook_exp-ray-out[{self._key[:8]}]")
        self._reader.start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while True:
                chunk = os.read(self._read, 65536)
                if not chunk:
                    break
                text = decoder.decode(chunk)
                if text:
                    self._relay.send(("output", text), nbytes=len(chunk))
        except OSError:
            return
        tail = decoder.decode(b"", final=True)
        if tail:
            self._relay.send(("output", tail))

    def stop(self) -> None:
        """Give the descriptors back; the reader drains what is left (a child process that
        still holds the pipe keeps it alive until that child exits)."""
        _flush(sys.stdout)
        _flush(sys.stderr)
        saved, self._saved = self._saved, []
        for fd, original in saved:
            os.dup2(original, fd)
            os.close(original)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(OUTPUT_JOIN)
            if not reader.is_alive():
                os.close(self._read)


def _flush(stream) -> None:
    try:
        stream.flush()
    except Exception:  # noqa: BLE001 - a closed or odd stream
        pass
