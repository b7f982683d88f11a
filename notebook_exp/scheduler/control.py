"""Control from anywhere: cancel a run, or change a queued run's priority, from any process.

A run belongs to the scheduler that queued it, its *owner* (``runs.owner_*``):
only that process can stop it or move it in its queue. Another process asks
the owner through the store (docs/architecture.md, "Control requests"):

1. The asker (``ask``, behind ``nx.cancel``, ``nx.set_priority``, ``notebook-exp
   cancel``/``priority``, ``%experiment_cancel``, and later the viewer) looks the
   run up (a unique prefix of its id will do) and refuses at once, with one
   message, what nobody could do: an unknown id, a run whose owner has exited, a
   run no scheduler owns. Otherwise it writes a row of ``requests`` and a
   ``<action>_requested`` event naming who asked, waits for the commit, and
   rings the store's *doorbell*: it replaces ``<store file>.requests``, a small
   file beside the store.
2. Each round of every scheduler's dispatcher looks at the doorbell (one
   ``stat``, a few microseconds) and, while the scheduler has jobs, a round
   comes at least every ``CONTROL_EVERY`` seconds. When the bell changed, or
   ``FALLBACK_EVERY`` seconds passed (a request written by hand), it reads the
   pending requests for its own runs in one short read-only session and acts
   on them as on a request made in its own process (``act``): a queued run is
   cancelled at once, a running one stopped by its executor (it ends within
   ``cancel_grace``); a queued run's priority moves it in the queue.
3. The owner answers in the request's row (``handled_at``, ``outcome``
   ``done`` or ``refused``, ``detail``) and in the run's events (``cancel``,
   ``priority``, ``request_refused``, each naming who asked); the asker waits
   for that answer up to its ``timeout``, else reports it ``pending``.

An ask in the owning process itself skips the store (``act`` directly), with
the same events. The SQL here is fixed text with ``?`` parameters.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ConfigError, StoreError
from ..models import RunStatus
from ..store._host import HOST, pid_started, utcnow

__all__ = [
    "ACTIONS", "CONTROL_EVERY", "FALLBACK_EVERY", "ControlInbox", "ControlRequest", "ControlResult", "act", "ask",
    "check_priority", "doorbell", "owner_program", "requester", "ring",
]

log = logging.getLogger("notebook_exp.scheduler")

ACTIONS = ("cancel", "priority")
#: Longest sleep of a dispatcher that has jobs: each round looks at the doorbell, so a
#: request is read within this (plus one short read) of being rung.
CONTROL_EVERY = 0.2
#: Pending requests are read this often even without a ring (requests written by hand).
FALLBACK_EVERY = 5.0
READ_TIMEOUT = 0.25  # seconds the owner's read waits for the store; a busy store is read next round
ANSWERED_FOR = 60.0  # seconds after its end a job still answers requests (as refused)
DEFAULT_ANSWER_WAIT = 5.0  # seconds an asker waits for the owner's answer by default
ANSWER_POLL = 0.05

CLAIM_SQL = """UPDATE runs SET owner_host = ?, owner_pid = ?, owner_started = ?, owner_program = ?, queue_seq = ?,
                              queued_at = ? WHERE run_id = ?"""
REQUEUED_SQL = "UPDATE runs SET queued_at = ? WHERE run_id = ?"
PRIORITY_SQL = "UPDATE runs SET priority = ?, spec = json_merge_patch(spec, ?) WHERE run_id = ?"
INSERT_REQUEST_SQL = """INSERT INTO requests (request_id, run_id, action, value, requested_by, requested_at, host, pid)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
ANSWER_SQL = "UPDATE requests SET handled_at = ?, outcome = ?, detail = ? WHERE request_id = ? AND handled_at IS NULL"
PENDING_SQL = """SELECT request_id, run_id, action, value, requested_by FROM requests
                 WHERE handled_at IS NULL AND run_id IN (SELECT unnest(?)) ORDER BY requested_at"""
ANSWERED_SQL = "SELECT outcome, detail FROM requests WHERE request_id = ? AND handled_at IS NOT NULL"


