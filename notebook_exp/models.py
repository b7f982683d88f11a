"""Plain data shared between layers: run states, run records, metric batches."""

from __future__ import annotations

import enum
from array import array
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
    """Points of one run, grouped by key.

    ``chunks`` is ``[(key, points), ...]`` where ``points`` is a flat
    ``array('d')`` of ``step, time, value`` triples (time in POSIX seconds, UTC;
    value possibly NaN or ±inf). Iterating yields ``(key, step, time, value)``;
    :meth:`to_arrow` gives a pyarrow table (key, step, ts timestamp[us], value)
    sorted by key, step, without touching the points one by one.
    """

    __slots__ = ("run_id", "chunks", "_len", "_arrow", "_summary")

    def __init__(self, run_id: str, chunks: list[tuple[str, array]]) -> None:
        self.run_id = run_id
        self.chunks = chunks
        self._len = sum(len(points) for _key, points in chunks) // 3
        self._arrow = None
        self._summary = None

    @classmethod
    def from_rows(cls, run_id: str, rows) -> MetricBatch:
        """From ``(key, step, time, value)`` tuples."""
        grouped: dict[str, array] = {}
        for key, step, t, value in rows:
            grouped.setdefault(key, array("d")).fromlist([step, t, value])
        return cls(run_id, list(grouped.items()))

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for key, points in self.chunks:
            for i in range(0, len(points), 3):
                yield key, int(points[i]), points[i + 1], points[i + 2]

    def __repr__(self) -> str:
        return f"MetricBatch(run_id={self.run_id!r}, keys={len(self.chunks)}, points={len(self)})"

    def to_arrow(self):
        """The batch as a pyarrow Table (cached): key (dictionary), step, ts, value."""
        if self._arrow is None:
            self._arrow, self._summary = _chunks_to_arrow(self.chunks)
        return self._arrow

    def summary(self):
        """One row per key (pyarrow): key, count, first_step, last_step, last_value,
        min_value, max_value (NaN ignored; null when all NaN), last_ts."""
        if self._summary is None:
            self._arrow, self._summary = _chunks_to_arrow(self.chunks)
        return self._summary


def _chunks_to_arrow(chunks):
    import numpy as np
    import pyarrow as pa

    from ._arrow import column, dictionary

    flat = np.concatenate([np.frombuffer(points, dtype=np.float64) for _k, points in chunks] or [np.empty(0)])
    triples = flat.reshape(-1, 3)
    steps = triples[:, 0].astype(np.int64)
    micros = (triples[:, 1] * 1e6).astype(np.int64)
    values = triples[:, 2]
    codes = np.repeat(np.arange(len(chunks), dtype=np.int32), [len(p) // 3 for _k, p in chunks])
    if len(steps) > 1 and ((np.diff(steps) < 0) & (np.diff(codes) == 0)).any():
        order = np.lexsort((steps, codes))  # steps logged out of order
        steps, micros, codes, values = steps[order], micros[order], codes[order], values[order]
    names = [k for k, _p in chunks]
    table = pa.table(
        {
            "key": dictionary(codes, names),
            "step": column(steps, pa.int64()),
            "ts": column(micros, pa.timestamp("us")),
            "value": column(values, pa.float64()),
        }
    )
    return table, _summarize(names, codes, steps, micros, values)


def _summarize(names, codes, steps, micros, values):
    """Per key (rows are grouped by key, steps ascending): count, first/last step,
    last value, NaN-ignoring min/max, last time."""
    import warnings

    import numpy as np
    import pyarrow as pa

    from ._arrow import column, strings

    n = len(steps)
    if not n:
        starts = ends = np.empty(0, dtype=np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups
        low = np.fmin.reduceat(values, starts) if n else np.empty(0)
        high = np.fmax.reduceat(values, starts) if n else np.empty(0)
    nan_low, nan_high = np.isnan(low), np.isnan(high)
    return pa.table({
        "key": strings([names[c] for c in codes[starts]]) if n else strings([]),
        "count": column((ends - starts).astype(np.int64), pa.int64()),
        "first_step": column(steps[starts], pa.int64()),
        "last_step": column(steps[ends - 1] if n else steps[:0], pa.int64()),
        "last_value": column(values[ends - 1] if n else values[:0], pa.float64()),
        "min_value": pa.Array.from_buffers(pa.float64(), len(low), [_validity(nan_low), pa.py_buffer(np.ascontiguousarray(low))]),
        "max_value": pa.Array.from_buffers(pa.float64(), len(high), [_validity(nan_high), pa.py_buffer(np.ascontiguousarray(high))]),
        "last_ts": column(np.maximum.reduceat(micros, starts) if n else micros[:0], pa.timestamp("us")),
    })


def _validity(is_null):
    """An Arrow validity bitmap (None when nothing is null)."""
    import numpy as np
    import pyarrow as pa

    if not is_null.any():
        return None
    return pa.py_buffer(np.packbits(~is_null, bitorder="little"))
