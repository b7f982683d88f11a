"""One exit hook for the whole package, installed by whatever starts first
(a store, a run, the scheduler). At exit it stops the scheduler, ends live
runs, stops the flusher and closes every store, in that order."""

from __future__ import annotations

import atexit
import sys
import threading

_installed = False
_lock = threading.Lock()
uncaught: list[BaseException] = []


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        uncaught.append(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_at_exit)


def _at_exit() -> None:
    from .tracking.run import shutdown

    shutdown()
