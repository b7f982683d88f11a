"""SQL and frame shaping for :class:`~notebook_exp_viewer.state.ViewerState`.

Every function here takes an open connection (the state opens one short
read-only session per call) and only fixed SQL text: user values always
travel as ``?`` parameters. Listing runs reads ``runs`` and ``metric_summary``
only; ``metrics`` is read for charts, downsampled in DuckDB to at most two
points (min and max) per pixel bucket so spikes survive.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

__all__ = [
    "BASE_COLUMNS", "best_goal", "downsample", "empty_runs", "facets", "json_pointer", "list_runs",
    "param_column", "series_extents",
]

BASE_COLUMNS = ["name", "experiment", "status", "started", "duration", "gpus", "tags", "run_id", "created"]
STATUSES = ["queued", "running", "completed", "failed", "cancelled"]
_LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|rmse|nll|perplexity|ppl|wer|cer|time|latency|regret", re.I)

BASE_SELECT = """
runs.name, runs.experiment, runs.status, runs.started_at AS started,
epoch(coalesce(runs.ended_at, ?::TIMESTAMP) - runs.started_at) AS duration,
coalesce(array_to_string(runs.gpus, ','), '') AS gpus,
coalesce(array_to_string(runs.tags, ', '), '') AS tags,
runs.run_id, runs.created_at AS created"""
NUMERIC_JSON = {"UBIGINT", "BIGINT", "DOUBLE", "HUGEINT", "UHUGEINT"}
BEST_COLUMN = {"min": "min_value", "max": "max_value"}

X_EXPRESSIONS = {
    # x axis kinds: fixed SQL fragments, chosen by a whitelisted name
    "step": "m.step",
    "wall": "epoch_ms(m.ts)",
    "relative": "(epoch_ms(m.ts) - sel.off) / 1000.0",
}

FAST_X = {"step": "m.step", "wall": "epoch_ms(m.ts)"}  # integer x: integer bucket arithmetic
RAW_RANGES = {
    # the window as a constant range on the stored column, so DuckDB skips row groups outside it
    "step": "m.step >= ? AND m.step < ?",
    "wall": "m.ts >= epoch_ms(?::BIGINT) AND m.ts < epoch_ms(?::BIGINT)",
    "relative": "m.ts >= epoch_ms(?::BIGINT) AND m.ts < epoch_ms(?::BIGINT)",
}

# Whole runs on a step or wall-time axis: the common, big case (Compare of many long runs).
# Runs are grouped by their position in the list (an integer) rather than by id.
FAST_DOWNSAMPLE_SQL = """
WITH sel AS (SELECT unnest(?::VARCHAR[]) AS run_id, generate_subscripts(?::VARCHAR[], 1) - 1 AS ri)
SELECT sel.ri, {key_column}({x} - ?) * ? // ? AS bucket,
       arg_min({x}, m.value) AS x_lo, min(m.value) AS lo, arg_max({x}, m.value) AS x_hi, max(m.value) AS hi
FROM metrics m JOIN sel ON m.run_id = sel.run_id
WHERE {key_filter} AND {raw} AND isfinite(m.value)
GROUP BY ALL ORDER BY ALL
"""

# Per-series offsets (relative time) or lower bounds (a live chart's tail): join a small table.
JOINED_DOWNSAMPLE_SQL = """
WITH sel AS (
    SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::VARCHAR[]) AS key,
           unnest(?::DOUBLE[]) AS off, unnest(?::DOUBLE[]) AS after
),
pts AS (
    SELECT m.run_id, m.key, {x} AS x, m.value, sel.after
    FROM metrics m JOIN sel ON m.run_id = sel.run_id AND m.key = sel.key
    WHERE {raw} AND isfinite(m.value)
)
SELECT run_id, key, least(floor((x - ?) * ? / ?), ? - 1)::BIGINT AS bucket,
       arg_min(x, value) AS x_lo, min(value) AS lo, arg_max(x, value) AS x_hi, max(value) AS hi
