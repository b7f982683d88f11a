"""Metric points: every point of some runs (``nx.metrics``, the viewer's export),
and the charts' reads: each series' extent from ``metric_summary``, and a window
downsampled in DuckDB to pixel buckets.

One query (``downsample_buckets``) gives each bucket its points' count, mean,
population std and mean x, and its lowest and highest point (value and x).
Charts draw the mean as the line and min..max (or mean +- std) as a band, so
the trend reads and spikes stay visible; ``downsample`` keeps the min and max
points of each bucket (a spike always survives), which is the charts' raw view
and the JSON API's points. ``merge_buckets`` coarsens buckets in memory
exactly (a live chart whose extent grew), and ``ema`` and ``running_mean``
smooth what a chart draws.

**Reading only the selected runs' row groups.** The ``metrics`` table holds
points in the order they were committed: runs that logged at the same time
share row groups, and their random ids give the ``run_id`` column no order
DuckDB could skip by. Time does: a run's points were logged between its
creation and its end (``runs.ended_at``; open while it runs). So the bucket
queries also bound ``ts`` to those spans (merged into at most ``MAX_TIME_SPANS``
ranges), widened by ``TIME_SLACK_MS`` for hosts whose clocks disagree, and DuckDB
skips every row group outside them by its min/max of ``ts``. Measured
(``benchmarks/bench_viewer.py``, 100 M points of 1,000 runs as logged): the
Compare read of the 10 newest runs scans 16 of 925 row groups instead of all.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .access import _store
from .fragments import IN_LIST

__all__ = [
    "BUCKET_COLUMNS", "X_KINDS", "bucket_points", "downsample", "downsample_buckets", "ema", "empty_buckets",
    "merge_buckets", "metric_points", "metrics", "running_mean", "series_extents",
]

POINT_COLUMNS = ["run_id", "key", "step", "ts", "value"]
#: One row per (run, key, bucket): the mean x of its points, their mean, population std and
#: count, and its lowest (``x_lo``, ``lo``) and highest (``x_hi``, ``hi``) point.
BUCKET_COLUMNS = ["run_id", "key", "x", "mean", "std", "count", "x_lo", "lo", "x_hi", "hi"]

#: Points of some runs (optionally of some keys, optionally with each run's name), by run, key, step.
POINTS_SQL = """
SELECT {run_name} m.run_id, m.key, m.step, m.ts, m.value
FROM metrics m {join_runs}
WHERE m.run_id IN {ids} {key_filter}
ORDER BY m.run_id, m.key, m.step
"""
RUN_NAME = "r.name AS run_name,"
JOIN_RUNS = "JOIN runs r ON r.run_id = m.run_id"
KEY_FILTER = f"AND m.key IN {IN_LIST}"

X_EXPRESSIONS = {
    # x axis kinds: fixed SQL fragments, chosen by a whitelisted name
    "step": "m.step",
    "wall": "epoch_ms(m.ts)",
    "relative": "(epoch_ms(m.ts) - sel.off) / 1000.0",
}
X_KINDS = tuple(X_EXPRESSIONS)

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
       {stats}
FROM metrics m JOIN sel ON m.run_id = sel.run_id
WHERE {key_filter} AND {raw} {spans} AND isfinite(m.value)
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
    WHERE {raw} {spans} AND isfinite(m.value)
)
SELECT run_id, key, least(floor((x - ?) * ? / ?), ? - 1)::BIGINT AS bucket,
       arg_min(x, value) AS x_lo, min(value) AS lo, arg_max(x, value) AS x_hi, max(value) AS hi
       {stats}
FROM pts WHERE x BETWEEN ? AND ? AND x > after
GROUP BY ALL ORDER BY ALL
"""

