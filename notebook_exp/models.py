"""Plain data shared between layers: run states, run records, metric batches."""

from __future__ import annotations

import enum
import re
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["GPU_READINGS", "SYSTEM_KEYS", "MetricBatch", "RunInfo", "RunStatus", "is_telemetry", "telemetry_sql"]

#: Telemetry keys (written by ``collectors``): the system readings, exactly these names ...
SYSTEM_KEYS = ("sys/cpu_percent", "sys/memory_rss_mb", "sys/system_cpu_percent", "sys/system_memory_percent")
#: ... and the readings of each GPU, logged as ``gpu/<id>/<reading>``. Other ``sys/``
#: or ``gpu/`` keys are the run's own metrics.
GPU_READINGS = ("utilization_percent", "memory_used_mb", "temperature_c", "power_w")

_GPU_KEY = re.compile(r"gpu/\d+/(?:" + "|".join(GPU_READINGS) + r")\Z")


def telemetry_sql(column: str = "key") -> str:
    """A SQL condition that holds when ``column`` is a telemetry key (built from constants only)."""
    names = ", ".join(f"'{k}'" for k in SYSTEM_KEYS)
    return f"({column} IN ({names}) OR regexp_matches({column}, '^gpu/[0-9]+/({'|'.join(GPU_READINGS)})$'))"


def is_telemetry(key: str) -> bool:
    """Whether ``key`` is a telemetry reading rather than a metric the run logged."""
    return key in SYSTEM_KEYS or _GPU_KEY.match(key) is not None


class RunStatus(str, enum.Enum):
    """Where a run is in its life. The last three are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Completed, failed or cancelled: the run will not change again."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    @property
    def active(self) -> bool:
        """Queued or running: the run may still change."""
        return not self.terminal

    @classmethod
    def values(cls, active: bool | None = None) -> list[str]:
        """The status strings the store keeps, in life order (only active or
        terminal ones with ``active=True``/``False``)."""
        return [s.value for s in cls if active is None or s.active == active]

    def __str__(self) -> str:
        return self.value


@dataclass
class RunInfo:
    """What sinks and the store know of a run when it starts."""

    run_id: str
    experiment: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    store_path: str | None = None
    #: True when the run continues an earlier one (``start_run(run_id=..., resume=True)``):
    #: a sink keeps what it wrote for it before.
    resumed: bool = False


class MetricBatch:
    """Points of one run, grouped by key.

    ``chunks`` is ``[(key, points), ...]`` where ``points`` is a flat
    ``array('d')`` of ``step, time, value`` triples (time in POSIX seconds, UTC;
    value possibly NaN or ±inf). Iterating yields ``(key, step, time, value)``.
    The store builds its Arrow form (``store.batches``) without touching the
    points one by one, and caches it in ``_tables``.
    """

    __slots__ = ("run_id", "chunks", "_len", "_tables")

    def __init__(self, run_id: str, chunks: list[tuple[str, array]]) -> None:
        self.run_id = run_id
        self.chunks = chunks
        self._len = sum(len(points) for _key, points in chunks) // 3
        self._tables = None  # (points, summary) as pyarrow tables, once the store built them

    @classmethod
    def from_rows(cls, run_id: str, rows) -> MetricBatch:
        """From ``(key, step, time, value)`` tuples."""
        grouped: dict[str, array] = {}
        for key, step, t, value in rows:
            grouped.setdefault(key, array("d")).fromlist([step, t, value])
        return cls(run_id, list(grouped.items()))

    @classmethod
    def merged(cls, batches: list[MetricBatch]) -> MetricBatch:
        """One batch holding the points of ``batches`` (of one run), in order, per key."""
        grouped: dict[str, array] = {}
        for batch in batches:
            for key, points in batch.chunks:
                found = grouped.get(key)
                if found is None:
                    grouped[key] = array("d", points)
                else:
                    found.extend(points)
        return cls(batches[0].run_id, list(grouped.items()))

    def __reduce__(self):
        return (MetricBatch, (self.run_id, self.chunks))  # the cached Arrow tables stay behind

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for key, points in self.chunks:
            for i in range(0, len(points), 3):
                yield key, int(points[i]), points[i + 1], points[i + 2]

    def __repr__(self) -> str:
        return f"MetricBatch(run_id={self.run_id!r}, keys={len(self.chunks)}, points={len(self)})"
