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

# The names live with the plain data (the store and readers need them too); the
# collectors are what produces them.
from ..models import GPU_READINGS, SYSTEM_KEYS, is_telemetry, telemetry_sql

__all__ = ["GPU_READINGS", "SYSTEM_KEYS", "is_telemetry", "telemetry_sql"]