# The charts' bucket statistics, added to either query (``downsample`` alone leaves them out).
FAST_STATS = ", avg({x}) AS x_mean, avg(m.value) AS mean, stddev_pop(m.value) AS std, count(*) AS count"
JOINED_STATS = ", avg(x) AS x_mean, avg(value) AS mean, stddev_pop(value) AS std, count(*) AS count"

#: Each run's points were logged between its creation and its end (or now, while it runs),
#: as this host's clock and the logging host's agree to within this much (ms).
TIME_SLACK_MS = 3_600_000
MAX_TIME_SPANS = 16  # ranges of ``ts`` a query names at most (close spans are merged)
TIME_SPANS_SQL = f"""
SELECT epoch_ms(coalesce(least(created_at, started_at), created_at, started_at)), epoch_ms(ended_at)
FROM runs WHERE run_id IN {IN_LIST}
"""
TIME_SPAN = "m.ts BETWEEN epoch_ms(?::BIGINT) AND epoch_ms(?::BIGINT)"
TIME_FROM = "m.ts >= epoch_ms(?::BIGINT)"

EXTENTS_SQL = f"""
SELECT s.run_id, s.key, s.first_step, s.last_step, epoch_ms(r.started_at), epoch_ms(s.last_ts)
FROM metric_summary s JOIN runs r ON r.run_id = s.run_id
WHERE s.run_id IN {IN_LIST} AND s.key IN {IN_LIST}
"""


# -- every point --------------------------------------------------------------------
def metric_points(conn, run_ids: list[str], keys: list[str] | None = None, run_names: bool = False):
    """Every point of these runs (of ``keys``, default all) as a pyarrow Table: run_id,
    key, step, ts, value (``run_name`` first with ``run_names``), by run, key, step."""
    sql = POINTS_SQL.format(run_name=RUN_NAME if run_names else "", join_runs=JOIN_RUNS if run_names else "",
                            ids=IN_LIST, key_filter=KEY_FILTER if keys is not None else "")
    args = [list(run_ids)] + ([list(keys)] if keys is not None else [])
    return conn.sql(sql, params=args).to_arrow_table()


def _run_ids(run_ids: Any) -> list[str]:
    if isinstance(run_ids, str):
        return [run_ids]
    if hasattr(run_ids, "run_id") and isinstance(run_ids.run_id, str):
        return [run_ids.run_id]
    if hasattr(run_ids, "columns") and "run_id" in run_ids.columns:
        return [str(r) for r in run_ids["run_id"]]
    out = []
    for item in run_ids:
        out.append(item if isinstance(item, str) else item.run_id)
    return out


def metrics(run_ids: Any, keys: str | list[str] | None = None, *, store: str | os.PathLike | None = None):
    """Metric points (pandas, long form): run_id, key, step, ts, value.

    ``run_ids`` is a run id, a list of them, a runs table, or Run/Job objects.
    Rows come ordered by run, key, step.
    """
    import pandas as pd

    ids = _run_ids(run_ids)
    target = _store(store)
    if not ids or not target.path.exists():
        return pd.DataFrame(columns=POINT_COLUMNS)
    wanted = None if keys is None else ([keys] if isinstance(keys, str) else list(keys))
    with target.session(write=False) as conn:  # held for the query only; pandas comes after
        table = metric_points(conn, ids, wanted)
    return table.to_pandas()


# -- charts -------------------------------------------------------------------------
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


def downsample(conn, pairs, starts, x: str, window: tuple[float, float], width: int, after=None):
    """Points of each (run, key) in ``pairs`` inside ``window``: min and max per bucket
    (a pandas frame: run_id, key, x, value).

    The window is cut into ``width`` buckets; each bucket contributes its
    lowest and highest point (one point when it holds one), so at most
    ``2 * width`` points come back per run and key, and a spike always does.
    ``after`` maps a pair to an x its points must exceed (a live chart's tail).
    The query is ``downsample_buckets``' without the bucket statistics.
    """
    return bucket_points(_downsample(conn, pairs, starts, x, window, width, after, stats=False))


