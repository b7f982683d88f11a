"""Keras 3: ``NotebookExpCallback``, a ``keras.callbacks.Callback`` (any backend)::

    from notebook_exp.integrations.keras import NotebookExpCallback
    model.fit(x, y, epochs=3, validation_data=(xv, yv), callbacks=[NotebookExpCallback()])

**Which run.** Inside a notebook_exp run (``%%experiment``, ``nx.submit``, ``with
nx.start_run()``) the callback logs into ``nx.current_run()`` and leaves ending it to
its owner. Outside one, each ``fit`` starts a run of its own, named after the model
(``model.name``) unless ``run_name=`` is given, in experiment ``experiment=``
(default ``"keras"``), and ends it ``completed`` in ``on_train_end``. A ``fit`` that
raises never reaches ``on_train_end``: its run is ended ``failed`` (``cancelled``
for a ``KeyboardInterrupt``) when the IPython cell that ran it finishes, at the next
``fit`` with this callback, when the callback is garbage collected, or at
interpreter exit, never ``completed``.

**What maps where.**

* ``on_epoch_end(epoch, logs)``: every numeric entry of ``logs`` at step ``epoch``
  (0-based, as Keras counts), under the same keys as ``History`` (``loss``,
  ``val_loss``, ``accuracy``, ...).
* ``log_every_n_batches=N``: also every N-th training batch, at step = the number of
  batches trained so far in this ``fit`` (1-based, across epochs), keys prefixed
  ``batch/`` (``batch_prefix=``). The values are Keras's running means over the
  epoch so far, as its progress bar shows them.
* Params (``on_train_begin``): ``epochs``, ``steps`` (per epoch) and ``verbose``
  from ``self.params``; ``optimizer`` (its ``get_config()``: name, learning_rate,
  ...), ``loss``, ``model`` (``{"name", "params"}``: the parameter count); plus the
  callback's own ``params=``. Keras does not tell callbacks ``fit``'s
  ``batch_size``: pass it in ``params=`` to record it.
"""

from __future__ import annotations

import os
from typing import Any

from ..exceptions import ConfigError, MissingDependency
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
    import keras
except ImportError as _missing:
    raise MissingDependency("keras", "keras") from _missing

__all__ = ["NotebookExpCallback"]

DEFAULT_EXPERIMENT = "keras"


class NotebookExpCallback(keras.callbacks.Callback):
    """Logs ``model.fit``'s epochs (and optionally batches) into notebook_exp (see the
    module docstring)."""

    def __init__(self, experiment: str | None = None, run_name: str | None = None, *,
                 log_every_n_batches: int | None = None, batch_prefix: str = "batch/",
                 params: dict[str, Any] | None = None, tags=None, sinks=None,
                 store: str | os.PathLike | None = None) -> None:
        super().__init__()
        if log_every_n_batches is not None and (not isinstance(log_every_n_batches, int) or log_every_n_batches < 1):
            raise ConfigError(f"log_every_n_batches must be a positive integer, got {log_every_n_batches!r}")
        self._scope = RunScope(name=run_name, experiment=experiment, tags=tags, sinks=sinks, store=store)
        self._params = dict(params or {})
        self.log_every_n_batches = log_every_n_batches
        self.batch_prefix = batch_prefix
        self._batches = 0

    @property
    def run(self) -> Run | None:
        """The run this callback logs into (None before ``fit`` starts)."""
        return self._scope.run

    def _run(self) -> Run:
        return self._scope.get(name=getattr(self.model, "name", None), experiment=DEFAULT_EXPERIMENT)

    def on_train_begin(self, logs=None):
        previous = self._scope.run
        if self._scope.owned and is_training(previous):
            abandon(previous)  # the last fit never reached its end
        self._scope.new()
        self._batches = 0
        run = self._run()
        run.log_params({**self._params, **fit_params(self.params, self.model)})
        if self._scope.owned:
            training_started(run, owner=self)

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        every = self.log_every_n_batches
        if every and self._batches % every == 0:
            values = numeric(logs, prefix=self.batch_prefix)
            if values:
                self._run().log(step=self._batches, **values)

    def on_epoch_end(self, epoch, logs=None):
        values = numeric(logs)
        if values:
            self._run().log(step=epoch, **values)

    def on_train_end(self, logs=None):
        training_ended(self._scope.run)
        self._scope.end(RunStatus.COMPLETED)


def fit_params(params: dict[str, Any] | None, model) -> dict[str, Any]:
    """What ``fit`` tells its callbacks, and the compiled model's optimizer and loss."""
    out: dict[str, Any] = {}
    for name in ("epochs", "steps", "verbose"):
        if params and params.get(name) is not None:
            out[name] = jsonable(params[name])
    if model is None:
        return out
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "get_config"):
        try:
            out["optimizer"] = jsonable(optimizer.get_config())
        except Exception:  # noqa: BLE001 - a custom optimizer without a serializable config
            out["optimizer"] = {"name": type(optimizer).__name__}
    loss = getattr(model, "loss", None)
    if loss is not None:
        out["loss"] = loss if isinstance(loss, str) else getattr(loss, "name", None) or jsonable(loss)
    info: dict[str, Any] = {"name": getattr(model, "name", type(model).__name__)}
    try:
        info["params"] = int(model.count_params())
    except Exception:  # noqa: BLE001 - not built yet
        pass
    out["model"] = info
    return out
