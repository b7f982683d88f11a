"""Where attempts run: ``thread`` (in this process) and ``process`` (a fresh interpreter);
``inline`` (in the dispatcher's thread, one at a time) is for tests, through
``notebook_exp.testing.inline_scheduler()``."""

from .base import Executor

__all__ = ["Executor"]
