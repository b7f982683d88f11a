"""``SystemCollector``: CPU and memory of this process and of the machine.

Readings (``sys/`` metrics):

- ``sys/cpu_percent``: CPU used by this process and its children since the
  previous sample, in percent of one core (a process busy on two cores reads 200);
- ``sys/memory_rss_mb``: resident memory of this process and its live children, MiB;
- ``sys/system_cpu_percent``: CPU in use on the whole machine, percent of all cores;
- ``sys/system_memory_percent``: memory in use on the whole machine, percent.

The CPU readings need a previous sample, so the first sample has none.
"""

from __future__ import annotations

import os
import time

__all__ = ["SystemCollector"]


class SystemCollector:
    """Samples this process (and its children) and the machine with psutil."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(os.getpid())
        self._previous: tuple[float, float, float, float] | None = None  # wall, process cpu, busy, total

    def sample(self) -> dict[str, float]:
        """One reading of every ``sys/`` metric this machine reports."""
        psutil = self._psutil
        now = time.monotonic()
        process_cpu, rss = self._process_tree()
        machine = psutil.cpu_times()
        total = sum(machine)
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        values = {
            "sys/memory_rss_mb": rss / 2**20,
            "sys/system_memory_percent": float(psutil.virtual_memory().percent),
        }
        if self._previous is not None:
            wall, cpu, busy, all_time = self._previous
            if now > wall:
                values["sys/cpu_percent"] = max(0.0, 100.0 * (process_cpu - cpu) / (now - wall))
            if total > all_time:
                values["sys/system_cpu_percent"] = min(100.0, max(0.0, 100.0 * ((total - idle) - busy) / (total - all_time)))
        self._previous = (now, process_cpu, total - idle, total)
        return values

    def _process_tree(self) -> tuple[float, int]:
        """CPU seconds (this process, its live children, and children already reaped)
        and resident bytes (this process and its live children)."""
        psutil = self._psutil
        with self._process.oneshot():
            times = self._process.cpu_times()
            rss = self._process.memory_info().rss
            children = self._process.children(recursive=True)
        cpu = sum(times[:4])  # user, system, children_user, children_system
        for child in children:
            try:
                with child.oneshot():
                    child_times = child.cpu_times()
                    rss += child.memory_info().rss
                cpu += sum(child_times[:4])  # user, system and its reaped children's
            except psutil.Error:
                continue  # it ended meanwhile; its time moves to ``children_*`` once reaped
        return cpu, rss