def downsample_buckets(conn, pairs, starts, x: str, window: tuple[float, float], width: int, after=None):
    """Each (run, key) of ``pairs`` inside ``window``, cut into ``width`` buckets, one
    row per bucket that holds points (``BUCKET_COLUMNS``; a pandas frame ordered by
    run, key and x), computed in one DuckDB query.

    ``x`` is the mean x of the bucket's points (where its mean is drawn), ``std``
    their population standard deviation (0 for one point); non-finite values are
    left out. ``starts`` maps a run id to its start (epoch ms, relative time);
    ``after`` maps a pair to an x its points must exceed (a live chart's tail).
    """
    columns = _downsample(conn, pairs, starts, x, window, width, after, stats=True)
    return empty_buckets() if columns is None else _buckets(columns)


def _downsample(conn, pairs, starts, x, window, width, after, stats: bool):
    """The bucket query's columns (numpy, with run_id and key), or ``None`` without pairs."""
    if not pairs:
        return None
    if x in FAST_X and not after:
        return _fast_downsample(conn, pairs, x, window, width, stats)
    x0, x1 = window
    after = after or {}
    lows = [after.get(pair, -math.inf) for pair in pairs]
    offs = [starts.get(run_id, 0.0) for run_id, _key in pairs]
    spans, span_args = _time_spans(conn, sorted({p[0] for p in pairs}))
    sql = JOINED_DOWNSAMPLE_SQL.format(x=X_EXPRESSIONS[x], raw=RAW_RANGES[x], stats=JOINED_STATS if stats else "",
                                       spans=spans)
    args = [[p[0] for p in pairs], [p[1] for p in pairs], offs, lows, *_raw_range(x, x0, x1, lows, offs),
            *span_args, x0, float(width), max(x1 - x0, 1e-9), float(width), x0, x1]
    return conn.execute(sql, args).fetchnumpy()


def _fast_downsample(conn, pairs, x: str, window: tuple[float, float], width: int, stats: bool):
    import numpy as np

    run_ids = sorted({p[0] for p in pairs})
    keys = sorted({p[1] for p in pairs})
    lo, hi = int(math.floor(window[0])), int(math.floor(window[1]))
    one_key = len(keys) == 1
    spans, span_args = _time_spans(conn, run_ids)
    sql = FAST_DOWNSAMPLE_SQL.format(
        x=FAST_X[x], raw=RAW_RANGES[x],
        key_column="" if one_key else "m.key, ",
        key_filter="m.key = ?" if one_key else f"m.key IN {IN_LIST}",
        stats=FAST_STATS.format(x=FAST_X[x]) if stats else "", spans=spans,
    )
    args = [run_ids, run_ids, lo, width, hi - lo + 1, keys[0] if one_key else keys, lo, hi + 1, *span_args]
    columns = conn.execute(sql, args).fetchnumpy()
    columns["run_id"] = np.asarray(run_ids, dtype=object)[np.asarray(columns["ri"], dtype=np.int64)]
    if one_key:
        columns["key"] = np.full(len(columns["run_id"]), keys[0], dtype=object)
    return columns


def _time_spans(conn, run_ids: list[str]) -> tuple[str, list[int]]:
    """The ``ts`` ranges the runs' points lie in, as a fixed SQL condition (``AND (...)``,
    or ``""`` when a run's start is unknown) and its arguments (epoch ms): each run's
    creation to its end (open while it runs), widened by ``TIME_SLACK_MS`` each side;
    overlapping spans merged, then the closest ones until at most ``MAX_TIME_SPANS``
    remain."""
    rows = conn.execute(TIME_SPANS_SQL, [list(run_ids)]).fetchall()
    if not rows or any(first is None for first, _end in rows):
        return "", []
    spans: list[list] = []  # [first, last]; last None: open (a run still going)
    for first, last in sorted((int(first) - TIME_SLACK_MS, None if end is None else int(end) + TIME_SLACK_MS)
                              for first, end in rows):
        if spans and (spans[-1][1] is None or first <= spans[-1][1]):
            spans[-1][1] = None if spans[-1][1] is None or last is None else max(spans[-1][1], last)
        else:
            spans.append([first, last])
    while len(spans) > MAX_TIME_SPANS:
        i = min(range(len(spans) - 1), key=lambda j: spans[j + 1][0] - spans[j][1])
        spans[i:i + 2] = [[spans[i][0], spans[i + 1][1]]]
    condition = " OR ".join(TIME_FROM if last is None else TIME_SPAN for _first, last in spans)
    return f"AND ({condition})", [bound for span in spans for bound in span if bound is not None]


