"""The ``Sink`` contract.

A sink receives what one run logs. notebook_exp makes one sink instance per run
(from its entry point, or from the class or factory passed in ``sinks=``; an
instance passed there serves one run only, so ``sweep`` and retried ``submit``
refuse one) and calls, in order::

    start_run(run)                    in the thread that starts the run; raising
                                      here fails ``start_run`` loudly
    log_params(params)*  set_tags(tags)*  log_metrics(batch)*
    log_text(...)*  log_histogram(...)*  log_image(...)*  log_artifact(...)*  flush()*
                                      from the sink's own worker thread, in the
                                      order the run logged them
    end_run(status, error)            once, after the last batch
    close()                           once, always, even after a failure

Everything after ``start_run`` runs on one worker thread per sink and run, so a
sink needs no locking of its own and a slow sink never blocks ``run.log`` nor
other sinks. A sink whose methods never block (they only hand work to a queue
of their own, like the DuckDB sink) may set ``threaded = False``: it is then
called inline, in order, from the threads that log, flush and end the run, and
its ``flush()`` only starts making things durable; ``run.flush(timeout)`` then
calls ``wait_flushed(timeout)`` outside every lock, and what that raises
(``StoreUnavailable``, say) reaches the caller of ``run.flush``. A call that raises is retried with backoff (``sink_retries``
times); if it still fails the sink is disabled for the rest of the run with one
warning, and the other sinks lose nothing. Errors from ``end_run``/``close`` are
logged and never replace the run's own outcome.

Backpressure: a sink may hold at most ``max_pending_rows`` points in its queue
(``None``: no bound). Past that, new batches are dropped for that sink, counted,
and reported when the run ends. Only ``log_metrics`` is required.

Settings (``SinkSettings``, which a sink's own ``Settings`` model extends) decide
what reaches it and how it is called, on its worker thread, never in
``run.log``: ``include``/``exclude`` key globs and ``telemetry`` (routing),
``processors``, ``rate``/``burst`` (a rate limit; queued metric batches are
merged into one call), ``breaker_failures``/``breaker_cooldown`` (a circuit
breaker instead of being disabled: its failed call is held and probed until it
succeeds) and ``process`` (run it in the sink host process, off the training
process's GIL). See ``docs/plugins.md`` and ``sinks.dispatch``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .._plugins import Plugin, PluginSettings
from ..models import MetricBatch, RunInfo, RunStatus

__all__ = ["Sink", "SinkSettings"]


class SinkSettings(PluginSettings):
    """What every sink's settings hold: routing, processors and flow control.

    A sink's own ``Settings`` model derives from this one. Set per sink with
    ``NOTEBOOK_EXP_<SINK>_<FIELD>`` (``NOTEBOOK_EXP_TENSORBOARD_INCLUDE="train/*,val/*"``),
    in ``[plugins.<sink>]`` of ``notebook_exp.toml``, or per run:
    ``sinks=[("tensorboard", {"include": ["train/*"]})]``.
    """

    include: list[str] = Field(
        default_factory=list,
        description="Glob patterns (fnmatch) of the keys this sink receives; empty: every key.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of keys this sink never receives (wins over include)."
    )
    telemetry: bool | None = Field(
        None,
        description=(
            "Whether the telemetry keys (sys/*, gpu/<id>/*) reach this sink; "
            "None: the sink's own default (``Sink.wants_telemetry``)."
        ),
    )
    processors: list[Any] = Field(
        default_factory=list,
        description=(
            "Processors applied, in order, to the metrics this sink receives, after the ones "
            "every sink gets: names, (name, options) pairs or Processor instances."
        ),
    )
    rate: float | None = Field(
        None, gt=0, description="Most calls per second made to this sink (GCRA); None: no limit."
    )
    burst: int = Field(1, ge=1, description="Calls the rate limit lets through at once after a pause.")
    breaker_failures: int | None = Field(
        None,
        ge=0,
        description=(
            "Consecutive failed calls that open this sink's circuit breaker; 0: no breaker (a sink "
            "still failing after sink_retries is disabled for the run); None: the sink's default."
        ),
    )
    process: bool | None = Field(
        None,
        description=(
            "Run this sink in the sink host process, off the training process's GIL "
            "(notebook_exp.sinks._host); None: the sink's default (``Sink.isolated``)."
        ),
    )
    breaker_cooldown: float = Field(
        10.0, gt=0, description="Seconds an open breaker waits before it probes the sink with one call."
    )


class Sink(Plugin):
    """Base class of metric sinks; see the module docstring for the contract."""

    #: Entry-point name, filled in by the registry for registered sinks.
    name: ClassVar[str] = ""
    #: Its settings model (a sink with settings of its own derives from ``SinkSettings``).
    Settings: ClassVar[type[SinkSettings]] = SinkSettings
    #: Whether telemetry (``sys/*``, ``gpu/*``) reaches it unless its settings say otherwise.
    wants_telemetry: ClassVar[bool] = False
    #: Consecutive failures that open its breaker unless its settings say otherwise (0: none).
    breaker_failures: ClassVar[int] = 0
    #: Whether it runs in the sink host process unless its settings say otherwise: for
    #: sinks that are busy in Python (it must then be picklable before ``start_run``).
    isolated: ClassVar[bool] = False
    #: Points this sink may have queued before batches are dropped (None: never drop).
    max_pending_rows: ClassVar[int | None] = 1_000_000
    #: False: called inline (the sink's methods must never block); True: its own worker thread.
    threaded: ClassVar[bool] = True

    #: Its settings: set by the registry before ``start_run`` (from the run's options, the
    #: environment and notebook_exp.toml); a sink made by hand gets them on first use.
    _settings: SinkSettings | None = None

    @property
    def settings(self) -> SinkSettings:
        if self._settings is None:
            from .._plugins import settings_for

            self._settings = settings_for(self.name or type(self).__name__.lower(), self.Settings)
        return self._settings

    @settings.setter
    def settings(self, value: SinkSettings) -> None:
        self._settings = value

    def start_run(self, run: RunInfo) -> None:
        """The run starts; raise to refuse it (the run then fails to start)."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Params were set or updated (the full, merged mapping)."""

    def set_tags(self, tags: list[str]) -> None:
        """The run's tags are now ``tags``."""

    def log_metrics(self, batch: MetricBatch) -> None:
        """A batch of points, in logging order within each key."""
        raise NotImplementedError

    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        """A text record."""

    def log_histogram(self, key: str, step: int, ts: float, bin_edges: list[float], counts: list[int]) -> None:
        """A histogram: ``len(bin_edges) == len(counts) + 1``."""

    def log_image(self, key: str, step: int, ts: float, png: bytes, width: int, height: int) -> None:
        """An image, PNG-encoded."""

    def log_artifact(self, name: str, path: str) -> None:
        """A file stored with the run at ``path``."""

    def flush(self) -> None:
        """Make everything received so far durable (``run.flush()`` waits for this)."""

    def wait_flushed(self, timeout: float | None) -> bool:
        """Non-threaded sinks: wait at most ``timeout`` seconds until what ``flush()``
        started is durable; False if it is not in time."""
        return True

    def end_run(self, status: RunStatus, error: str | None) -> None:
        """The run ended; ``error`` is the reason or traceback when it did not complete."""

    def close(self) -> None:
        """Release resources; called once, last."""
