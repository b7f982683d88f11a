"""Sinks by name, from the ``notebook_exp.sinks`` entry-point group.

Built-in sinks (duckdb, jsonl) are registered in this package's own
``pyproject.toml`` exactly as a third-party plugin would register one::

    [project.entry-points."notebook_exp.sinks"]
    mysink = "my_package.sinks:MySink"

:func:`resolve` turns a run's ``sinks=`` list (names, ``Sink`` classes,
factories, instances) into the sinks of that one run.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from ..exceptions import SinkError
from .base import Sink

__all__ = ["available", "create", "kind", "load", "resolve"]

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


def kind(spec) -> str:
    """What one ``sinks=`` entry is: ``"name"`` (registered), ``"class"`` (a ``Sink``
    subclass), ``"instance"`` (a ``Sink``) or ``"factory"`` (any other callable, called
    with no arguments to make a ``Sink``); ``SinkError`` for anything else."""
    if isinstance(spec, Sink):
        return "instance"
    if isinstance(spec, str):
        return "name"
    if isinstance(spec, type):
        if issubclass(spec, Sink):
            return "class"
        raise SinkError(f"sink class {spec.__qualname__} is not a subclass of notebook_exp.sinks.Sink")
    if callable(spec):
        return "factory"
    raise SinkError(
        f"a sink is a registered name or a Sink class, instance or factory (a callable returning a Sink), not {spec!r}"
    )


def resolve(specs) -> list[Sink]:
    """The sinks of one run, from a list of ``sinks=`` entries (see :func:`kind`).

    Names, classes and factories give a new instance on every call, so each run
    (and each attempt of a retried run) gets its own; an instance is used as it is.
    """
    sinks: list[Sink] = []
    for spec in specs:
        what = kind(spec)
        if what == "instance":
            sinks.append(spec)
        elif what == "name":
            sinks.append(create(spec))
        else:
            sinks.append(_make(spec))
    return sinks


def _make(factory) -> Sink:
    """A sink from a ``Sink`` class or a factory; ``SinkError`` if that fails."""
    label = getattr(factory, "__qualname__", repr(factory))
    try:
        sink = factory()
    except Exception as exc:
        raise SinkError(f"sink {label} could not be created: {exc!r}") from exc
    if not isinstance(sink, Sink):
        raise SinkError(f"sink factory {label} returned {sink!r}, not a notebook_exp.sinks.Sink")
    return sink