def _raw_range(x: str, x0: float, x1: float, lows: list[float], offs: list[float]) -> list:
    """The window as [lo, hi) on the stored column (step, or ts in epoch ms)."""
    if x == "relative":
        lo = min(off + max(x0, low) * 1000.0 for off, low in zip(offs, lows, strict=True))
        hi = max(off + x1 * 1000.0 for off in offs)
    else:
        lo, hi = max(x0, min(lows)), x1
    return [int(math.floor(lo)), int(math.floor(hi)) + 1]


def empty_buckets():
    """A ``BUCKET_COLUMNS`` frame without rows."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame({
        "run_id": pd.Series([], dtype=object), "key": pd.Series([], dtype=object),
        **{c: np.array([], dtype="int64" if c == "count" else "float64") for c in BUCKET_COLUMNS[2:]},
    })


def _buckets(columns):
    """The query's columns (ordered by run, key and bucket) as a ``BUCKET_COLUMNS`` frame."""
    import numpy as np
    import pandas as pd

    if not len(columns["run_id"]):
        return empty_buckets()
    return pd.DataFrame({
        "run_id": pd.Series(np.asarray(columns["run_id"], dtype=object), dtype=object),
        "key": pd.Series(np.asarray(columns["key"], dtype=object), dtype=object),
        "x": np.asarray(columns["x_mean"], dtype="float64"),
        "mean": np.asarray(columns["mean"], dtype="float64"),
        "std": np.asarray(columns["std"], dtype="float64"),
        "count": np.asarray(columns["count"], dtype="int64"),
        "x_lo": np.asarray(columns["x_lo"]), "lo": np.asarray(columns["lo"], dtype="float64"),
        "x_hi": np.asarray(columns["x_hi"]), "hi": np.asarray(columns["hi"], dtype="float64"),
    })


def bucket_points(buckets):
    """Two points per bucket (its min and max, in x order; one when they coincide):
    a pandas frame run_id, key, x, value in the order of ``buckets`` (a ``BUCKET_COLUMNS``
    frame, or a mapping of its run_id, key, x_lo, lo, x_hi and hi columns)."""
    import numpy as np
    import pandas as pd

    if buckets is None or not len(buckets["run_id"]):
        return pd.DataFrame({"run_id": [], "key": [], "x": [], "value": []})
    x_lo, x_hi = np.asarray(buckets["x_lo"]), np.asarray(buckets["x_hi"])
    lo, hi = np.asarray(buckets["lo"], dtype="float64"), np.asarray(buckets["hi"], dtype="float64")
    first = x_lo <= x_hi
    xs = np.column_stack([np.where(first, x_lo, x_hi), np.where(first, x_hi, x_lo)])
    values = np.column_stack([np.where(first, lo, hi), np.where(first, hi, lo)])
    keep = np.column_stack([np.ones(len(first), bool), x_lo != x_hi]).ravel()
    run_ids = np.repeat(np.asarray(buckets["run_id"], dtype=object), 2)[keep]
    keys = np.repeat(np.asarray(buckets["key"], dtype=object), 2)[keep]
    return pd.DataFrame({
        "run_id": pd.Series(run_ids, dtype=object), "key": pd.Series(keys, dtype=object),
        "x": xs.ravel()[keep], "value": values.ravel()[keep],
    })


