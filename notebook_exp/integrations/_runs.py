"""What every framework integration shares: which run it logs into, and ending it honestly.

**Current run or own run** (:class:`RunScope`). Inside a notebook_exp run (a
``%%experiment`` cell, ``nx.submit``, ``with nx.start_run()``) an integration logs
into ``notebook_exp.current_run()`` and never ends it: its status follows the
cell, the job or the ``with`` block. Outside one, the integration starts a run of
its own on first use and ends it when training ends. A use after that (Lightning's
``trainer.test``, Hugging Face's ``trainer.evaluate``) resumes the same run
(``start_run(run_id=..., resume=True)``: a ``resumed`` event, steps and params go
on), which then ends again. An explicit run id (Lightning's ``version=``) resumes
that run if the store holds it and starts it otherwise (``resume="allow"``); a
training restarted from a checkpoint that names its run (:meth:`RunScope.resume`)
resumes that one.

**Trainings that never end** (:func:`training_started`, :func:`training_ended`).
Hugging Face and Keras callbacks are not told when training raises. An own run
whose training began and did not reach its end is ended ``failed`` (``cancelled``
for a ``KeyboardInterrupt``), whichever comes first:

* the IPython cell that ran the training finishes (``post_run_cell``): a training
  on the kernel's thread that is still open then has raised;
* the same integration object starts another training;
* the integration object is garbage collected (with its trainer);
* the interpreter exits (a shutdown step that runs before ``end_live_runs``, which
  would otherwise record ``completed``).

Other ranks of a distributed job write into rank 0's run through
``tracking.join.join_run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import math
import numbers
import threading
import weakref
from pathlib import PurePath
from typing import Any

from .. import _exit
from ..exceptions import InvalidMetric
from ..models import RunStatus
from ..tracking.run import Run, current_run, outcome, start_run
from ..tracking.values import as_value

__all__ = [
    "RunScope",
    "jsonable",
    "numeric",
    "training_ended",
    "training_started",
]

log = logging.getLogger("notebook_exp.integrations")

ABANDONED = "training did not finish: it raised or was interrupted before its end (the framework does not say why)"
SHUTDOWN_ORDER = 15  # before end_live_runs (20), which would record these runs as completed


# -- values ---------------------------------------------------------------------------
def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as a JSON-like param: dicts, Namespaces and dataclasses become dicts,
    tuples and sets lists, numpy/torch scalars numbers; anything else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > 20:
        return str(value)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth + 1)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return jsonable(float(value), depth + 1)
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return jsonable(item(), depth + 1)
        except (TypeError, ValueError):
            pass
    return str(value)


def numeric(values: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The real-number entries of ``values`` as floats, keys prefixed; strings, None,
    lists and other non-numbers are skipped, and so is a key named ``step`` (it is
    the step itself, and ``run.log`` takes ``step`` as its argument)."""
    out: dict[str, float] = {}
    if not values:
        return out
    for key, value in values.items():
        if key == "step" or not isinstance(key, str):
            continue
        if value.__class__ is not float:
            try:
                value = as_value(key, value)
            except InvalidMetric:
                continue
        out[prefix + key if prefix else key] = value
    return out


