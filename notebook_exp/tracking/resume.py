"""Resuming a stored run: ``start_run(run_id=..., resume=True)``.

A run that ended (completed, failed, cancelled, or lost with its process) runs
again under its own id: its status goes back to ``running`` with a ``resumed``
event, its params are the stored ones updated by the new ones, its tags the
stored ones plus the new ones, and every key's automatic steps continue after
its stored last step (``metric_summary.last_step``; text, histogram and image
keys after their last stored step), so no step gets a second value. The store is
read once, through the read path (``store.queries.detail.resume_state``), after
this process's queued writes are committed; unlike a plain start, resuming waits
for a store held by another process (at most ``lock_timeout``).

A run is refused while a live process owns it, the way lost-run recovery tells
(``store.core``): its status is ``running`` (or ``queued`` by another process's
scheduler) and its ``pid`` is alive on this host with the same ``pid_started``
(this process owns it while it is one of its live runs). A ``running`` run of
another host cannot be checked and is refused too. ``resume="allow"``
continues the run if the store holds it and starts it under that id otherwise
(W&B's ``resume="allow"``; the framework integrations use it for an explicit run
id). Without ``resume``, ``start_run(run_id=...)`` starts the given id as before
(the scheduler starts its queued runs so): steps count from 0 again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..exceptions import ConfigError
from ..models import RunStatus
from ..store._host import HOST

__all__ = ["Resumed", "load", "merged", "owner"]


@dataclass
class Resumed:
    """A stored run about to continue: its row and where its steps go on from."""

    run_id: str
    experiment: str
    name: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    #: Next automatic step of each metric key (its stored last step + 1).
    next_steps: dict[str, int] = field(default_factory=dict)
    #: Next automatic step of each text, histogram and image key.
    rich_next: dict[str, int] = field(default_factory=dict)


def load(store, run_id: str, timeout: float, live: set[str], missing_ok: bool = False) -> Resumed | None:
    """The stored run ``run_id`` of ``store``, checked resumable: ``ConfigError`` if the
    store holds no such run (None instead with ``missing_ok``) or a live process owns
    it (``live``: this process's live run ids)."""
    from ..store.queries.access import read
    from ..store.queries.detail import resume_state

    store.writer.flush(timeout)  # this process's own writes of the run first
    state = read(lambda conn: resume_state(conn, run_id), store=store, timeout=timeout) if store.path.exists() else None
    if state is None:
        if missing_ok:
            return None
        raise ConfigError(f"cannot resume run {run_id!r}: store {store.path} holds no such run")
    holder = owner(state, run_id in live)
    if holder is not None:
        raise ConfigError(
            f"cannot resume run {run_id!r}: it is {state['status']} in {holder}, which still owns it; "
            "end it there (or wait until it ends) first"
        )
    return Resumed(
        run_id=run_id, experiment=state["experiment"], name=state["name"], status=state["status"],
        params=json.loads(state["params"]) if state["params"] else {}, tags=list(state["tags"] or []),
        created_at=state["created_at"], started_at=state["started_at"],
        next_steps={key: step + 1 for key, step in state["last_steps"].items() if step is not None},
        rich_next={key: step + 1 for key, step in state["rich_steps"].items() if step is not None},
    )


def owner(state: dict[str, Any], live_here: bool) -> str | None:
    """Who owns the stored run (``process 123 on host``), or None when nobody does.

    ``running`` (or ``queued``) with a pid alive on this host and the same process
    start time is owned, as lost-run recovery decides; this process owns it only
    while it is one of its live runs (``live_here``), and a run queued by this
    process's parent (the scheduler of a process executor) is its to start; a
    ``running`` run of another host cannot be checked and counts as owned."""
    from ..store.core import _process_alive

    status, host, pid = state["status"], state["host"], state["pid"]
    if status not in (RunStatus.RUNNING.value, RunStatus.QUEUED.value) or pid is None:
        return None
    where = f"process {pid} on {host}"
    if host != HOST:
        return where if status == RunStatus.RUNNING.value else None
    if pid == os.getpid():
        return f"this process ({pid})" if live_here else None
    if status == RunStatus.QUEUED.value and pid == os.getppid():
        return None  # queued by the scheduler that started this process to run it (process executor)
    return where if _process_alive(pid, state["pid_started"]) else None


def merged(resumed: Resumed, name: str | None, experiment: str | None, params: dict, tags: list[str]):
    """``(name, experiment, params, tags)`` of the resumed run: the stored name and
    experiment (``ConfigError`` if others are given), the stored params updated by
    ``params``, the stored tags then the new ones."""
    for what, given, stored in (("name", name, resumed.name), ("experiment", experiment, resumed.experiment)):
        if given is not None and given != stored:
            raise ConfigError(
                f"cannot resume run {resumed.run_id!r} with {what} {given!r}: it is {stored!r} "
                f"(leave {what} out to keep it)"
            )
    return (resumed.name, resumed.experiment, {**resumed.params, **params},
            resumed.tags + [tag for tag in tags if tag not in resumed.tags])