def merge_buckets(buckets, start: float, span: float, width: int):
    """``buckets`` (``BUCKET_COLUMNS``) coarsened to ``width`` buckets over
    ``[start, start + span]``, in memory: each bucket joins the coarse bucket its
    mean x falls in (clamped to the ends). Counts add; the mean, the mean x and
    the std combine exactly (pooled sums of squares); the lowest and highest
    points are kept, so spikes survive."""
    import numpy as np
    import pandas as pd

    if not len(buckets):
        return buckets
    span = max(float(span), 1e-9)
    x = buckets["x"].to_numpy(dtype="float64")
    coarse = np.clip(np.floor((x - start) * width / span), 0, width - 1)
    codes = pd.MultiIndex.from_arrays([buckets["run_id"].to_numpy(dtype=object),
                                       buckets["key"].to_numpy(dtype=object), coarse]).factorize()[0]
    _, first = np.unique(codes, return_index=True)  # each coarse bucket's first row, by code
    n = buckets["count"].to_numpy(dtype="float64")
    mean = buckets["mean"].to_numpy(dtype="float64")
    total = np.bincount(codes, weights=n)
    merged_mean = np.bincount(codes, weights=n * mean) / total
    spread = n * (buckets["std"].to_numpy(dtype="float64") ** 2 + (mean - merged_mean[codes]) ** 2)
    lo, hi = buckets["lo"].to_numpy(dtype="float64"), buckets["hi"].to_numpy(dtype="float64")
    by_lo, by_hi = np.lexsort((lo, codes)), np.lexsort((-hi, codes))
    low = by_lo[np.unique(codes[by_lo], return_index=True)[1]]  # the row of each code's lowest point
    high = by_hi[np.unique(codes[by_hi], return_index=True)[1]]
    out = pd.DataFrame({
        "run_id": pd.Series(buckets["run_id"].to_numpy(dtype=object)[first], dtype=object),
        "key": pd.Series(buckets["key"].to_numpy(dtype=object)[first], dtype=object),
        "x": np.bincount(codes, weights=n * x) / total, "mean": merged_mean,
        "std": np.sqrt(np.maximum(np.bincount(codes, weights=spread) / total, 0.0)),
        "count": total.astype("int64"),
        "x_lo": buckets["x_lo"].to_numpy()[low], "lo": lo[low],
        "x_hi": buckets["x_hi"].to_numpy()[high], "hi": hi[high],
    })
    return out.sort_values(["run_id", "key", "x"], kind="stable", ignore_index=True)


def ema(values, weight: float):
    """Debiased exponential moving average (TensorBoard's smoothing) of a numpy array,
    for every chart that smooths (``RunsTable.plot``, the viewer); non-finite points
    are skipped and stay NaN. ``weight`` 0 returns the values unchanged."""
    import numpy as np
    import pandas as pd

    values = np.asarray(values, dtype="float64")
    if weight <= 0 or len(values) == 0:
        return values
    finite = np.isfinite(values)
    smooth = pd.Series(np.where(finite, values, np.nan)).ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean()
    return np.where(finite, smooth.to_numpy(), np.nan)


def running_mean(values, window: int):
    """Trailing running mean over ``window`` points (the point and the ``window - 1``
    before it; fewer at the start) of a numpy array; non-finite points are skipped
    and stay NaN. ``window`` 1 or less returns the values unchanged."""
    import numpy as np
    import pandas as pd

    values = np.asarray(values, dtype="float64")
    window = int(window)
    if window <= 1 or len(values) == 0:
        return values
    finite = np.isfinite(values)
    smooth = pd.Series(np.where(finite, values, np.nan)).rolling(window, min_periods=1).mean()
    return np.where(finite, smooth.to_numpy(), np.nan)
