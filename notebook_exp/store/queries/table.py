"""The runs table: the one builder of every list of runs (``nx.runs``, ``notebook-exp
runs``, the viewer's Runs page).

One row per run, newest first; the run's own columns, then its params and its
metric summaries as columns. A ``RunsLayout`` says how each is shown:

- ``API_LAYOUT`` (``nx.runs``): the run's columns as stored, ``duration`` in
  seconds, ``sweep_id`` (the sweep of ``nx.sweep`` the run belongs to, else
  None); ``params.<name>`` holding each param's JSON value as Python (int,
  float, str, list ...); ``metrics.<key>`` the last value of a metric.
- ``LIST_LAYOUT`` (the viewer): display columns (GPUs and tags as text; ``sweep``,
  ``run_id`` and ``created`` last); ``last:<key>`` and ``best:<key>`` per metric;
  then ``param:<name>`` typed in DuckDB (numbers as DOUBLE, anything else as text).

Nested params are flat there, one column per leaf with a dotted name
(``params.optim.lr``, ``param:optim.lr``); lists stay values (``paths``).

Listing reads ``runs`` and ``metric_summary`` only, never ``metrics``. The
metrics shown are ``keys`` (joined in DuckDB, one LEFT JOIN per key: fastest
for the few keys a page shows), or with ``keys=None`` every key the runs
logged but telemetry (read in long form, pivoted in pandas after the file is
released: it scales with many keys). The queries run in one read session; the
frame is shaped after it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ...models import telemetry_sql
from .._host import utcnow
from .access import Reader, reader
from .filters import ALL_RUNS, RunFilter
from .fragments import DURATION, PARAM_NUMBER, PARAM_TEXT, SUMMARY_COLUMNS, SWEEP_ID
from .paths import flatten, param_paths

__all__ = ["API_LAYOUT", "LIST_LAYOUT", "RunsLayout", "best_goal", "empty_runs_table", "runs", "runs_table"]

_LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|rmse|nll|perplexity|ppl|wer|cer|time|latency|regret", re.I)
RUN_ORDER = "ORDER BY runs.created_at DESC, runs.run_id"
PARAM_NAMES_SQL = "SELECT json_group_structure(runs.params) FROM runs {where}"
SUMMARIES_SQL = f"""
SELECT s.run_id, s.key, {{columns}} FROM metric_summary s
WHERE s.run_id IN (SELECT runs.run_id FROM runs {{where}}) AND NOT {telemetry_sql('s.key')}
"""


@dataclass(frozen=True)
class RunsLayout:
    """How a runs table shows a run: its columns, its params and its metrics."""

    select: str  # the run's columns: fixed SQL whose one ``?`` is now (UTC)
    columns: tuple[str, ...]  # their names in the frame
    last: tuple[str, ...]  # those of them shown after the params and metrics
    param_prefix: str
    typed_params: bool  # params as DuckDB columns (DOUBLE or text); else their JSON values, parsed in pandas
    aggregates: tuple[tuple[str, str], ...]  # (column prefix, "last", "min", "max" or "best") per metric
    metrics_first: bool  # metric columns before param columns


API_LAYOUT = RunsLayout(
    select=f"""runs.run_id, runs.experiment, runs.name, runs.status, runs.created_at, runs.started_at,
               runs.ended_at, {DURATION} AS duration, runs.tags, runs.error, runs.attempts,
               runs.priority, runs.executor, runs.gpus, runs.dropped, {SWEEP_ID} AS sweep_id""",
    columns=("run_id", "experiment", "name", "status", "created_at", "started_at", "ended_at", "duration",
             "tags", "error", "attempts", "priority", "executor", "gpus", "dropped", "sweep_id"),
    last=(), param_prefix="params.", typed_params=False, aggregates=(("metrics.", "last"),), metrics_first=False,
)
LIST_LAYOUT = RunsLayout(
    select=f"""runs.name, runs.experiment, runs.status, runs.started_at AS started, {DURATION} AS duration,
               coalesce(array_to_string(runs.gpus, ','), '') AS gpus,
               coalesce(array_to_string(runs.tags, ', '), '') AS tags,
               coalesce({SWEEP_ID}, '') AS sweep, runs.run_id, runs.created_at AS created""",
    columns=("name", "experiment", "status", "started", "duration", "gpus", "tags", "sweep", "run_id", "created"),
    last=("sweep", "run_id", "created"), param_prefix="param:", typed_params=True,
    aggregates=(("last:", "last"), ("best:", "best")), metrics_first=True,
)


def best_goal(key: str) -> str:
    """``"min"`` for metrics where lower is better (loss, error, time...), else ``"max"``."""
    return "min" if _LOWER_IS_BETTER.search(key) else "max"


def _summary_column(aggregate: str, key: str) -> str:
    return SUMMARY_COLUMNS[best_goal(key) if aggregate == "best" else aggregate]


def runs_table(read: Reader, where: RunFilter = ALL_RUNS, *, layout: RunsLayout = API_LAYOUT,
               keys: Sequence[str] | None = None, now: datetime | None = None):
    """The runs table (pandas) of the runs ``where`` selects, newest first (see the module
    docstring); ``read`` runs its queries in one session (``access.Reader``); no store
    gives ``empty_runs_table``. ``now`` (UTC, default now) ends running runs' durations."""
    clause, args = where.where()
    fetched = read(lambda conn: _fetch(conn, clause, args, layout, keys, now or utcnow()))
    if fetched is None:
        return empty_runs_table(layout, keys)
    return _shape(*fetched, layout)


