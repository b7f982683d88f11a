"""The read API: runs, metrics and plain SQL, all read-only.

Queries attach the store read-only for the length of one query, retrying while
another process holds it (``lock_timeout``), so they never keep writers out
for long. A store that does not exist yet reads as empty.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..config import get_settings
from ..exceptions import StoreError
from ..models import telemetry_sql
from .core import get_store

__all__ = ["ema", "metrics", "runs", "sql"]

RUN_COLUMNS = [
    "run_id", "experiment", "name", "status", "created_at", "started_at", "ended_at",
    "duration", "tags", "error", "attempts", "priority", "executor", "gpus", "dropped",
]


def _store(store):
    settings = get_settings()
    return get_store(store if store is not None else settings.store_path, settings.lock_timeout)


def _exists(store) -> bool:
    return store.path.exists()


def sql(query: str, params: list | dict | None = None, *, store: str | os.PathLike | None = None):
    """Run a read-only SQL query on the store; returns a pandas DataFrame.

    Tables: runs, metrics, metric_summary, events, texts, histograms, images,
    artifacts. Writing statements fail (the file is attached read-only).
    """
    target = _store(store)
    if not _exists(target):
        raise StoreError(f"no store at {target.path} (nothing has been logged there yet)")
    return target.query(query, params)


def runs(
    experiment: str | None = None,
    status: str | list[str] | None = None,
    *,
    store: str | os.PathLike | None = None,
):
    """The runs table: one row per run, newest first, as a pandas DataFrame
    (``nx.runs`` wraps it in a ``RunsTable``, which renders richly and plots).

    Columns: run_id, experiment, name, status, created_at, started_at,
    ended_at, duration (seconds), tags, error, ... then ``params.<name>`` for
    every param and ``metrics.<key>`` for the last value of every metric the
    run logged (telemetry, ``notebook_exp.collectors.SYSTEM_KEYS`` and
    ``gpu/<id>/<reading>``, is in ``nx.metrics``).
    """
    import pandas as pd

    target = _store(store)
    if not _exists(target):
        return pd.DataFrame(columns=RUN_COLUMNS)
    where, args = [], []
    if experiment is not None:
        where.append("experiment = ?")
        args.append(experiment)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append(f"status IN ({', '.join('?' for _ in statuses)})")
        args.extend(str(s) for s in statuses)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    with target.session(write=False) as conn:  # held for the two queries only
        frame = conn.sql(
            f"""SELECT run_id, experiment, name, status, created_at, started_at, ended_at,
                       epoch(coalesce(ended_at, now()::TIMESTAMP) - started_at) AS duration,
                       tags, error, attempts, priority, executor, gpus, dropped, params
                FROM runs {clause} ORDER BY created_at DESC, run_id""",
            params=args,
        ).to_arrow_table()
        last = conn.sql(
            f"""SELECT s.run_id, s.key, s.last_value FROM metric_summary s
                WHERE s.run_id IN (SELECT run_id FROM runs {clause}) AND {_NOT_TELEMETRY}""",
            params=args,
        ).to_arrow_table()
    return _widen(frame.to_pandas(), last.to_pandas())


_NOT_TELEMETRY = f"NOT {telemetry_sql('s.key')}"


def _widen(frame, last):
    import pandas as pd

    params = [json.loads(p) if isinstance(p, str) else (p or {}) for p in frame.pop("params")]
    param_frame = pd.DataFrame(params, index=frame.index).add_prefix("params.")
    parts = [frame, param_frame]
    if len(last):
        wide = last.pivot(index="run_id", columns="key", values="last_value").add_prefix("metrics.")
        parts.append(wide.reindex(frame["run_id"]).set_axis(frame.index))
    return pd.concat(parts, axis=1)


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
    if not ids or not _exists(target):
        return pd.DataFrame(columns=["run_id", "key", "step", "ts", "value"])
    query = "SELECT run_id, key, step, ts, value FROM metrics WHERE run_id IN (SELECT unnest(?))"
    args: list = [ids]
    if keys is not None:
        query += " AND key IN (SELECT unnest(?))"
        args.append([keys] if isinstance(keys, str) else list(keys))
    return target.query(query + " ORDER BY run_id, key, step", args)


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
