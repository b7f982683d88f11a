"""``nx.runs``: the store's runs table as the notebook's ``RunsTable``.

The query is the store's (``store.queries.runs``, a plain pandas frame); this
notebook-layer wrapper adds the rich view and ``.plot``. Kept apart from
``_inline`` so that ``from notebook_exp import runs`` imports no pandas until called.
"""

from __future__ import annotations

import os

__all__ = ["runs"]


def runs(experiment: str | None = None, status: str | list[str] | None = None, *,
         store: str | os.PathLike | None = None):
    """``nx.runs``: the runs table (one row per run, newest first) as a ``RunsTable``,
    a pandas DataFrame with a rich notebook view and ``.plot(key)`` overlaying the
    runs' curves. Columns: run_id, experiment, name, status, created_at,
    started_at, ended_at, duration (seconds), tags, error, ... then
    ``params.<name>`` for every param and ``metrics.<key>`` for the last value of
    every metric the run logged (telemetry is left out; ``nx.metrics`` has it).
    See ``notebook_exp.store.queries.runs`` for the query."""
    from ._inline import runs_table
    from .store import queries

    frame = queries.runs(experiment, status, store=store)
    return runs_table(frame, queries._store(store).path)