# -- who asks ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def owner_program() -> str:
    """What this process runs, as the queue shows its owner: the notebook's path when the
    kernel knows it, else the script (``sys.argv[0]``)."""
    from ..collectors.source import notebook_path

    path = notebook_path()
    if path:
        return path
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c"):
        return "python -c" if argv0 == "-c" else "python"
    if "ipykernel" in Path(argv0).name:
        return "a Jupyter kernel"
    return argv0


@functools.lru_cache(maxsize=1)
def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid: say so rather than fail
        return "?"


def requester(by: str | None = None, via: str | None = None) -> str:
    """Who asks, as the events name them: ``by`` when given (the viewer passes its
    user), else ``user@host pid N (via)``, ``via`` defaulting to this process's program."""
    if by is not None and str(by).strip():
        return str(by).strip()[:200]
    return f"{_user()}@{HOST} pid {os.getpid()} ({via or owner_program()})"


def check_priority(value) -> int:
    """``value`` as a priority (0-10), or ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ConfigError(f"a priority is a whole number from 0 to 10, not {value!r}") from None
    if not 0 <= value <= 10:
        raise ConfigError(f"a priority is from 0 to 10 (higher runs first), not {value}")
    return value


# -- the doorbell -----------------------------------------------------------------------
def doorbell(store_path: str | os.PathLike) -> Path:
    """The file whose change tells the schedulers of a store that a request is waiting."""
    return Path(f"{store_path}.requests")


def ring(path: Path) -> None:
    """Replace the doorbell (a new file each time, so its ``stat`` always changes)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(f"{time.time()} {HOST} {os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:  # the owners still read requests every FALLBACK_EVERY seconds
        log.warning("could not ring %s (%s); the request is read within %.0f s", path, exc, FALLBACK_EVERY)
        tmp.unlink(missing_ok=True)


def _signature(path: Path):
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size, found.st_ctime_ns


# -- requests and answers ------------------------------------------------------------------
@dataclass(frozen=True)
class ControlRequest:
    """A request read from the store: ``action`` (``cancel`` or ``priority``) on run
    ``run_id``, ``value`` the new priority, ``requested_by`` who asked."""

    request_id: str
    run_id: str
    action: str
    value: int | None
    requested_by: str


@dataclass(frozen=True)
class ControlResult:
    """What came of a control request.

    ``outcome`` is ``"done"`` (the owner acted: a queued run is cancelled, a running
    one is being stopped and ends within ``cancel_grace``, or the priority is set),
    ``"refused"`` (``message`` says why: the run already ended, a running run's
    priority) or ``"pending"`` (asked, but the owner did not answer within the
    timeout). True only when done. ``request_id`` is ``None`` for a request the
    owning process acted on itself."""

    run_id: str
    action: str
    outcome: str
    message: str
    requested_by: str
    request_id: str | None = None

    def __bool__(self) -> bool:
        return self.outcome == "done"

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "action": self.action, "outcome": self.outcome, "message": self.message,
                "requested_by": self.requested_by, "request_id": self.request_id}


def act(scheduler, job, action: str, value: int | None, who: str,
        request: ControlRequest | None = None) -> ControlResult:
    """Do ``action`` on ``job``, a job of ``scheduler`` (its owner), for ``who``; the
    outcome is in the run's events. ``request``: the stored request it answers."""
    request_id = request.request_id if request is not None else None
    if action == "cancel":
        running = scheduler.is_running(job)
        if scheduler.cancel(job, by=who):
            message = (f"stopping run {job.run_id}: it was running and ends within cancel_grace "
                       f"({scheduler.settings.cancel_grace:g} s)" if running
                       else f"cancelled run {job.run_id} (it was queued)")
            return ControlResult(job.run_id, action, "done", message, who, request_id)
        message = f"run {job.run_id} already {job.status.value}; nothing to cancel"
    else:
        done, message = scheduler.set_priority(job, value, by=who)
        if done:
            return ControlResult(job.run_id, action, "done", message, who, request_id)
    scheduler.records.event(job, "request_refused", f"{action} asked by {who}: {message}")
    return ControlResult(job.run_id, action, "refused", message, who, request_id)


