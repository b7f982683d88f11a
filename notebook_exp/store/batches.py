"""The store's Arrow form of a ``MetricBatch``, built once per batch before the
writer takes the file (so commits, and readers' waits, stay short).

``tables(batch)`` gives two pyarrow tables, cached on the batch:

* the points: key (dictionary), step, ts (timestamp[us]), value, sorted by key
  and step (steps logged out of order are sorted here);
* the summary, one row per key: count, first/last step, last value, NaN-ignoring
  min/max, last time. A batch is summarised once, here, in numpy; the summary
  upsert (``schema.UPSERT_SUMMARY``) only *merges* these rows with each other
  (batches of one transaction) and with the stored row.

Arrays are built from numpy buffers (``notebook_exp._arrow``), never with
``pa.array``, which would import pandas on the first flush.
"""

from __future__ import annotations

__all__ = ["tables"]


def tables(batch):
    """``(points, summary)`` pyarrow tables of ``batch`` (a ``MetricBatch``), cached."""
    if batch._tables is None:
        batch._tables = _chunks_to_arrow(batch.chunks)
    return batch._tables


def _chunks_to_arrow(chunks):
    import numpy as np
    import pyarrow as pa

    from .._arrow import column, dictionary

    flat = np.concatenate([np.frombuffer(points, dtype=np.float64) for _k, points in chunks] or [np.empty(0)])
    triples = flat.reshape(-1, 3)
    steps = triples[:, 0].astype(np.int64)
    micros = (triples[:, 1] * 1e6).astype(np.int64)
    values = triples[:, 2]
    codes = np.repeat(np.arange(len(chunks), dtype=np.int32), [len(p) // 3 for _k, p in chunks])
    if len(steps) > 1 and ((np.diff(steps) < 0) & (np.diff(codes) == 0)).any():
        order = np.lexsort((steps, codes))  # steps logged out of order
        steps, micros, codes, values = steps[order], micros[order], codes[order], values[order]
    names = [k for k, _p in chunks]
    table = pa.table(
        {
            "key": dictionary(codes, names),
            "step": column(steps, pa.int64()),
            "ts": column(micros, pa.timestamp("us")),
            "value": column(values, pa.float64()),
        }
    )
    return table, _summarize(names, codes, steps, micros, values)


def _summarize(names, codes, steps, micros, values):
    """Per key (rows are grouped by key, steps ascending): count, first/last step,
    last value, NaN-ignoring min/max, last time."""
    import numpy as np
    import pyarrow as pa

    from .._arrow import column, strings

    n = len(steps)
    if not n:
        starts = ends = np.empty(0, dtype=np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], n]
    # np.errstate, not warnings.catch_warnings: this runs on the store's writer thread, and
    # catch_warnings swaps the process-wide filters, hiding other threads' warnings meanwhile
    # (a sink's "is failing" warning was lost that way).
    with np.errstate(invalid="ignore"):  # all-NaN groups
        low = np.fmin.reduceat(values, starts) if n else np.empty(0)
        high = np.fmax.reduceat(values, starts) if n else np.empty(0)
    nan_low, nan_high = np.isnan(low), np.isnan(high)
    return pa.table({
        "key": strings([names[c] for c in codes[starts]]) if n else strings([]),
        "count": column((ends - starts).astype(np.int64), pa.int64()),
        "first_step": column(steps[starts], pa.int64()),
        "last_step": column(steps[ends - 1] if n else steps[:0], pa.int64()),
        "last_value": column(values[ends - 1] if n else values[:0], pa.float64()),
        "min_value": pa.Array.from_buffers(pa.float64(), len(low), [_validity(nan_low), pa.py_buffer(np.ascontiguousarray(low))]),
        "max_value": pa.Array.from_buffers(pa.float64(), len(high), [_validity(nan_high), pa.py_buffer(np.ascontiguousarray(high))]),
        "last_ts": column(np.maximum.reduceat(micros, starts) if n else micros[:0], pa.timestamp("us")),
    })


def _validity(is_null):
    """An Arrow validity bitmap (None when nothing is null)."""
    import numpy as np
    import pyarrow as pa

    if not is_null.any():
        return None
    return pa.py_buffer(np.packbits(~is_null, bitorder="little"))
