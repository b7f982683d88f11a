"""The machine's queue as data: every queued and running run of every scheduler that
uses this store, and the GPUs they hold.

This is the one read of the queue: ``notebook-exp queue``, ``nx.queue()``, the
``%experiment_queue`` magic and (later) the viewer's Queue page and its JSON API
all get these objects. Its shape:

- :class:`QueueEntry`, one per queued or running run: who owns it
  (:class:`Owner`: the scheduler's host, pid and notebook or script), its
  priority and ``position`` in its owner's queue, its ``after`` runs, attempts,
  GPUs asked for, pinned (``gpu_ids``) and held, how long it has been waiting or
  running, and the control requests its owner has not answered yet.
- :class:`GpuState`, one per GPU: readings (NVML or virtual), ``reserved``, and
  its holders (:class:`GpuHolder`) from the machine-wide leases.
- :class:`MachineQueue`: both, with where and when they were read.

Every class has ``to_dict()`` (JSON-able: ISO timestamps, plain lists), the
form the JSON API serves. ``queue_entries`` reads the store inside an open read session
(``access.read``), with fixed SQL; which GPUs a run holds comes from the lease
files, which the scheduler layer reads (``notebook_exp.scheduler.machine``
puts the two together) and passes in as ``held``. Without ``held`` the runs'
own ``runs.gpus`` column is used.

Budget: the Queue page's refresh, one ``nx.queue()`` with 1,000 queued runs,
within 50 ms; ``benchmarks/bench_queue.py`` prints the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from ...models import RunStatus
from .._host import HOST, utcnow

__all__ = [
    "GpuHolder", "GpuState", "MachineQueue", "Owner", "QueueEntry", "RunTarget", "find_runs", "gpu_states",
    "queue_entries",
]

#: The owner's columns (a run queued before schema version 2 has none: its row's host and pid stand in) ...
_OWNED = {
    "host": "coalesce(owner_host, host)", "pid": "coalesce(owner_pid, pid)",
    "started": "CASE WHEN owner_pid IS NULL THEN pid_started ELSE owner_started END",
    "program": "owner_program", "seq": "queue_seq", "queued_at": "coalesce(queued_at, created_at)",
}
#: ... and in a store no schema-2 process has written yet (no ``runs.owner_*``, ``queue_seq``,
#: ``queued_at``, no ``requests`` table).
_LEGACY = {"host": "host", "pid": "pid", "started": "pid_started", "program": "NULL", "seq": "NULL",
           "queued_at": "created_at"}
_STATUSES = {status.value: status for status in RunStatus}
_RUNNING = RunStatus.RUNNING.value
_ACTIVE = ", ".join(f"'{status}'" for status in RunStatus.values(active=True))  # constants: no user text

# Positions and order are computed in Python (a window and a sort here cost more than the rest of the query).
_QUEUE_SQL = f"""
SELECT run_id, name, experiment, status, coalesce(priority, 5), coalesce(attempts, 0), executor,
       {{host}}, {{pid}}, {{started}}, {{program}}, pid, gpus, asked.after, asked.gpus, asked.gpu_ids, asked.retries,
       {{queued_at}}, started_at, {{seq}}
FROM (SELECT *, json_transform(spec, '{{{{"after": ["VARCHAR"], "gpus": "DOUBLE", "gpu_ids": ["INTEGER"],
                                        "retries": "INTEGER"}}}}') AS asked
      FROM runs WHERE status IN ({_ACTIVE}) AND executor IS NOT NULL)
"""
QUEUE_SQL = _QUEUE_SQL.format(**_OWNED)
LEGACY_QUEUE_SQL = _QUEUE_SQL.format(**_LEGACY)
PENDING_SQL = "SELECT run_id, list(action ORDER BY requested_at) FROM requests WHERE handled_at IS NULL GROUP BY run_id"

_FIND_SQL = """
SELECT run_id, name, experiment, status, executor, coalesce(priority, 5), error,
       {host}, {pid}, {started}, {program}, host, pid, pid_started
