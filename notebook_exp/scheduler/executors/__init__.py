"""Where attempts run: ``thread`` (in this process) and ``process`` (a fresh interpreter)."""

from .base import Executor

__all__ = ["Executor"]
