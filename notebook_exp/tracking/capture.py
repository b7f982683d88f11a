"""Capturing a framework's own logging calls into a run: ``start_run(capture=[...])``.

Each ``capture=`` entry names a framework plugin (entry-point group
``notebook_exp.frameworks``), alone or with options:
``capture=["tensorboard"]``, ``capture=[("tensorboard", {"write": False})]``.
Without ``capture=``, the ``capture_tensorboard`` setting
(``NOTEBOOK_EXP_CAPTURE_TENSORBOARD``) decides whether ``"tensorboard"`` is captured.

The contract with a plugin that captures: its descriptor's ``module`` (see
``notebook_exp.integrations``) defines ``prepare_capture(options)``. It checks the
options and imports the framework (``ConfigError``, ``MissingDependency``) and
returns a callable that starts capturing for a run: ``start(run)`` is called in
the thread that started the run and returns a handle whose ``stop()`` undoes it.
``prepare_capture`` runs before anything of the run is recorded, so a bad entry
fails ``start_run`` with nothing stored; ``stop()`` runs when the run ends,
however it ends.

The plugin is reached through the plugin door by name (``_plugins.load``), so
this layer never imports the integrations layer above it (docs/architecture.md §1).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from .. import _plugins
from ..exceptions import ConfigError

__all__ = ["entries", "prepare", "start", "stop"]

log = logging.getLogger("notebook_exp.tracking")


def entries(capture, settings) -> list[tuple[str, dict[str, Any]]]:
    """``(name, options)`` of each ``capture=`` entry (default: from the settings)."""
    if capture is None:
        capture = ["tensorboard"] if settings.capture_tensorboard else []
    if isinstance(capture, (str, tuple)):
        capture = [capture]
    found = []
    for entry in capture:
        name, options = (entry, {}) if isinstance(entry, str) else _pair(entry)
        if not isinstance(options, dict):
            raise ConfigError(f"capture options of {name!r} must be a dict, got {type(options).__name__}")
        found.append((name, dict(options)))
    return found


def _pair(entry) -> tuple[str, Any]:
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
        return entry[0], entry[1]
    raise ConfigError(f"a capture= entry is a framework name or (name, options), got {entry!r}")


def prepare(capture, settings) -> list[Callable]:
    """The starters of a run's captures (see the module docstring); raises before anything starts."""
    starters = []
    for name, options in entries(capture, settings):
        plugin = _plugins.load("framework", name)  # ConfigError if unknown, MissingDependency with the pip line
        module_name = getattr(plugin, "module", "")
        module = importlib.import_module(module_name) if module_name else None
        prepare_capture = getattr(module, "prepare_capture", None)
        if prepare_capture is None:
            raise ConfigError(f"framework plugin {name!r} cannot capture calls: its module "
                              f"{module_name or '(none)'} has no prepare_capture")
        starters.append(prepare_capture(options))
    return starters


def start(run, starters: list[Callable]) -> list:
    """Start every capture for ``run``; if one fails, those started are stopped and it raises."""
    handles: list = []
    try:
        for starter in starters:
            handles.append(starter(run))
    except BaseException:
        stop(handles)
        raise
    return handles


def stop(handles: list) -> None:
    """Stop captures, newest first; a failure is logged, never raised (the run's end goes on)."""
    for handle in reversed(handles):
        try:
            handle.stop()
        except Exception:  # noqa: BLE001 - ending the run must not fail for a capture
            log.exception("stopping capture %r failed", handle)
