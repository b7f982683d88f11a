"""The built-in processors: ``rename``, ``filter``, ``scale``, ``drop_nonfinite``, ``every``.

Key patterns are fnmatch globs (``*`` also crosses ``/``), as in sink routing.
Each works on whole keys' arrays at once (numpy), never point by point in Python.
"""

from __future__ import annotations

import fnmatch
import re
from array import array

import numpy as np
from pydantic import Field, model_validator

from ..models import MetricBatch
from . import Processor, ProcessorSettings

__all__ = ["DropNonFinite", "Every", "Filter", "Rename", "Scale"]


def _matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _points(points: array) -> np.ndarray:
    """A key's flat ``step, time, value`` array as an (n, 3) view."""
    return np.frombuffer(points, dtype=np.float64).reshape(-1, 3)


def _array(rows: np.ndarray) -> array:
    out = array("d")
    out.frombytes(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return out


class RenameSettings(ProcessorSettings):
    pattern: str = Field(description="Glob of the keys to rename, e.g. 'train/*'.")
    to: str = Field(description="The new name; each '*' takes what the pattern's '*' matched, in order.")

    @model_validator(mode="after")
    def _stars(self):
        if self.to.count("*") > self.pattern.count("*"):
            raise ValueError(f"'to' ({self.to!r}) has more '*' than 'pattern' ({self.pattern!r})")
        return self


class Rename(Processor):
    """Renames keys that match a pattern: pattern='train/*', to='t/*' makes train/loss t/loss."""

    Settings = RenameSettings

    def __init__(self, settings=None, **options) -> None:
        super().__init__(settings, **options)
        parts = (re.escape(part) for part in self.settings.pattern.split("*"))
        self._regex = re.compile("(.*)".join(parts) + r"\Z", re.S)
        self._names: dict[str, str] = {}

    def _name(self, key: str) -> str:
        found = self._names.get(key)
        if found is None:
            match = self._regex.match(key)
            if match is None:
                found = key
            else:
                pieces = iter(match.groups())
                found = "".join(part if i == 0 else next(pieces) + part
                                for i, part in enumerate(self.settings.to.split("*")))
            self._names[key] = found
        return found

    def process(self, batch: MetricBatch) -> MetricBatch:
        merged: dict[str, array] = {}
        for key, points in batch.chunks:
            name = self._name(key)
            if name in merged:
                merged[name] = merged[name] + points  # two keys renamed into one
            else:
                merged[name] = points
        return MetricBatch(batch.run_id, list(merged.items()))


class FilterSettings(ProcessorSettings):
    drop: list[str] = Field(description="Globs of the keys to drop.")


class Filter(Processor):
    """Drops the keys that match any of ``drop``."""

    Settings = FilterSettings

    def process(self, batch: MetricBatch) -> MetricBatch:
        drop = self.settings.drop
        return MetricBatch(batch.run_id, [(k, p) for k, p in batch.chunks if not _matches(k, drop)])


class ScaleSettings(ProcessorSettings):
    factor: float = Field(1.0, description="Each value becomes value * factor + offset.")
    offset: float = Field(0.0, description="Added after scaling.")
    keys: list[str] = Field(default_factory=lambda: ["*"], description="Globs of the keys to scale (default all).")


class Scale(Processor):
    """Scales values: ``value * factor + offset`` for the keys that match ``keys``."""

    Settings = ScaleSettings

    def process(self, batch: MetricBatch) -> MetricBatch:
        s = self.settings
        chunks = []
        for key, points in batch.chunks:
            if _matches(key, s.keys):
                rows = _points(points).copy()
                rows[:, 2] = rows[:, 2] * s.factor + s.offset
                points = _array(rows)
            chunks.append((key, points))
        return MetricBatch(batch.run_id, chunks)


class DropNonFinite(Processor):
    """Drops points whose value is NaN or ±inf (for backends that refuse them)."""

    def process(self, batch: MetricBatch) -> MetricBatch:
        chunks = []
        for key, points in batch.chunks:
            rows = _points(points)
            finite = np.isfinite(rows[:, 2])
            if finite.all():
                chunks.append((key, points))
            elif finite.any():
                chunks.append((key, _array(rows[finite])))
        return MetricBatch(batch.run_id, chunks)


class EverySettings(ProcessorSettings):
    steps: int | None = Field(None, ge=1, description="Keep the first point of each window of this many steps.")
    seconds: float | None = Field(None, gt=0, description="Keep the first point of each window of this many seconds.")

    @model_validator(mode="after")
    def _one(self):
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("give exactly one of steps or seconds")
        return self


class Every(Processor):
    """Thins a key to one point per window of N steps (steps 0..N-1, N..2N-1, ...) or of T
    seconds, per key, across batches: for remote sinks that need less."""

    Settings = EverySettings

    def __init__(self, settings=None, **options) -> None:
        super().__init__(settings, **options)
        self._last: dict[str, float] = {}  # key -> window of the last point kept

    def process(self, batch: MetricBatch) -> MetricBatch:
        s = self.settings
        column, width = (0, float(s.steps)) if s.steps is not None else (1, s.seconds)
        chunks = []
        for key, points in batch.chunks:
            rows = _points(points)
            windows = np.floor(rows[:, column] / width)
            previous = np.empty_like(windows)
            previous[0] = self._last.get(key, np.nan)
            previous[1:] = windows[:-1]
            keep = windows != previous  # NaN != anything: the very first point is kept
            if keep.any():
                self._last[key] = float(windows[-1])
                chunks.append((key, _array(rows[keep])))
            elif len(windows):
                self._last[key] = float(windows[-1])
        return MetricBatch(batch.run_id, chunks)
