"""Collectors: what a run records about where it ran, beside what it logs.

- ``system.SystemCollector``: CPU and memory of the process and the machine (``sys/*`` metrics);
- ``gpu.GpuCollector``: utilisation, memory, temperature and power of the run's GPUs (``gpu/<id>/*``);
- ``telemetry.TelemetrySampler``: the one thread that samples both into every running run
  every ``telemetry_interval`` seconds (``NOTEBOOK_EXP_TELEMETRY_INTERVAL``; 0 turns it off);
- ``git.git_info``: the commit, branch and dirty state a run's code came from (``runs.git``).

Nothing here is imported by ``import notebook_exp``; psutil and NVML load on first use.
"""

from __future__ import annotations

#: Metric key prefixes of telemetry (left out where a run's own metrics are listed).
TELEMETRY_PREFIXES = ("sys/", "gpu/")


def is_telemetry(key: str) -> bool:
    """Whether ``key`` is a telemetry reading rather than a metric the run logged."""
    return key.startswith(TELEMETRY_PREFIXES)
