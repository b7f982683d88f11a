"""The ``Collector`` contract: what is recorded about a run besides what it logs.

A collector is a plugin of the ``notebook_exp.collectors`` entry-point group (a
:class:`Collector` subclass), registered exactly as the built-ins are::

    [project.entry-points."notebook_exp.collectors"]
    conda = "my_package.collectors:CondaCollector"

It has one of two shapes, chosen by ``sampled``:

* **recorded once** (``sampled = False``: ``environment``, ``git``, ``source``):
  ``collect(context)`` is called once when the run is created and returns
  fields to store with it. A run started with ``start_run`` is created when it
  starts; a scheduled run when it is submitted (in the submitting process, so a
  process run records the kernel's notebook and code, and a retry keeps them).
  A field goes to the ``runs`` column of its name if it is one of
  ``registry.COLUMNS`` (``git``, ``source``), else into ``runs.info`` under its
  name: name it after the collector (``{"environment": {...}}``).
* **sampled** (``sampled = True``: ``system``, ``gpu``): the telemetry thread
  calls ``read(run)`` every ``telemetry_interval`` seconds while the run runs
  and logs the readings as its metrics (``sys/*``, ``gpu/<id>/*``). A ``shared``
  collector describes the whole process: one reading serves every run of the
  process for up to ``telemetry.MIN_GAP`` seconds.

One instance serves every run of the process whose settings give the same
:meth:`Collector.key` (made on first use, from the thread that first needs
it), so a collector may cache what does not change (``environment`` does). Its
``settings`` are those of the run that made it; what each run's own settings
decide is read from ``context.settings`` or ``run.settings``. ``options`` are
the collector's own settings (its ``Settings`` model, from
``NOTEBOOK_EXP_<NAME>_<FIELD>`` and ``[plugins.<name>]``), read at each use.

Which collectors a run uses: the ``collectors`` setting (``NOTEBOOK_EXP_COLLECTORS``,
default every installed one), started in ``plugins.start_order`` of their
``requires``. Failure policy (``registry``): a collector that cannot be loaded,
made, or that raises in ``collect``/``read`` is skipped for that run with one
``collector_failed`` event (``"<name>: <exception>"``); one whose ``libraries``
are missing is skipped quietly with one ``collector_skipped`` event. A run never
fails because of a collector.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

from .._plugins import Plugin, PluginSettings, settings_for
from ..config import Settings, get_settings

__all__ = ["Collector", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """What a collector that records once knows of the run being created."""

    run_id: str
    name: str
    experiment: str
    #: The run's settings.
    settings: Settings
    #: The submitted function (scheduled runs; None for ``start_run``).
    fn: Callable[..., Any] | None = None
    #: Source given with the submission (the cell of a ``%%experiment`` run).
    source: str | None = None
    #: True when the run is being submitted to the scheduler, False when ``start_run`` starts it.
    scheduled: bool = False


class Collector(Plugin):
    """Base of collectors; see the module docstring for the contract."""

    #: True: ``read(run)`` is sampled by the telemetry thread; False: ``collect(context)`` once per run.
    sampled: ClassVar[bool] = False
    #: Sampled collectors only: one reading describes the process and serves all of its runs.
    shared: ClassVar[bool] = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else get_settings()

    @classmethod
    def key(cls, settings: Settings) -> Hashable:
        """Runs whose settings give equal keys share one instance (default: one per process)."""
        return ()

    @property
    def options(self) -> PluginSettings:
        """This collector's own settings (its ``Settings`` model), read now."""
        return settings_for(self.name or type(self).__name__.lower(), self.Settings)

    def collect(self, context: RunContext) -> dict[str, Any]:
        """Fields to store with the run being created (JSON-able values); ``{}`` for none."""
        return {}

    def read(self, run) -> dict[str, float]:
        """One reading for ``run`` (a ``tracking.Run``): metric key -> value."""
        return {}
