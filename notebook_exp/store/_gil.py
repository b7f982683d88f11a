"""``quick_gil_handoff``: a shorter GIL switch interval while this process works in DuckDB.

DuckDB's Python client takes the GIL back between execution steps, to check
for Ctrl-C. A thread that keeps the GIL busy, such as a training loop logging
flat out, makes each of those steps wait up to the interpreter's switch
interval (5 ms by default). Measured here with one such thread: a 30 ms commit
took 220 ms (98 ms p99 with a 1 ms interval), and an in-process read of 200k
points took 99 ms (24 ms with it).

So every store session (reads, commits, detaches), and the writer's Arrow
building, lowers the process's switch interval to the ``gil_switch_interval``
setting (``NOTEBOOK_EXP_GIL_SWITCH_INTERVAL``, default ``SWITCH_INTERVAL``; 0
leaves the interpreter's own alone) and restores it when the last one ends,
before anyone waiting on that session's work is woken. A value somebody else
set meanwhile is left alone. ``benchmarks/bench_loop.py --switch`` measures the
trade: a shorter interval makes the training thread hand the GIL over more often
while the writer works (``docs/architecture.md §3``).
"""

from __future__ import annotations

import contextlib
import sys
import threading

__all__ = ["SWITCH_INTERVAL", "configure", "interval", "quick_gil_handoff"]

SWITCH_INTERVAL = 0.001

_lock = threading.Lock()
_users = 0
_saved: float | None = None  # the interval before the first session began
_set: float | None = None  # the interval the sessions set
_interval: float | None = None  # set by configure (None: the setting's; 0: off)


def configure(seconds: float | None) -> None:
    """Use ``seconds`` as the lowered interval from the next session on (0: do not lower
    it; None: the ``gil_switch_interval`` setting again)."""
    global _interval
    if seconds is not None and seconds < 0:
        raise ValueError(f"a switch interval is at least 0 seconds, not {seconds}")
    _interval = seconds


def interval() -> float:
    """The lowered interval sessions use (0: they leave the interpreter's alone)."""
    if _interval is not None:
        return _interval
    from ..config import get_settings  # cached: one call per session

    return get_settings().gil_switch_interval


@contextlib.contextmanager
def quick_gil_handoff():
    """Lower the switch interval for the duration of the ``with`` block (nestable, thread-safe)."""
    global _users, _saved, _set
    wanted = interval()
    with _lock:
        _users += 1
        if _users == 1:
            _saved = sys.getswitchinterval()
            if wanted:
                sys.setswitchinterval(min(_saved, wanted))
            _set = sys.getswitchinterval()
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and sys.getswitchinterval() == _set:
                sys.setswitchinterval(_saved)
