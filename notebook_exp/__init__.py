"""notebook_exp: run and track ML experiments from Jupyter.

    import notebook_exp as nx
    with nx.start_run("baseline", experiment="mnist", params={"lr": 0.1}) as run:
        run.log(loss=0.3, step=1)
    nx.runs("mnist")

Everything here is imported on first use, so ``import notebook_exp`` and
``%load_ext notebook_exp`` stay light (no duckdb, panel, ray, mlflow, pynvml).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "ASHA": "notebook_exp.scheduler.stopping",
    "ConfigError": "notebook_exp.exceptions",
    "GpuUnavailable": "notebook_exp.exceptions",
    "InvalidMetric": "notebook_exp.exceptions",
    "MedianStop": "notebook_exp.scheduler.stopping",
    "MemorySink": "notebook_exp.testing",
    "MetricBatch": "notebook_exp.models",
    "MissingDependency": "notebook_exp.exceptions",
    "NotebookExpError": "notebook_exp.exceptions",
    "ExperimentSpec": "notebook_exp.scheduler.spec",
    "Job": "notebook_exp.scheduler.job",
    "Run": "notebook_exp.tracking.run",
    "RunCancelled": "notebook_exp.exceptions",
    "RunFailed": "notebook_exp.exceptions",
    "RunInterrupted": "notebook_exp.exceptions",
    "RunInfo": "notebook_exp.models",
    "RunStatus": "notebook_exp.models",
    "RunsTable": "notebook_exp._inline",
    "RunTimedOut": "notebook_exp.exceptions",
    "Settings": "notebook_exp.config",
    "Sink": "notebook_exp.sinks.base",
    "SinkError": "notebook_exp.exceptions",
    "StoreError": "notebook_exp.exceptions",
    "StoreLocked": "notebook_exp.exceptions",
    "StoreUnavailable": "notebook_exp.exceptions",
    "cancel": "notebook_exp.scheduler.api",
    "current_run": "notebook_exp.tracking.run",
    "dead_letters": "notebook_exp.scheduler.api",
    "get_settings": "notebook_exp.config",
    "gpus": "notebook_exp.scheduler.api",
    "launcher": "notebook_exp.widgets.submit_form",
    "resubmit": "notebook_exp.scheduler.api",
    "submit": "notebook_exp.scheduler.api",
    "sweep": "notebook_exp.scheduler.api",
    "view": "notebook_exp._viewing",
    "wait": "notebook_exp.scheduler.api",
    "metrics": "notebook_exp.store.queries",
    "plugins": "notebook_exp._plugins",
    "queue": "notebook_exp.scheduler.machine",
    "runs": "notebook_exp._reading",
    "set_priority": "notebook_exp.scheduler.api",
    "space": "notebook_exp.space",
    "sql": "notebook_exp.store.queries",
    "start_run": "notebook_exp.tracking.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'notebook_exp' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"{__name__}.{name}" else getattr(imported, name)  # a submodule: itself
    globals()[name] = value
    return value


def load_ipython_extension(ipython) -> None:
    """``%load_ext notebook_exp``: register ``%%experiment`` and the queue magics."""
    from .magics import ExperimentMagics

    ipython.register_magics(ExperimentMagics)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import space
    from ._inline import RunsTable
    from ._plugins import plugins
    from ._reading import runs
    from ._viewing import view
    from .config import Settings, get_settings
    from .exceptions import (
        ConfigError,
        GpuUnavailable,
        InvalidMetric,
        MissingDependency,
        NotebookExpError,
        RunCancelled,
        RunFailed,
        RunInterrupted,
        RunTimedOut,
        SinkError,
        StoreError,
        StoreLocked,
        StoreUnavailable,
    )
    from .models import MetricBatch, RunInfo, RunStatus
    from .scheduler.api import (
        cancel,
        dead_letters,
        gpus,
        resubmit,
        set_priority,
        submit,
        sweep,
        wait,
    )
    from .scheduler.job import Job
    from .scheduler.machine import queue
    from .scheduler.spec import ExperimentSpec
    from .scheduler.stopping import ASHA, MedianStop
    from .sinks.base import Sink
    from .store.queries import metrics, sql
    from .testing import MemorySink
    from .tracking.run import Run, current_run, start_run
    from .widgets.submit_form import launcher
