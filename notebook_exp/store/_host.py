"""Who and when, as the store records it: this host, this process, the current UTC time."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone

__all__ = ["HOST", "pid_started", "utcnow"]

HOST = socket.gethostname()
_started: dict[int, float] = {}


def utcnow() -> datetime:
    """Now, as the naive UTC timestamp the store keeps."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def pid_started() -> float:
    """This process's start time (psutil), to tell it from a later process with the same pid."""
    pid = os.getpid()
    if pid not in _started:
        import psutil

        _started[pid] = psutil.Process(pid).create_time()
    return _started[pid]
