"""Plain data shared between layers: run states, run records, metric batches."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["MetricBatch", "RunInfo", "RunStatus"]


class RunStatus(str, enum.Enum):
    """Where a run is in its life. The last three are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

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


class MetricBatch:
    """Points of one run, columnar: ``keys[i], steps[i], times[i], values[i]``.

    ``times`` are POSIX seconds (UTC). ``values`` are floats and may be NaN or
    ±inf. Build one with :meth:`from_rows`; :meth:`to_arrow` gives a pyarrow
    table with columns key, step, ts (timestamp[us]), value.
    """

    __slots__ = ("run_id", "keys", "steps", "times", "values", "_arrow")

    def __init__(self, run_id: str, keys, steps, times, values) -> None:
        self.run_id = run_id
        self.keys = keys
        self.steps = steps
        self.times = times
        self.values = values
        self._arrow = None

    @classmethod
    def from_rows(cls, run_id: str, rows: list[tuple]) -> MetricBatch:
        """From ``(key, step, time, value)`` tuples, as ``run.log`` buffers them."""
        if not rows:
            return cls(run_id, (), (), (), ())
        keys, steps, times, values = zip(*rows)
        return cls(run_id, keys, steps, times, values)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return zip(self.keys, self.steps, self.times, self.values)

    def __repr__(self) -> str:
        return f"MetricBatch(run_id={self.run_id!r}, points={len(self)})"

    def to_arrow(self):
        """The batch as a pyarrow Table (cached): key, step, ts, value."""
        if self._arrow is None:
            import numpy as np
            import pyarrow as pa

            micros = (np.fromiter(self.times, dtype=np.float64, count=len(self)) * 1e6).astype(
                "int64"
            )
            self._arrow = pa.table(
                {
                    "key": pa.array(self.keys, pa.string()).dictionary_encode(),
                    "step": pa.array(self.steps, pa.int64()),
                    "ts": pa.array(micros.view("datetime64[us]")),
                    "value": pa.array(self.values, pa.float64()),
                }
            )
        return self._arrow

    def summary(self) -> dict[str, tuple[int, float]]:
        """The last ``(step, value)`` of each key in this batch."""
        last: dict[str, tuple[int, float]] = {}
        for key, step, _t, value in self:
            prev = last.get(key)
            if prev is None or step >= prev[0]:
                last[key] = (step, value)
        return last


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
