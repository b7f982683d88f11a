"""Collectors by name, through the plugin door, and their failure policy.

:func:`enabled` is the list a run uses: the ``collectors`` setting
(``NOTEBOOK_EXP_COLLECTORS``), else every installed collector, in
``plugins.start_order`` of their ``requires`` (requirements on other kinds of
plugin are not collectors' business and are ignored here). It is worked out
once per process for each set of installed plugins and each setting, so a run
pays a dictionary lookup for it.

:class:`RunCollectors` is what one run holds: it calls the ``collect`` of the
collectors that record once, hands the telemetry thread the sampled ones, and
notes each collector that fails in the run's events, once per run and
collector (a process run's retry is a fresh process, which may note it again):

- ``collector_failed`` (``"<name>: <exception>"``, plus one warning per process):
  the plugin does not load, is not a ``Collector``, requires a collector that is
  not enabled, or raised when made, in ``collect`` or in ``read``, or returned
  what cannot be stored. It is skipped for the rest of that run.
- ``collector_skipped`` (quietly): a library it lists in ``libraries`` is missing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .. import _plugins as plugins
from ..config import Settings
from ..exceptions import ConfigError, MissingDependency, NotebookExpError
from .base import Collector, RunContext

__all__ = ["COLUMNS", "FAILED", "SKIPPED", "Entry", "RunCollectors", "enabled", "instance"]

log = logging.getLogger("notebook_exp.collectors")

#: Fields that are ``runs`` columns of their own (the rest go into ``runs.info``).
COLUMNS = ("git", "source")
FAILED = "collector_failed"
SKIPPED = "collector_skipped"
_NOTED_MAX = 100_000  # (run, collector) pairs remembered, so a thread run's retry does not note again


@dataclass(frozen=True)
class Entry:
    """One collector a run uses: its class, or why it is skipped (``event``, ``problem``)."""

    name: str
    cls: type[Collector] | None
    problem: str | None = None
    event: str = FAILED


_lock = threading.Lock()
_enabled: dict[tuple, tuple[Entry, ...]] = {}
_instances: dict[tuple, Collector] = {}
_warned: set[str] = set()
_noted: OrderedDict[tuple[str, str], None] = OrderedDict()


def enabled(settings: Settings) -> tuple[Entry, ...]:
    """The collectors of runs with ``settings``: those that cannot be used first, then
    the others in start order."""
    installed = tuple((name, plugins.entry_point("collector", name).value) for name in plugins.names("collector"))
    wanted = tuple(dict.fromkeys(settings.collectors)) if settings.collectors is not None else None
    key = (installed, wanted)
    found = _enabled.get(key)
    if found is None:
        found = _enabled[key] = _resolve([name for name, _ in installed] if wanted is None else list(wanted))
    return found


def _resolve(names: list[str]) -> tuple[Entry, ...]:
    entries = [_load(name) for name in names]
    usable = {e.name: e for e in entries if e.cls is not None}
    skipped = [e for e in entries if e.cls is None]
    changed = True
    while changed:  # drop those whose requirements are not usable, until none is left to drop
        changed = False
        for name, entry in list(usable.items()):
            missing = [dep for dep in _requires(entry.cls) if dep not in usable]
            if missing:
                del usable[name]
                skipped.append(Entry(name, None, f"requires collector {missing[0]!r}, which is not enabled"))
                changed = True
    try:
        order = [name for _kind, name in plugins.start_order(
            [("collector", name, _requires(e.cls)) for name, e in usable.items()])]
    except ConfigError as exc:  # a cycle: those that require anything are left out
        order = [name for name, e in usable.items() if not _requires(e.cls)]
        skipped += [Entry(name, None, str(exc)) for name, e in usable.items() if _requires(e.cls)]
    return (*skipped, *(usable[name] for name in order))


def _requires(cls: type[Collector]) -> tuple[str, ...]:
    deps = []
    for req in cls.requires:
        kind, _, name = req.rpartition(":")
        if kind in ("", "collector"):
            deps.append(name)
    return tuple(deps)


def _load(name: str) -> Entry:
    try:
        return Entry(name, plugins.load("collector", name, Collector))
    except MissingDependency as exc:
        about = plugins.info("collector", name)
        why = f"{about.problem}; {about.install}" if about.problem and about.install else str(exc)
        return Entry(name, None, why, SKIPPED)
    except Exception as exc:  # noqa: BLE001 - unknown, broken, not a Collector: skipped, never fatal
        return Entry(name, None, _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NotebookExpError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def instance(entry: Entry, settings: Settings) -> Collector:
    """The process's instance of ``entry``'s collector for runs with ``settings`` (made on first use)."""
    cls = entry.cls
    key = (entry.name, cls, cls.key(settings))
    found = _instances.get(key)
    if found is None:
        with _lock:
            found = _instances.get(key)
            if found is None:
                found = _instances[key] = cls(settings)
    return found


def _first_note(run_id: str, name: str) -> bool:
    with _lock:
        if (run_id, name) in _noted:
            return False
        _noted[(run_id, name)] = None
        if len(_noted) > _NOTED_MAX:
            _noted.popitem(last=False)
        return True


class RunCollectors:
    """The collectors of one run. ``created``: the run is being created here (started
    by ``start_run``, or submitted), so collectors that cannot be used are noted now;
    a scheduled run starting got those notes when it was submitted. Notes wait
    until :meth:`report` (after the run's row is queued), then are written at once."""

    def __init__(self, run_id: str, settings: Settings, records, *, created: bool = True) -> None:
        self.run_id = run_id
        self.settings = settings
        self.records = records
        self.entries = enabled(settings)
        self._off: set[str] = set()
        self._pending: list[tuple[str, str]] | None = []
        for entry in self.entries:
            if entry.cls is None:
                self._off.add(entry.name)
                if created:
                    self.fail(entry.name, entry.problem or "cannot be used", entry.event)

    def collect(self, context: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """Call every usable collector that records once; returns the fields for
        ``runs`` columns (``COLUMNS``) and those for ``runs.info``."""
        columns: dict[str, Any] = {}
        info: dict[str, Any] = {}
        for entry in self.entries:
            if entry.name in self._off or entry.cls.sampled:
                continue
            try:
                fields = instance(entry, self.settings).collect(context) or {}
                _check(fields)
            except Exception as exc:  # noqa: BLE001 - a collector never fails a run
                self.fail(entry.name, exc)
                continue
            for field, value in fields.items():
                (columns if field in COLUMNS else info)[field] = value
        return columns, info

    def sampled(self) -> list[Entry]:
        """The sampled collectors still in use for this run, in start order."""
        return [e for e in self.entries if e.name not in self._off and e.cls.sampled]

    def fail(self, name: str, problem: BaseException | str, event: str = FAILED) -> None:
        """Skip collector ``name`` for the rest of this run; note why in its events (once)."""
        self._off.add(name)
        if not _first_note(self.run_id, name):
            return
        text = problem if isinstance(problem, str) else _describe(problem)
        if event == FAILED and name not in _warned:
            _warned.add(name)
            log.warning("collector %r failed (%s); runs go on without it", name, text,
                        exc_info=problem if isinstance(problem, BaseException) else None)
        detail = f"{name}: {text}"
        if self._pending is None:
            self.records.event(self.run_id, event, detail)
        else:
            self._pending.append((event, detail))

    def report(self) -> None:
        """Write the notes held so far (the run's row is queued now); later ones go at once."""
        pending, self._pending = self._pending or [], None
        for event, detail in pending:
            self.records.event(self.run_id, event, detail)


def _check(fields: Any) -> None:
    """``TypeError`` unless ``fields`` is a mapping of names to JSON-able values, with
    ``git`` a mapping and ``source`` text."""
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        raise TypeError(f"collect() must return a dict of field names to values, not {type(fields).__name__}")
    if fields.get("source") is not None and not isinstance(fields["source"], str):
        raise TypeError("the source field must be text")
    if fields.get("git") is not None and not isinstance(fields["git"], dict):
        raise TypeError("the git field must be a dict")
    json.dumps(fields)  # what cannot be stored fails here, with this collector's name, not in the writer
