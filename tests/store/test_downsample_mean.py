"""The charts' downsampling query: each bucket's mean, std, count, mean x and extremes,
computed by DuckDB on a real store file, against numpy's own reduction of the same points."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from notebook_exp.store import close_all
from notebook_exp.store.queries import read
from notebook_exp.store.queries.series import (
    BUCKET_COLUMNS,
    bucket_points,
    downsample,
    downsample_buckets,
    merge_buckets,
    running_mean,
    series_extents,
)

STEPS = 10_000


@pytest.fixture
def logged(store_path):
    """A run logging ``loss`` (noise, spikes, NaN and inf) and ``acc`` every 7th step,
    and a second run; returns (path, run ids, {(run, key): (steps, values)})."""
    import notebook_exp as nx

    rng = np.random.default_rng(14)
    loss = np.exp(-np.arange(STEPS) / 2500) + rng.normal(0, 0.2, STEPS)
    loss[[123, 4567, 9001]] = [40.0, -30.0, 25.0]  # spikes
    loss[[10, 11, 500, 7777]] = [np.nan, np.inf, -np.inf, np.nan]  # skipped by the query
    other = rng.normal(3.0, 1.0, STEPS)
    series = {}
    with nx.start_run("noisy") as run:
        for step in range(STEPS):
            point = {"loss": float(loss[step])}
            if step % 7 == 0:
                point["acc"] = float(step / STEPS)
            run.log(step=step, **point)
    with nx.start_run("other") as second:
        for step in range(STEPS):
            second.log(loss=float(other[step]), step=step)
    close_all()
    acc_steps = np.arange(0, STEPS, 7)
    series[(run.run_id, "loss")] = (np.arange(STEPS), loss)
    series[(run.run_id, "acc")] = (acc_steps, acc_steps / STEPS)
    series[(second.run_id, "loss")] = (np.arange(STEPS), other)
    return store_path, [run.run_id, second.run_id], series


def expected(steps, values, bucket) -> pd.DataFrame:
    """numpy's per-bucket reduction of the finite points (``bucket``: each point's bucket)."""
    keep = np.isfinite(values)
    steps, values, bucket = np.asarray(steps, dtype="float64")[keep], values[keep], np.asarray(bucket)[keep]
    rows = []
    for b in np.unique(bucket):
        s, v = steps[bucket == b], values[bucket == b]
        rows.append({"x": s.mean(), "mean": v.mean(), "std": v.std(), "count": len(v),
                     "x_lo": s[v.argmin()], "lo": v.min(), "x_hi": s[v.argmax()], "hi": v.max()})
    return pd.DataFrame(rows)


def check(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["count"]) == list(want["count"])
    for column in ("x", "mean", "std", "x_lo", "lo", "x_hi", "hi"):
        np.testing.assert_allclose(got[column].to_numpy(dtype="float64"), want[column].to_numpy(dtype="float64"),
                                   rtol=1e-9, atol=1e-12, err_msg=column)


def buckets_of(path, run_ids, keys, x, window, width, after=None) -> pd.DataFrame:
    def work(conn):
        extents, starts = series_extents(conn, run_ids, keys, x)
        pairs = [(r, k) for r in run_ids for k in keys if (r, k) in extents]
        return downsample_buckets(conn, pairs, starts, x, window, width, after)

    return read(work, store=path)


def test_whole_series_buckets_match_numpy(logged):
    path, run_ids, series = logged
    width = 300
    got = buckets_of(path, run_ids, ["loss"], "step", (0, STEPS - 1), width)
    assert list(got.columns) == BUCKET_COLUMNS
    assert list(got["run_id"].unique()) == sorted(run_ids)  # ordered by run, then x
    for run_id in run_ids:
        steps, values = series[(run_id, "loss")]
        mine = got[got["run_id"] == run_id].reset_index(drop=True)
        assert mine["x"].is_monotonic_increasing and len(mine) == width
        check(mine, expected(steps, values, steps * width // STEPS))
    noisy = got[got["run_id"] == run_ids[0]]
    assert noisy["hi"].max() == 40.0 and noisy["lo"].min() == -30.0  # spikes are kept
    assert noisy["count"].sum() == STEPS - 4  # NaN and inf are left out
    assert (noisy["std"] >= 0).all() and np.isfinite(noisy[["mean", "std"]].to_numpy()).all()


def test_two_keys_and_a_zoomed_window(logged):
    path, run_ids, series = logged
    width, window = 64, (2500.0, 4999.5)
    got = buckets_of(path, run_ids[:1], ["acc", "loss"], "step", window, width)
    assert list(got["key"].unique()) == ["acc", "loss"]
    lo, hi = 2500, 4999
    for key in ("acc", "loss"):
        steps, values = series[(run_ids[0], key)]
        inside = (steps >= lo) & (steps <= hi)
        want = expected(steps[inside], values[inside], (steps[inside] - lo) * width // (hi - lo + 1))
        check(got[got["key"] == key].reset_index(drop=True), want)


def test_relative_time_and_a_live_tail_take_the_joined_query(logged):
    """Seconds since the run started (per-run offsets), and only points past a
    series' last x (a live chart's tail): the query that joins a table of series."""
    import duckdb

    path, run_ids, series = logged
    run_id = run_ids[0]
    con = duckdb.connect(str(path), read_only=True)
    try:
        ts = np.array([r[0] for r in con.execute(
            "SELECT epoch_ms(ts) FROM metrics WHERE run_id = ? AND key = 'loss' ORDER BY step", [run_id]).fetchall()],
            dtype="float64")
        start = float(con.execute("SELECT epoch_ms(started_at) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0])
    finally:
        con.close()
    seconds = (ts - start) / 1000.0
    x0, x1, width = 0.0, float(seconds.max()), 50
    got = buckets_of(path, [run_id], ["loss"], "relative", (x0, x1), width)
    values = series[(run_id, "loss")][1]
    bucket = np.minimum(np.floor((seconds - x0) * width / max(x1 - x0, 1e-9)), width - 1)
    check(got, expected(seconds, values, bucket))

    steps = series[(run_id, "loss")][0]
    tail = buckets_of(path, [run_id], ["loss"], "step", (5000.0, STEPS - 1.0), 40, after={(run_id, "loss"): 5000.0})
    later = steps > 5000
    bucket = np.minimum(np.floor((steps[later] - 5000.0) * 40 / (STEPS - 1.0 - 5000.0)), 39)
    check(tail, expected(steps[later], values[later], bucket))


def test_min_max_points_stay_available(logged):
    path, run_ids, series = logged
    width = 200

    def work(conn):
        extents, starts = series_extents(conn, run_ids, ["loss"], "step")
        pairs = [(r, "loss") for r in run_ids]
        return (downsample(conn, pairs, starts, "step", (0, STEPS - 1), width),
                downsample_buckets(conn, pairs, starts, "step", (0, STEPS - 1), width))

    points, buckets = read(work, store=path)
    assert list(points.columns) == ["run_id", "key", "x", "value"]
    assert points.equals(bucket_points(buckets))  # the raw view is each bucket's lowest and highest point
    for run_id in run_ids:
        mine = points[points["run_id"] == run_id]
        steps, values = series[(run_id, "loss")]
        finite = np.isfinite(values)
        assert len(mine) <= 2 * width and mine["x"].is_monotonic_increasing
        assert mine["value"].max() == values[finite].max() and mine["value"].min() == values[finite].min()
        stored = dict(zip(steps[finite].tolist(), values[finite].tolist(), strict=True))
        assert all(stored[int(x)] == v for x, v in zip(mine["x"], mine["value"], strict=True))


def test_merged_buckets_equal_coarse_buckets_read_directly(logged):
    """A live chart coarsens what it holds in memory: exactly what a coarse read would give."""
    path, run_ids, series = logged
    fine = buckets_of(path, run_ids, ["loss"], "step", (0, STEPS - 1), 1000)  # 10 steps a bucket
    merged = merge_buckets(fine, 0.0, STEPS - 1.0, 100)  # 100 steps a bucket
    assert list(merged.columns) == BUCKET_COLUMNS
    for run_id in run_ids:
        steps, values = series[(run_id, "loss")]
        check(merged[merged["run_id"] == run_id].reset_index(drop=True), expected(steps, values, steps // 100))
    direct = buckets_of(path, run_ids, ["loss"], "step", (0, STEPS - 1), 100)
    check(merged, direct)
    assert merge_buckets(fine.iloc[:0], 0.0, 1.0, 10).empty


def test_running_mean_matches_a_trailing_window():
    values = np.array([1.0, 2.0, np.nan, 4.0, 8.0, np.inf, 16.0, 0.0])
    got = running_mean(values, 3)
    want = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            want.append(np.nan)
            continue
        window = values[max(0, i - 2):i + 1]
        want.append(window[np.isfinite(window)].mean())
    np.testing.assert_allclose(got, want, equal_nan=True)
    assert running_mean(values, 1) is not None and np.array_equal(running_mean(values, 1), values, equal_nan=True)
    assert len(running_mean(np.array([]), 5)) == 0
