"""``TelemetrySampler``: the thread that logs the readings of sampled collectors to running runs.

One per process. ``watch(run)`` adds a run; its first sample is due
``FIRST_SAMPLE`` seconds later, then one every ``telemetry_interval`` seconds
until ``unwatch(run)``, which comes before the run's last flush. A run that
ends before its first sample is due has no telemetry: a trivial run would
otherwise store metrics it has none of, which halved how fast the scheduler
drains trivial runs (240 -> 92 runs/s, measured) and slowed GPU hand-offs. A
run that lasted ``FIRST_SAMPLE`` seconds always has a sample: if the sampler
has not got to it yet, ``unwatch`` takes one.

The collectors are those of the run's ``collectors`` (``registry.RunCollectors``:
the sampled ones of the ``collectors`` setting, in start order; built in:
``system``, ``gpu``). A ``shared`` collector's reading (``system``: the
process) serves every run the process holds (thread runs share the kernel's
process) for up to ``MIN_GAP`` seconds; the others are read per run (``gpu``:
the run's own GPUs). A collector that cannot be made or whose reading raises is
skipped for the rest of that run, with one ``collector_failed`` event in it and
one warning per process.
"""

from __future__ import annotations

import logging
import threading
import time

from .._threads import Ticking
from ..store._gil import quick_gil_handoff
from .registry import instance

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
        self._cached: dict[int, tuple[float, dict[str, float]]] = {}  # id(shared collector) -> (when, reading)

    def watch(self, run) -> None:
        """Sample ``run`` from now until :meth:`unwatch` (no-op when its settings turn telemetry
        off or it has no sampled collector)."""
        interval = run.settings.telemetry_interval
        collectors = getattr(run, "collectors", None)
        if not interval or collectors is None or not collectors.sampled():
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
        """The readings of ``run``'s sampled collectors: a shared one's are the process's,
        taken at most every ``MIN_GAP`` seconds; a collector that fails is noted in the
        run and skipped for the rest of it."""
        collectors = run.collectors
        values: dict[str, float] = {}
        with self._sample_lock, quick_gil_handoff():  # psutil's many calls each wait for the GIL
            for entry in collectors.sampled():
                try:
                    collector = instance(entry, run.settings)
                    if entry.cls.shared:
                        now = time.monotonic()
                        cached = self._cached.get(id(collector))
                        if cached is None or now - cached[0] >= min(MIN_GAP, interval):
                            cached = self._cached[id(collector)] = (now, _floats(collector.read(run)))
                        reading = cached[1]
                    else:
                        reading = _floats(collector.read(run))
                except Exception as exc:  # noqa: BLE001 - telemetry must never take a run down
                    collectors.fail(entry.name, exc)
                    continue
                values.update(reading)
        return values


def _floats(reading) -> dict[str, float]:
    """A reading as metric key -> float; ``TypeError``/``ValueError`` for anything else."""
    return {key if key.__class__ is str else str(key): float(value) for key, value in reading.items()}


sampler = TelemetrySampler()
