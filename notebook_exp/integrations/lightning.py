"""Lightning: ``NotebookExpLogger``, a ``lightning.pytorch`` logger (a ``pytorch_lightning``
one when only that package is installed)::

    from notebook_exp.integrations.lightning import NotebookExpLogger
    trainer = Trainer(logger=NotebookExpLogger(name="mnist"), max_epochs=3)
    trainer.fit(model, data)

**Which run.** Inside a notebook_exp run (``%%experiment``, ``nx.submit``, ``with
nx.start_run()``) the logger logs into ``nx.current_run()`` and leaves ending it to
its owner. Outside one it starts its own run on first use and ends it in
``finalize``; a later ``trainer.test`` or second ``fit`` with the same logger
resumes that run (same id, a ``resumed`` event). ``name`` is the run's experiment and
``version`` its run id: ``version=`` resumes that run if the store holds it (status
``running`` again, params merged) and creates it otherwise; ``run_name=`` names the run.

**Resuming from a checkpoint.** As with Lightning's own loggers (a
``TensorBoardLogger``'s ``version``), the run to continue is named by ``version``::

    trainer = Trainer(logger=NotebookExpLogger(version=run_id), max_epochs=10)
    trainer.fit(model, data, ckpt_path="last")

Lightning restores ``global_step`` from the checkpoint, so the resumed run's steps
go on from there. A logger cannot see the checkpoint before its run starts, so a
fit from a checkpoint without ``version=`` logs into a new run and warns; when the
checkpoint lies where Lightning puts a ``NotebookExpLogger`` run's checkpoints
(``<root>/<experiment>/<run id>/checkpoints/``) the warning names that run id.
Points the first fit logged after the checkpoint stay as they were.

**What maps where.**

* ``log_metrics(metrics, step)`` -> ``run.log(step=step, **metrics)``; Lightning's
  keys unchanged (``train_loss``, ``epoch``, ...). Non-numeric values are skipped.
* ``log_hyperparams`` (dict, ``Namespace``, ``AttributeDict``) -> ``run.log_params``,
  nested dicts kept, values that are not JSON-like recorded as their ``str``.
* ``finalize("success")`` and ``finalize("finished")`` (SLURM requeue) -> ``completed``;
  ``finalize("failed")`` (Lightning calls it while the fit's exception is being handled)
  -> ``failed`` with that exception's traceback, ``cancelled`` for a
  ``KeyboardInterrupt``; any other status -> ``failed``.
* ``log_model=True``: each checkpoint ``ModelCheckpoint`` keeps (last, best, top-k)
  is copied as an artifact ``checkpoints/<file name>`` after it is saved
  (``after_save_checkpoint``), again whenever the file changes.
* ``experiment`` is the ``notebook_exp.Run`` (``self.logger.experiment.log_image(...)``).

**Distributed jobs** (torchrun, Lightning DDP): one job is one run, owned by rank
0. By default other ranks' calls are no-ops (``rank_zero_only``). With
``all_ranks=True`` their metrics land in the same run as ``rank<N>/<key>``, each
rank writing through its own store writer. Rank 0 shares its run id through the
``torch.distributed`` process group's key-value store (the TCPStore torchrun or
Lightning set up; no collective call, so ranks never wait on each other's
logging), and the other ranks read it when they first log (Lightning asks every
rank for ``logger.experiment`` right after the process group starts). An explicit
``version=`` is used as it is, with nothing to share.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from argparse import Namespace
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..exceptions import MissingDependency
from ..models import RunStatus
from ..tracking.join import JoinedRun, join_run
from ..tracking.run import Run, current_run, outcome
from ._runs import RunScope, jsonable, numeric

try:
    from lightning.pytorch.loggers.logger import DummyExperiment, Logger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError as _lightning_missing:
    try:
        from pytorch_lightning.loggers.logger import DummyExperiment, Logger
        from pytorch_lightning.utilities.rank_zero import rank_zero_only
    except ImportError:
        raise MissingDependency("lightning", "lightning") from _lightning_missing

__all__ = ["NotebookExpLogger"]

#: Seconds a non-zero rank waits for rank 0 to share its run id.
DEFAULT_SHARE_TIMEOUT = 120.0
_loggers = itertools.count()  # same order on every rank: the key each logger shares its run id under


class NotebookExpLogger(Logger):
    """A Lightning logger that records into notebook_exp (see the module docstring).

    ``name``: the experiment; ``version``: the run id to log into (default: a new
    run, or the current one); ``run_name``: the run's name; ``params``, ``tags``,
    ``sinks``, ``store``: as for ``nx.start_run``; ``log_model``: checkpoints as
    artifacts; ``all_ranks``: log every rank's metrics, as ``rank<N>/<key>``."""

    def __init__(
        self,
        name: str | None = None,
        version: str | None = None,
        *,
        run_name: str | None = None,
        params: dict[str, Any] | None = None,
        tags=None,
        sinks=None,
        store: str | os.PathLike | None = None,
        log_model: bool = False,
        all_ranks: bool = False,
    ) -> None:
        super().__init__()
        self._name = name
        self._version = version
        self._scope = RunScope(name=run_name, experiment=name, run_id=version, params=params, tags=tags,
                               sinks=sinks, store=store)
        self.log_model = bool(log_model)
        self.all_ranks = bool(all_ranks)
        self._share_key = f"notebook_exp/lightning/{next(_loggers)}/run_id"
        self._shared = False
        self._joined: JoinedRun | None = None
        self._warned = False
        self._checkpoints: dict[str, float] = {}  # path -> mtime logged

    # -- identity ------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's global rank, as Lightning knows it (0 when not distributed)."""
        return getattr(rank_zero_only, "rank", 0) or 0

    @property
    def run(self) -> Run | None:
        """The run this logger logs into, once it has one (rank 0)."""
        return self._scope.live

    @property
    def experiment(self) -> Run | DummyExperiment:
        """The ``notebook_exp.Run`` on rank 0; a no-op stand-in on other ranks."""
        if self.rank > 0:
            if self.all_ranks:
                self._join()
            return DummyExperiment()
        return self._run()

    @property
    def name(self) -> str:
        """The experiment (starts nothing)."""
        run = self._scope.run
        if run is not None:
            return run.experiment
        current = current_run() if self.rank == 0 else None
        if current is not None:
            return current.experiment
        return self._name or "default"

    @property
    def version(self) -> str:
        """The run id (on rank 0 the run starts here if it has none yet; reading it
        after the run ended does not continue the run)."""
        if self.rank == 0:
            run = self._scope.run
            return run.run_id if run is not None else self._run().run_id
        if self._joined is not None:
            return self._joined.run_id
        return self._version or ""

    def _run(self) -> Run:
        run = self._scope.get()
        if self.all_ranks and not self._shared:
            self._share(run.run_id)
        return run

    # -- the Logger contract ---------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        rank = self.rank
        if rank == 0:
            values = numeric(metrics)
            if values:
                self._run().log(step=step, **values)
        elif self.all_ranks:
            joined = self._join()
            values = numeric(metrics, prefix=f"rank{rank}/")
            if joined is not None and values:
                joined.log(step=step, **values)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self.rank > 0:
            return
        params = as_params(params)
        if params:
            self._run().log_params(params)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """No graph is recorded; Lightning calls this at the start of each fit, where a
        fit from a checkpoint into a new run of this logger's own is warned about."""
        if self.rank > 0 or not self._scope.owned or self._version is not None:
            return
        trainer = getattr(model, "_trainer", None)
        ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        run = self._scope.live
        if not ckpt or run is None or run.info.resumed:
            return
        warnings.warn(resume_advice(str(ckpt), run), RuntimeWarning, stacklevel=2)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if not self.log_model or self.rank > 0:
            return
        run = self._run()
        for path in _kept_checkpoints(checkpoint_callback):
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue  # replaced by a better one meanwhile
            if self._checkpoints.get(path) != mtime:
                run.log_artifact(path, name=f"checkpoints/{os.path.basename(path)}")
                self._checkpoints[path] = mtime

    def save(self) -> None:
        """Nothing to do: the run's flusher stores points in the background."""

    def finalize(self, status: str) -> None:
        if self.rank > 0:
            joined, self._joined = self._joined, None
            if joined is not None:
                joined.end()
            return
        if self._scope.owned:
            self._scope.end(*fit_outcome(status))

    # -- distributed jobs --------------------------------------------------------------
    def _share(self, run_id: str) -> None:
        """Rank 0: put the run id where the other ranks look (once the process group exists)."""
        store = _process_group_store()
        if store is not None:
            store.set(self._share_key, run_id)
            self._shared = True

    def _join(self) -> JoinedRun | None:
        """Another rank: the writer into rank 0's run (None, with one warning, when it
        cannot be found)."""
        joined = self._joined
        if joined is not None and not joined.status.terminal:
            return joined
        run_id = self._version or self._shared_id()
        if run_id is None:
            if not self._warned:
                self._warned = True
                warnings.warn(f"NotebookExpLogger(all_ranks=True) on rank {self.rank}: no torch.distributed "
                              "process group to learn rank 0's run id from; pass version=<run id> to log this "
                              "rank's metrics", RuntimeWarning, stacklevel=3)
            return None
        self._joined = join_run(run_id, store=self._scope.store)
        return self._joined

    def _shared_id(self) -> str | None:
        store = _process_group_store()
        if store is None:
            return None
        store.wait([self._share_key], timedelta(seconds=DEFAULT_SHARE_TIMEOUT))
        return store.get(self._share_key).decode()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for ``ddp_spawn``: live runs stay here; a copy continues the same run id."""
        state = self.__dict__.copy()
        run = self._scope.run
        scope = RunScope(name=self._scope.name, experiment=self._scope.experiment,
                         run_id=run.run_id if run is not None else self._scope.run_id, params=self._scope.params,
                         tags=self._scope.tags, sinks=self._scope.sinks, store=self._scope.store)
        state.update(_scope=scope, _joined=None, _version=scope.run_id)
        return state


def as_params(params: Any) -> dict[str, Any]:
    """Lightning's hyperparameters (dict, ``Namespace``, ``AttributeDict``, None) as params."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        params = vars(params)
    elif not isinstance(params, Mapping):
        params = vars(params) if hasattr(params, "__dict__") else {"hparams": params}
    return {str(k): jsonable(v) for k, v in params.items() if str(k)}


