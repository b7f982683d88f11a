"""Metric sinks: the ``Sink`` contract, the registry, and the built-in sinks."""

from .base import Sink, SinkSettings

__all__ = ["Sink", "SinkSettings"]