class ControlInbox:
    """The owner's side of control requests, for one scheduler and its store: it
    records the scheduler's ownership of its runs, notices the doorbell, reads the
    requests for its runs and writes the answers. Used from the dispatcher thread
    (``due``, ``take``, ``answer``) and from ``submit`` (``claim``)."""

    def __init__(self, store) -> None:
        self.store = store
        self.bell = doorbell(store.path)
        self._seen = _signature(self.bell)
        self._read_at = 0.0
        self._retry = False  # a read failed: read again next round
        self._answered: dict[str, float] = {}
        #: Seconds the last ``take`` spent reading the store (``benchmarks/bench_queue.py``).
        self.last_read: float | None = None

    # -- what the owner records --------------------------------------------------------
    def claim(self, job) -> None:
        """This process owns the run (``runs.owner_*``), at ``job.seq`` in its queue."""
        self.store.writer.submit(CLAIM_SQL, [HOST, os.getpid(), pid_started(), owner_program(), job.seq, utcnow(),
                                             job.run_id])

    def requeued(self, job) -> None:
        """The run is back in the queue (a retry): it waits from now."""
        self.store.writer.submit(REQUEUED_SQL, [utcnow(), job.run_id])

    def priority_changed(self, job, old: int, new: int, who: str) -> None:
        self.store.writer.submit(PRIORITY_SQL, [new, json.dumps({"priority": new}), job.run_id])
        self.store.records.event(job.run_id, "priority", f"{old} -> {new}, asked by {who}")

    # -- requests ------------------------------------------------------------------------
    def due(self) -> bool:
        """Whether to read the requests now: the doorbell rang, the last read failed, or
        ``FALLBACK_EVERY`` seconds passed. Costs one ``stat``."""
        signature = _signature(self.bell)
        now = time.monotonic()
        if signature != self._seen or self._retry or now - self._read_at >= FALLBACK_EVERY:
            self._seen, self._read_at = signature, now
            return True
        return False

    def watched(self, jobs) -> list[str]:
        """The run ids whose requests this owner answers: jobs not ended, or ended
        within ``ANSWERED_FOR`` seconds (their requests are refused)."""
        horizon = time.time() - ANSWERED_FOR
        return [job.run_id for job in jobs if job.ended_at is None or job.ended_at >= horizon]

    def take(self, run_ids: list[str]) -> list[ControlRequest]:
        """The requests not answered yet for ``run_ids``, oldest first; never call it
        under the scheduler's lock. A store that cannot be read now is read next round."""
        self._retry = False
        if not run_ids:
            return []
        started = time.perf_counter()
        try:
            table = self.store.query_arrow(PENDING_SQL, [list(run_ids)], timeout=READ_TIMEOUT)
        except StoreError as exc:  # held by another process for now, or no file yet
            self._retry = self.store.path.exists()
            log.debug("control requests cannot be read now: %s", exc)
            return []
        except Exception as exc:  # noqa: BLE001 - e.g. a store no schema-2 process prepared: no requests
            log.debug("control requests cannot be read: %s", exc)
            return []
        finally:
            self.last_read = time.perf_counter() - started
        rows = zip(*(table.column(name).to_pylist() for name in ("request_id", "run_id", "action", "value",
                                                                  "requested_by")))
        return [ControlRequest(*row) for row in rows if row[0] not in self._answered]

    def answer(self, request: ControlRequest, result: ControlResult) -> None:
        """Write the outcome into the request's row (the asker waits for it)."""
        outcome = "done" if result.outcome == "done" else "refused"
        self._answered[request.request_id] = time.monotonic()
        if len(self._answered) > 10_000:
            oldest = sorted(self._answered, key=self._answered.get)[:5_000]
            for key in oldest:
                del self._answered[key]
        self.store.writer.submit(ANSWER_SQL, [utcnow(), outcome, result.message, request.request_id])


