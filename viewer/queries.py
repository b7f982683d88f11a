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
    "BASE_COLUMNS", "best_goal", "downsample", "facets", "list_runs", "metric_bounds",
    "param_column", "runs_frame", "x_offsets",
]

BASE_COLUMNS = ["name", "experiment", "status", "started", "duration", "gpus", "tags", "run_id", "created"]
STATUSES = ["queued", "running", "completed", "failed", "cancelled"]
_LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|rmse|nll|perplexity|ppl|wer|cer|time|latency|regret", re.I)

LIST_SQL = """
SELECT run_id, name, experiment, status, created_at AS created, started_at AS started,
       epoch(coalesce(ended_at, ?::TIMESTAMP) - started_at) AS duration,
       coalesce(array_to_string(gpus, ','), '') AS gpus,
       coalesce(array_to_string(tags, ', '), '') AS tags,
       CAST(params AS VARCHAR) AS params
FROM runs {where}
ORDER BY created_at DESC, run_id
"""

SUMMARY_SQL = """
SELECT run_id, key, last_value, min_value, max_value FROM metric_summary
WHERE key IN (SELECT unnest(?::VARCHAR[])) {runs}
"""

X_EXPRESSIONS = {
    # x axis kinds: fixed SQL fragments, chosen by a whitelisted name
    "step": "m.step",
    "wall": "epoch_ms(m.ts)",
    "relative": "(epoch_ms(m.ts) - sel.off) / 1000.0",
}

DOWNSAMPLE_SQL = """
WITH sel AS (SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::DOUBLE[]) AS off),
pts AS (
    SELECT m.run_id, m.key, {x} AS x, m.value
    FROM metrics m JOIN sel ON m.run_id = sel.run_id
    WHERE m.key IN (SELECT unnest(?::VARCHAR[])) AND isfinite(m.value)
)
SELECT run_id, key, least(floor((x - ?) * ? / ?), ? - 1)::BIGINT AS bucket, count(*) AS n,
       min(x) AS x_first, arg_min(x, value) AS x_lo, min(value) AS lo,
       arg_max(x, value) AS x_hi, max(value) AS hi
FROM pts WHERE x BETWEEN ? AND ?
GROUP BY ALL
"""

BOUNDS_SQL = """
SELECT min(s.first_step), max(s.last_step), epoch_ms(min(r.started_at)), epoch_ms(max(s.last_ts)),
       max(epoch_ms(s.last_ts) - epoch_ms(r.started_at)) / 1000.0
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
    """The runs table for a WHERE clause (from the filters), with ``keys`` summary columns."""
    clauses = [where] if where else []
    call_args = [now, *args]
    if run_ids is not None:
        clauses.append("run_id IN (SELECT unnest(?::VARCHAR[]))")
        call_args.append(list(run_ids))
    sql = LIST_SQL.format(where=("WHERE " + " AND ".join(clauses)) if clauses else "")
    base = conn.execute(sql, call_args).df()
    summary = None
    if keys and len(base):
        runs = "AND run_id IN (SELECT unnest(?::VARCHAR[]))" if run_ids is not None else ""
        summary_args = [list(keys)] + ([list(run_ids)] if run_ids is not None else [])
        summary = conn.execute(SUMMARY_SQL.format(runs=runs), summary_args).df()
    return runs_frame(base, summary, keys)


def _param_values(values: list) -> pd.Series | list:
    """One param column: floats when every value is a number, else text."""
    present = [v for v in values if v is not None]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numeric:
        return pd.array([np.nan if v is None else float(v) for v in values], dtype="float64")
    return [None if v is None else _as_text(v) for v in values]


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def runs_frame(base: pd.DataFrame, summary: pd.DataFrame | None, keys: list[str]) -> pd.DataFrame:
    """Widen the base rows with one column per param and last/best columns per metric key."""
    params = [json.loads(p) if isinstance(p, str) else {} for p in base.pop("params")]
    params = [p if isinstance(p, dict) else {} for p in params]
    base = base.reindex(columns=BASE_COLUMNS).reset_index(drop=True)
    head, tail = base[BASE_COLUMNS[:7]], base[BASE_COLUMNS[7:]]
    columns = {}
    for key in keys:
        columns[f"last:{key}"] = np.full(len(base), np.nan)
        columns[f"best:{key}"] = np.full(len(base), np.nan)
    names = sorted({name for p in params for name in p})
    columns.update({param_column(n): _param_values([p.get(n) for p in params]) for n in names})
    frame = pd.concat([head, pd.DataFrame(columns, index=base.index), tail], axis=1)
    if summary is not None and len(summary):
        _fill_metrics(frame, summary, keys)
    return frame


def _fill_metrics(frame: pd.DataFrame, summary: pd.DataFrame, keys: list[str]) -> None:
    position = pd.Series(np.arange(len(frame)), index=frame["run_id"].to_numpy())
    for key, rows in summary.groupby("key"):
        if key not in keys:
            continue
        rows = rows[rows["run_id"].isin(position.index)]
        at = position.loc[rows["run_id"].to_numpy()].to_numpy()
        best = rows["min_value"] if best_goal(key) == "min" else rows["max_value"]
        frame.loc[at, f"last:{key}"] = rows["last_value"].to_numpy(dtype="float64")
        frame.loc[at, f"best:{key}"] = best.to_numpy(dtype="float64")


def metric_bounds(conn, run_ids: list[str], keys: list[str]) -> dict[str, tuple[float, float] | None]:
    """The full x extent of these runs' metrics for each x kind, from ``metric_summary``."""
    row = conn.execute(BOUNDS_SQL, [list(run_ids), list(keys)]).fetchone()
    if row is None or row[0] is None:
        return {"step": None, "wall": None, "relative": None}
    first, last, wall0, wall1, rel1 = row
    return {
        "step": (float(first), float(last)),
        "wall": (float(wall0), float(wall1)) if wall0 is not None and wall1 is not None else None,
        "relative": (0.0, float(rel1 or 0.0)),
    }


