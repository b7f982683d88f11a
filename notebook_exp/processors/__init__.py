"""Processors: transforms of the metric stream, applied per sink, off the hot path.

A processor is a plugin of the ``notebook_exp.processors`` entry-point group: a
:class:`Processor` subclass whose ``process(batch)`` returns the batch a sink
should receive (a new ``MetricBatch``, the same one, or ``None`` for nothing).
One instance serves one sink of one run, so a processor may keep state (``every``
does). Processors run on the sink's worker thread, never in ``run.log``.

Where they apply (``sinks.dispatch``): the ``processors`` setting applies to every
sink but ``duckdb`` (the store keeps what was logged), then each sink's own
``processors`` setting, in order. A processor that raises is disabled for the rest
of the run, with one warning and one run event; what it would have changed
passes through unchanged and nothing else is affected.

Built-ins (``processors.builtin``): ``rename``, ``filter``, ``scale``,
``drop_nonfinite`` and ``every``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._plugins import Plugin, PluginSettings
from ..models import MetricBatch

__all__ = ["Processor", "ProcessorSettings"]


class ProcessorSettings(PluginSettings):
    """Base of processors' settings (a processor's options are its settings' fields)."""


class Processor(Plugin):
    """Base class of processors; see the module docstring."""

    Settings: ClassVar[type[ProcessorSettings]] = ProcessorSettings

    def __init__(self, settings: ProcessorSettings | None = None, **options: Any) -> None:
        if settings is None:
            settings = self.Settings.model_validate(options)
        elif options:
            raise TypeError("pass settings or options, not both")
        self.settings = settings

    def process(self, batch: MetricBatch) -> MetricBatch | None:
        """The batch the sink receives instead of ``batch`` (``None``: nothing)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.settings.model_dump().items())
        return f"{type(self).__name__}({fields})"
