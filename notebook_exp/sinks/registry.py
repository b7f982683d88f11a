"""Sinks by name, from the ``notebook_exp.sinks`` entry-point group.

Built-in sinks (duckdb, jsonl) are registered in this package's own
``pyproject.toml`` exactly as a third-party plugin would register one::

    [project.entry-points."notebook_exp.sinks"]
    mysink = "my_package.sinks:MySink"
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from ..exceptions import SinkError
from .base import Sink

__all__ = ["available", "create", "load", "resolve"]

GROUP = "notebook_exp.sinks"


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    """Names of every registered sink."""
    return sorted(_entry_points())


def load(name: str) -> type[Sink]:
    """The sink class registered as ``name``; ``SinkError`` if missing or broken."""
    eps = _entry_points()
    if name not in eps:
        raise SinkError(f"unknown sink {name!r}; registered sinks: {', '.join(available()) or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as exc:
        raise SinkError(f"sink plugin {name!r} ({eps[name].value}) failed to load: {exc!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise SinkError(f"sink plugin {name!r} ({eps[name].value}) is not a notebook_exp.sinks.Sink")
    return cls


def create(name: str) -> Sink:
    """A new instance of the sink registered as ``name``."""
    cls = load(name)
    try:
        sink = cls()
    except Exception as exc:
        raise SinkError(f"sink {name!r} could not be created: {exc!r}") from exc
    if not getattr(sink, "name", ""):
        sink.name = name
    return sink


def resolve(specs) -> list[Sink]:
    """Sink instances for a list of names and/or ``Sink`` instances."""
    sinks: list[Sink] = []
    for spec in specs:
        if isinstance(spec, Sink):
            sinks.append(spec)
        elif isinstance(spec, str):
            sinks.append(create(spec))
        else:
            raise SinkError(f"a sink is a registered name or a Sink instance, not {spec!r}")
    return sinks
