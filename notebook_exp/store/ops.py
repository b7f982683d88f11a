"""The writer's queued operations, and how one transaction applies them.

An op is a tuple ``(kind, payload, args)``:

* ``("sql", statement, params)``: one statement with ``?`` parameters;
* ``("event", row, None)``: one ``events`` row (inserted together, after the others);
* ``("metrics", MetricBatch, None)``: points, inserted sorted by run, key, step,
  with the per-key summary rows upserted;
* ``("call", fn, args)``: ``fn(conn, *args)``, read-then-write work.

The writer (``writer.py``) applies them on commit; a spill (``spill.py``) applies
them when a later writer ingests it. Both go through :func:`apply`.
"""

from __future__ import annotations

from . import schema

__all__ = ["apply", "metric_points"]


def metric_points(ops) -> int:
    """Metric points in ``ops`` (``(seq, op)`` pairs)."""
    return sum(len(op[1]) for _seq, op in ops if op[0] == "metrics")


def apply(conn, ops) -> None:
    """Apply ``(seq, op)`` pairs in order inside the caller's transaction;
    consecutive metric batches are inserted together, events last."""
    batches: list = []
    events: list[tuple] = []
    for _seq, (kind, payload, args) in ops:
        if kind == "event":  # append-only and read by nothing here: safe to move last
            events.append(payload)
            continue
        if kind == "metrics":
            if len(payload):
                batches.append(payload)
            continue
        if batches:
            insert_metrics(conn, batches)
            batches = []
        if kind == "call":
            payload(conn, *(args or ()))
        elif args is None:
            conn.execute(payload)
        else:
            conn.execute(payload, args)
    if batches:
        insert_metrics(conn, batches)
    if events:
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(events))
        conn.execute(f"INSERT INTO events VALUES {values}", [v for row in events for v in row])


def insert_metrics(conn, batches: list) -> None:
    """Insert ``MetricBatch`` es (one Arrow insert) and upsert their summaries."""
    import numpy as np
    import pyarrow as pa

    from .._arrow import dictionary
    from .batches import tables

    def with_run_ids(tables: list) -> pa.Table:
        merged = pa.concat_tables(tables, promote_options="permissive")
        codes = np.repeat(np.arange(len(batches), dtype=np.int32), [t.num_rows for t in tables])
        return merged.append_column("run_id", dictionary(codes, [b.run_id for b in batches]))

    built = [tables(b) for b in batches]
    conn.register("__batch", with_run_ids([points for points, _summary in built]))
    conn.register("__summary", with_run_ids([summary for _points, summary in built]))
    try:
        conn.execute(schema.INSERT_METRICS)
        conn.execute(schema.UPSERT_SUMMARY)
    finally:
        conn.unregister("__batch")
        conn.unregister("__summary")