def x_offsets(conn, run_ids: list[str]) -> dict[str, float]:
    """Each run's start as epoch milliseconds (the origin of the relative-time axis)."""
    rows = conn.execute(
        "SELECT run_id, epoch_ms(started_at) FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(run_ids)],
    ).fetchall()
    return {run_id: float(start or 0) for run_id, start in rows}


def downsample(conn, run_ids, offsets, keys, x: str, window: tuple[float, float], width: int) -> pd.DataFrame:
    """Points of ``keys`` for ``run_ids`` inside ``window``: min and max per bucket.

    The window is cut into ``width`` buckets; each bucket contributes its
    lowest and highest point (one point when it holds one), so at most
    ``2 * width`` points come back per run and key, and a spike always does.
    """
    x0, x1 = window
    span = max(x1 - x0, 1e-9)
    sql = DOWNSAMPLE_SQL.format(x=X_EXPRESSIONS[x])
    offs = [offsets.get(r, 0.0) for r in run_ids]
    args = [list(run_ids), offs, list(keys), x0, float(width), span, float(width), x0, x1]
    buckets = conn.execute(sql, args).df()
    return _bucket_points(buckets)


def _bucket_points(buckets: pd.DataFrame) -> pd.DataFrame:
    if not len(buckets):
        return pd.DataFrame({"run_id": [], "key": [], "x": [], "value": []})
    single = buckets["n"].to_numpy() == 1
    lo = pd.DataFrame({
        "run_id": buckets["run_id"], "key": buckets["key"],
        "x": np.where(single, buckets["x_first"], buckets["x_lo"]), "value": buckets["lo"],
    })
    hi = buckets.loc[~single]
    hi = pd.DataFrame({"run_id": hi["run_id"], "key": hi["key"], "x": hi["x_hi"], "value": hi["hi"]})
    points = pd.concat([lo, hi], ignore_index=True)
    points = points.drop_duplicates(["run_id", "key", "x"])
    return points.sort_values(["run_id", "key", "x"], kind="stable").reset_index(drop=True)


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); ``weight`` in [0, 1)."""
    if weight <= 0 or len(values) == 0:
        return values
    weight = min(weight, 0.999)
    out = np.empty(len(values), dtype="float64")
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = np.nan
            continue
        acc = acc * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out[i] = acc / norm
    return out
