"""Early stopping of a sweep's runs: ``MedianStop`` and ``ASHA``.

    nx.sweep(train, space, n=20, method="random", stop=nx.MedianStop("val/loss", mode="min", grace=100))

A rule judges the runs of one sweep by one metric, with values already in
this kernel: each run of the sweep gets one more sink, ``StopSink``, which the
run's dispatcher calls inline (it never blocks) with every batch the run's
buffer hands over (the flusher's, every ``flush_interval``). It passes the
points of the rule's metric to the sweep's ``StopMonitor``, which keeps, per
run, the best value so far as a step function of the step (``Trace``) and asks
the rule about that run. No store reads, nothing on ``run.log``'s path.

A stopped run's next ``run.log`` raises ``RunCancelled``: it ends ``cancelled``
with the reason ``early-stopped by <rule> at step <s>: <why>`` (and an
``early_stopped`` event), gives back its slot and GPU once that is stored, and
the next queued run starts. Rules read the runs of this kernel's threads, so a
sweep with ``stop=`` runs with ``executor="thread"``.

Rules (``mode="min"``: lower is better; ``"max"``: higher):

- ``MedianStop(metric, grace=, min_runs=)``: once a run reached step ``s >= grace``,
  stop it if its best value so far is worse than the median, over the other runs
  of the sweep (at least ``min_runs`` of them), of each one's best value up to ``s``.
- ``ASHA(metric, min_step=, reduction=, max_step=)``: asynchronous successive
  halving. Rungs sit at steps ``min_step * reduction**k`` (below ``max_step``).
  When a run reaches a rung, its best value up to the rung is recorded there; it
  goes on (is promoted) if that value is within the best ``1/reduction`` of the
  values recorded at that rung so far, else it stops.
"""

from __future__ import annotations

import copy
import glob
import math
import statistics
import threading
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigError, RunCancelled
from ..sinks.base import Sink, SinkSettings
from ..store.queries.detail import EARLY_STOPPED

__all__ = ["ASHA", "Decision", "MedianStop", "StopMonitor", "StopRule", "StopSink", "Trace"]


class Trace:
    """One run's best value of a metric so far, kept per batch: ``ends[i]`` is the last
    step of the run's i-th batch and ``bests[i]`` its best value up to there. The
    latest batch's points are kept too, so the best up to any step of it is exact
    (a rung, a peer's step); inside an older batch it is the best before that batch.
    NaN values are left out; a batch ending at a lower step than one seen before
    ends at that one (steps only grow). The work per batch is done in C (array
    slices, ``min``/``max``/``sum``): tens of ns per point."""

    __slots__ = ("ends", "bests", "last_step", "stopped", "done", "_steps", "_values", "_before", "_pick")

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.bests: list[float | None] = []
        self.last_step: int | None = None
        self.stopped: int | None = None  # the step the rule stopped it at
        self.done = False
        self._steps: array = array("d")  # the latest batch's steps and values
        self._values: array = array("d")
        self._before: float | None = None  # the best before the latest batch
        self._pick = min

    @property
    def best(self) -> float | None:
        return self.bests[-1] if self.bests else None

    def add(self, points: array, minimize: bool) -> None:
        """Take a batch's flat ``step, time, value`` triples (``array('d')``)."""
        steps, values = points[0::3], points[2::3]
        if not steps:
            return
        pick = self._pick = min if minimize else max
        total = sum(values)
        if total == total:
            found = pick(values)
        else:  # a NaN somewhere (or inf - inf): NaNs never win, and count as the worst value
            numbers = [v for v in values if v == v]
            found = pick(numbers) if numbers else None
            worst = math.inf if minimize else -math.inf
            values = array("d", [v if v == v else worst for v in values])
        before = self.best
        best = found if before is None else before if found is None else pick(before, found)
        last = int(steps[-1])
        if self.last_step is not None and steps[0] < self.last_step:  # back in steps: no exact best inside it
            last, steps = max(last, self.last_step), array("d")
        self._steps, self._values, self._before = steps, values, before
        self.ends.append(last)
        self.bests.append(best)
        self.last_step = last

    def best_until(self, step: int) -> float | None:
        """The best value at steps up to ``step`` (None before the first)."""
        if not self.ends:
            return None
        if self._steps and self._steps[0] <= step < self.ends[-1]:
            k = bisect_right(self._steps, step)
            inner = self._pick(self._values[:k]) if k else None
            if inner is None or inner == (math.inf if self._pick is min else -math.inf):
                return self._before  # nothing up to there but NaNs (kept as the worst value)
            return inner if self._before is None else self._pick(self._before, inner)
        i = bisect_right(self.ends, step) - 1
        return self.bests[i] if i >= 0 else None


