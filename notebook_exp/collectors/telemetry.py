"""``TelemetrySampler``: the thread that logs system and GPU readings to running runs.

One per process. ``watch(run)`` adds a run (its first sample comes at once,
from the sampler's thread), ``unwatch(run)`` removes it before the run's last
flush; in between every run is sampled every ``telemetry_interval`` seconds.
A run that lasted ``MIN_SAMPLED_RUN`` seconds or more always has a sample:
one that ends before the sampler got to it is sampled by ``unwatch``. Shorter
runs are sampled only if the sampler got to them (a sample would make a
trivial run store metrics it otherwise has none of: the scheduler drained
1,000 trivial runs at 92 runs/s instead of 240, measured).
One reading of the process serves every run it holds (thread runs share the
kernel's process); each run also gets the readings of its own GPUs.
"""

from __future__ import annotations

import logging
import threading
import time

from .._threads import Ticking
from .gpu import GpuCollector
from .system import SystemCollector

__all__ = ["TelemetrySampler", "sampler"]

log = logging.getLogger("notebook_exp.collectors")

#: Seconds a reading of the process serves, however many runs start meanwhile.
MIN_GAP = 0.5
#: Runs watched this long get a sample at their end if they have none yet.
MIN_SAMPLED_RUN = 0.5
DEFAULT_INTERVAL = 5.0


class TelemetrySampler(Ticking):
    """Samples every watched run; see the module docstring."""

    thread_name = "notebook_exp-telemetry"

    def __init__(self) -> None:
        super().__init__(DEFAULT_INTERVAL)
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[object, float]] = {}  # run_id -> (run, its interval)
        self._due: dict[str, float] = {}  # run_id -> monotonic time of its next sample
        self._unsampled: dict[str, float] = {}  # run_id -> when it was watched
        self._sample_lock = threading.Lock()
        self._system: SystemCollector | None = None
        self._gpus: GpuCollector | None = None
        self._cached: tuple[float, dict[str, float]] | None = None

    def watch(self, run) -> None:
        """Sample ``run`` from now until :meth:`unwatch` (no-op when its settings turn telemetry off)."""
        interval = run.settings.telemetry_interval
        if not interval:
            return
        with self._lock:
            self._runs[run.run_id] = (run, interval)
            self._due[run.run_id] = 0.0
            self._unsampled[run.run_id] = time.monotonic()
            if self._gpus is None:
                self._gpus = GpuCollector(run.settings)
        self.ensure_started()
        self.wake()

    def unwatch(self, run) -> None:
        """Stop sampling ``run``; nothing is added to it after this returns. A run
        watched for ``MIN_SAMPLED_RUN`` seconds without a sample gets one now."""
        with self._lock:
            self._runs.pop(run.run_id, None)
            self._due.pop(run.run_id, None)
            since = self._unsampled.pop(run.run_id, None)
        if since is not None and time.monotonic() - since >= MIN_SAMPLED_RUN:
            try:
                run._log_telemetry(self._readings(run))
            except Exception:  # noqa: BLE001 - telemetry must never take a run down
                log.warning("telemetry sampling failed", exc_info=True)

    def watching(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def _loop(self) -> None:
        while True:
            with self._lock:
                next_due = min(self._due.values(), default=None)
            wait = self.interval if next_due is None else next_due - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:  # noqa: BLE001 - telemetry must never take a run down
                log.warning("telemetry sampling failed", exc_info=True)
                self._stop.wait(MIN_GAP)

    def step(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [run for run_id, (run, _i) in self._runs.items() if self._due[run_id] <= now]
        for run in due:
            values = self._readings(run)
            with self._lock:  # unwatch waits for this: nothing lands after a run's last flush
                if run.run_id not in self._runs:
                    continue
                run._log_telemetry(values)
                self._unsampled.pop(run.run_id, None)
                self._due[run.run_id] = now + self._runs[run.run_id][1]

    def _readings(self, run) -> dict[str, float]:
        """The process's readings (taken at most every ``MIN_GAP`` seconds, shared by
        its runs) and those of ``run``'s GPUs."""
        with self._sample_lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= MIN_GAP:
                if self._system is None:
                    self._system = SystemCollector()
                self._cached = (now, self._system.sample())
            process = self._cached[1]
            gpus = self._gpus.sample(list(run.gpus)) if self._gpus is not None else {}
        return {**process, **gpus}


sampler = TelemetrySampler()
