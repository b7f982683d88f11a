"""Collectors: what a run records about where it ran, beside what it logs.

- ``system.SystemCollector``: CPU and memory of the process and the machine (``sys/*`` metrics);
- ``gpu.GpuCollector``: utilisation, memory, temperature and power of the run's GPUs (``gpu/<id>/*``);
- ``telemetry.TelemetrySampler``: the one thread that samples both into every running run
  every ``telemetry_interval`` seconds (``NOTEBOOK_EXP_TELEMETRY_INTERVAL``; 0 turns it off);
- ``git.git_info``: the commit, branch and dirty state a run's code came from (``runs.git``).

Telemetry keys are exactly the names below; other ``sys/`` or ``gpu/`` keys
are the run's own metrics. Nothing here is imported by ``import notebook_exp``;
psutil and NVML load on first use.
"""

from __future__ import annotations

import re

#: The keys of ``system.SystemCollector``'s readings.
SYSTEM_KEYS = ("sys/cpu_percent", "sys/memory_rss_mb", "sys/system_cpu_percent", "sys/system_memory_percent")
#: The readings of each GPU, logged as ``gpu/<id>/<reading>``.
GPU_READINGS = ("utilization_percent", "memory_used_mb", "temperature_c", "power_w")

_GPU_KEY = re.compile(r"gpu/\d+/(?:" + "|".join(GPU_READINGS) + r")\Z")


def telemetry_sql(column: str = "key") -> str:
    """A SQL condition that holds when ``column`` is a telemetry key (built from constants only)."""
    names = ", ".join(f"'{k}'" for k in SYSTEM_KEYS)
    return f"({column} IN ({names}) OR regexp_matches({column}, '^gpu/[0-9]+/({'|'.join(GPU_READINGS)})$'))"


def is_telemetry(key: str) -> bool:
    """Whether ``key`` is a telemetry reading rather than a metric the run logged."""
    return key in SYSTEM_KEYS or _GPU_KEY.match(key) is not None