class StopRule:
    """Base of the stop rules: ``metric`` and ``mode`` (``"min"`` or ``"max"``), and
    ``check(run_id, traces)``, called with the sweep's monitor lock held each time
    ``run_id``'s trace grew; it returns ``(step, why)`` to stop that run, else None.
    A rule may keep state: the sweep works on a copy of it (``fresh``)."""

    def __init__(self, metric: str, mode: str = "min") -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"a stop rule needs the metric key it judges by, got {metric!r}")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode is 'min' (lower is better) or 'max', not {mode!r}")
        self.metric = metric
        self.mode = mode

    @property
    def label(self) -> str:
        return type(self).__name__

    @property
    def minimize(self) -> bool:
        return self.mode == "min"

    def worse(self, value: float, than: float) -> bool:
        return value > than if self.minimize else value < than

    def fresh(self) -> StopRule:
        """A copy with no state, for one sweep."""
        return copy.deepcopy(self)

    def describe(self) -> dict[str, Any]:
        """What the rule is (stored with each run of the sweep)."""
        return {"rule": self.label, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def check(self, run_id: str, traces: dict[str, Trace]) -> tuple[int, str] | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.label}({args})"


def _steps(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class MedianStop(StopRule):
    """Stop a run whose best ``metric`` by its step ``s`` (``s >= grace``) is worse than
    the median of the other runs' best values up to ``s`` (needs ``min_runs`` of them)."""

    def __init__(self, metric: str, mode: str = "min", grace: int = 0, min_runs: int = 3) -> None:
        super().__init__(metric, mode)
        self.grace = _steps("grace", grace, 0)
        self.min_runs = _steps("min_runs", min_runs, 1)

    def check(self, run_id: str, traces: dict[str, Trace]) -> tuple[int, str] | None:
        trace = traces[run_id]
        step, best = trace.last_step, trace.best
        if step is None or step < self.grace or best is None:
            return None
        others = [v for other, t in traces.items() if other != run_id and (v := t.best_until(step)) is not None]
        if len(others) < self.min_runs:
            return None
        median = statistics.median(others)
        if not self.worse(best, median):
            return None
        return step, f"its best {self.metric} {best:.4g} is worse than the median {median:.4g} of {len(others)} other runs"


class ASHA(StopRule):
    """Asynchronous successive halving: rungs at steps ``min_step * reduction**k``
    (below ``max_step``, if given); a run reaching a rung goes on only if its best
    ``metric`` so far is within the best ``1/reduction`` of the values recorded there."""

    def __init__(self, metric: str, mode: str = "min", min_step: int = 1, reduction: int = 3,
                 max_step: int | None = None) -> None:
        super().__init__(metric, mode)
        self.min_step = _steps("min_step", min_step, 1)
        self.reduction = _steps("reduction", reduction, 2)
        self.max_step = None if max_step is None else _steps("max_step", max_step, 1)
        self._recorded: dict[int, dict[str, float]] = {}  # rung step -> run id -> its value there
        self._next: dict[str, int] = {}  # run id -> index of the next rung it has not reached

    def rung(self, k: int) -> int | None:
        """The step of rung ``k`` (None past ``max_step``)."""
        step = self.min_step * self.reduction ** k
        return None if self.max_step is not None and step >= self.max_step else step

    def cutoff(self, values: list[float]) -> float:
        """The worst value still promoted among ``values`` (linear percentile, as Ray Tune)."""
        share = 1 / self.reduction if self.minimize else 1 - 1 / self.reduction
        return _percentile(sorted(values), share)

    def check(self, run_id: str, traces: dict[str, Trace]) -> tuple[int, str] | None:
        trace = traces[run_id]
        k = self._next.get(run_id, 0)
        while trace.last_step is not None:
            step = self.rung(k)
            if step is None or trace.last_step < step:
                return None
            k = self._next[run_id] = k + 1
            value = trace.best_until(step)
            if value is None:
                continue
            recorded = self._recorded.setdefault(step, {})
            recorded[run_id] = value
            cutoff = self.cutoff(list(recorded.values()))
            if self.worse(value, cutoff):
                return step, (f"its best {self.metric} {value:.4g} by step {step} is not in the best "
                              f"1/{self.reduction} of {len(recorded)} runs at that rung (cutoff {cutoff:.4g})")
        return None


def _percentile(ordered: list[float], share: float) -> float:
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Decision:
    """A run the rule stopped: at which step, why, and when (``time.time()``)."""

    run_id: str
    step: int
    reason: str
    at: float


class StopMonitor:
    """The stop rule of one sweep, the traces of its runs, and the stopping.

    ``sink()`` is the factory of each run's ``StopSink`` (a fresh one per attempt;
    a new attempt's trace starts over). ``decisions`` lists the runs stopped."""

    def __init__(self, rule: StopRule, scheduler) -> None:
        if not isinstance(rule, StopRule):
            raise ConfigError(f"stop= takes a stop rule (nx.MedianStop, nx.ASHA), got {rule!r}")
        self.rule = rule.fresh()
        self.scheduler = scheduler
        self.traces: dict[str, Trace] = {}
        self.decisions: list[Decision] = []
        self._lock = threading.Lock()

    def __reduce__(self):
        """Pickled (a run saved for ``resubmit``), a monitor keeps its rule only: a run
        queued again in another process is judged alone, so it is not stopped early."""
        return (_detached, (self.rule,))

    def sink(self) -> StopSink:
        """A new ``StopSink`` for one attempt of one run (pass the method as a sink factory)."""
        return StopSink(self)

    def started(self, run_id: str) -> None:
        with self._lock:
            self.traces[run_id] = Trace()

    def ended(self, run_id: str) -> None:
        with self._lock:
            trace = self.traces.get(run_id)
            if trace is not None:
                trace.done = True

    def observe(self, run_id: str, points) -> None:
        """New points of the rule's metric for ``run_id``: update its trace, ask the rule."""
        with self._lock:
            trace = self.traces.setdefault(run_id, Trace())
            if trace.stopped is not None or trace.done:
                return
            trace.add(points, self.rule.minimize)
            verdict = self.rule.check(run_id, self.traces)
            if verdict is None:
                return
            trace.stopped, why = verdict
            decision = Decision(run_id, trace.stopped, f"{EARLY_STOPPED}{self.rule.label} at step "
                                                       f"{trace.stopped}: {why}", time.time())
            self.decisions.append(decision)
        self._stop(decision)

    def _stop(self, decision: Decision) -> None:
        """Make the run's next ``run.log`` raise ``RunCancelled`` with the reason."""
        if self.scheduler is None:
            return
        job = self.scheduler.job(decision.run_id)
        run = getattr(job, "run", None)
        if job is None or run is None or job.status.terminal:
            return
        run.interrupt(RunCancelled(decision.reason))
        self.scheduler.records.event(job, "early_stopped", decision.reason)


def _detached(rule: StopRule) -> StopMonitor:
    return StopMonitor(rule, None)


class StopSink(Sink):
    """Hands a sweep's ``StopMonitor`` the points of its rule's metric, as the run
    flushes them. Called inline (``threaded = False``): it only updates the trace."""

    name = "sweep_stop"
    threaded = False
    max_pending_rows = None

    def __init__(self, monitor: StopMonitor) -> None:
        self.monitor = monitor
        self.metric = monitor.rule.metric
        self.run_id = ""
        self.settings = SinkSettings(include=[glob.escape(self.metric)], telemetry=False)

    def start_run(self, run) -> None:
        self.run_id = run.run_id
        self.monitor.started(run.run_id)

    def log_metrics(self, batch) -> None:
        for key, points in batch.chunks:
            if key == self.metric:
                self.monitor.observe(batch.run_id, points)

    def end_run(self, status, error) -> None:
        self.monitor.ended(self.run_id)
