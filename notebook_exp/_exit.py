"""One exit hook for the whole package: a registry of shutdown steps.

Each layer registers what it must stop (``on_shutdown(step, order)``); this
module imports nothing of the package. At interpreter exit, and when a test
fixture calls :func:`shutdown`, the steps run once each, lowest ``order``
first: the scheduler (10), live runs (20), sink workers of runs that never
ended (25), servers and widgets (30), the flusher and telemetry (40), and last
the stores (90), which commit what is queued.

The hook must run while DuckDB still accepts queries that scan Python objects
(Arrow batches): DuckDB's own ``atexit`` callback refuses them afterwards
("the Python interpreter is shutting down"), and ``atexit`` runs callbacks
last-registered first. So :func:`install` is called again whenever a module
that registers its own ``atexit`` callback is first imported (the store calls
it right after importing duckdb), which moves this hook back in front.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading

__all__ = ["install", "on_shutdown", "shutdown", "uncaught"]

log = logging.getLogger("notebook_exp")

_lock = threading.Lock()
_hooked_excepthook = False
_steps: dict[str, tuple[int, object]] = {}
uncaught: list[BaseException] = []  # exceptions that ended the interpreter (sys.excepthook saw them)


def install() -> None:
    """Make sure the exit hook runs before every ``atexit`` callback registered so far."""
    global _hooked_excepthook
    with _lock:
        if not _hooked_excepthook:
            _hooked_excepthook = True
            previous = sys.excepthook

            def excepthook(exc_type, exc, tb):
                uncaught.append(exc)
                previous(exc_type, exc, tb)

            sys.excepthook = excepthook
        atexit.unregister(_at_exit)
        atexit.register(_at_exit)


def on_shutdown(step, order: int, name: str | None = None) -> None:
    """Run ``step()`` at shutdown, in ``order`` (lower first). Registering the same
    ``name`` (default: the step's qualified name) again replaces it."""
    key = name or f"{getattr(step, '__module__', '')}.{getattr(step, '__qualname__', repr(step))}"
    with _lock:
        _steps[key] = (order, step)
    install()


def shutdown() -> None:
    """Run every registered step once, in order; a failing step is logged and the
    others still run. Steps stay registered (a later shutdown runs them again:
    each step is idempotent)."""
    with _lock:
        steps = sorted(_steps.items(), key=lambda item: item[1][0])
    for key, (_order, step) in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - never mask anything at shutdown
            log.exception("shutdown step %s failed", key)


def _at_exit() -> None:
    shutdown()
