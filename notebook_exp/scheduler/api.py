"""The scheduler's front door: ``submit``, ``sweep``, ``wait``, ``gpus``, ``resubmit``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..exceptions import ConfigError
from ..models import RunStatus
from .core import get_scheduler
from .job import Job
from .spec import validate

__all__ = ["dead_letters", "gpus", "resubmit", "submit", "sweep", "wait"]


def submit(
    fn: Callable[..., Any],
    params: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    experiment: str | None = None,
    gpus: float = 0,
    gpu_memory: int | str | None = None,
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
) -> Job:
    """Queue ``fn(run, **params)`` to run in the background; returns its ``Job`` at once.

    ``gpus`` leases that many GPUs (0.5 or 0.25 share one) machine-wide;
    ``gpu_memory`` (bytes or "8GB") admits only GPUs with that much free.
    ``priority`` 0-10 (higher first, FIFO within a level). ``retries`` reruns a
    failing function with exponential backoff from ``retry_backoff`` seconds.
    ``timeout`` stops an attempt after that many seconds. ``executor`` is
    "thread" (in this process) or "process" (a fresh interpreter). ``after``
    names runs (ids or jobs) that must complete first. ``sinks`` takes sink
    names, ``Sink`` classes or factories (zero-argument callables returning a
    ``Sink``), which give every attempt a fresh sink, or ``Sink`` instances
    (only without ``retries``: an instance serves one attempt). Bad arguments
    raise ``ConfigError`` (an unknown ``after`` id, too) or ``SinkError`` and
    nothing is queued; asking for more GPUs than the machine has raises
    ``GpuUnavailable`` unless ``wait_for_gpus``. ``capture`` names framework calls
    the run captures (``["tensorboard"]``, see ``start_run``); ``resume`` is the id
    of a stored run to continue instead of a new one (``start_run(resume=True)``).
    """
    spec = validate(
        fn=fn, params=params or {}, name=name, experiment=experiment, gpus=gpus, gpu_memory=gpu_memory,
        priority=priority, retries=retries, retry_backoff=retry_backoff, timeout=timeout, executor=executor,
        tags=tags or [], after=after, wait_for_gpus=wait_for_gpus, sinks=sinks, source=source, capture=capture,
        resume=resume,
    )
    return get_scheduler().submit(spec)


def _combinations(grid: dict[str, Iterable] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(grid, dict):
        keys = list(grid)
        values = [list(v) if not isinstance(v, (str, bytes)) else [v] for v in grid.values()]
        if any(not v for v in values):
            raise ConfigError("every grid entry needs at least one value")
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    combos = list(grid)
    if not all(isinstance(c, dict) for c in combos):
        raise ConfigError("a sweep takes a dict of value lists or a list of param dicts")
    return combos


def sweep(fn: Callable[..., Any], grid: dict[str, Iterable] | list[dict[str, Any]],
          params: dict[str, Any] | None = None, **options: Any) -> list[Job]:
    """Submit one run per combination of ``grid`` (merged over ``params``); returns the jobs.

    Every combination is validated before any is queued. Each run gets its own
    sinks, so ``sinks=`` takes names, ``Sink`` classes or factories here; a
    ``Sink`` instance, which several runs would share, raises ``SinkError``.
    """
    from .spec import check_signature, check_sinks

    combos = [{**(params or {}), **combo} for combo in _combinations(grid)]
    for combo in combos:
        check_signature(fn, combo)
    check_sinks(options.get("sinks"), runs=len(combos), retries=options.get("retries", 0))
    base = options.pop("name", None)
    jobs = []
    for combo in combos:
        label = " ".join(f"{k}={v}" for k, v in combo.items() if k not in (params or {}))
        jobs.append(submit(fn, combo, name=f"{base} {label}" if base else (label or None), **options))
    return jobs


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
        spec = {k: v for k, v in saved["spec"].items() if k != "after"}
        job = submit(saved["fn"], **spec)
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
