"""The scheduler's front door: ``submit``, ``sweep``, ``wait``, ``gpus``, ``resubmit``, and control
from anywhere: ``cancel`` and ``set_priority`` by run id, for runs of any process on the machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..exceptions import ConfigError
from ..models import RunStatus
from .control import (
    ACTIONS,
    DEFAULT_ANSWER_WAIT,
    ControlResult,
    act,
    ask,
    check_priority,
    requester,
)
from .core import get_scheduler, running_scheduler
from .job import Job
from .spec import ExperimentSpec, validate

__all__ = ["cancel", "dead_letters", "gpus", "resubmit", "set_priority", "submit", "sweep", "wait"]


def submit(
    fn: Callable[..., Any],
    params: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    experiment: str | None = None,
    gpus: float = 0,
    gpu_memory: int | str | None = None,
    gpu_ids: Iterable[int] | str | None = None,
    priority: int = 5,
    retries: int = 0,
    retry_backoff: float = 1.0,
    timeout: float | None = None,
    executor: str = "thread",
    tags: list[str] | None = None,
    after: Any = None,
    wait_for_gpus: bool = False,
    sinks: list | None = None,
    source: str | None = None,
    capture: list | None = None,
    resume: str | None = None,
    sweep: dict[str, Any] | None = None,
    cpus: float = 1,
    memory: int | str | None = None,
    ray_options: dict[str, Any] | None = None,
) -> Job:
    """Queue ``fn(run, **params)`` to run in the background; returns its ``Job`` at once.

    ``gpus`` leases that many GPUs (0.5 or 0.25 share one) machine-wide;
    ``gpu_memory`` (bytes or "8GB") admits only GPUs with that much free;
    ``gpu_ids`` (``[1, 3]`` or ``"1,3"``: physical ids, as ``nvidia-smi`` shows them)
    leases only from those GPUs, all of them unless ``gpus`` says how many; an id
    the machine does not have, or a reserved one, raises ``GpuUnavailable``.
    ``priority`` 0-10 (higher first, FIFO within a level). ``retries`` reruns a
    failing function with exponential backoff from ``retry_backoff`` seconds.
    ``timeout`` stops an attempt after that many seconds. ``executor`` is
    "thread" (in this process), "process" (a fresh interpreter) or "ray" (a task
    on a node of a Ray cluster, docs/ray.md: ``gpus`` become Ray's ``num_gpus``,
    and ``cpus``, ``memory`` and ``ray_options`` are its other resources and
    options; other executors ignore those three). ``after``
    names runs (ids or jobs) that must complete first. ``sinks`` takes sink
    names, ``Sink`` classes or factories (zero-argument callables returning a
    ``Sink``), which give every attempt a fresh sink, or ``Sink`` instances
    (only without ``retries``: an instance serves one attempt). Bad arguments
    raise ``ConfigError`` (an unknown ``after`` id, too) or ``SinkError`` and
    nothing is queued; asking for more GPUs than the machine has raises
    ``GpuUnavailable`` unless ``wait_for_gpus``. ``capture`` names framework calls
    the run captures (``["tensorboard"]``, see ``start_run``); ``resume`` is the id
    of a stored run to continue instead of a new one (``start_run(resume=True)``).
    ``params`` may be nested, or a config object (pydantic model, dataclass, OmegaConf
    config): stored as given, shown with dotted names. ``sweep`` is ``nx.sweep``'s.
    """
    spec = _validated(gpu_ids,
        fn=fn, params=params or {}, name=name, experiment=experiment, gpus=gpus, gpu_memory=gpu_memory,
        priority=priority, retries=retries, retry_backoff=retry_backoff, timeout=timeout, executor=executor,
        tags=tags or [], after=after, wait_for_gpus=wait_for_gpus, sinks=sinks, source=source, capture=capture,
        resume=resume, sweep=sweep, cpus=cpus, memory=memory, ray_options=ray_options,
    )
    return get_scheduler().submit(spec)


def _validated(gpu_ids, **fields: Any) -> ExperimentSpec:
    """The spec of a submission, pinned to ``gpu_ids`` unless that is ``None``."""
    return validate(**fields) if gpu_ids is None else validate(**fields, gpu_ids=gpu_ids)


def sweep(fn: Callable[..., Any], space=None, params: dict[str, Any] | None = None, *, base: Any = None,
          method: str = "grid", n: int | None = None, seed: int | None = None, stop=None, **options: Any):
    """Submit one run per point of ``space`` over ``base`` and ``params``; returns the ``Sweep``
    (a list of jobs with ``id``, ``progress()``, ``best()``).

    ``space``: for a grid, a dict of value lists (every combination runs) or a
    list of param dicts; for ``method="random"``, a dict of distributions
    (``notebook_exp.space``: ``uniform``, ``loguniform``, ``choice``, ``randint``),
    lists (one value is picked) and fixed values, of which ``n`` points are drawn
    with ``seed``. Keys are dotted names (``"optim.lr"``) that set nested params
    of ``base`` (a pydantic model, a dataclass, an OmegaConf config or a dict; a
    typed base validates every point). ``stop`` (``nx.MedianStop``, ``nx.ASHA``)
    stops runs that are clearly worse. ``options`` are ``submit``'s (``name`` is
    prefixed to each run's varied values). Every point is validated before any is
    queued; each run gets its own sinks, so ``sinks=`` takes names, classes or
    factories (a ``Sink`` instance, which several runs would share, raises ``SinkError``).
    """
    from . import sweeps

    return sweeps.sweep(fn, space, params, base=base, method=method, n=n, seed=seed, stop=stop, **options)


def wait(jobs: Job | Iterable[Job], timeout: float | None = None) -> list[RunStatus]:
    """Wait for every job; returns their statuses (``TimeoutError`` past ``timeout``)."""
    jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return [job.status for job in jobs]


def gpus():
    """Every GPU this process may lease: name, memory, utilisation, temperature, holder."""
    return get_scheduler().leases.snapshot()


def cancel(run_id: str | Job, *, by: str | None = None, timeout: float = DEFAULT_ANSWER_WAIT) -> ControlResult:
    """Cancel a run of any scheduler on this machine by its id (a unique prefix will do).

    A run of this process is cancelled here and now; a run of another process is
    asked of its owner through the store, which acts within a second (a queued
    run ends at once, a running one within its ``cancel_grace``); this waits up to
    ``timeout`` seconds for the answer. Returns a ``ControlResult``: true once
    done, with ``outcome`` "done", "refused" (the run already ended) or
    "pending" (no answer yet) and a ``message``. ``by`` names who asked in the
    run's events (default: ``user@host pid N (program)``). ``ConfigError`` for
    an unknown id, or a run whose owner has exited."""
    return _control(run_id, "cancel", None, by, timeout, "nx.cancel")


def set_priority(run_id: str | Job, priority: int, *, by: str | None = None,
                 timeout: float = DEFAULT_ANSWER_WAIT) -> ControlResult:
    """Give a queued run of any scheduler on this machine a new ``priority`` (0-10,
    higher first): it moves in its owner's queue. Like ``cancel``; a running run
    keeps its priority (refused)."""
    return _control(run_id, "priority", check_priority(priority), by, timeout, "nx.set_priority")


def _control(run_id, action: str, value: int | None, by: str | None, timeout: float, via: str) -> ControlResult:
    """Act on a job of this process's scheduler, else ask the run's owner through the store."""
    from ..store import get_store

    if action not in ACTIONS:
        raise ConfigError(f"unknown control action {action!r}; choose one of {', '.join(ACTIONS)}")
    if action == "priority":
        value = check_priority(value)
    run_id = run_id.run_id if isinstance(run_id, Job) else str(run_id).strip()
    if not run_id:
        raise ConfigError("give the id of the run (notebook-exp queue lists them)")
    who = requester(by, via)
    scheduler = running_scheduler()
    if scheduler is not None:
        mine = [job for job in scheduler.jobs() if job.run_id == run_id] or \
               [job for job in scheduler.jobs() if job.run_id.startswith(run_id)]
        if len(mine) == 1:
            return act(scheduler, mine[0], action, value, who)
        store = scheduler.store
    else:
        from ..config import get_settings

        settings = get_settings()
        store = get_store(settings.store_path, settings=settings)
    return ask(run_id, action, value, who, store=store, timeout=timeout)


def resubmit(run_ids: str | list[str] | None = None) -> list[Job]:
    """Queue again runs a dead process left queued (or the given run ids) from their saved
    functions; returns the new jobs."""
    import cloudpickle

    from ..store.core import LOST_QUEUED

    scheduler = get_scheduler()
    if run_ids is None:
        prefix = LOST_QUEUED.split("{pid}")[0]
        query = "SELECT p.run_id, p.payload FROM payloads p JOIN runs r USING (run_id) WHERE r.error LIKE ? || '%'"
        args: list = [prefix]
    else:
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        query, args = "SELECT run_id, payload FROM payloads WHERE run_id IN (SELECT unnest(?))", [ids]
    table = scheduler.store.query_arrow(query, args)
    jobs = []
    for run_id, data in zip(table.column("run_id").to_pylist(), table.column("payload").to_pylist()):
        saved = cloudpickle.loads(data)
        fields = {k: v for k, v in saved["spec"].items() if k != "after"}
        job = scheduler.submit(validate(fn=saved["fn"], **fields))  # every saved field, as submitted
        scheduler.records.event(job, "resubmitted", f"from {run_id}")
        _mark_resubmitted(scheduler, run_id, job.run_id)
        jobs.append(job)
    return jobs


def _mark_resubmitted(scheduler, old: str, new: str) -> None:
    """The old run's saved function now belongs to the new run; its trail says where it went."""
    scheduler.store.writer.wait(scheduler.store.records.resubmitted(old, new))


def dead_letters(experiment: str | None = None):
    """Runs that failed after their last attempt (pandas): run_id, name, experiment,
    attempts, ended_at, error. Runs that never started are not in it."""
    from ..store.queries import _store

    query = """SELECT run_id, name, experiment, attempts, ended_at, error FROM runs
               WHERE status = ? AND attempts > 0"""
    args: list = [RunStatus.FAILED.value]
    if experiment is not None:
        query += " AND experiment = ?"
        args.append(experiment)
    target = _store(None)
    if not target.path.exists():
        import pandas as pd

        return pd.DataFrame(
            columns=["run_id", "name", "experiment", "attempts", "ended_at", "error"]
        )
    return target.query(query + " ORDER BY ended_at DESC", args)
