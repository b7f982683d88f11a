"""``SystemCollector``: CPU and memory of this process and of the machine.

Readings (``sys/`` metrics):

- ``sys/cpu_percent``: CPU used by this process and its live child processes
  since the previous sample, in percent of one core (a process busy on two
  cores reads 200);
- ``sys/memory_rss_mb``: resident memory of this process and its live children, MiB;
- ``sys/system_cpu_percent``: CPU in use on the whole machine, percent of all cores;
- ``sys/system_memory_percent``: memory in use on the whole machine, percent.

Child processes that are runs of their own (the process executor's, see
:func:`separate`) are left out with everything they start: they sample
themselves. The CPU readings need a previous sample, so the first has none.
One instance per process (it is ``shared``): its reading serves every run.
"""

from __future__ import annotations

import os
import threading
import time

from ..config import Settings
from .base import Collector

__all__ = ["SystemCollector", "rejoin", "separate"]

_separate: set[int] = set()
_separate_lock = threading.Lock()


def separate(pid: int) -> None:
    """Leave child ``pid`` and its descendants out of this process's readings."""
    with _separate_lock:
        _separate.add(pid)


def rejoin(pid: int) -> None:
    """Forget ``pid`` (it ended)."""
    with _separate_lock:
        _separate.discard(pid)


class SystemCollector(Collector):
    """Samples this process (and its children) and the machine with psutil."""

    sampled = True
    shared = True
    libraries = ("psutil",)
    capabilities = ("telemetry",)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        import psutil

        self._psutil = psutil
        self._previous: tuple[float, dict[int, float], float, float] | None = None  # wall, cpu by pid, busy, total

    def read(self, run) -> dict[str, float]:
        return self.sample()

    def sample(self) -> dict[str, float]:
        """One reading of every ``sys/`` metric this machine reports."""
        psutil = self._psutil
        cpu, rss = self._process_tree()
        now = time.monotonic()  # when the CPU times were read: a slow walk of the tree skews nothing
        machine = psutil.cpu_times()
        # guest time is already part of user and nice time on Linux
        total = sum(machine) - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0)
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        values = {
            "sys/memory_rss_mb": rss / 2**20,
            "sys/system_memory_percent": float(psutil.virtual_memory().percent),
        }
        if self._previous is not None:
            wall, before, busy, all_time = self._previous
            if now > wall:
                # per process, so a child that ended since takes its time with it instead of
                # making the others' look negative; a new child counts from its start
                used = sum(seconds - before.get(pid, 0.0) for pid, seconds in cpu.items())
                values["sys/cpu_percent"] = max(0.0, 100.0 * used / (now - wall))
            if total > all_time:
                values["sys/system_cpu_percent"] = min(100.0, max(0.0, 100.0 * ((total - idle) - busy) / (total - all_time)))
        self._previous = (now, cpu, total - idle, total)
        return values

    def _process_tree(self) -> tuple[dict[int, float], int]:
        """CPU seconds per process and resident bytes in all of this process and its
        live descendants, less the separated subtrees."""
        psutil = self._psutil
        with _separate_lock:
            separated = set(_separate)
        parents: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            parents.setdefault(proc.info["ppid"], []).append(proc.pid)
        cpu: dict[int, float] = {}
        rss = 0
        todo = [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue  # it ended meanwhile
            cpu[pid] = times.user + times.system
            todo.extend(child for child in parents.get(pid, ()) if child not in separated)
        return cpu, rss
