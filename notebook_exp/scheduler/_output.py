"""Routes what background runs print to their own ``Job`` instead of whatever cell runs.

In a kernel, ``print`` from a background thread lands in the cell that happens
to be executing (or is dropped). ``route()`` installs, once, a proxy on
``sys.stdout``/``sys.stderr`` that sends writes from a registered thread to its
job and everything else to the original stream.
"""

from __future__ import annotations

import sys
import threading

_routes: dict[int, object] = {}
_install_lock = threading.Lock()


class _RoutedStream:
    def __init__(self, original) -> None:
        self._original = original

    def write(self, text: str) -> int:
        job = _routes.get(threading.get_ident())
        if job is None:
            return self._original.write(text)
        job._write(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in _routes:
            self._original.flush()

    def __getattr__(self, name: str):
        return getattr(self._original, name)


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _RoutedStream):
            sys.stdout = _RoutedStream(sys.stdout)
        if not isinstance(sys.stderr, _RoutedStream):
            sys.stderr = _RoutedStream(sys.stderr)


def route(job) -> None:
    """Send this thread's prints to ``job`` until ``unroute()``."""
    _install()
    _routes[threading.get_ident()] = job


def unroute() -> None:
    _routes.pop(threading.get_ident(), None)