# -- the asker's side (another process) ----------------------------------------------------
def ask(run_id: str, action: str, value: int | None, who: str, *, store, timeout: float) -> ControlResult:
    """Ask the owner of stored run ``run_id`` (a unique prefix will do) to do ``action``,
    through ``store`` (a ``Store``); waits up to ``timeout`` seconds for its answer.

    Raises ``ConfigError`` for an unknown or ambiguous id, a run no scheduler owns,
    or a live run whose owner has exited (the message says what can be done),
    ``StoreError`` when there is no store or the request cannot be written."""
    from ..store import queries
    from ..store.queries.queue import find_runs

    if not store.path.exists():
        raise StoreError(f"no store at {store.path}: no run {run_id!r} to {action} there")
    store.writer.wait(store.recover(), timeout=store.lock_timeout)  # runs of dead processes: marked lost first
    target = _one(queries.read(lambda conn: find_runs(conn, run_id), store=store), run_id, store)
    refused = _refusal(target, action)
    if refused is not None:
        return ControlResult(target.run_id, action, "refused", refused, who)
    request_id = uuid.uuid4().hex[:16]
    store.writer.submit(INSERT_REQUEST_SQL, [request_id, target.run_id, action, value, who, utcnow(), HOST,
                                             os.getpid()])
    asked = f"priority {value}, " if action == "priority" else ""
    seq = store.writer.event(target.run_id, f"{action}_requested", f"{asked}by {who} (request {request_id})")
    if not store.writer.wait(seq, timeout=store.lock_timeout):
        raise StoreError(f"the {action} request for run {target.run_id} could not be written to {store.path} "
                         f"within {store.lock_timeout:g} s (the store is held by another process)")
    ring(doorbell(store.path))
    return _answer(store, target, action, who, request_id, timeout)


def _one(found: list, run_id: str, store):
    if not found:
        raise ConfigError(f"no run {run_id!r} in the store {store.path}")
    if found[0].run_id != run_id and len(found) > 1:
        shown = ", ".join(t.run_id for t in found[:4])
        raise ConfigError(f"{run_id!r} matches several runs ({shown}{', ...' if len(found) > 4 else ''}); "
                          "give more of the id")
    return found[0]


def _refusal(target, action: str) -> str | None:
    """Why nobody will act on ``action`` for ``target``: raises ``ConfigError`` when no
    owner can (none lives, or none exists), returns the reason a live owner would
    refuse, or ``None`` when the owner should be asked."""
    name = f"run {target.run_id} ({target.name!r})"
    if target.status.terminal:
        if (target.error or "").startswith("lost:"):
            raise ConfigError(f"{name} has no live owner: {target.error}")
        return f"{name} already {target.status.value}; nothing to {'cancel' if action == 'cancel' else 'reorder'}"
    if target.executor is None:
        raise ConfigError(f"{name} was started with start_run by process {target.pid} on {target.host}, not queued "
                          f"by a scheduler: only that process can end it")
    if target.owner.alive is False:
        still = ""
        if target.status == RunStatus.RUNNING and target.pid not in (None, target.owner.pid):
            still = (f"; the run goes on in its own process {target.pid} on {target.host}"
                     + (f": `kill {target.pid}` stops it (it ends cancelled)" if action == "cancel" else ""))
        raise ConfigError(f"cannot {'cancel' if action == 'cancel' else 'reprioritise'} {name}: its owner, "
                          f"{target.owner}, has exited, so no scheduler will act on it{still}")
    if action == "priority" and target.status == RunStatus.RUNNING:
        return f"{name} is running: a priority only orders queued runs"
    return None


def _answer(store, target, action: str, who: str, request_id: str, timeout: float) -> ControlResult:
    """Wait up to ``timeout`` seconds for the owner's answer to request ``request_id``."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:
            table = store.query_arrow(ANSWERED_SQL, [request_id], timeout=READ_TIMEOUT)
        except StoreError:
            table = None
        if table is not None and table.num_rows:
            outcome, detail = table.column("outcome")[0].as_py(), table.column("detail")[0].as_py()
            return ControlResult(target.run_id, action, outcome, detail, who, request_id)
        if time.monotonic() >= deadline:
            return ControlResult(
                target.run_id, action, "pending",
                f"asked {target.owner} to {action} run {target.run_id}; no answer within {timeout:g} s "
                f"(request {request_id} stays until it answers)", who, request_id)
        time.sleep(ANSWER_POLL)
