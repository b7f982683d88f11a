"""Runs and the log path: ``Run``, ``start_run``, the flusher."""

from .run import Run, current_run, start_run

__all__ = ["Run", "current_run", "start_run"]
