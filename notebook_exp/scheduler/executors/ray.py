"""The ray executor: each attempt runs as a Ray task on a node of a Ray cluster.

Connecting (``_ray_cluster.connect``, when the executor is made, i.e. at the
first ``executor="ray"`` submit): the Ray this process joined with
``ray.init``, else ``ray_address`` / ``RAY_ADDRESS``, else a local Ray when
``ray_start_local`` allows it (it says so). Without ray installed the submit
raises ``MissingDependency`` with the install line; ``import notebook_exp``
never imports ray.

Placement and GPU leases. Ray places the task (``num_gpus`` = ``gpus``,
fractions included; ``num_cpus`` = ``cpus``; ``memory``; ``ray_options`` for
custom resources, ``runtime_env``, a scheduling strategy). The scheduler takes
no lease on this machine for a Ray run (``local_leases = False``): the node Ray
picks may be another machine, whose GPUs this machine's lock files do not
guard, and Ray does its own accounting of every node's GPUs. Instead the worker
leases the GPUs Ray assigned it in the lock folder of *its* machine (the
driver's folder when the node is this machine), so a notebook on that node
never gets the GPU a Ray run holds, and a Ray run waits for one a notebook
holds. Submit refuses a run no live node could ever hold (``GpuUnavailable``
for GPUs) unless ``wait_for_gpus`` (an autoscaler may add the node). A run is
``queued`` until its worker has started and leased its GPUs; ``timeout``
counts from then.

The data path. The worker's ``run.log`` buffers as everywhere; batches, texts,
histograms, images, artifacts (in chunks), params, tags, progress and output
go through a relay thread to the ``Inbox`` actor (``_ray_inbox``) in one
message list per send, and this executor's pump thread takes everything that
arrived in one call and hands each attempt's messages, in order, to its link.
The link feeds the run's driver-side ``Run`` (started with the run's sinks
when the worker says ``started``), so the points reach DuckDB, and every other
sink, through the normal sink path. One Ray message per point would move about
460 points/s; batches move hundreds of thousands (``benchmarks/bench_ray.py``).

Lifecycle. ``stop`` (cancel, timeout) cancels with ``ray.cancel`` a task waiting
for resources (it never starts), and asks a running one to stop through the
inbox: its next ``run.log`` raises ``RunCancelled`` / ``RunTimedOut`` and its
thread gets the same at once (``_ray_worker.Stopper``), so what it logged is
delivered; after ``cancel_grace`` ``ray.cancel(force=True)`` kills the worker and
the tasks it started. Retries are the scheduler's (the task itself has
``max_retries=0``). A worker that dies (kill -9, its node lost,
Ray's memory monitor) fails the run with ``lost: ...``. The run's stdout and
stderr arrive as ``output`` messages and go to the job (its card) and the
store. The job's ``placement`` (node, pid, physical GPUs) and ``node`` (the
card's ``host (ip)``) are set when it starts, and a ``placed`` event records it.

Threads (the executor owns them; ``close()`` ends them): one link per attempt
(``notebook_exp-ray[...]``: it submits the task, then handles the attempt's
messages and its end), the pump (``notebook_exp-ray-pump``, only while attempts
are live) and the force-cancel timers (``notebook_exp-ray-kill[...]``).
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ...exceptions import ConfigError
from ...models import RunStatus
from .._ray_cluster import check_resources, connect, import_ray, machine_id
from .base import CLOSE_TIMEOUT, Executor, stopped_outcome

__all__ = ["RayExecutor"]

log = logging.getLogger("notebook_exp.scheduler")

TAKE_WAIT = 0.1  # seconds the inbox holds a take open while it is empty
PUMP_WAIT = 1.0  # seconds the pump waits at most for mail or a finished task
INBOX_START_TIMEOUT = 300.0  # seconds the inbox actor may take to start (a busy cluster)
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_ih", "_oh", "_dh", "_i", "_ii",
                  "_iii"}

_inbox_lock = threading.Lock()
_inboxes: dict[str, Any] = {}  # Ray job id of this process -> its Inbox actor (one per Ray session)


class RayExecutor(Executor):
    """Runs each attempt as a Ray task (see the module docstring)."""

    name = "ray"
    #: The scheduler leases no GPU of this machine for a Ray run: its worker leases on its node.
    local_leases = False

    def __init__(self, scheduler) -> None:
        super().__init__(scheduler)
        self.cluster = connect(scheduler.settings)
        self._ray = import_ray()
        from .._ray_worker import run_attempt

        self._remote = self._ray.remote(run_attempt)
        self._box = f"{machine_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._inbox = _inbox(self._ray, self.cluster)
        # the driver-side run takes no telemetry: the worker samples its own node
        self.run_settings = scheduler.settings.model_copy(update={"telemetry_interval": 0})
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}  # attempt key -> link
        self._by_run: dict[str, _Link] = {}  # run id -> its live attempt's link
        self._kills: dict[str, threading.Timer] = {}
        self._pump: threading.Thread | None = None
        self._closed = False

    # -- submitting --------------------------------------------------------------------
    def check(self, spec) -> None:
        """Refuse, before anything is queued, what cannot run on this cluster: a function
        that cannot be shipped (``ConfigError`` naming the global), options Ray refuses, or
        resources no live node has (``GpuUnavailable`` for GPUs; queued anyway with
        ``wait_for_gpus``), and ``gpu_ids`` (they pin GPUs of this machine; Ray picks a Ray
        run's GPUs)."""
        if getattr(spec, "gpu_ids", None):
            raise ConfigError("gpu_ids pins GPUs of this machine, but Ray picks the GPUs of a Ray run; steer it "
                              "with ray_options (label_selector, resources, accelerator_type) instead")
        _check_shippable(detached(spec.fn))
        try:
            self._remote.options(**self.task_options(spec, "check"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Ray refuses the run's options: {exc}") from None
        need = {"CPU": spec.cpus, "GPU": spec.gpus, "memory": spec.memory,
                **((spec.ray_options or {}).get("resources") or {})}
        check_resources(self._ray, need, spec.wait_for_gpus)

    @staticmethod
    def task_options(spec, name: str) -> dict[str, Any]:
        """The Ray task options of ``spec``'s attempts."""
        options = dict(spec.ray_options or {})
        options.update(num_cpus=spec.cpus, num_gpus=spec.gpus, max_retries=0, retry_exceptions=False,
                       name=f"notebook_exp:{name}")
        if spec.memory:
            options["memory"] = spec.memory
        return options

    def start(self, job, lease) -> None:
        if job.stop_reason or self._closed:  # cancelled between launch and start, or stopping
            status, error = stopped_outcome(job, job.stop_reason or "cancel")
            self.scheduler.attempt_ended(job, status, error, None)
            return
        job.deadline = None  # the attempt's time counts from when its worker runs it
        link = _Link(self, job, f"{job.run_id}:{job.attempts}")
        with self._lock:
            self._links[link.key] = link
            self._by_run[job.run_id] = link
        link.thread.start()

    # -- stopping ----------------------------------------------------------------------
    def stop(self, job, reason: str) -> None:
        if job.stop_reason:
            return
        job.stop_reason = reason
        link = self._by_run.get(job.run_id)
        if link is not None and link.ref is not None:  # else its link sees stop_reason before submitting
            self._cancel(link)

    def _cancel(self, link: _Link) -> None:
        """Ask the worker to stop (through the inbox) and ``ray.cancel`` a task that has not
        started; force ``ray.cancel`` after ``cancel_grace`` seconds if it still runs."""
        try:
            self._inbox.stop.remote(link.key, link.job.stop_reason or "cancel")
            if link.run is None:  # still waiting for a node: Ray drops it from its queue
                # not recursive: a task starting right now keeps its calls to the inbox
                self._ray.cancel(link.ref, force=False, recursive=False)
        except Exception:  # noqa: BLE001 - it ended meanwhile, or Ray is going: the force follows
            log.debug("stopping run %s failed", link.job.run_id, exc_info=True)
        timer = threading.Timer(self.scheduler.settings.cancel_grace, self._force, args=(link,))
        timer.name = f"notebook_exp-ray-kill[{link.job.run_id[:8]}]"
        timer.daemon = True
        with self._lock:
            previous = self._kills.pop(link.key, None)
            self._kills[link.key] = timer
        if previous is not None:
            previous.cancel()
        timer.start()
        if link.ended.is_set():
            self._disarm(link.key)

    def _force(self, link: _Link) -> None:
        with self._lock:
            self._kills.pop(link.key, None)
        if not link.ended.is_set():
            try:
                self._ray.cancel(link.ref, force=True)
            except Exception:  # noqa: BLE001 - it ended meanwhile
                log.debug("forced ray.cancel of run %s failed", link.job.run_id, exc_info=True)

    def _disarm(self, key: str) -> None:
        with self._lock:
            timer = self._kills.pop(key, None)
        if timer is not None:
            timer.cancel()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Kill every attempt still running, cancel the timers and wait, at most ``timeout``
        seconds in all, for the links to record the outcomes and for the pump (idempotent).
        A local Ray notebook_exp started stays up until this process exits."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
            timers = list(self._kills.values())
            self._kills.clear()
        for timer in timers:
            timer.cancel()
        for link in links:
            if link.ref is not None and not link.ended.is_set():
                try:
                    self._ray.cancel(link.ref, force=True)
                except Exception:  # noqa: BLE001
                    log.debug("ray.cancel at close failed", exc_info=True)
        deadline = time.monotonic() + timeout
        threads = timers + [link.thread for link in links] + ([self._pump] if self._pump is not None else [])
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not end within %.0f s of the scheduler stopping", thread.name, timeout)
        try:
            self._inbox.close.remote(self._box)
        except Exception:  # noqa: BLE001 - Ray is gone already
            pass

    # -- the pump ------------------------------------------------------------------------
    def _submitted(self, link: _Link) -> None:
        """``link``'s task is on its way: the pump watches it (and starts if it is not running)."""
        with self._lock:
            if self._pump is None:
                self._pump = threading.Thread(target=self._pump_loop, name="notebook_exp-ray-pump", daemon=True)
                self._pump.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.pop(link.key, None)
            if self._by_run.get(link.job.run_id) is link:
                del self._by_run[link.job.run_id]
        self._disarm(link.key)
        try:
            self._inbox.forget.remote(self._box, link.key)
        except Exception:  # noqa: BLE001 - Ray is gone: nothing left to drop
            pass

    def _pump_loop(self) -> None:
        """Take the box's mail and watch the tasks; an attempt ends only after a take issued
        once its task was seen finished (a finished task put everything before returning)."""
        ray = self._ray
        take, take_gen, gen = None, 0, 0
        finishing: list[tuple[_Link, int]] = []
        while True:
            with self._lock:
                links = [link for link in self._links.values() if link.ref is not None]
                if not links and take is None and not finishing:
                    self._pump = None
                    return
            if take is None:
                gen += 1
                take_gen = gen
                take = self._inbox.take.remote(self._box, TAKE_WAIT)
            watched = {link.ref: link for link in links if not link.seen_done}
            try:
                ready, _ = ray.wait([take, *watched], num_returns=1, timeout=PUMP_WAIT, fetch_local=False)
            except Exception:  # noqa: BLE001 - Ray is going away; the links find out themselves
                log.exception("the Ray pump could not wait")
                time.sleep(PUMP_WAIT)
                continue
            for ref in ready:
                link = watched.get(ref)
                if link is not None:
                    link.seen_done = True
                    finishing.append((link, gen))
            if take not in ready:
                continue
            try:
                mail = ray.get(take)
            except ray.exceptions.RayActorError as exc:  # the inbox actor died
                take = None
                self._inbox_lost(exc)
                finishing = []
                continue
            except Exception:  # noqa: BLE001 - e.g. a connection hiccup: take again
                log.exception("taking the Ray runs' records failed; trying again")
                take = None
                continue
            take = None
            for key, messages in mail:
                link = self._links.get(key)
                if link is not None:
                    link.inbox.put(("messages", messages))
            for item in list(finishing):
                if item[1] < take_gen:
                    finishing.remove(item)
                    item[0].inbox.put(("done", None))

    def _inbox_lost(self, exc: BaseException) -> None:
        """The inbox actor died: every live attempt has lost its way back; they fail as lost
        and a new inbox serves later runs."""
        log.error("notebook_exp's Ray inbox actor died: %r", exc)
        with _inbox_lock:
            if any(handle is self._inbox for handle in _inboxes.values()):
                _inboxes.clear()
        with self._lock:
            links = [link for link in self._links.values() if link.ref is not None]
        for link in links:
            link.failed = (RunStatus.FAILED, f"lost: notebook_exp's Ray inbox actor died, so the run's records "
                                             f"could not reach this process ({type(exc).__name__}: {exc})")
            try:
                self._ray.cancel(link.ref, force=True)
            except Exception:  # noqa: BLE001
                pass
            link.seen_done = True
            link.inbox.put(("done", None))
        try:
            self._inbox = _inbox(self._ray, self.cluster)
        except Exception:  # noqa: BLE001 - later starts fail with the reason
            log.exception("a new inbox actor could not be started")


class _Link:
    """One attempt of a job on Ray: its task, its messages, and its run on this side."""

    def __init__(self, executor: RayExecutor, job, key: str) -> None:
        self.executor = executor
        self.job = job
        self.key = key
        self.ref = None
        self.run = None
        self.placement = None
        self.failed: tuple[RunStatus, str] | None = None  # an outcome decided here (a sink did not start)
        self.seen_done = False
        self.ended = threading.Event()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._parts: dict[str, Path] = {}  # artifacts being received
        self.thread = threading.Thread(target=self._main, name=f"notebook_exp-ray[{job.run_id[:8]}]", daemon=True)

    def _main(self) -> None:
        try:
            if not self._submit():
                return  # it ended without a task
            while True:
                kind, item = self.inbox.get()
                if kind == "done":
                    break
                for message in item:
                    self._handle(message)
            outcome = self._outcome()
        except Exception as exc:  # noqa: BLE001 - the attempt still ends, with the reason
            log.exception("the Ray link of run %s failed", self.job.run_id)
            outcome = (RunStatus.FAILED, f"notebook_exp error while following the Ray task: {exc!r}", None)
        if not self.ended.is_set():
            self._finish(*outcome)

    def _submit(self) -> bool:
        """Ship the attempt; False when it ended without a task (stopped, or it could not start)."""
        import cloudpickle

        job, executor = self.job, self.executor
        spec, scheduler = job.spec, executor.scheduler
        if job.stop_reason:
            self._finish(*stopped_outcome(job, job.stop_reason), None)
            return False
        try:
            next_steps, rich_next = {}, {}
            if spec.resume:
                from ...tracking.run import resumable

                resumed = resumable(job.run_id, scheduler.store, scheduler.settings)
                next_steps, rich_next = resumed.next_steps, resumed.rich_next
            payload = cloudpickle.dumps({
                "fn": detached(spec.fn), "params": spec.params, "name": job.name, "experiment": job.experiment,
                "tags": spec.tags, "run_id": job.run_id, "attempts": job.attempts, "capture": spec.capture,
                "settings": scheduler.settings, "machine": machine_id(), "store": str(scheduler.store.path),
                "gpus": spec.gpus, "timeout": spec.timeout, "next_steps": next_steps, "rich_next": rich_next,
            })
            options = executor.task_options(spec, job.name)
            self.ref = executor._remote.options(**options).remote(self.key, payload, executor._inbox, executor._box)
        except Exception as exc:  # noqa: BLE001 - this attempt cannot start; the queue goes on
            self._finish(RunStatus.FAILED, f"could not start: {type(exc).__name__}: {exc}", None)
            return False
        executor._submitted(self)
        if job.stop_reason:  # cancelled while it was being submitted
            executor._cancel(self)
        return True

    # -- messages --------------------------------------------------------------------------
    def _handle(self, message: tuple) -> None:
        kind = message[0]
        try:
            if kind == "started":
                self._started(message[1])
            elif kind == "output":
                self.job._write(message[1])
            elif kind == "event":
                self.executor.scheduler.records.event(self.job, message[1], message[2])
                if message[1] == "waiting_for_gpus":  # the card says why it has not started
                    self.job.waiting = message[2]
                    self.job._emit("status", self.job.status)
            elif self.run is None or self.failed is not None:
                return  # the run did not start here: nothing to record it in
            elif kind == "metrics":
                _ingest(self.run, message[1])
            elif kind == "text":
                self.run._dispatcher.publish("log_text", *message[1:])
            elif kind == "histogram":
                self.run._dispatcher.publish("log_histogram", *message[1:])
            elif kind == "image":
                self.run._dispatcher.publish("log_image", *message[1:])
            elif kind == "artifact":
                self._artifact(*message[1:])
            elif kind == "params":
                self.run.log_params(message[1])
            elif kind == "tags":
                self.run.set_tags(message[1])
            elif kind == "progress":
                self.run.progress(total=message[2], n=message[1])
            elif kind == "sync":
                self._sync(message[1])
        except Exception:  # noqa: BLE001 - one bad message must not lose the others
            log.exception("run %s: handling %r from its Ray worker failed", self.job.run_id, kind)

    def _started(self, placement) -> None:
        """The worker runs it: start the run here (its row, its sinks) and mark it running."""
        from ...tracking.run import outcome, start_run

        job, executor = self.job, self.executor
        spec, scheduler = job.spec, executor.scheduler
        gpus = list(placement.gpus)
        self.placement = placement
        job.placement, job.node, job.gpus, job.waiting = placement, placement.label, gpus, None
        try:
            run = start_run(job.name, job.experiment, spec.params, spec.tags, spec.sinks, run_id=job.run_id,
                            resume=bool(spec.resume), capture=[], settings=executor.run_settings,
                            columns={"attempts": job.attempts, "gpus": gpus})
        except BaseException as exc:  # noqa: BLE001 - e.g. a sink that fails to start: the run fails
            self.failed = outcome(exc)
            try:
                executor._ray.cancel(self.ref, force=True)
            except Exception:  # noqa: BLE001
                pass
            return
        run.gpus = gpus
        run.device = "cuda:0" if gpus else "cpu"  # what the worker's code sees
        self.run = job.run = run
        scheduler.records.event(job, "placed", json.dumps(placement.describe()))
        if spec.timeout:
            job.deadline = time.monotonic() + spec.timeout
        scheduler.running(job)

    def _artifact(self, name: str, offset: int, data: bytes, last: bool) -> None:
        dest = self.run.store_path.parent / "artifacts" / self.run.run_id / name
        part = self._parts.get(name)
        if part is None or offset == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = self._parts[name] = dest.with_name(dest.name + ".part")
            part.write_bytes(b"")
        with open(part, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
        if last:
            os.replace(part, dest)
            del self._parts[name]
            self.run._dispatcher.publish("log_artifact", name, str(dest))

    def _sync(self, token: int) -> None:
        """The worker's ``run.flush()``: acknowledge once everything before it is stored."""
        try:
            stored = self.run.flush(self.executor.scheduler.settings.lock_timeout)
        except Exception:  # noqa: BLE001 - the store cannot take it now: the worker's flush says False
            stored = False
        if stored:
            self.executor._inbox.ack.remote(self.key, token)

    # -- the end ---------------------------------------------------------------------------
    def _outcome(self) -> tuple[RunStatus, str | None, Any]:
        """``(status, error, result)`` of the finished task."""
        import cloudpickle

        ray, job = self.executor._ray, self.job
        errors = ray.exceptions
        try:
            data = cloudpickle.loads(ray.get(self.ref))
        except errors.TaskCancelledError as exc:
            if self.failed is None and job.stop_reason is None:
                return RunStatus.CANCELLED, f"cancelled through Ray, not by notebook_exp: {exc}", None
            data = None
        except errors.RayTaskError as exc:  # the task itself raised: notebook_exp's part of it failed
            data = {"status": RunStatus.FAILED.value, "error": f"the Ray task failed: {exc}", "result": None}
        except Exception as exc:  # noqa: BLE001 - the worker, its node or its objects are gone
            data = {"status": RunStatus.FAILED.value, "error": self._lost(exc), "result": None}
        if self.failed is not None:
            return (*self.failed, None)
        if job.stop_reason:
            return (*stopped_outcome(job, job.stop_reason), None)
        return RunStatus(data["status"]), data.get("error"), data.get("result")

    def _lost(self, exc: BaseException) -> str:
        where = f" ({self.placement})" if self.placement is not None else ""
        when = "before it ended" if self.run is not None else "before the run started"
        return f"lost: the run's Ray worker{where} died {when}: {type(exc).__name__}: {str(exc).strip()}"

    def _finish(self, status: RunStatus, error: str | None, result: Any) -> None:
        job, executor = self.job, self.executor
        for part in self._parts.values():  # an artifact cut off by the end of the worker
            part.unlink(missing_ok=True)
        self._parts.clear()
        self.ended.set()
        executor._forget(self)
        executor.scheduler.records.output(job)
        executor.scheduler.attempt_ended(job, status, error, result, run=self.run)


def _ingest(run, batch) -> None:
    """Hand a worker's batch to the run's sinks, as the run's own flush does."""
    with run._flush_lock:
        for key, points in batch.chunks:
            if len(points) >= 3:
                run.latest[key] = (int(points[-3]), points[-1])
        run.points += len(batch)
        run._dispatcher.publish("log_metrics", batch, rows=len(batch))


def _inbox(ray, cluster):
    """This Ray session's ``Inbox`` actor, started on first use (on this node when it is one)."""
    from .._ray_inbox import Inbox

    job_id = ray.get_runtime_context().get_job_id()
    with _inbox_lock:
        handle = _inboxes.get(job_id)
        if handle is None:
            options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
            if cluster.node_id is not None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(cluster.node_id, soft=True)
            handle = ray.remote(Inbox).options(**options).remote()
            try:
                ray.get(handle.ping.remote(), timeout=INBOX_START_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - translated at this one boundary
                raise ConfigError(f"executor='ray' could not start its inbox actor on the cluster: {exc!r}") from exc
            _inboxes.clear()  # an earlier session's actor went with it
            _inboxes[job_id] = handle
        return handle


def detached(fn):
    """``fn`` as it can travel: a ``%%experiment`` cell bound to the live notebook namespace
    (as thread runs are) gets copies of the notebook variables it uses, as the process
    executor ships them; a wrapper (``--config``) gets its cell detached the same way."""
    namespace = getattr(fn, "_namespace", None)
    if isinstance(namespace, dict) and isinstance(getattr(fn, "source", None), str) and hasattr(fn, "captured"):
        used = _names(fn.source) - set(getattr(fn, "param_names", ())) - {"run"} - _IPYTHON_NAMES
        shipped = copy.copy(fn)
        shipped.captured = {name: namespace[name] for name in used if name in namespace}
        shipped._namespace = None
        return shipped
    inner = getattr(fn, "fn", None)
    if inner is not None and callable(inner) and hasattr(fn, "__dict__"):
        shipped_inner = detached(inner)
        if shipped_inner is not inner:
            wrapper = copy.copy(fn)
            wrapper.fn = shipped_inner
            return wrapper
    return fn


def _names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _check_shippable(fn) -> None:
    """``ConfigError`` naming the global ``fn`` uses that cloudpickle cannot ship."""
    import cloudpickle

    try:
        cloudpickle.dumps(fn)
        return
    except Exception as exc:  # noqa: BLE001 - find the culprit for a clear message
        problem = exc
    label = getattr(fn, "__qualname__", fn)
    namespace = dict(getattr(fn, "captured", None) or getattr(fn, "__globals__", None) or {})
    code = getattr(fn, "__code__", None)
    names = list(code.co_names) if code is not None else list(namespace)
    if code is not None and getattr(fn, "__closure__", None):  # the variables a nested function closes over
        for name, cell in zip(code.co_freevars, fn.__closure__):
            try:
                namespace[name] = cell.cell_contents
                names.append(name)
            except ValueError:  # an empty cell
                continue
    for name in names:
        if name in namespace:
            try:
                cloudpickle.dumps(namespace[name])
            except Exception as inner:  # noqa: BLE001
                raise ConfigError(f"the ray executor cannot ship {name!r}, which {label} uses: "
                                  f"{type(inner).__name__}: {inner}") from None
    raise ConfigError(f"the ray executor cannot ship {label}: {type(problem).__name__}: {problem}") from None