FROM pts WHERE x BETWEEN ? AND ? AND x > after
GROUP BY ALL ORDER BY ALL
"""

EXTENTS_SQL = """
SELECT s.run_id, s.key, s.first_step, s.last_step, epoch_ms(r.started_at), epoch_ms(s.last_ts)
FROM metric_summary s JOIN runs r ON r.run_id = s.run_id
WHERE s.run_id IN (SELECT unnest(?::VARCHAR[])) AND s.key IN (SELECT unnest(?::VARCHAR[]))
"""


def best_goal(key: str) -> str:
    """``"min"`` for metrics where lower is better (loss, error, time...), else ``"max"``."""
    return "min" if _LOWER_IS_BETTER.search(key) else "max"


def param_column(name: str) -> str:
    return f"param:{name}"


def facets(conn) -> dict[str, list[str]]:
    """The values the filter widgets offer: experiments, statuses, tags, params, metrics."""
    def column(sql: str) -> list[str]:
        return [row[0] for row in conn.execute(sql).fetchall() if row[0] is not None]

    found = column("SELECT DISTINCT status FROM runs")
    return {
        "experiments": column("SELECT DISTINCT experiment FROM runs ORDER BY 1"),
        "statuses": [s for s in STATUSES if s in found] + sorted(set(found) - set(STATUSES)),
        "tags": column("SELECT DISTINCT t FROM (SELECT unnest(tags) AS t FROM runs) ORDER BY 1"),
        "params": column(
            "SELECT DISTINCT k FROM (SELECT unnest(json_keys(params)) AS k FROM runs) ORDER BY 1"
        ),
        "metrics": column("SELECT DISTINCT key FROM metric_summary ORDER BY 1"),
    }


def list_runs(conn, where: str, args: list, now, keys: list[str], run_ids: list[str] | None = None):
    """The runs table for a WHERE clause (from the filters), newest first.

    Columns: ``BASE_COLUMNS`` (``run_id`` and hidden ``created`` last),
    ``last:<key>``/``best:<key>`` from ``metric_summary`` for each of ``keys``
    and ``param:<name>`` for every param of the listed runs (numbers as
    floats, anything else as text). Everything is shaped in DuckDB; names
    and values only ever travel as ``?`` parameters.
    """
    clauses, where_args = ([where], list(args)) if where else ([], [])
    if run_ids is not None:
        clauses.append("runs.run_id IN (SELECT unnest(?::VARCHAR[]))")
        where_args.append(list(run_ids))
    where_sql = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    structure = conn.execute(f"SELECT json_group_structure(runs.params) FROM runs {where_sql}",
                             where_args).fetchone()[0]
    params = _param_kinds(structure)
    select, select_args, joins, join_args, names = [BASE_SELECT], [now], [], [], {}
    for j, key in enumerate(keys):
        joins.append(f"LEFT JOIN metric_summary s{j} ON s{j}.run_id = runs.run_id AND s{j}.key = ?")
        join_args.append(key)
        select.append(f"s{j}.last_value AS m{j}_last, s{j}.{BEST_COLUMN[best_goal(key)]} AS m{j}_best")
        names.update({f"m{j}_last": f"last:{key}", f"m{j}_best": f"best:{key}"})
    for i, (name, numeric) in enumerate(params):
        text = "json_extract_string(runs.params, ?)"
        select.append(f"{f'TRY_CAST({text} AS DOUBLE)' if numeric else text} AS p{i}")
        select_args.append(json_pointer(name))
        names[f"p{i}"] = param_column(name)
    sql = (f"SELECT {', '.join(select)} FROM runs {' '.join(joins)} {where_sql} "
           "ORDER BY runs.created_at DESC, runs.run_id")
    frame = conn.execute(sql, select_args + join_args + where_args).df().rename(columns=names)
    return _order_columns(frame)


def _param_kinds(structure: str | None) -> list[tuple[str, bool]]:
    """(name, is numeric) for each param in a ``json_group_structure`` result, sorted by name."""
    try:
        shape = json.loads(structure) if structure else {}
    except ValueError:
        return []
    if not isinstance(shape, dict):
        return []
    return sorted((name, kind in NUMERIC_JSON) for name, kind in shape.items())


def json_pointer(name: str) -> str:
    """The JSON pointer (RFC 6901) of a top-level key, for json_extract's path argument."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _order_columns(frame: pd.DataFrame) -> pd.DataFrame:
    head, tail = BASE_COLUMNS[:7], BASE_COLUMNS[7:]
    middle = [c for c in frame.columns if c not in BASE_COLUMNS]
    metrics = [c for c in middle if not c.startswith("param:")]
    params = [c for c in middle if c.startswith("param:")]
    return frame[head + metrics + params + tail]


def empty_runs(keys: list[str]) -> pd.DataFrame:
    """A runs table with no rows (no store yet)."""
    columns = {c: pd.Series([], dtype="object") for c in BASE_COLUMNS}
    for key in keys:
        columns[f"last:{key}"] = pd.Series([], dtype="float64")
        columns[f"best:{key}"] = pd.Series([], dtype="float64")
    return _order_columns(pd.DataFrame(columns))


