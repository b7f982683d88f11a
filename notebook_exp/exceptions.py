"""The one error tree of notebook_exp.

Every error the package raises on purpose derives from ``NotebookExpError``;
errors from DuckDB, NVML and plugins are translated at one boundary each.
Some also derive from the builtin a caller would naturally catch::

    NotebookExpError
    ├── ConfigError                 bad settings or arguments        (+ ValueError)
    ├── InvalidMetric               a value or key run.log can't take (+ TypeError)
    ├── MissingDependency           an optional extra is not installed (+ ImportError)
    ├── StoreError                  the DuckDB store cannot be used
    │   ├── StoreLocked             another process holds the file (names its PID)
    │   └── StoreUnavailable        the store cannot be written now (full disk, I/O error)
    ├── SinkError                   a sink plugin failed to load or start
    ├── RunInterrupted              raised inside a run by its next run.log()
    │   ├── RunCancelled
    │   └── RunTimedOut
    ├── RunFailed                   job.result() of a run that failed (carries the traceback)
    └── GpuUnavailable              NVML failed, or no GPU can be leased
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GpuUnavailable",
    "InvalidMetric",
    "MissingDependency",
    "NotebookExpError",
    "RunCancelled",
    "RunFailed",
    "RunInterrupted",
    "RunTimedOut",
    "SinkError",
    "StoreError",
    "StoreLocked",
    "StoreUnavailable",
]


class NotebookExpError(Exception):
    """Root of every error notebook_exp raises on purpose."""


class ConfigError(NotebookExpError, ValueError):
    """Settings, arguments or specs that cannot be used."""


class InvalidMetric(NotebookExpError, TypeError):
    """A metric value that is not a real number, or a key that cannot be stored."""


class MissingDependency(NotebookExpError, ImportError):
    """An optional integration is used without its extra installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with: pip install 'notebook-exp[{extra}]'"
        )


class StoreError(NotebookExpError):
    """The DuckDB store cannot be opened, created or written."""


class StoreLocked(StoreError):
    """Another process holds the store's file lock for longer than we waited."""

    def __init__(self, path: str, pid: int | None, waited: float) -> None:
        self.path = path
        self.pid = pid
        self.waited = waited
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"store {path} is locked by {holder}; gave up after {waited:.1f} s "
            "(a reader that keeps the file open blocks writers: close it)"
        )


class StoreUnavailable(StoreError):
    """The store cannot be written now (a full disk, an I/O error): ``pending`` points
    are held in memory and retried, ``spilled`` are in a spill (``spill_path``)."""

    def __init__(self, path: str, reason: str, pending: int, spilled: int = 0, spill_path=None) -> None:
        self.path = path
        self.reason = reason
        self.pending = pending
        self.spilled = spilled
        self.spill_path = spill_path
        where = f"; {spilled:,} points are in spill {spill_path}" if spilled else ""
        super().__init__(
            f"store {path} cannot be written ({reason}): {pending:,} points are held in memory and "
            f"retried{where}; they are stored when the store can be written again"
        )


class SinkError(NotebookExpError):
    """A sink plugin could not be found, loaded or started."""


class RunInterrupted(NotebookExpError):
    """Raised inside a run (at its next ``run.log``) to stop it."""


class RunCancelled(RunInterrupted):
    """The run was cancelled."""


class RunTimedOut(RunInterrupted):
    """The run passed its timeout."""


class RunFailed(NotebookExpError):
    """A scheduled run failed; ``error`` holds its reason or traceback."""

    def __init__(self, run_id: str, error: str) -> None:
        self.run_id = run_id
        self.error = error
        last = error.strip().splitlines()[-1] if error.strip() else "no reason recorded"
        super().__init__(f"run {run_id} failed: {last}")


class GpuUnavailable(NotebookExpError):
    """NVML could not be used, or the GPUs asked for cannot be leased."""