FROM runs WHERE run_id = $1 OR starts_with(run_id, $1)
ORDER BY run_id = $1 DESC, run_id LIMIT 5
"""
FIND_SQL = _FIND_SQL.format(**_OWNED)
LEGACY_FIND_SQL = _FIND_SQL.format(**_LEGACY)


def _stamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(now: datetime, since: datetime | None) -> float | None:
    return max((now - since).total_seconds(), 0.0) if since is not None else None


@dataclass(frozen=True)
class Owner:
    """The scheduler a run belongs to: the only process that can start, stop or reorder it.

    ``program`` is its notebook's path, or the script it runs (``sys.argv[0]``),
    or ``None`` when the store does not say (a run queued before schema 2).
    ``alive`` is whether that process still runs: ``None`` when it cannot be
    told from here (another host, or no pid on record)."""

    host: str | None
    pid: int | None
    program: str | None = None
    started: float | None = None  # the pid's start time (psutil), telling it from a reused pid
    alive: bool | None = None

    def __str__(self) -> str:
        where = f"pid {self.pid} on {self.host}" if self.pid is not None else f"host {self.host or '?'}"
        return f"{self.program} ({where})" if self.program else where

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _owner(host, pid, started, program, owners: dict) -> Owner:
    """The ``Owner`` of these columns; one object per owner in ``owners`` (a read's cache)."""
    key = (host, pid, started, program)
    owner = owners.get(key)
    if owner is None:
        from ..core import _process_alive

        alive = _process_alive(pid, started) if pid is not None and host == HOST else None
        owner = owners[key] = Owner(host, pid, program, started, alive)
    return owner


class QueueEntry(NamedTuple):
    """One queued or running run, as the machine's queue shows it (a named tuple:
    immutable, and ten times cheaper to make than a frozen dataclass, which a
    1,000-run read notices).

    ``position`` is its place in its owner's queue (0: the next to start there,
    the same number as ``job.queue_position`` in the owning kernel), ``None``
    while it runs; every scheduler races for the GPUs, so runs of different
    owners have no order between them beyond their priorities. ``gpus`` is what
    it asked for (0.5: half a GPU), ``gpu_ids`` the physical GPUs it is pinned
    to (``None``: any), ``gpus_held`` the physical GPUs it holds now.
    ``waiting`` is the seconds since it (last) entered the queue, for a queued
    run; ``running`` the seconds since its current attempt started, for a
    running one. ``pid`` is the process the run executes in (a process run's
    child) and ``pending`` the control requests (``"cancel"``, ``"priority"``)
    its owner has not answered yet. Timestamps are naive UTC, as the store keeps them.
    """

    run_id: str
    name: str
    experiment: str
    status: RunStatus
    owner: Owner
    priority: int
    position: int | None
    after: tuple[str, ...] = ()
    attempts: int = 0
    retries: int = 0
    executor: str | None = None
    gpus: float = 0.0
    gpu_ids: tuple[int, ...] | None = None
    gpus_held: tuple[int, ...] = ()
    queued_at: datetime | None = None
    started_at: datetime | None = None
    waiting: float | None = None
    running: float | None = None
    pid: int | None = None
    pending: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the status as its string, timestamps in ISO 8601, lists for tuples."""
        data = self._asdict()
        data.update(status=self.status.value, owner=self.owner.to_dict(), queued_at=_stamp(self.queued_at),
                    started_at=_stamp(self.started_at), after=list(self.after),
                    gpu_ids=None if self.gpu_ids is None else list(self.gpu_ids), gpus_held=list(self.gpus_held),
                    pending=list(self.pending))
        return data


class HolderLike(Protocol):
    """What a lease holder gives (``notebook_exp.scheduler.leases.LeaseHolder``)."""

    run_id: str | None
    pid: int | None
    fraction: float


@dataclass(frozen=True)
class GpuHolder:
    """Who holds (a share of) a GPU: ``fraction`` of it, for run ``run_id`` in process
    ``pid``; ``name``, ``experiment`` and ``owner`` when that run is in the queue read
    with it. ``run_id`` and ``pid`` are ``None`` for a lock whose holder is being replaced."""

    run_id: str | None
    pid: int | None
    fraction: float
    name: str | None = None
    experiment: str | None = None
    owner: Owner | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuState:
    """One GPU of the machine: its readings (``None`` for one the device does not give,
    or when it could not be read), whether it is ``reserved`` (never leased: the
    ``reserved_gpus`` setting of the process that read it) and who holds it now."""

    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int | None
    utilization: float | None
    temperature: float | None
    power: float | None
    reserved: bool
    holders: tuple[GpuHolder, ...] = ()

    @property
    def held(self) -> float:
        """The share of the GPU leased now (0 to 1)."""
        return min(sum(h.fraction for h in self.holders), 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["holders"] = [h.to_dict() for h in self.holders]
        data["held"] = self.held
        return data


@dataclass(frozen=True)
class MachineQueue:
    """The queue (``runs``: running ones first, then queued ones by priority and age)
    and the GPUs of the machine, read at ``read_at`` (naive UTC) from ``store`` and the
    lease files in ``lock_dir``."""

    runs: tuple[QueueEntry, ...]
    gpus: tuple[GpuState, ...]
    store: str
    lock_dir: str
    read_at: datetime = field(default_factory=utcnow)

    @property
    def queued(self) -> tuple[QueueEntry, ...]:
        return tuple(e for e in self.runs if e.status == RunStatus.QUEUED)

    @property
    def running(self) -> tuple[QueueEntry, ...]:
        return tuple(e for e in self.runs if e.status == RunStatus.RUNNING)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "lock_dir": self.lock_dir, "read_at": _stamp(self.read_at),
                "runs": [e.to_dict() for e in self.runs], "gpus": [g.to_dict() for g in self.gpus]}

    def frame(self):
        """The runs as a pandas DataFrame, one row each, ``owner`` flattened to
        ``owner_host``, ``owner_pid``, ``owner_program``, ``owner_alive``."""
        import pandas as pd

        columns = [name for name in QueueEntry._fields if name != "owner"]
        rows = []
        for entry in self.runs:
            row = {name: getattr(entry, name) for name in columns}
            row["status"] = entry.status.value
            row.update(owner_host=entry.owner.host, owner_pid=entry.owner.pid, owner_program=entry.owner.program,
                       owner_alive=entry.owner.alive)
            rows.append(row)
        return pd.DataFrame(rows, columns=[*columns, "owner_host", "owner_pid", "owner_program", "owner_alive"])


def _query(conn, current: str, legacy: str, params: list) -> tuple[list, bool]:
    """Rows of ``current``, or of ``legacy`` in a store no schema-2 process has written yet
    (then the second value is False)."""
    import duckdb

    try:
        return conn.execute(current, params).fetchall(), True
    except (duckdb.BinderException, duckdb.CatalogException):
        return conn.execute(legacy, params).fetchall(), False


def queue_entries(conn, held: Mapping[str, Sequence[int]] | None = None,
                  now: datetime | None = None) -> list[QueueEntry]:
    """Every queued and running run a scheduler owns in the store of ``conn`` (an open
    read session): running ones first (oldest first), then queued ones by priority
    (higher first) and age.

    ``held`` maps run ids to the physical GPUs their leases hold now (the lease
    files: ``LeaseManager.held()``); without it, a running run's ``runs.gpus``.
    ``now`` (naive UTC, default now) is what ``waiting`` and ``running`` count to.
    Runs started with ``start_run`` (no scheduler) are not in the queue."""
    now = now or utcnow()
    rows, current = _query(conn, QUEUE_SQL, LEGACY_QUEUE_SQL, [])
    pending = dict(conn.execute(PENDING_SQL).fetchall()) if current and rows else {}
    positions = _positions(rows)
    owners: dict = {}
    entries = []
    for row in rows:
        (run_id, name, experiment, status, priority, attempts, executor, host, pid, started, program, run_pid,
         gpus_col, after, gpus, gpu_ids, retries, queued_at, started_at, _seq) = row
        running = status == _RUNNING
        holding = held.get(run_id, ()) if held is not None else (gpus_col or () if running else ())
        entries.append(QueueEntry(
            run_id=run_id, name=name, experiment=experiment, status=_STATUSES[status],
            owner=_owner(host, pid, started, program, owners), priority=priority, position=positions.get(run_id),
            after=tuple(after) if after else (), attempts=attempts, retries=retries or 0, executor=executor,
            gpus=float(gpus) if gpus is not None else 0.0, gpu_ids=tuple(gpu_ids) if gpu_ids is not None else None,
            gpus_held=tuple(sorted(holding)) if holding else (), queued_at=queued_at,
            started_at=started_at if running else None,
            waiting=None if running else _seconds(now, queued_at), running=_seconds(now, started_at) if running else None,
            pid=run_pid if running else None, pending=tuple(pending[run_id]) if run_id in pending else (),
        ))
    never = datetime.max
    entries.sort(key=lambda e: (e.status != RunStatus.RUNNING, (e.started_at or never) if e.running is not None
                                else never, -e.priority, e.queued_at or never, e.run_id))
    return entries


def _positions(rows: list[tuple]) -> dict[str, int]:
    """Each queued run's place in its owner's queue: that scheduler's order (priority, then
    submission; in a schema-1 store, age)."""
    never = datetime.max
    by_owner: dict[tuple, list[tuple]] = {}
    for row in rows:
        if row[3] == RunStatus.QUEUED.value:
            by_owner.setdefault((row[7], row[8]), []).append(row)
    positions: dict[str, int] = {}
    for mine in by_owner.values():
        mine.sort(key=lambda r: (-r[4], r[19] is None, r[19] or 0, r[17] or never, r[0]))
        positions.update((row[0], index) for index, row in enumerate(mine))
    return positions


def gpu_states(infos: Sequence[Any], holders: Mapping[int, Sequence[HolderLike]],
               entries: Sequence[QueueEntry] = ()) -> list[GpuState]:
    """One ``GpuState`` per reading of ``infos`` (``inventory.GpuInfo``; a GPU whose
    readings failed may come as its ``GpuIdentity``), with its holders from
    ``holders`` (``LeaseManager.holders()``: GPU index -> holders) named after the
    runs of ``entries`` (a ``queue_entries`` read)."""
    by_run = {e.run_id: e for e in entries}
    states = []
    for info in infos:
        named = []
        for holder in holders.get(info.index, ()):
            entry = by_run.get(holder.run_id) if holder.run_id else None
            named.append(GpuHolder(holder.run_id, holder.pid, holder.fraction,
                                   entry.name if entry else None, entry.experiment if entry else None,
                                   entry.owner if entry else None))
        states.append(GpuState(
            index=info.index, uuid=info.uuid, name=info.name, memory_total=info.memory_total,
            memory_used=getattr(info, "memory_used", None), utilization=getattr(info, "utilization", None),
            temperature=getattr(info, "temperature", None), power=getattr(info, "power", None),
            reserved=bool(getattr(info, "reserved", False)), holders=tuple(named),
        ))
    return states


@dataclass(frozen=True)
class RunTarget:
    """A run a control request names, as the store has it: its status, ``executor``
    (``None``: started with ``start_run``, no scheduler owns it), priority and
    error, its ``owner`` and the process it executes in (``host``, ``pid``)."""

    run_id: str
    name: str
    experiment: str
    status: RunStatus
    executor: str | None
    priority: int
    error: str | None
    owner: Owner
    host: str | None
    pid: int | None
    pid_started: float | None


def find_runs(conn, run_id: str) -> list[RunTarget]:
    """The run with id ``run_id`` (then it alone comes first), or the runs whose ids start
    with it (at most 5, by id), in the store of ``conn`` (an open read session)."""
    owners: dict = {}
    found = []
    for row in _query(conn, FIND_SQL, LEGACY_FIND_SQL, [run_id])[0]:
        rid, name, experiment, status, executor, priority, error, host, pid, started, program, rhost, rpid, rstart = row
        found.append(RunTarget(rid, name, experiment, RunStatus(status), executor, priority, error,
                               _owner(host, pid, started, program, owners), rhost, rpid, rstart))
    return found
