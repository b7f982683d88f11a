"""Where attempts run: ``thread`` (in this process), ``process`` (a fresh interpreter) and
``ray`` (a Ray task on a node of a Ray cluster, the optional extra); ``inline`` (in the
dispatcher's thread, one at a time) is for tests, through
``notebook_exp.testing.inline_scheduler()``.

:func:`make` builds the executor a name stands for, importing its module then (the
ray executor imports ray only when it is made, and raises ``MissingDependency`` with
the install line without it).
"""

from __future__ import annotations

import importlib

from ...exceptions import ConfigError
from .base import Executor

__all__ = ["EXECUTORS", "Executor", "make"]

#: Executor name -> ``module:class`` of this package, imported when first made.
EXECUTORS = {
    "thread": ".thread:ThreadExecutor",
    "process": ".process:ProcessExecutor",
    "ray": ".ray:RayExecutor",
}


def make(name: str, scheduler) -> Executor:
    """A new executor ``name`` for ``scheduler``; ``ConfigError`` for an unknown name."""
    try:
        module, _, cls = EXECUTORS[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}") from None
    return getattr(importlib.import_module(module, __name__), cls)(scheduler)
