"""Collectors: what a run records about where it ran, beside what it logs.

Every collector is a plugin of the ``notebook_exp.collectors`` entry-point group
(``base.Collector``, whose docstring is the contract; ``registry`` finds them
through the plugin door and holds the failure policy). Built in:

- ``system.SystemCollector`` (sampled): CPU and memory of the process and the machine (``sys/*`` metrics);
- ``gpu.GpuCollector`` (sampled): utilisation, memory, temperature and power of the run's GPUs (``gpu/<id>/*``);
- ``git.GitCollector``: the commit, branch and dirty state a run's code came from (``runs.git``;
  ``git.git_info``);
- ``environment.EnvironmentCollector``: Python, platform and key package versions (``runs.info.environment``);
- ``source.SourceCollector``: the cell or function source (``runs.source``) and the notebook's path
  (``runs.info.notebook``).

``telemetry.TelemetrySampler`` is the one thread that samples the sampled ones
into every running run every ``telemetry_interval`` seconds
(``NOTEBOOK_EXP_TELEMETRY_INTERVAL``; 0 turns it off). The ``collectors``
setting (``NOTEBOOK_EXP_COLLECTORS=system,git``) picks which run.

Telemetry keys are exactly the names below; other ``sys/`` or ``gpu/`` keys
are the run's own metrics. Nothing here imports psutil, NVML or the packages
whose versions it records when ``notebook_exp`` is imported; psutil and NVML
load on first use.
"""

from __future__ import annotations

# The names live with the plain data (the store and readers need them too); the
# collectors are what produces them.
from ..models import GPU_READINGS, SYSTEM_KEYS, is_telemetry, telemetry_sql
from .base import Collector, RunContext

__all__ = ["GPU_READINGS", "SYSTEM_KEYS", "Collector", "RunContext", "is_telemetry", "telemetry_sql"]