# -- the run an integration logs into ----------------------------------------------------
class RunScope:
    """The run an integration logs into: the current run when there is one, else its own.

    ``get()`` resolves it on first use (and again once that run has ended); ``end``
    ends only a run of its own; ``new()`` forgets an ended own run, so the next
    ``get()`` starts a fresh one instead of continuing it; ``resume(run_id)`` makes
    the next run it starts continue the stored run ``run_id``."""

    def __init__(self, *, name: str | None = None, experiment: str | None = None, run_id: str | None = None,
                 params: dict | None = None, tags=None, sinks=None, store=None) -> None:
        self.name = name
        self.experiment = experiment
        self.run_id = run_id
        self.params = dict(params or {})
        self.tags = tags
        self.sinks = sinks
        self.store = store
        self.run: Run | None = None
        self.owned = False
        self.resume_id: str | None = None

    @property
    def live(self) -> Run | None:
        """The resolved run if it is still running, else None (resolves nothing)."""
        run = self.run
        return run if run is not None and not run.status.terminal else None

    def get(self, name: str | None = None, experiment: str | None = None) -> Run:
        """The run to log into now; ``name`` and ``experiment`` are defaults for a run
        it starts (the options given at construction win)."""
        run = self.run
        if run is not None and not run.status.terminal:
            return run
        current = current_run()
        if current is not None and not current.status.terminal:
            self.run, self.owned = current, False
            return current
        return self._start(name, experiment)

    def resume(self, run_id: str) -> None:
        """The next run this scope starts continues the stored run ``run_id`` (its
        name and experiment stay; options given at construction must agree)."""
        self.resume_id = run_id
        if self.run is not None and self.run.status.terminal:
            self.run, self.owned = None, False

    def _start(self, name: str | None, experiment: str | None) -> Run:
        previous = self.run if self.owned else None
        if previous is not None:  # resume the same run: its id, name, experiment and params go on
            run = start_run(sinks=self.sinks, store=self.store, run_id=previous.run_id, resume=True)
        elif self.resume_id is not None:
            run = start_run(self.name, self.experiment, self.params, self.tags, self.sinks, store=self.store,
                            run_id=self.resume_id, resume=True)
            self.resume_id = None
        else:
            run = start_run(self.name or name, self.experiment or experiment, self.params, self.tags, self.sinks,
                            store=self.store, run_id=self.run_id, resume="allow" if self.run_id else False)
        self.run, self.owned = run, True
        return run

    def end(self, status: RunStatus | str = RunStatus.COMPLETED, error: str | None = None) -> None:
        """End the run if it is this scope's own and still running (a current run is
        its owner's to end)."""
        run = self.run
        if self.owned and run is not None and not run.status.terminal:
            run.end(status, error)

    def new(self) -> None:
        """Forget an own run that has ended: the next ``get()`` starts a new run."""
        if self.run is not None and self.run.status.terminal:
            self.run, self.owned = None, False


# -- trainings that never reach their end ---------------------------------------------------
_open: dict[int, tuple[Run, int]] = {}  # id(run) -> (run, thread ident) of own runs whose training is open
_open_lock = threading.Lock()
_hooked_shells: weakref.WeakSet = weakref.WeakSet()


def training_started(run: Run, owner: object | None = None) -> None:
    """``run`` (an integration's own run) is training; :func:`training_ended` closes it.
    With ``owner`` (the callback), the run is ended ``failed`` if the owner is garbage
    collected while the training is open."""
    with _open_lock:
        _open[id(run)] = (run, threading.get_ident())
    _exit.on_shutdown(end_open_trainings, order=SHUTDOWN_ORDER)
    _hook_ipython()
    if owner is not None:
        weakref.finalize(owner, _abandon, weakref.ref(run), "the object that logged it was garbage collected")


def training_ended(run: Run | None) -> None:
    """The training of ``run`` reached its end (its run may now be ended as completed)."""
    if run is not None:
        with _open_lock:
            _open.pop(id(run), None)


def is_training(run: Run | None) -> bool:
    return run is not None and id(run) in _open


def abandon(run: Run | None, why: str = "another training started before it finished") -> None:
    """End ``run`` as failed if its training is still open."""
    if run is not None:
        _abandon(weakref.ref(run), why)


def _abandon(ref, why: str, exc: BaseException | None = None) -> None:
    run = ref()
    if run is None:
        return
    with _open_lock:
        if _open.pop(id(run), None) is None:
            return
    if run.status.terminal:
        return
    status, error = outcome(exc) if exc is not None else (RunStatus.FAILED, f"{ABANDONED}; {why}")
    try:
        run.end(status, error, on_recorded=_nothing)  # never wait for the store here (GC, exit, a hook)
    except Exception:  # noqa: BLE001 - a store error must not break a cell, a GC pass or the exit
        log.exception("ending run %s after its training was abandoned failed", run.run_id)


def _nothing() -> None:
    """An ``on_recorded`` that asks for nothing (``end`` then returns without waiting)."""


def end_open_trainings() -> None:
    """A shutdown step: own runs whose training is still open end failed (with the
    uncaught exception that ends the interpreter, when there is one)."""
    exc = _exit.uncaught[-1] if _exit.uncaught else None
    for run, _thread in list(_open.values()):
        _abandon(weakref.ref(run), "the interpreter exited first", exc)


def _hook_ipython() -> None:
    """In IPython, check after every cell for trainings it left open (once per shell)."""
    import sys

    if "IPython" not in sys.modules:
        return
    shell = sys.modules["IPython"].get_ipython()
    if shell is None or shell in _hooked_shells:
        return
    shell.events.register("post_run_cell", _after_cell)
    _hooked_shells.add(shell)


def _after_cell(result) -> None:
    """A cell ran on this thread; trainings it started here and left open have raised."""
    exc = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    here = threading.get_ident()
    for run, thread in list(_open.values()):
        if thread == here:
            _abandon(weakref.ref(run), "the cell that ran it ended first", exc)
