"""What one sink receives: routing by key, then processors (``docs/architecture.md`` §2).

A :class:`Route` belongs to one sink of one run and is applied on that sink's
worker thread, never in ``run.log``:

1. keys: a key reaches the sink when it matches one of ``include`` (or
   ``include`` is empty) and none of ``exclude`` (fnmatch globs, ``*`` crossing
   ``/``); telemetry keys (``sys/*``, ``gpu/<id>/*``) only when the sink asks for
   them (its ``telemetry`` setting, else ``Sink.wants_telemetry``);
2. processors: the run's ``processors`` setting (for every sink but duckdb), then
   the sink's own, in order. A processor that raises is disabled for the rest of
   the run (one warning, one ``processor_failed`` event) and what it would have
   changed passes through.

Texts, histograms and images are routed by key too; processors see metrics only.
A sink with no routing and no processors gets the run's batches as they are.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable

from .. import _plugins as plugins
from ..exceptions import ConfigError
from ..models import MetricBatch, is_telemetry
from ..processors import Processor

__all__ = ["Route", "make_processor"]

log = logging.getLogger("notebook_exp.sinks")


def make_processor(spec) -> Processor:
    """A processor from a name, a ``(name, options)`` pair, a ``{"name": ..., **options}``
    table, a ``Processor`` class or instance; ``ConfigError`` naming what is wrong."""
    options = None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
        spec, options = spec
    elif isinstance(spec, dict):
        options = dict(spec)
        spec = options.pop("name", None)
        if not isinstance(spec, str):
            raise ConfigError(f"a processor table needs a name: {{name = 'every', ...}}, not {options!r}")
    if isinstance(spec, Processor):
        if options:
            raise ConfigError(f"processor {spec!r} is an instance: options go to its constructor")
        return spec
    if isinstance(spec, str):
        cls = plugins.load("processor", spec, Processor)
        name = spec
    elif isinstance(spec, type) and issubclass(spec, Processor):
        cls, name = spec, spec.name or spec.__name__.lower()
    else:
        raise ConfigError(
            f"a processor is a registered name, a (name, options) pair or a Processor class or instance, not {spec!r}"
        )
    return cls(plugins.settings_for(name, cls.Settings, options))


def _label(processor: Processor) -> str:
    return processor.name or type(processor).__name__


class Route:
    """The keys and processors of one sink of one run (see the module docstring)."""

    def __init__(self, include=(), exclude=(), telemetry: bool = False, processors=(),
                 on_event: Callable[[str, str], None] | None = None, sink: str = "") -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.telemetry = telemetry
        self.processors = [make_processor(p) for p in processors]
        self.sink = sink
        self._on_event = on_event
        self._keys: dict[str, bool] = {}
        self.failed: list[str] = []

    @classmethod
    def for_sink(cls, sink, shared=(), on_event=None, label: str = "") -> Route | None:
        """The route of ``sink`` (None: it receives everything as it is)."""
        settings = sink.settings
        telemetry = sink.wants_telemetry if settings.telemetry is None else settings.telemetry
        processors = [*(() if sink.name == "duckdb" else shared), *settings.processors]
        if not (settings.include or settings.exclude or processors) and telemetry:
            return None
        return cls(settings.include, settings.exclude, telemetry, processors, on_event, label)

    def wants(self, key: str) -> bool:
        """Whether ``key`` reaches the sink (cached per key)."""
        found = self._keys.get(key)
        if found is None:
            found = self._match(key)
            if len(self._keys) < 100_000:
                self._keys[key] = found
        return found

    def _match(self, key: str) -> bool:
        if not self.telemetry and is_telemetry(key):
            return False
        if self.include and not any(fnmatch.fnmatchcase(key, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(key, p) for p in self.exclude)

    def batch(self, batch: MetricBatch) -> MetricBatch | None:
        """What the sink receives of ``batch`` (None: nothing)."""
        chunks = [(key, points) for key, points in batch.chunks if self.wants(key)]
        if len(chunks) != len(batch.chunks):
            batch = MetricBatch(batch.run_id, chunks)
        for processor in self.processors:
            if not len(batch):
                break
            if _label(processor) in self.failed:
                continue
            try:
                out = processor.process(batch)
            except Exception as exc:  # noqa: BLE001 - isolate the plugin, like a sink
                self._disable(processor, exc)
                continue
            if out is None:
                return None
            batch = out
        return batch if len(batch) else None

    def _disable(self, processor: Processor, exc: Exception) -> None:
        name = _label(processor)
        self.failed.append(name)
        detail = f"{self.sink}: processor {name} failed and is off for the rest of the run: {exc!r}"
        warnings.warn(detail, RuntimeWarning, stacklevel=2)
        if self._on_event is not None:
            self._on_event("processor_failed", detail)
