"""An overlaid metric chart: one line per (run, key), downsampled in DuckDB.

The state returns at most two points (min and max) per pixel bucket of the
visible window, so a chart of 100 runs x 100,000 steps carries ~2,000 points
per line and spikes stay visible. Zooming or panning (bokeh's RangesUpdate)
re-queries just the visible window at full bucket resolution; Reset goes back
to the whole extent. ``refresh()`` re-reads the current window, which is how
a running run's curve grows. Reads go through ``state.reads`` (off the server's
event loop); lines are drawn when their points arrive.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
from bokeh.events import RangesUpdate, Reset
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from notebook_exp.store.queries import ema

from ..state import DEFAULT_WIDTH
from .common import color_for, message

__all__ = ["X_LABELS", "MetricChart"]

X_LABELS = {"step": "step", "wall": "wall time (UTC)", "relative": "time since start (s)"}
DEFAULT_MARKS_UP_TO = 60  # draw point markers on series this short (a single point has no line)
DEFAULT_FULL_WINDOW = 0.999  # a window covering this much of the extent counts as "everything"
DEFAULT_GROW_REBUCKET = 2.0  # re-bucket a live chart once its extent has doubled
DEFAULT_WINDOW_MARGIN = 0.25  # a zoomed chart reads this fraction of its width more on each side


class MetricChart:
    """Lines for every (run, key) pair of ``set_series``, with x kind (``x``: one of
    ``X_LABELS``), log scale and smoothing."""

    def __init__(self, state, height: int = 360, width: int = DEFAULT_WIDTH, title: str = "",
                 css_class: str = "nx-chart", x: str = "step") -> None:
        self.state = state
        self.height = height
        self.width = width
        self.title = title
        self.css_class = css_class
        self.run_ids: list[str] = []
        self.keys: list[str] = []
        self.labels: dict[str, str] = {}
        self.window: tuple[float, float] | None = None
        self.full: tuple[float, float] | None = None
        self.base_span: float | None = None  # x span bucketed by the last full read
        self.seen: dict = {}  # (run_id, key) -> its extent when last read
        self.points = pd.DataFrame({"run_id": [], "key": [], "x": [], "value": []})
        self.sources: dict[tuple[str, str], tuple[ColumnDataSource, ColumnDataSource]] = {}
        self.marks: dict[tuple[str, str], object] = {}
        self.x_kind = pn.widgets.Select(label="x axis", options={v: k for k, v in X_LABELS.items()},
                                        value=x, width=170)
        self.log_y = pn.widgets.Checkbox(label="log scale", value=False, width=100)
        self.smoothing = pn.widgets.FloatSlider(label="smoothing (EMA)", start=0.0, end=0.99, step=0.01,
                                                value=0.0, width=200)
        self.note = pn.pane.HTML("", css_classes=["nx-chart-note"])
        self.pane = pn.pane.Bokeh(sizing_mode="stretch_width", height=height, css_classes=[css_class])
        self.x_kind.param.watch(lambda _e: self.rebuild(), "value")
        self.log_y.param.watch(lambda _e: self.rebuild(keep_window=True), "value")
        self.smoothing.param.watch(lambda _e: self._draw(), "value")

    def panel(self, controls: bool = True) -> pn.viewable.Viewable:
        parts = [pn.Row(self.x_kind, self.log_y, self.smoothing)] if controls else []
        return pn.Column(*parts, self.note, self.pane, sizing_mode="stretch_width")

    # -- what to show ------------------------------------------------------------
    def set_series(self, run_ids: list[str], keys: list[str], labels: dict[str, str] | None = None) -> None:
        """Show ``keys`` of ``run_ids`` (labels: run id -> legend name); resets the zoom."""
        self.run_ids, self.keys = list(run_ids), list(keys)
        self.labels = dict(labels or {})
        self.rebuild()

    def rebuild(self, keep_window: bool = False) -> None:
        """Make a fresh figure (x kind or scale changed) and load the data; the
        figure replaces the shown one once its data arrived."""
        if not keep_window:
            self.window = None
        self.figure = self._make_figure()
        self.sources = {}
        self.marks = {}
        self._query()

    def refresh(self) -> None:
        """Grow live curves: read only points newer than those shown.

        Zoomed in, the window is re-read. Zoomed out, only ``metric_summary``
        is read unless some series has new points; then just their tail is
        downsampled (same bucket width) and appended. When the extent has
        doubled since the last full read, the points held are re-bucketed in
        memory (no long read of the store while a writer logs).
        """
        if not self.run_ids or not self.keys:
            return
        if self.window is not None or self.full is None or self.base_span is None:
            self._query(periodic=True)
            return
        args = (self.state, list(self.run_ids), list(self.keys), self.x_kind.value, dict(self.seen),
                self.base_span, self.width)
        self.state.reads.submit(self._read_key, lambda: _read_growth(*args), self._on_grown, periodic=True)

    def _on_grown(self, growth) -> None:
        if growth is None:
            return
        grown, full, read = growth
        tail = read.points[[p in grown for p in zip(read.points["run_id"], read.points["key"], strict=True)]]
        self.seen.update({p: e for p, e in read.extents.items() if p in grown})
        self.full = full
        self.points = pd.concat([self.points, tail], ignore_index=True).sort_values(
            ["run_id", "key", "x"], kind="stable", ignore_index=True)
        if full[1] - full[0] > DEFAULT_GROW_REBUCKET * self.base_span:
            self._rebucket(full)
        self.note.object = ""
        self._draw()

    def _rebucket(self, full: tuple[float, float]) -> None:
        """Coarsen the points held to ``width`` buckets over ``full``, in memory.

        Every point held is the lowest or highest of a finer bucket, so keeping
        the lowest and highest per coarse bucket keeps each line's extremes
        (spikes survive) without re-reading millions of rows from the store,
        which would keep writers out. Zooming or Reset reads exactly again."""
        span = max(full[1] - full[0], 1e-9)
        self.base_span = span
        points = self.points
        if points.empty:
            return
        bucket = np.minimum(np.floor((points["x"].to_numpy(dtype="float64") - full[0]) * self.width / span),
                            self.width - 1)
        values = points["value"].to_numpy(dtype="float64")
        finite = points.assign(bucket=bucket)[np.isfinite(values)]
        grouped = finite.groupby(["run_id", "key", "bucket"], sort=False)["value"]
        keep = pd.Index(grouped.idxmin()).union(pd.Index(grouped.idxmax()))
        self.points = points.loc[keep].sort_values(["run_id", "key", "x"], kind="stable", ignore_index=True)

    # -- figure ------------------------------------------------------------------
    def _make_figure(self):
        x = self.x_kind.value
        fig = figure(
            height=self.height, sizing_mode="stretch_width", title=self.title,
            x_axis_type="datetime" if x == "wall" else "linear",
            y_axis_type="log" if self.log_y.value else "linear",
            tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom",
            output_backend="canvas",
        )
        fig.xaxis.axis_label = X_LABELS[x]
        fig.add_tools(HoverTool(tooltips=[("run", "@label"), ("x", "@x"), ("value", "@y")],
                                renderers=[], name="nx-hover"))
        fig.on_event(RangesUpdate, self._on_ranges)
        fig.on_event(Reset, self._on_reset)
        return fig

    def _series_label(self, run_id: str, key: str) -> str:
        if len(self.run_ids) == 1:
            return key
        name = self.labels.get(run_id, run_id)
        return name if len(self.keys) == 1 else f"{name} \u00b7 {key}"

    def _ensure_sources(self) -> None:
        hover = self.figure.select_one({"name": "nx-hover"})
        for i, pair in enumerate((r, k) for r in self.run_ids for k in self.keys):
            if pair in self.sources:
                continue
            color, label = color_for(i), self._series_label(*pair)
            raw = ColumnDataSource({"x": [], "y": [], "label": []})
            smooth = ColumnDataSource({"x": [], "y": [], "label": []})
            faint = self.figure.line("x", "y", source=raw, color=color, alpha=0.25, name="nx-raw")
            line = self.figure.line("x", "y", source=smooth, color=color, line_width=2, legend_label=label,
                                    name="nx-curve")
            faint.tags = line.tags = list(pair)
            marks = self.figure.scatter("x", "y", source=smooth, color=color, size=0, legend_label=label,
                                        name="nx-marks")
            hover.renderers = [*hover.renderers, line]
            self.sources[pair] = (raw, smooth)
            self.marks[pair] = marks
        if self.figure.legend:
            self.figure.legend.click_policy = "hide"
            self.figure.legend.location = "top_right"

    # -- data --------------------------------------------------------------------
    @property
    def _read_key(self) -> str:
        return f"chart-{id(self)}"

    def _query(self, periodic: bool = False) -> None:
        """Read the window (or everything) again; ``_on_series`` draws it."""
        if not self.run_ids or not self.keys:
            self.note.object = message("Nothing to plot.")
            self._show_figure()
            return
        args = (list(self.run_ids), list(self.keys), self.x_kind.value, self._padded_window(), self.width)
        self.state.reads.submit(self._read_key, lambda: self.state.series(*args), self._on_series,
                                periodic=periodic)

    def _on_series(self, read) -> None:
        points, full, self.seen = read
        self.full = full
        self.base_span = None if self.window is not None or full is None else max(full[1] - full[0], 1e-9)
        self.points = points
        self.note.object = "" if len(points) else message("No points logged for this selection yet.")
        self._ensure_sources()
        self._draw()
        self._show_figure()

    def _show_figure(self) -> None:
        if self.pane.object is not self.figure:
            self.pane.object = self.figure

    def _padded_window(self) -> tuple[float, float] | None:
        """The zoom window with a margin each side, so a small pan still shows lines."""
        if self.window is None:
            return None
        x0, x1 = self.window
        margin = (x1 - x0) * DEFAULT_WINDOW_MARGIN
        return x0 - margin, x1 + margin

    def _draw(self) -> None:
        weight = float(self.smoothing.value)
        groups = {pair: frame for pair, frame in self.points.groupby(["run_id", "key"], sort=False)}
        for pair, (raw, smooth) in self.sources.items():
            frame = groups.get(pair)
            xs = frame["x"].to_numpy() if frame is not None else np.array([])
            ys = frame["value"].to_numpy(dtype="float64") if frame is not None else np.array([])
            label = [self._series_label(*pair)] * len(xs)
            smooth.data = {"x": xs, "y": ema(ys, weight), "label": label}
            self.marks[pair].glyph.size = 5 if 0 < len(xs) <= DEFAULT_MARKS_UP_TO else 0
            raw.data = {"x": xs, "y": ys, "label": label} if weight > 0 else {"x": [], "y": [], "label": []}

    # -- events ------------------------------------------------------------------
    def _on_ranges(self, event) -> None:
        if event.x0 is None or event.x1 is None:
            return
        window = (float(min(event.x0, event.x1)), float(max(event.x0, event.x1)))
        if self.full is not None:
            lo, hi = self.full
            slack = (1 - DEFAULT_FULL_WINDOW) * max(hi - lo, 1e-12)
            if window[0] <= lo + slack and window[1] >= hi - slack:
                window = None  # zoomed out to everything: follow the data as it grows
        if window == self.window:
            return
        self.window = window
        self._query()

    def _on_reset(self, _event) -> None:
        self.window = None
        self._query()


def _read_growth(state, run_ids, keys, x, seen, base_span, width):
    """(grown series -> extent, the full extent, their new points) since ``seen``; ``None`` if none grew."""
    extents = state.series_extents(run_ids, keys, x)
    last = {pair: extent[1] for pair, extent in seen.items()}
    grown = {p: e for p, e in extents.items() if e[1] > last.get(p, -math.inf)}
    if not grown:
        return None
    full = (min(e[0] for e in extents.values()), max(e[1] for e in extents.values()))
    low = min((last[p] for p in grown if p in last), default=full[0])
    buckets = max(1, math.ceil(width * (full[1] - low) / base_span))
    after = {p: last[p] for p in grown if p in last}
    read = state.series(sorted({p[0] for p in grown}), sorted({p[1] for p in grown}), x, (low, full[1]),
                        buckets, after=after)
    return grown, full, read
