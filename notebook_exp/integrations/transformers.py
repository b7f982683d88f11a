"""Hugging Face transformers: ``NotebookExpCallback``, a ``TrainerCallback``::

    from notebook_exp.integrations.transformers import NotebookExpCallback
    trainer = Trainer(model, args, train_dataset=data, callbacks=[NotebookExpCallback()])
    trainer.train()

(set ``report_to="none"`` unless other trackers should log too).

**Which run.** Inside a notebook_exp run (``%%experiment``, ``nx.submit``, ``with
nx.start_run()``) the callback logs into ``nx.current_run()`` and leaves ending it to
its owner. Outside one, ``on_train_begin`` starts a run of its own, named
``args.run_name`` (else the default name) in experiment ``args.project`` (default
``"huggingface"``) unless ``run_name=`` / ``experiment=`` are given; ``on_train_end``
ends it ``completed``. A ``trainer.evaluate()`` after training continues that run
and ends it again.

**When training raises.** A callback is not told: ``on_train_end`` never comes.
The run it started is then ended ``failed`` (``cancelled`` for a
``KeyboardInterrupt``) when the IPython cell that ran ``train()`` finishes, when
this callback starts another training, when the callback is garbage collected with
its trainer, or at interpreter exit (with the uncaught exception's traceback when
there is one): it never stays ``running`` nor ends ``completed``.

**What maps where.**

* ``on_log``: every numeric entry of ``logs`` at ``state.global_step``, under the
  names Hugging Face gives them (``loss``, ``learning_rate``, ``grad_norm``,
  ``epoch``, ``eval_loss``, ``train_runtime``, ...). Strings and other non-numbers are
  skipped. These are the entries of ``trainer.state.log_history``.
* Params, nested (no clash between an argument and a config field of the same
  name): ``{"args": args.to_dict() plus train/eval_batch_size, "model":
  model.config.to_dict()}``, plus the callback's own ``params=``; in ``nx.runs()``
  they are the ``params.args`` and ``params.model`` columns. Values that are not
  JSON-like are recorded as their ``str``.
* Only the world's process zero logs (``state.is_world_process_zero``).

**Resuming from a checkpoint.** The callback is an ``ExportableState``: each
checkpoint's ``trainer_state.json`` keeps the id of the run it logs into.
``trainer.train(resume_from_checkpoint=...)`` then resumes that run (a ``resumed``
event; the losses go on at the checkpoint's ``global_step``, params merge) instead
of starting a new one, whether the callback is the same object or a new one (also
with ``restore_callback_states_from_checkpoint=True``, which rebuilds the callback
from its JSON-like options: ``sinks`` given as objects are not among them; the
rebuilt callback comes after Hugging Face's progress printer, which removes
``total_flos`` from the last logs before it sees them). Points
the first training logged after that checkpoint stay as they were, so the steps
between the checkpoint and where that training stopped hold two values.
"""

from __future__ import annotations

import os
from typing import Any

from ..exceptions import MissingDependency
from ..models import RunStatus
from ..tracking.run import Run
from ._runs import (
    RunScope,
    abandon,
    is_training,
    jsonable,
    numeric,
    training_ended,
    training_started,
)

try:
    from transformers import TrainerCallback
except ImportError as _missing:
    raise MissingDependency("transformers", "transformers") from _missing
try:
    from transformers.trainer_callback import ExportableState
except ImportError:  # transformers before 4.41 keeps no callback state in checkpoints
    ExportableState = object

__all__ = ["NotebookExpCallback"]

DEFAULT_EXPERIMENT = "huggingface"  # TrainingArguments.project's default too


class NotebookExpCallback(TrainerCallback, ExportableState):
    """Logs a ``transformers.Trainer``'s logs and arguments into notebook_exp (see
    the module docstring). ``experiment``, ``run_name``: of a run it starts (default:
    ``args.project``, ``args.run_name``); ``params``, ``tags``, ``sinks``, ``store``: as
    for ``nx.start_run``."""

    def __init__(self, experiment: str | None = None, run_name: str | None = None, *,
                 params: dict[str, Any] | None = None, tags=None, sinks=None,
                 store: str | os.PathLike | None = None) -> None:
        self._scope = RunScope(name=run_name, experiment=experiment, tags=tags, sinks=sinks, store=store)
        self._params = dict(params or {})
        self._options = {"experiment": experiment, "run_name": run_name, "params": jsonable(self._params),
                         "tags": tags, "store": None if store is None else os.fspath(store)}
        if sinks is None or all(isinstance(sink, str) for sink in sinks):
            self._options["sinks"] = sinks
        #: Set by ``restore_callback_states_from_checkpoint``: the checkpoint's run.
        self.resume_run_id: str | None = None

    @property
    def run(self) -> Run | None:
        """The run this callback logs into (None before training starts)."""
        return self._scope.run

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        previous = self._scope.run
        if self._scope.owned and is_training(previous):
            abandon(previous)  # the last train() never reached its end
        self._scope.new()
        resumed = checkpoint_run(state, type(self).__name__, self.resume_run_id)
        self.resume_run_id = None
        if resumed is not None:
            self._scope.resume(resumed)
        run = self._run(args)
        run.log_params({**self._params, **train_params(args, model)})
        if self._scope.owned:
            training_started(run, owner=self)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        values = numeric(logs)
        if values:
            self._run(args).log(step=state.global_step, **values)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (``ExportableState``): its JSON-like
        options and the id of the run it logs into."""
        run = self._scope.run
        return {"args": dict(self._options), "attributes": {"resume_run_id": run.run_id if run is not None else None}}

    def _run(self, args) -> Run:
        return self._scope.get(name=args.run_name, experiment=getattr(args, "project", None) or DEFAULT_EXPERIMENT)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        training_ended(self._scope.run)
        self._scope.end(RunStatus.COMPLETED)

    def on_evaluate(self, args, state, control, **kwargs):
        self._end_outside_training(state)

    def on_predict(self, args, state, control, **kwargs):
        self._end_outside_training(state)

    def _end_outside_training(self, state) -> None:
        """``evaluate()``/``predict()`` after training logged into the own run again: end it."""
        if state.is_world_process_zero and not is_training(self._scope.run):
            self._scope.end(RunStatus.COMPLETED)


def checkpoint_run(state, name: str, restored: str | None = None) -> str | None:
    """The run id a checkpoint being resumed from keeps for the callback class
    ``name`` (None for a training that starts from step 0): ``restored`` when
    Hugging Face rebuilt the callback from it, else ``state.stateful_callbacks``."""
    if not state.global_step:
        return None
    if restored:
        return restored
    saved = (getattr(state, "stateful_callbacks", None) or {}).get(name)
    for entry in saved if isinstance(saved, list) else [saved]:
        run_id = ((entry or {}).get("attributes") or {}).get("resume_run_id")
        if isinstance(run_id, str) and run_id:
            return run_id
    return None


def train_params(args, model=None) -> dict[str, Any]:
    """``{"args": ..., "model": ...}``: the training arguments and the model's config."""
    params: dict[str, Any] = {}
    if args is not None:
        found = args.to_dict()
        for name in ("train_batch_size", "eval_batch_size"):
            try:
                found[name] = getattr(args, name)
            except Exception:  # noqa: BLE001 - a property that needs devices it cannot see
                pass
        params["args"] = jsonable(found)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        params["model"] = jsonable(config.to_dict())
    return params
