"""``ViewerState``: the viewer's one data store (filters, selection) and its only querier.

Views take a state and call its methods; they never touch the store. Every
method opens one short read-only session (``Store.session``), runs a query or
a few of the store's read path (``notebook_exp.store.queries``: the SQL lives
there, none here), and closes it again, so a writer in another process is
never kept out for longer than one query (docs/architecture.md §3). Served from inside a kernel, the
same calls go through that kernel's own ``Store`` (``get_store`` is per
process), so they never fight its writer for the file lock.

A read waits at most ``lock_timeout`` (``DEFAULT_READ_TIMEOUT``) for the file,
then raises ``StoreLocked``. Views never call the read methods from the
server's event loop: they hand them to ``state.reads`` (``background.Reads``),
which runs them on a thread pool, applies the results on the loop and keeps
``status`` saying when the store is busy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import param

from notebook_exp.collectors import is_telemetry
from notebook_exp.config import get_settings
from notebook_exp.exceptions import StoreError, StoreLocked
from notebook_exp.store import get_store, queries, utcnow
from notebook_exp.store.queries import FilterError, FilterNames, RunFilter, compile_filter

from .background import Reads

__all__ = ["DEFAULT_READ_TIMEOUT", "DEFAULT_WIDTH", "FilterError", "SeriesBuckets", "SeriesData", "ViewerState"]

DEFAULT_WIDTH = 1000  # buckets per chart: one mean (and min, max) per bucket
DEFAULT_METRIC_COLUMNS = 3
FILTER_PARAMS = ("experiments", "statuses", "tags", "sweeps", "text", "expression", "metric_columns")
DEFAULT_READ_GAP = 0.012  # seconds between two read sessions of this process on one store
DEFAULT_READ_TIMEOUT = 0.5  # seconds a read waits for the file in all, then raises StoreLocked
DEFAULT_MAX_IMAGES = 24  # images a run's page shows, newest first ...
DEFAULT_IMAGES_PER_KEY = 8  # ... and of one key
DEFAULT_MEDIA_ROWS = 200  # texts and histograms read per key, newest first
DEFAULT_SWEEPS = 100  # sweeps the Sweeps page lists, newest first
_EMPTY_SWEEPS = pd.DataFrame(columns=[
    "sweep_id", "experiment", "method", "rule", "metric", "mode", "runs", "started", "running", "stopped_early",
    "completed", "failed", "queued", "best_run_id", "best_run", "best_value", "created"])


_last_read: dict[Path, float] = {}  # store path -> when this process last detached it
_gates: dict[Path, threading.Lock] = {}  # store path -> held by the one viewer read of it in progress
_gates_lock = threading.Lock()


def _gate(path: Path) -> threading.Lock:
    with _gates_lock:
        return _gates.setdefault(path, threading.Lock())


class SeriesData(NamedTuple):
    """What ``ViewerState.series`` read, in one session (so consistent with each other)."""

    points: pd.DataFrame  # run_id, key, x, value: min and max per bucket
    full: tuple[float, float] | None  # x extent of all the series
    extents: dict  # (run_id, key) -> (first x, last x) when read


class SeriesBuckets(NamedTuple):
    """What ``ViewerState.series_buckets`` read, in one session: what a chart draws."""

    buckets: pd.DataFrame  # one row per (run_id, key, bucket): queries.series.BUCKET_COLUMNS
    full: tuple[float, float] | None  # x extent of all the series
    extents: dict  # (run_id, key) -> (first x, last x) when read


class ViewerState(param.Parameterized):
    """Filters and selection of one viewer session, and every query the views need."""

    experiments = param.List(default=[], item_type=str, doc="Show only runs of these experiments.")
    statuses = param.List(default=[], item_type=str, doc="Show only runs in these states.")
    tags = param.List(default=[], item_type=str, doc="Show only runs carrying all these tags.")
    sweeps = param.List(default=[], item_type=str, doc="Show only runs of these sweeps (sweep ids).")
    text = param.String(default="", doc="Free text matched in name, experiment, id, tags, params.")
    expression = param.String(default="", doc="Param/metric expression, e.g. 'lr < 0.01 and loss < 0.2'.")
    metric_columns = param.List(default=[], item_type=str, doc="Metric keys shown as last/best columns.")
    selected = param.List(default=[], item_type=str, doc="Run ids selected for the Compare page.")
    current_run = param.String(default=None, allow_None=True, doc="Run id shown on the Run page.")
    refresh_seconds = param.Number(default=2.0, bounds=(0.1, None), doc="Live refresh period.")
    status = param.String(default="", doc="Why the views may be stale ('' when the last reads worked).")

    def __init__(self, store=None, lock_timeout: float = DEFAULT_READ_TIMEOUT, doc=None, loop=None,
                 **params) -> None:
        """``doc``: the server session's bokeh Document, whose ``loop`` (default: the
        running one) then gets the views' reads' results; ``None`` runs reads inline."""
        super().__init__(**params)
        path = store if store is not None else get_settings().store_path
        self.store_path = Path(path).expanduser().absolute()
        self.lock_timeout = lock_timeout
        self._facets: dict[str, list[str]] | None = None
        self.reads = Reads(doc, on_status=lambda text: setattr(self, "status", text), loop=loop)

    # -- sessions -------------------------------------------------------------
    @property
    def store(self):
        return get_store(self.store_path)

    def _read(self, work, default):
        """Run ``work(conn)`` in one short read-only session; ``default`` if no store yet.

        The viewer's reads of one file take turns (a gate per file), and
        consecutive sessions are spaced by ``DEFAULT_READ_GAP``: a writer retrying its
        lock every 2-10 ms gets in between them instead of waiting out a whole
        burst of reads (a page load). Waiting for the turn, the gap and the
        file's lock together takes at most ``lock_timeout``; then ``StoreLocked``.
        """
        if not self.store_path.exists():
            return default
        deadline = time.monotonic() + self.lock_timeout
        gate = _gate(self.store_path)
        if not gate.acquire(timeout=self.lock_timeout):
            raise StoreLocked(str(self.store_path), None, self.lock_timeout)
        try:
            wait = _last_read.get(self.store_path, 0.0) + DEFAULT_READ_GAP - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.store.session(write=False, timeout=max(0.0, deadline - time.monotonic())) as conn:
                return work(conn)
        except StoreError:
            if not self.store_path.exists():
                return default
            raise
        finally:
            _last_read[self.store_path] = time.monotonic()
            gate.release()

    def _reader(self, work):
        """``_read`` as the query module's ``Reader``: ``None`` when there is no store."""
        return self._read(work, None)

    # -- filters and the runs list --------------------------------------------
    def facets(self, refresh: bool = False) -> dict[str, list[str]]:
        """Experiments, statuses, tags, param names and metric keys present in the store."""
        if self._facets is None or refresh:
            self._facets = self._read(queries.facets, dict(queries.EMPTY_FACETS))
        return self._facets

    def default_metric_columns(self) -> list[str]:
        keys = [k for k in self.facets()["metrics"] if not is_telemetry(k)]
        return keys[:DEFAULT_METRIC_COLUMNS]

    def run_filter(self, **overrides) -> RunFilter:
        """The runs the filters select (``overrides`` replace filter values for this
        call only). Raises ``FilterError`` for an expression that does not parse."""
        values = {name: overrides.get(name, getattr(self, name)) for name in FILTER_PARAMS}
        return RunFilter(
            experiments=list(values["experiments"]) or None, statuses=list(values["statuses"]) or None,
            tags=list(values["tags"]) or None, sweeps=list(values["sweeps"]) or None, text=values["text"],
            expression=self._compile(values["expression"]) if values["expression"].strip() else ("", []),
        )

    def _compile(self, expression: str) -> tuple[str, list]:
        """Compile against the known names; re-read them once if a name is unknown (new runs)."""
        def names(facets: dict) -> FilterNames:
            return FilterNames(facets.get("param_pointers") or facets["params"], facets["metrics"], utcnow())

        try:
            return compile_filter(expression, names(self.facets()))
        except FilterError as exc:
            if "unknown" not in str(exc):
                raise
        return compile_filter(expression, names(self.facets(refresh=True)))

    def _runs(self, where: RunFilter, keys: list[str]) -> pd.DataFrame:
        return queries.runs_table(self._reader, where, layout=queries.LIST_LAYOUT, keys=keys)

    def list_runs(self, **overrides) -> pd.DataFrame:
        """The runs table for the filters (newest first); never scans ``metrics``."""
        where = self.run_filter(**overrides)
        return self._runs(where, list(overrides.get("metric_columns", self.metric_columns)))

    def update_filters(self, **changes) -> pd.DataFrame:
        """Apply filter changes if they are valid and return the new runs table.

        A bad expression raises ``FilterError`` and changes nothing.
        """
        unknown = set(changes) - set(FILTER_PARAMS)
        if unknown:
            raise TypeError(f"not filters: {sorted(unknown)}")
        frame = self.list_runs(**changes)
        self.param.update(**changes)
        return frame

    def rows(self, run_ids: list[str]) -> pd.DataFrame:
        """Fresh rows (same columns as ``list_runs``) for these runs, ignoring filters."""
        keys = list(self.metric_columns)
        if not run_ids:
            return queries.empty_runs_table(queries.LIST_LAYOUT, keys)
        return self._runs(RunFilter(run_ids=list(run_ids)), keys)

    def new_runs(self, known: set[str], since) -> pd.DataFrame:
        """Runs matching the filters created at or after ``since`` that are not in ``known``."""
        frame = self._runs(dataclasses.replace(self.run_filter(), since=since), list(self.metric_columns))
        fresh = [run_id not in known for run_id in frame["run_id"].tolist()]
        return frame[fresh].reset_index(drop=True)

    def count_runs(self) -> int:
        return self._read(queries.count_runs, 0)

    def status_counts(self) -> dict[str, int]:
        """How many runs are in each status (the header's counts)."""
        return self._read(queries.status_counts, {})

    # -- charts -----------------------------------------------------------------
    def series(self, run_ids, keys, x: str = "step", window=None, width: int = DEFAULT_WIDTH, after=None):
        """Downsampled points (run_id, key, x, value), the full x extent, and each series' extent.

        ``x`` is ``"step"``, ``"wall"`` (epoch ms) or ``"relative"`` (seconds
        since the run started); ``window`` is an (x0, x1) range or ``None``
        for everything; ``after`` maps (run_id, key) to an x whose points and
        earlier ones are left out (what a live chart already has).
        """
        empty = SeriesData(pd.DataFrame({"run_id": [], "key": [], "x": [], "value": []}), None, {})
        return self._series(queries.downsample, SeriesData, empty, run_ids, keys, x, window, width, after)

    def series_buckets(self, run_ids, keys, x: str = "step", window=None, width: int = DEFAULT_WIDTH,
                       after=None) -> SeriesBuckets:
        """Like ``series``, but each bucket's mean, std, count, mean x, and lowest and
        highest point (``BUCKET_COLUMNS``), in one query: what the charts draw."""
        empty = SeriesBuckets(queries.empty_buckets(), None, {})
        return self._series(queries.downsample_buckets, SeriesBuckets, empty, run_ids, keys, x, window, width, after)

    def chart_read(self, run_ids, keys, x: str = "step", window=None, width: int = DEFAULT_WIDTH,
                   params: bool = False) -> tuple[SeriesBuckets, dict[str, dict] | None]:
        """A chart's read: ``series_buckets`` and, with ``params``, ``run_params`` of the
        same runs (else ``None``), in one read session (two sessions cost one more
        ``DEFAULT_READ_GAP`` and connection: 18 ms of a Compare of 100 runs)."""
        empty = SeriesBuckets(queries.empty_buckets(), None, {})
        buckets = self._series_work(queries.downsample_buckets, SeriesBuckets, empty, run_ids, keys, x, window,
                                    width, None)
        ids = list(run_ids)
        if buckets is None and not (params and ids):
            return empty, ({} if params else None)

        def work(conn):
            read = buckets(conn) if buckets is not None else empty
            rows = queries.run_params(conn, ids) if params and ids else []
            return read, ({r: queries.flatten(_load_params(p)) for r, p in rows} if params else None)

        return self._read(work, (empty, {} if params else None))

    def _series(self, sample, result, empty, run_ids, keys, x, window, width, after):
        work = self._series_work(sample, result, empty, run_ids, keys, x, window, width, after)
        return empty if work is None else self._read(work, empty)

    @staticmethod
    def _series_work(sample, result, empty, run_ids, keys, x, window, width, after):
        """The read of ``_series`` as a function of a connection (``None``: nothing to read)."""
        if x not in queries.X_KINDS:
            raise ValueError(f"x must be one of {sorted(queries.X_KINDS)}, not {x!r}")
        run_ids, keys = list(run_ids), list(keys)
        if not run_ids or not keys:
            return None

        def work(conn):
            extents, starts = queries.series_extents(conn, run_ids, keys, x)
            full = _union(extents.values())
            if full is None:
                return empty
            pairs = [(r, k) for r in run_ids for k in keys if (r, k) in extents]
            span = window if window is not None else full
            return result(sample(conn, pairs, starts, x, span, width, after), full, extents)

        return work

    def run_params(self, run_ids: list[str]) -> dict[str, dict]:
        """Each run's params, flat (dotted names): what a chart groups runs by."""
        ids = list(run_ids)
        if not ids:
            return {}
        rows = self._read(lambda conn: queries.run_params(conn, ids), [])
        return {run_id: queries.flatten(_load_params(params)) for run_id, params in rows}

    def series_extents(self, run_ids, keys, x: str = "step") -> dict:
        """(first, last) x of each (run_id, key) from ``metric_summary`` (no metric scan)."""
        return self._read(lambda conn: queries.series_extents(conn, list(run_ids), list(keys), x)[0], {})

    def metric_keys(self, run_ids: list[str]) -> list[str]:
        """Metric keys logged by any of these runs."""
        return self._read(lambda conn: queries.metric_keys(conn, list(run_ids)), [])

    def compare_data(self, run_ids: list[str]) -> dict:
        """Names, statuses, params (flat: dotted names) and metric summaries of the runs to compare."""
        ids = list(run_ids)
        runs, summary = self._read(lambda conn: queries.compare_rows(conn, ids),
                                   (pd.DataFrame(columns=["run_id", "name", "status", "params"]),
                                    pd.DataFrame(columns=["run_id", "key"])))
        order = {run_id: i for i, run_id in enumerate(ids)}
        runs = runs.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)
        params = {r: queries.flatten(_load_params(p)) for r, p in zip(runs["run_id"], runs["params"], strict=True)}
        return {
            "runs": runs.drop(columns="params"),
            "params": params,
            "summary": summary,
        }

    # -- sweeps -----------------------------------------------------------------
    def sweeps_summary(self, key: str | None = None, limit: int = DEFAULT_SWEEPS) -> pd.DataFrame:
        """One row per sweep, newest first: its progress (runs started, running, stopped
        early, completed ...) and its best run so far, by its stop rule's metric, else
        ``key`` (default: the first metric column)."""
        key = key or (list(self.metric_columns) or self.default_metric_columns() or [None])[0]
        mode = queries.best_goal(key) if key else "min"
        return self._read(lambda conn: queries.sweeps(conn, key, mode, limit), _EMPTY_SWEEPS.copy())

    def sweep_runs(self, sweep_id: str) -> list[str]:
        """The run ids of one sweep, in the order they were queued."""
        return self._read(lambda conn: queries.sweep_runs(conn, sweep_id), [])

    # -- one run ----------------------------------------------------------------
    def run_overview(self, run_id: str) -> dict | None:
        """The run's row (params flat: dotted names), its events and its metric summary;
        ``None`` if there is no such run."""
        overview = self._read(lambda conn: queries.run_overview(conn, run_id), None)
        if overview is not None:
            overview["run"]["params"] = queries.flatten(_load_params(overview["run"].get("params")))
        return overview

    def run_media(self, run_id: str, limit: int = DEFAULT_MEDIA_ROWS) -> dict:
        """Texts and histograms (newest ``limit`` per key), newest images (PNG), artifacts."""
        return self._read(
            lambda conn: queries.run_media(conn, run_id, limit, DEFAULT_MAX_IMAGES, DEFAULT_IMAGES_PER_KEY),
            {"texts": None, "histograms": None, "images": None, "artifacts": None},
        )

    def artifact_file(self, path: str) -> Path | None:
        """The artifact's file if it exists inside the store's folder, else ``None``."""
        try:
            target = Path(path).resolve()
        except (OSError, ValueError):
            return None
        root = self.store_path.parent.resolve()
        if root not in target.parents or not target.is_file():
            return None
        return target

    # -- export -----------------------------------------------------------------
    def export_metrics(self, run_ids: list[str], fmt: str = "csv") -> bytes:
        """Every metric point of these runs as CSV or Parquet bytes (long form)."""
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', not {fmt!r}")
        ids = list(run_ids)
        table = self._read(lambda conn: queries.metric_points(conn, ids, run_names=True), None)
        buffer = io.BytesIO()
        if table is None:
            table = _empty_export()
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, buffer)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, buffer)
        return buffer.getvalue()


def _union(extents) -> tuple[float, float] | None:
    extents = list(extents)
    if not extents:
        return None
    return min(e[0] for e in extents), max(e[1] for e in extents)


def _load_params(value) -> dict:
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _empty_export():
    import pyarrow as pa

    return pa.table({
        "run_name": pa.array([], pa.string()), "run_id": pa.array([], pa.string()),
        "key": pa.array([], pa.string()), "step": pa.array([], pa.int64()),
        "ts": pa.array([], pa.timestamp("us")), "value": pa.array([], pa.float64()),
    })