def resume_advice(ckpt: str, run: Run) -> str:
    """The warning for a fit from checkpoint ``ckpt`` that logs into the new run ``run``."""
    from pathlib import Path

    path = Path(ckpt)
    guess = path.parent.parent.name if path.parent.name == "checkpoints" else ""
    text = f"the fit resumes from checkpoint {ckpt}, but logs into a new run {run.run_id}"
    if guess and guess != run.run_id:
        return f"{text}; the checkpoint is run {guess}'s: NotebookExpLogger(version={guess!r}) continues that run"
    return f"{text}; NotebookExpLogger(version=<the checkpoint's run id>) continues that run"


def fit_outcome(status: str) -> tuple[RunStatus, str | None]:
    """The run's status for Lightning's ``finalize(status)``."""
    if status in ("success", "finished"):
        return RunStatus.COMPLETED, None
    exc = sys.exc_info()[1]  # Lightning finalizes "failed" inside its except block
    if status == "failed" and exc is not None:
        return outcome(exc)
    return RunStatus.FAILED, f"Lightning finalized the run with status {status!r}"


def _kept_checkpoints(callback) -> list[str]:
    paths = [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    paths += list(getattr(callback, "best_k_models", {}) or {})
    return [str(p) for p in dict.fromkeys(paths) if p and os.path.isfile(p)]


def _process_group_store():
    """The key-value store of the default ``torch.distributed`` process group, or None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()
