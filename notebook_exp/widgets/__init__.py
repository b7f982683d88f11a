"""Live ipywidgets for runs: ``RunCard``, ``SweepView``, ``QueueMonitor``, ``LauncherForm``.

Imported on first use (``%%experiment`` or ``nx.launcher``), never by ``import notebook_exp``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LauncherForm": "notebook_exp.widgets.submit_form",
    "QueueMonitor": "notebook_exp.widgets.queue_monitor",
    "RunCard": "notebook_exp.widgets.run_card",
    "SweepView": "notebook_exp.widgets.run_card",
    "launcher": "notebook_exp.widgets.submit_form",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'notebook_exp.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