def series_extents(conn, run_ids: list[str], keys: list[str], x: str):
    """Per (run, key): its (first, last) x from ``metric_summary``; and each run's start (epoch ms)."""
    extents, starts = {}, {}
    for run_id, key, first, last, start, last_ms in conn.execute(EXTENTS_SQL, [list(run_ids), list(keys)]).fetchall():
        start = float(start) if start is not None else float(last_ms or 0)
        starts[run_id] = start
        if x == "step":
            extents[(run_id, key)] = (float(first), float(last))
        elif x == "wall":
            extents[(run_id, key)] = (start, float(last_ms))
        else:
            extents[(run_id, key)] = (0.0, (float(last_ms) - start) / 1000.0)
    return extents, starts


def downsample(conn, pairs, starts, x: str, window: tuple[float, float], width: int, after=None) -> pd.DataFrame:
    """Points of each (run, key) in ``pairs`` inside ``window``: min and max per bucket.

    The window is cut into ``width`` buckets; each bucket contributes its
    lowest and highest point (one point when it holds one), so at most
    ``2 * width`` points come back per run and key, and a spike always does.
    ``after`` maps a pair to an x its points must exceed (a live chart's tail).
    """
    if not pairs:
        return _bucket_points(None)
    if x in FAST_X and not after:
        return _fast_downsample(conn, pairs, x, window, width)
    x0, x1 = window
    after = after or {}
    lows = [after.get(pair, -math.inf) for pair in pairs]
    offs = [starts.get(run_id, 0.0) for run_id, _key in pairs]
    sql = JOINED_DOWNSAMPLE_SQL.format(x=X_EXPRESSIONS[x], raw=RAW_RANGES[x])
    args = [[p[0] for p in pairs], [p[1] for p in pairs], offs, lows, *_raw_range(x, x0, x1, lows, offs),
            x0, float(width), max(x1 - x0, 1e-9), float(width), x0, x1]
    return _bucket_points(conn.execute(sql, args).fetchnumpy())


def _fast_downsample(conn, pairs, x: str, window: tuple[float, float], width: int) -> pd.DataFrame:
    run_ids = sorted({p[0] for p in pairs})
    keys = sorted({p[1] for p in pairs})
    lo, hi = int(math.floor(window[0])), int(math.floor(window[1]))
    one_key = len(keys) == 1
    sql = FAST_DOWNSAMPLE_SQL.format(
        x=FAST_X[x], raw=RAW_RANGES[x],
        key_column="" if one_key else "m.key, ",
        key_filter="m.key = ?" if one_key else "m.key IN (SELECT unnest(?::VARCHAR[]))",
    )
    args = [run_ids, run_ids, lo, width, hi - lo + 1, keys[0] if one_key else keys, lo, hi + 1]
    columns = conn.execute(sql, args).fetchnumpy()
    columns["run_id"] = np.asarray(run_ids, dtype=object)[np.asarray(columns["ri"], dtype=np.int64)]
    if one_key:
        columns["key"] = np.full(len(columns["run_id"]), keys[0], dtype=object)
    return _bucket_points(columns)


def _raw_range(x: str, x0: float, x1: float, lows: list[float], offs: list[float]) -> list:
    """The window as [lo, hi) on the stored column (step, or ts in epoch ms)."""
    if x == "relative":
        lo = min(off + max(x0, low) * 1000.0 for off, low in zip(offs, lows, strict=True))
        hi = max(off + x1 * 1000.0 for off in offs)
    else:
        lo, hi = max(x0, min(lows)), x1
    return [int(math.floor(lo)), int(math.floor(hi)) + 1]


def _bucket_points(columns) -> pd.DataFrame:
    """Two points per bucket (its min and max, in x order; one when they coincide).

    ``columns`` holds run_id, key, x_lo, lo, x_hi, hi, ordered by run, key and bucket.
    """
    if columns is None or not len(columns["run_id"]):
        return pd.DataFrame({"run_id": [], "key": [], "x": [], "value": []})
    x_lo, x_hi = np.asarray(columns["x_lo"]), np.asarray(columns["x_hi"])
    lo, hi = np.asarray(columns["lo"], dtype="float64"), np.asarray(columns["hi"], dtype="float64")
    first = x_lo <= x_hi
    xs = np.column_stack([np.where(first, x_lo, x_hi), np.where(first, x_hi, x_lo)])
    values = np.column_stack([np.where(first, lo, hi), np.where(first, hi, lo)])
    keep = np.column_stack([np.ones(len(first), bool), x_lo != x_hi]).ravel()
    run_ids = np.repeat(np.asarray(columns["run_id"], dtype=object), 2)[keep]
    keys = np.repeat(np.asarray(columns["key"], dtype=object), 2)[keep]
    return pd.DataFrame({
        "run_id": pd.Series(run_ids, dtype=object), "key": pd.Series(keys, dtype=object),
        "x": xs.ravel()[keep], "value": values.ravel()[keep],
    })