def _fetch(conn, where: str, args: list, layout: RunsLayout, keys, now):
    """The run rows (param and joined metric columns under positional aliases) and, without
    ``keys``, every non-telemetry summary, as pyarrow tables; and the aliases' names."""
    params = param_paths(conn.execute(PARAM_NAMES_SQL.format(where=where), args).fetchall()[0][0]) \
        if layout.typed_params else []
    select, select_args, joins, join_args, names = [layout.select], [now], [], [], {}
    if not layout.typed_params:
        select.append("runs.params")
    for j, key in enumerate(keys or ()):
        joins.append(f"LEFT JOIN metric_summary s{j} ON s{j}.run_id = runs.run_id AND s{j}.key = ?")
        join_args.append(key)
        for i, (prefix, aggregate) in enumerate(layout.aggregates):
            select.append(f"s{j}.{_summary_column(aggregate, key)} AS m{j}_{i}")
            names[f"m{j}_{i}"] = prefix + key
    for i, (name, pointer, numeric) in enumerate(params):
        select.append(f"{PARAM_NUMBER if numeric else PARAM_TEXT} AS p{i}")
        select_args.append(pointer)
        names[f"p{i}"] = layout.param_prefix + name
    rows = conn.sql(f"SELECT {', '.join(select)} FROM runs {' '.join(joins)} {where} {RUN_ORDER}",
                    params=select_args + join_args + args).to_arrow_table()
    summaries = None
    if keys is None:
        columns = sorted({c for _prefix, a in layout.aggregates
                          for c in ((SUMMARY_COLUMNS["min"], SUMMARY_COLUMNS["max"]) if a == "best"
                                    else (SUMMARY_COLUMNS[a],))})
        summaries = conn.sql(SUMMARIES_SQL.format(columns=", ".join(f"s.{c}" for c in columns), where=where),
                             params=args).to_arrow_table()
    return rows, names, summaries


def _shape(rows, names: dict, summaries, layout: RunsLayout):
    import pandas as pd

    frame = rows.to_pandas().rename(columns=names)
    parts = [frame]
    if not layout.typed_params:
        params = [flatten(json.loads(p) if isinstance(p, str) else (p or {})) for p in frame.pop("params")]
        parts.append(pd.DataFrame(params, index=frame.index).add_prefix(layout.param_prefix))
    if summaries is not None and summaries.num_rows:
        parts.append(_pivot(summaries.to_pandas(), layout).reindex(frame["run_id"]).set_axis(frame.index))
    if len(parts) > 1:
        frame = pd.concat(parts, axis=1)
    return _order_columns(frame, layout)


def _pivot(summaries, layout: RunsLayout):
    """One column per key (sorted) and aggregate of the layout, indexed by run id."""
    import pandas as pd

    wide = summaries.pivot(index="run_id", columns="key")
    keys = sorted(set(summaries["key"]))
    return pd.DataFrame({prefix + key: wide[(_summary_column(aggregate, key), key)]
                         for key in keys for prefix, aggregate in layout.aggregates}, index=wide.index)


def _order_columns(frame, layout: RunsLayout):
    run = [c for c in layout.columns if c not in layout.last]
    params = [c for c in frame.columns if c.startswith(layout.param_prefix)]
    metrics = [c for c in frame.columns if c not in layout.columns and not c.startswith(layout.param_prefix)]
    middle = metrics + params if layout.metrics_first else params + metrics
    return frame[run + middle + list(layout.last)]


def empty_runs_table(layout: RunsLayout = API_LAYOUT, keys: Sequence[str] | None = None):
    """A runs table with no rows (no store yet): the layout's run columns, and those of ``keys``."""
    import pandas as pd

    columns = {c: pd.Series([], dtype="object") for c in layout.columns}
    for key in keys or ():
        for prefix, _aggregate in layout.aggregates:
            columns[prefix + key] = pd.Series([], dtype="float64")
    return _order_columns(pd.DataFrame(columns), layout)


def runs(experiment: str | None = None, status: str | list[str] | None = None, *,
         store: str | os.PathLike | None = None):
    """The runs table: one row per run, newest first, as a pandas DataFrame
    (``nx.runs`` wraps it in a ``RunsTable``, which renders richly and plots).

    Columns: run_id, experiment, name, status, created_at, started_at,
    ended_at, duration (seconds), tags, error, ... then ``params.<name>`` for
    every param and ``metrics.<key>`` for the last value of every metric the
    run logged (telemetry, ``notebook_exp.collectors.SYSTEM_KEYS`` and
    ``gpu/<id>/<reading>``, is in ``nx.metrics``).
    """
    statuses = None if status is None else [str(s) for s in ([status] if isinstance(status, str) else status)]
    where = RunFilter(experiments=None if experiment is None else [experiment], statuses=statuses)
    return runs_table(reader(store), where, layout=API_LAYOUT)
