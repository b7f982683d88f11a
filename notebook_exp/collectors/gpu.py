"""``GpuCollector``: readings of the GPUs a run holds.

Readings (``gpu/<id>/`` metrics, ``<id>`` the physical id ``nvidia-smi`` shows):
``utilization_percent``, ``memory_used_mb``, ``temperature_c`` and ``power_w``;
a reading the device does not report is left out.

GPUs are read through the inventory the run's lease came from (the
scheduler's, so virtual GPUs whose readings a test set are what is logged),
else through one detected from the settings as the scheduler would (a
process run's child sees only its lease).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable

from ..config import Settings
from ..exceptions import ConfigError, GpuUnavailable
from .base import Collector

__all__ = ["GpuCollector"]

log = logging.getLogger("notebook_exp.collectors")

_READINGS = (
    ("utilization_percent", "utilization", 1.0),
    ("memory_used_mb", "memory_used", 1 / 2**20),
    ("temperature_c", "temperature", 1.0),
    ("power_w", "power", 1.0),
)


class GpuCollector(Collector):
    """Reads GPUs by physical id; a GPU that cannot be read is skipped (logged once)."""

    sampled = True
    capabilities = ("telemetry",)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self._inventory = None
        self._failed: set[int] = set()

    @classmethod
    def key(cls, settings: Settings) -> Hashable:
        return (settings.fake_gpus, tuple(settings.reserved_gpus))  # what picks the GPUs it detects

    def read(self, run) -> dict[str, float]:
        """The readings of ``run``'s GPUs, through the inventory they were leased from."""
        return self.sample(list(run.gpus), run.gpu_inventory) if run.gpus else {}

    def inventory(self):
        """The inventory detected from this collector's settings (made on first use)."""
        if self._inventory is None:
            from ..inventory import GpuInventory

            self._inventory = GpuInventory.detect(
                self.settings.fake_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), self.settings.reserved_gpus
            )
        return self._inventory

    def sample(self, gpus: list[int], inventory=None) -> dict[str, float]:
        """``gpu/<id>/<reading>`` values of every GPU in ``gpus`` that can be read, through
        ``inventory`` (default: the one detected from the settings)."""
        if not gpus:
            return {}
        inventory = inventory or self.inventory()
        values: dict[str, float] = {}
        for index in gpus:
            try:
                info = inventory.info(index)
            except (GpuUnavailable, ConfigError) as exc:
                if index not in self._failed:
                    self._failed.add(index)
                    log.warning("no telemetry for GPU %s: %s", index, exc)
                continue
            for name, field, scale in _READINGS:
                reading = getattr(info, field)
                if reading is not None:
                    values[f"gpu/{index}/{name}"] = float(reading) * scale
        return values
