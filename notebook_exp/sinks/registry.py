"""Sinks by name, from the ``notebook_exp.sinks`` entry-point group.

Built-in sinks (duckdb, jsonl, mlflow, tensorboard, wandb) are registered in
this package's own ``pyproject.toml`` exactly as a third-party plugin would
register one (see ``notebook_exp._plugins``)::

    [project.entry-points."notebook_exp.sinks"]
    mysink = "my_package.sinks:MySink"

:func:`resolve` turns a run's ``sinks=`` list into the sinks of that one run.
An entry is a registered name, a ``Sink`` class, a factory (a callable taking
no arguments that returns a ``Sink``) or a ``Sink`` instance, alone or paired
with options for its settings: ``("tensorboard", {"include": ["train/*"]})``.
A sink whose ``process`` setting (default: ``Sink.isolated``) is true runs in
the sink host process (``sinks._host``), unless it was passed as an instance.
Every sink gets its settings (``Sink.settings``) from those options, the
environment (``NOTEBOOK_EXP_<SINK>_<FIELD>``) and ``[plugins.<sink>]`` of
``notebook_exp.toml``, validated by its ``Settings`` model before the run
starts: a bad value is one ``ConfigError`` naming the sink and the field.
"""

from __future__ import annotations

from typing import Any

from .. import _plugins as plugins
from ..exceptions import ConfigError, MissingDependency, SinkError
from .base import Sink

__all__ = ["available", "check", "create", "kind", "load", "resolve", "split"]

KIND = "sink"


def available() -> list[str]:
    """Names of every registered sink."""
    return plugins.names(KIND)


def load(name: str) -> type[Sink]:
    """The sink class registered as ``name``; ``SinkError`` if it is missing, broken
    or not a ``Sink``; ``SinkError`` with the install line if a library it needs is
    not installed."""
    if name not in plugins.names(KIND):
        raise SinkError(f"unknown sink {name!r}; registered sinks: {', '.join(available()) or 'none'}")
    try:
        return plugins.load(KIND, name, Sink)
    except MissingDependency as exc:
        raise SinkError(f"sink {name!r} cannot be used here: {exc}") from exc
    except ConfigError as exc:
        raise SinkError(str(exc).replace(f"{KIND} plugin", "sink plugin", 1)) from exc


def split(spec) -> tuple[Any, dict[str, Any] | None]:
    """``(sink, options)`` of one ``sinks=`` entry (``options`` None when it has none)."""
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], dict):
            raise SinkError(f"a sink with options is a pair (sink, {{option: value}}), not {spec!r}")
        return spec
    return spec, None


def kind(spec) -> str:
    """What one ``sinks=`` entry is (options aside): ``"name"`` (registered),
    ``"class"`` (a ``Sink`` subclass), ``"instance"`` (a ``Sink``) or ``"factory"``
    (any other callable, called with no arguments to make a ``Sink``); ``SinkError``
    for anything else."""
    spec, _options = split(spec)
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
        f"a sink is a registered name or a Sink class, instance or factory (a callable returning a Sink), "
        f"optionally paired with options, not {spec!r}"
    )


def _settings(sink: Sink, options: dict[str, Any] | None):
    """Validate ``sink``'s settings now (``ConfigError`` naming it and the field)."""
    name = sink.name or type(sink).__name__.lower()
    return plugins.settings_for(name, type(sink).Settings, options)


def check(spec) -> None:
    """Raise now what :func:`resolve` would raise for ``spec`` at run start where that
    can be told without making the sink: an unknown or broken name, a missing
    library, a bad option (``SinkError``, ``ConfigError``)."""
    target, options = split(spec)
    what = kind(spec)
    if what == "name":
        cls = load(target)
        plugins.settings_for(target, cls.Settings, options)
    elif what == "class":
        plugins.settings_for(target.name or target.__name__.lower(), target.Settings, options)


def create(name: str, options: dict[str, Any] | None = None) -> Sink:
    """A new instance of the sink registered as ``name``, with its settings."""
    cls = load(name)
    try:
        sink = cls()
    except Exception as exc:
        raise SinkError(f"sink {name!r} could not be created: {exc!r}") from exc
    if not getattr(sink, "name", ""):
        sink.name = name
    sink.settings = _settings(sink, options)
    return sink


def resolve(specs) -> list[Sink]:
    """The sinks of one run, from a list of ``sinks=`` entries (see :func:`kind`),
    each with its settings, in start order: a sink comes after the sinks it
    ``requires`` (``ConfigError`` for a missing one or a cycle).

    Names, classes and factories give a new instance on every call, so each run
    (and each attempt of a retried run) gets its own; an instance is used as it is.
    """
    sinks: list[Sink] = []
    for spec in specs:
        target, options = split(spec)
        what = kind(spec)
        if what == "name":
            sink = create(target, options)
        else:
            sink = target if what == "instance" else _make(target)
            if options is not None or sink._settings is None:
                sink.settings = _settings(sink, options)
        if what != "instance" and (sink.isolated if sink.settings.process is None else sink.settings.process):
            from ._host import ProcessSink

            sink = ProcessSink(sink)  # an instance passed in stays in this process: its owner holds it
        sinks.append(sink)
    return _in_start_order(sinks)


def _in_start_order(sinks: list[Sink]) -> list[Sink]:
    if not any(sink.requires for sink in sinks):
        return sinks
    labels = [sink.name or type(sink).__name__.lower() for sink in sinks]
    nodes = [(KIND, label, tuple(sink.requires)) for label, sink in zip(labels, sinks)]
    order = plugins.start_order(nodes)
    by_label = dict(zip(labels, sinks))
    return [by_label[name] for _kind, name in order]


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
