"""``TelemetrySampler``: the thread that logs system and GPU readings to running runs.

One per process. ``watch(run)`` adds a run; its first sample is due
``FIRST_SAMPLE`` seconds later, then one every ``telemetry_interval`` seconds
until ``unwatch(run)``, which comes before the run's last flush. A run that
ends before its first sample is due has no telemetry: a trivial run would
otherwise store metrics it has none of, which halved how fast the scheduler
drains trivial runs (240 -> 92 runs/s, measured) and slowed GPU hand-offs. A
run that lasted ``FIRST_SAMPLE`` seconds always has a sample: if the sampler
has not got to it yet, ``unwatch`` takes one.

One reading of the process serves every run it holds (thread runs share the
kernel's process) for up to ``MIN_GAP`` seconds; each run also gets the
readings of its own GPUs. A reading that fails is skipped for that run, with
one warning per process.
"""

from __future__ import annotations

import logging
import threading
import time

from .._threads import Ticking
from ..store._gil import quick_gil_handoff
from .gpu import GpuCollector
from .system import SystemCollector

__all__ = ["FIRST_SAMPLE", "TelemetrySampler", "sampler"]

log = logging.getLogger("notebook_exp.collectors")

#: Seconds after a run starts when its first sample is due.
FIRST_SAMPLE = 0.5
#: Seconds a reading of the process serves, however many runs want one meanwhile.
MIN_GAP = 0.5
DEFAULT_INTERVAL = 5.0
STOP_TIMEOUT = 5.0  # a reading stuck in a driver must not hang the interpreter's exit


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
        self._gpus: dict[tuple, GpuCollector] = {}  # by the settings that pick the GPUs
        self._cached: tuple[float, dict[str, float]] | None = None
        self._warned = False

    def watch(self, run) -> None:
        """Sample ``run`` from now until :meth:`unwatch` (no-op when its settings turn telemetry off)."""
        interval = run.settings.telemetry_interval
        if not interval:
            return
        now = time.monotonic()
        with self._lock:
            self._runs[run.run_id] = (run, interval)
            self._due[run.run_id] = now + min(FIRST_SAMPLE, interval)
            self._unsampled[run.run_id] = now
        self.ensure_started()
        self.wake()  # the sampler may be asleep for a whole interval

    def unwatch(self, run) -> None:
        """Stop sampling ``run``; nothing is added to it after this returns. A run
        watched for ``FIRST_SAMPLE`` seconds without a sample gets one now."""
        with self._lock:
            entry = self._runs.pop(run.run_id, None)
            self._due.pop(run.run_id, None)
            since = self._unsampled.pop(run.run_id, None)
        if entry is not None and since is not None and time.monotonic() - since >= min(FIRST_SAMPLE, entry[1]):
            values = self._readings(run, entry[1])
            if values:
                run._log_telemetry(values)

    def watching(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> None:
        super().stop(timeout)

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
            self.step()

    def step(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(run, interval) for run_id, (run, interval) in self._runs.items() if self._due[run_id] <= now]
        for run, interval in due:
            values = self._readings(run, interval)
            with self._lock:  # unwatch waits for this: nothing lands after a run's last flush
                if run.run_id not in self._runs:
                    continue
                self._due[run.run_id] = now + interval
                if values:
                    run._log_telemetry(values)
                    self._unsampled.pop(run.run_id, None)

    def _readings(self, run, interval: float) -> dict[str, float]:
        """The process's readings (shared by its runs for up to ``MIN_GAP`` seconds) and
        those of ``run``'s GPUs; ``{}`` if they cannot be read (warned about once)."""
        try:
            with self._sample_lock, quick_gil_handoff():  # psutil's many calls each wait for the GIL
                now = time.monotonic()
                if self._cached is None or now - self._cached[0] >= min(MIN_GAP, interval):
                    if self._system is None:
                        self._system = SystemCollector()
                    self._cached = (now, self._system.sample())
                process = self._cached[1]
                gpus = self._gpu_collector(run.settings).sample(list(run.gpus), run.gpu_inventory) if run.gpus else {}
            return {**process, **gpus}
        except Exception:  # noqa: BLE001 - telemetry must never take a run down
            if not self._warned:
                self._warned = True
                log.warning("telemetry could not be read; runs go on without it", exc_info=True)
            return {}

    def _gpu_collector(self, settings) -> GpuCollector:
        key = (settings.fake_gpus, tuple(settings.reserved_gpus))
        if key not in self._gpus:
            self._gpus[key] = GpuCollector(settings)
        return self._gpus[key]


sampler = TelemetrySampler()
