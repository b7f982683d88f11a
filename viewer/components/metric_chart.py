"""An overlaid metric chart: one line per (run, key), or per group of runs, downsampled in DuckDB.

The state returns one row per pixel bucket of the visible window
(``queries.series.BUCKET_COLUMNS``: the bucket's mean, std, count, mean x, and
its lowest and highest point), so a chart of 100 runs x 100,000 steps carries
~1,000 buckets per line. By default each series is drawn as its per-bucket
mean line over a faint band (``band``: the bucket's min..max, or mean +- one
std, or none): the trend reads and spikes stay visible. ``raw`` draws today's
raw view instead: each bucket's lowest and highest point (``points``).

Smoothing (``smoother``: EMA with ``smoothing`` as its weight, or a trailing
running mean over ``window`` points) smooths the line, never the band; a
smoothed chart keeps the unsmoothed line faintly behind it.

With more than one run, ``group_by`` names a param (nested params by dotted
name): the runs sharing its value form a group, drawn as one line, the mean
across the group's runs of each run's (smoothed) bucket means, with their
min..max or +- std across runs as the band; the legend names the value.

Zooming or panning (bokeh's RangesUpdate) re-queries just the visible window at
full bucket resolution; Reset goes back to the whole extent. ``refresh()``
re-reads the current window, which is how a running run's curve grows. Reads
go through ``state.reads`` (off the server's event loop); lines are drawn when
their data arrives. Changing the band, smoothing, raw view or grouping redraws
what is held, without reading the store.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
import panel as pn
from bokeh.core.properties import value as literal
from bokeh.events import RangesUpdate, Reset
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem
from bokeh.plotting import figure

from notebook_exp.store.queries import (
    bucket_points,
    ema,
    empty_buckets,
    merge_buckets,
    running_mean,
)

from ..state import DEFAULT_WIDTH
from .common import color_for, format_value, message

__all__ = ["BANDS", "SMOOTHERS", "X_LABELS", "MetricChart"]

X_LABELS = {"step": "step", "wall": "wall time (UTC)", "relative": "time since start (s)"}
BANDS = {"min\u2013max": "minmax", "\u00b11 std": "std", "none": "none"}  # label -> value
SMOOTHERS = {"EMA": "ema", "running mean": "mean"}  # label -> value
NO_GROUP = "(none)"
NOT_SET = "(not set)"
DEFAULT_MARKS_UP_TO = 60  # draw point markers on series this short (a single point has no line)
DEFAULT_FULL_WINDOW = 0.999  # a window covering this much of the extent counts as "everything"
DEFAULT_GROW_REBUCKET = 2.0  # re-bucket a live chart once its extent has doubled
DEFAULT_WINDOW_MARGIN = 0.25  # a zoomed chart reads this fraction of its width more on each side
DEFAULT_RUNNING_WINDOW = 20  # points a running mean averages, until the user picks another
DEFAULT_MAX_RUNNING_WINDOW = 500
BAND_ALPHA = 0.15  # the band is shaded faintly behind its line
FAINT_ALPHA = 0.3  # the unsmoothed line behind a smoothed one
EMPTY = {"x": [], "y": []}


@dataclass
class _Line:
    """One drawn line (a series or a group) and its three sources."""

    main: ColumnDataSource  # x, y (smoothed), label, lo, hi, n: the line, its markers and the hover
    band: ColumnDataSource  # x, y1, y2
    faint: ColumnDataSource  # x, y: the unsmoothed line while smoothing
    marks: object  # the markers' renderer


class MetricChart:
    """Lines for every (run, key) pair of ``set_series``, with x kind (``x``: one of
    ``X_LABELS``), log scale, band, smoothing, raw view and grouping by a param."""

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
        self.params: dict[str, dict] = {}  # run id -> its flat params (read when there are runs to group)
        self._params_of: list[str] | None = None
        self.window: tuple[float, float] | None = None
        self.full: tuple[float, float] | None = None
        self.base_span: float | None = None  # x span bucketed by the last full read
        self.seen: dict = {}  # (run_id, key) -> its extent when last read
        self.buckets = empty_buckets()  # what the lines are drawn from (BUCKET_COLUMNS)
        self._points = bucket_points(self.buckets)
        self.lines: dict[tuple, _Line] = {}
        self._updating = False
        self.x_kind = pn.widgets.Select(label="x axis", options={v: k for k, v in X_LABELS.items()},
                                        value=x, width=160)
        self.log_y = pn.widgets.Checkbox(label="log scale", value=False, width=90, css_classes=["nx-log-y"])
        self.smoother = pn.widgets.Select(label="smoothing", options=SMOOTHERS, value="ema", width=130,
                                          css_classes=["nx-smoother"])
        self.smoothing = pn.widgets.FloatSlider(label="EMA weight", start=0.0, end=0.99, step=0.01, value=0.0,
                                                width=180, css_classes=["nx-ema"])
        self.window_points = pn.widgets.IntSlider(label="window (points)", start=1, end=DEFAULT_MAX_RUNNING_WINDOW,
                                                  value=DEFAULT_RUNNING_WINDOW, width=180, visible=False,
                                                  css_classes=["nx-running-window"])
        self.band = pn.widgets.Select(label="band", options=BANDS, value="minmax", width=110, css_classes=["nx-band"])
        self.raw = pn.widgets.Checkbox(label="raw points (min/max)", value=False, width=160,
                                       css_classes=["nx-raw-toggle"])
        self.group_by = pn.widgets.Select(label="group runs by", options=[NO_GROUP], value=NO_GROUP, width=180,
                                          visible=False, css_classes=["nx-group-by"])
        self.note = pn.pane.HTML("", css_classes=["nx-chart-note"])
        self.pane = pn.pane.Bokeh(sizing_mode="stretch_width", height=height, css_classes=[css_class])
        self.figure = self._make_figure()
        self.x_kind.param.watch(lambda _e: self.rebuild(), "value")
        self.log_y.param.watch(lambda _e: self.rebuild(keep_window=True), "value")
        self.smoother.param.watch(self._on_smoother, "value")
        for widget in (self.smoothing, self.window_points, self.band):
            widget.param.watch(lambda _e: self._draw(), "value")
        self.raw.param.watch(lambda _e: self._relayout(), "value")
        self.group_by.param.watch(lambda _e: self._updating or self._relayout(), "value")

    def panel(self, controls: bool = True) -> pn.viewable.Viewable:
        parts = [self.controls()] if controls else []
        return pn.Column(*parts, self.note, self.pane, sizing_mode="stretch_width")

    def controls(self) -> pn.viewable.Viewable:
        """The chart's controls, wrapping onto more rows in a narrow window."""
        return pn.FlexBox(self.x_kind, self.log_y, self.smoother, self.smoothing, self.window_points, self.band,
                          self.raw, self.group_by, flex_wrap="wrap", align_items="flex-end",
                          sizing_mode="stretch_width", css_classes=["nx-chart-controls"])

    # -- what to show ------------------------------------------------------------
    def set_series(self, run_ids: list[str], keys: list[str], labels: dict[str, str] | None = None) -> None:
        """Show ``keys`` of ``run_ids`` (labels: run id -> legend name); resets the zoom."""
        self.run_ids, self.keys = list(run_ids), list(keys)
        self.labels = dict(labels or {})
        self.group_by.visible = len(self.run_ids) > 1
        self.rebuild()

    def rebuild(self, keep_window: bool = False) -> None:
        """Make a fresh figure (x kind or scale changed) and load the data; the
        figure replaces the shown one once its data arrived."""
        if not keep_window:
            self.window = None
        self.figure = self._make_figure()
        self.lines = {}
        self._query()

    def refresh(self) -> None:
        """Grow live curves: read only points newer than those shown.

        Zoomed in, the window is re-read. Zoomed out, only ``metric_summary``
        is read unless some series has new points; then just their tail is
        downsampled (same bucket width) and appended. When the extent has
        doubled since the last full read, the buckets held are merged in
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
        tail = read.buckets[[p in grown for p in zip(read.buckets["run_id"], read.buckets["key"], strict=True)]]
        self.seen.update({p: e for p, e in read.extents.items() if p in grown})
        self.full = full
        buckets = pd.concat([self.buckets, tail], ignore_index=True) if len(self.buckets) else tail
        self._hold(buckets.sort_values(["run_id", "key", "x"], kind="stable", ignore_index=True))
        if full[1] - full[0] > DEFAULT_GROW_REBUCKET * self.base_span:
            self._rebucket(full)
        self.note.object = ""
        self._draw()

    def _rebucket(self, full: tuple[float, float]) -> None:
        """Coarsen the buckets held to ``width`` buckets over ``full``, in memory.

        Counts, means and stds merge exactly and each coarse bucket keeps the
        lowest and highest point of its fine ones (spikes survive), without
        re-reading millions of rows from the store, which would keep writers
        out. Zooming or Reset reads exactly again."""
        self.base_span = max(full[1] - full[0], 1e-9)
        self._hold(merge_buckets(self.buckets, full[0], self.base_span, self.width))

    @property
    def points(self) -> pd.DataFrame:
        """Each bucket's lowest and highest point (run_id, key, x, value): the raw view.
        Setting it holds those points, each as a bucket of its own."""
        return self._points

    @points.setter
    def points(self, frame: pd.DataFrame) -> None:
        self._hold(_point_buckets(frame))

    def _hold(self, buckets: pd.DataFrame) -> None:
        self.buckets = buckets
        self._points = bucket_points(buckets)

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
        if self.window is not None:  # a new figure of a zoomed chart stays zoomed
            fig.x_range.start, fig.x_range.end = self.window
        grouped = self._grouping() is not None
        x_field, formatters = ("@x{%F %T}", {"@x": "datetime"}) if x == "wall" else ("@x", {})
        fig.add_tools(HoverTool(
            tooltips=[("group" if grouped else "series", "@label"), ("x", x_field), ("value", "@y"),
                      ("min", "@lo"), ("max", "@hi"), ("runs" if grouped else "points", "@n")],
            formatters=formatters, renderers=[], name="nx-hover"))
        fig.add_layout(Legend(items=[], click_policy="hide", location="top_left", label_text_font_size="9pt",
                              name="nx-legend"), "right")
        fig.on_event(RangesUpdate, self._on_ranges)
        fig.on_event(Reset, self._on_reset)
        return fig

    def _relayout(self) -> None:
        """A new figure for a change of the lines drawn (raw view, grouping), from the data held."""
        self.group_by.disabled = bool(self.raw.value)
        self.figure = self._make_figure()
        self.lines = {}
        if self.full is not None or len(self.buckets):
            self._ensure_lines()
            self._draw()
            self._show_figure()

    def _grouping(self) -> str | None:
        """The param the runs are grouped by, or ``None`` (one line per series)."""
        name = self.group_by.value
        if self.raw.value or len(self.run_ids) < 2 or not name or name == NO_GROUP:
            return None
        return name

    def _series_label(self, run_id: str, key: str) -> str:
        if len(self.run_ids) == 1:
            return key
        name = self.labels.get(run_id, run_id)
        return name if len(self.keys) == 1 else f"{name} \u00b7 {key}"

    def _line_specs(self) -> list[tuple[tuple, str, list[str], str]]:
        """(line id, legend label, tags, renderer name) of each line to draw, in legend order."""
        name = self._grouping()
        if name is None:
            return [(("series", r, k), self._series_label(r, k), [r, k], "nx-curve")
                    for r in self.run_ids for k in self.keys]
        specs = []
        for token, value, members in self._groups(name):
            runs = f"{len(members)} run{'s' if len(members) != 1 else ''}"
            for key in self.keys:
                label = f"{name} = {value} ({runs})" + (f" \u00b7 {key}" if len(self.keys) > 1 else "")
                specs.append((("group", token, key), label, [name, value, key], "nx-group"))
        return specs

    def _groups(self, name: str) -> list[tuple[str, str, list[str]]]:
        """(value token, value as text, run ids) per value of param ``name``, in value order;
        runs without the param form the last group."""
        members: dict[str, list[str]] = {}
        values: dict[str, object] = {}
        for run_id in self.run_ids:
            params = self.params.get(run_id, {})
            token = json.dumps(params[name], sort_keys=True, default=str) if name in params else ""
            members.setdefault(token, []).append(run_id)
            values.setdefault(token, params.get(name))

        def order(token: str):
            value = values[token]
            if token == "":
                return (2, 0.0, "")
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return (0, float(value), "")
            return (1, 0.0, format_value(value))

        return [(token, format_value(values[token]) if token else NOT_SET, members[token])
                for token in sorted(members, key=order)]

    def _ensure_lines(self) -> None:
        hover = self.figure.select_one({"name": "nx-hover"})
        legend = self.figure.select_one({"name": "nx-legend"})
        for i, (line_id, label, tags, name) in enumerate(self._line_specs()):
            if line_id in self.lines:
                continue
            color = color_for(i)
            main = ColumnDataSource({"x": [], "y": [], "label": [], "lo": [], "hi": [], "n": []})
            band = ColumnDataSource({"x": [], "y1": [], "y2": []})
            faint = ColumnDataSource(dict(EMPTY))
            shade = self.figure.varea("x", "y1", "y2", source=band, fill_color=color, fill_alpha=BAND_ALPHA,
                                      name="nx-band")
            behind = self.figure.line("x", "y", source=faint, color=color, alpha=FAINT_ALPHA, name="nx-raw")
            line = self.figure.line("x", "y", source=main, color=color, line_width=2, name=name)
            marks = self.figure.scatter("x", "y", source=main, color=color, size=0, name="nx-marks")
            for renderer in (shade, behind, line, marks):
                renderer.tags = list(tags)
            hover.renderers = [*hover.renderers, line]
            legend.items = [*legend.items, LegendItem(label=literal(label), renderers=[line, marks, shade, behind])]
            self.lines[line_id] = _Line(main, band, faint, marks)

    # -- data --------------------------------------------------------------------
    @property
    def _read_key(self) -> str:
        return f"chart-{id(self)}"

    def _query(self, periodic: bool = False) -> None:
        """Read the window (or everything) again; ``_on_series`` draws it. The runs'
        params come along when there are runs to group and they are not held yet."""
        if not self.run_ids or not self.keys:
            self.note.object = message("Nothing to plot.")
            self._show_figure()
            return
        state, run_ids = self.state, list(self.run_ids)
        args = (run_ids, list(self.keys), self.x_kind.value, self._padded_window(), self.width)
        params = len(run_ids) > 1 and self._params_of != run_ids

        def read():
            return (*state.chart_read(*args, params=params), run_ids)

        self.state.reads.submit(self._read_key, read, self._on_series, periodic=periodic)

    def _on_series(self, result) -> None:
        read, params, run_ids = result
        if params is not None:
            self._set_params(run_ids, params)
        self.full = read.full
        self.seen = read.extents
        self.base_span = None if self.window is not None or read.full is None else max(read.full[1] - read.full[0],
                                                                                        1e-9)
        self._hold(read.buckets)
        self.note.object = "" if len(read.buckets) else message("No points logged for this selection yet.")
        self._ensure_lines()
        self._draw()
        self._show_figure()

    def _set_params(self, run_ids: list[str], params: dict[str, dict]) -> None:
        """Hold the runs' params and offer their names to group by (keeping the choice if it still exists)."""
        self.params, self._params_of = params, list(run_ids)
        names = sorted({name for flat in params.values() for name in flat})
        current = self.group_by.value if self.group_by.value in names else NO_GROUP
        changed = current != self.group_by.value
        self._updating = True
        try:
            self.group_by.options = [NO_GROUP, *names]
            self.group_by.value = current
        finally:
            self._updating = False
        if changed:
            self.figure = self._make_figure()
            self.lines = {}

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

    # -- drawing -----------------------------------------------------------------
    def _on_smoother(self, event) -> None:
        self.smoothing.visible = event.new == "ema"
        self.window_points.visible = event.new == "mean"
        self._draw()

    @property
    def smoothed(self) -> bool:
        """Whether the lines are smoothed now."""
        if self.smoother.value == "mean":
            return int(self.window_points.value) > 1
        return float(self.smoothing.value) > 0

    def smooth(self, values) -> np.ndarray:
        """``values`` smoothed as the controls say (unchanged when smoothing is off)."""
        if self.smoother.value == "mean":
            return running_mean(values, int(self.window_points.value))
        return ema(values, float(self.smoothing.value))

    def _draw(self) -> None:
        if not self.lines:
            return
        name = self._grouping()
        if name is not None:
            data = self._group_data(name)
        elif self.raw.value:
            data = self._raw_data()
        else:
            data = self._mean_data()
        for line_id, line in self.lines.items():
            main, band, faint = data.get(line_id) or _empty_line()
            line.main.data = main
            line.band.data = band
            line.faint.data = faint
            line.marks.glyph.size = 5 if 0 < len(main["x"]) <= DEFAULT_MARKS_UP_TO else 0

    def _labels(self) -> dict[tuple, str]:
        return {line_id: label for line_id, label, _tags, _name in self._line_specs()}

    def _mean_data(self) -> dict:
        """Per series: its bucket means (smoothed) as the line, min..max or +-std as the band."""
        out, labels = {}, self._labels()
        for (run_id, key), frame in self.buckets.groupby(["run_id", "key"], sort=False):
            line_id = ("series", run_id, key)
            if line_id not in labels:
                continue
            xs = frame["x"].to_numpy(dtype="float64")
            mean = frame["mean"].to_numpy(dtype="float64")
            lo, hi = frame["lo"].to_numpy(dtype="float64"), frame["hi"].to_numpy(dtype="float64")
            std = frame["std"].to_numpy(dtype="float64")
            band = (lo, hi) if self.band.value == "minmax" else (mean - std, mean + std)
            out[line_id] = self._line_data(xs, mean, labels[line_id], lo, hi, frame["count"].to_numpy(), band)
        return out

    def _raw_data(self) -> dict:
        """Per series: each bucket's lowest and highest point (no band)."""
        out, labels = {}, self._labels()
        for (run_id, key), frame in self.points.groupby(["run_id", "key"], sort=False):
            line_id = ("series", run_id, key)
            if line_id not in labels:
                continue
            xs = frame["x"].to_numpy(dtype="float64")
            ys = frame["value"].to_numpy(dtype="float64")
            out[line_id] = self._line_data(xs, ys, labels[line_id], ys, ys, np.ones(len(ys), dtype="int64"), None)
        return out

    def _group_data(self, name: str) -> dict:
        """Per group and key: the mean across its runs of each run's smoothed bucket means,
        on a grid of ``width`` buckets over the x held; the band is their min..max or
        +-std across runs."""
        out, labels = {}, self._labels()
        if not len(self.buckets):
            return out
        group_of = {r: token for token, _value, members in self._groups(name) for r in members}
        x_all = self.buckets["x"].to_numpy(dtype="float64")
        start, span = float(x_all.min()), max(float(x_all.max() - x_all.min()), 1e-9)
        parts = []
        for (run_id, key), frame in self.buckets.groupby(["run_id", "key"], sort=False):
            if run_id not in group_of:
                continue
            xs = frame["x"].to_numpy(dtype="float64")
            mean = frame["mean"].to_numpy(dtype="float64")
            parts.append(pd.DataFrame({
                "group": group_of[run_id], "key": key, "run_id": run_id, "x": xs, "y": self.smooth(mean),
                "raw": mean, "cell": np.clip(np.floor((xs - start) * self.width / span), 0, self.width - 1),
            }))
        if not parts:
            return out
        per_run = pd.concat(parts, ignore_index=True).groupby(["group", "key", "cell", "run_id"], sort=False).mean()
        cells = per_run.groupby(level=["group", "key", "cell"], sort=False)
        stats = pd.DataFrame({
            "x": cells["x"].mean(), "y": cells["y"].mean(), "raw": cells["raw"].mean(), "lo": cells["y"].min(),
            "hi": cells["y"].max(), "sd": cells["y"].std(ddof=0), "n": cells["y"].size(),
        }).reset_index().sort_values(["group", "key", "x"], kind="stable")
        for (token, key), frame in stats.groupby(["group", "key"], sort=False):
            line_id = ("group", token, key)
            if line_id not in labels:
                continue
            ys, sd = frame["y"].to_numpy(dtype="float64"), frame["sd"].to_numpy(dtype="float64")
            lo, hi = frame["lo"].to_numpy(dtype="float64"), frame["hi"].to_numpy(dtype="float64")
            band = (lo, hi) if self.band.value == "minmax" else (ys - sd, ys + sd)
            out[line_id] = _line_source(frame["x"].to_numpy(dtype="float64"), ys, labels[line_id], lo, hi,
                                        frame["n"].to_numpy(), band if self.band.value != "none" else None,
                                        frame["raw"].to_numpy(dtype="float64") if self.smoothed else None)
        return out

    def _line_data(self, xs, values, label, lo, hi, n, band) -> tuple[dict, dict, dict]:
        """A series' sources: ``values`` smoothed as the line, the unsmoothed faint while
        smoothing, the band unless it is off."""
        smoothed = self.smoothed
        return _line_source(xs, self.smooth(values) if smoothed else values, label, lo, hi, n,
                            band if self.band.value != "none" else None, values if smoothed else None)

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


def _line_source(xs, ys, label, lo, hi, n, band, faint) -> tuple[dict, dict, dict]:
    main = {"x": xs, "y": ys, "label": [label] * len(xs), "lo": lo, "hi": hi, "n": n}
    shade = {"x": xs, "y1": band[0], "y2": band[1]} if band is not None else {"x": [], "y1": [], "y2": []}
    behind = {"x": xs, "y": faint} if faint is not None else dict(EMPTY)
    return main, shade, behind


def _point_buckets(frame: pd.DataFrame) -> pd.DataFrame:
    """Points (run_id, key, x, value) as buckets of one point each; non-finite values are left out."""
    values = frame["value"].to_numpy(dtype="float64")
    kept = frame[np.isfinite(values)]
    xs, ys = kept["x"].to_numpy(), kept["value"].to_numpy(dtype="float64")
    return pd.DataFrame({
        "run_id": kept["run_id"].to_numpy(dtype=object), "key": kept["key"].to_numpy(dtype=object),
        "x": xs.astype("float64"), "mean": ys, "std": np.zeros(len(ys)), "count": np.ones(len(ys), dtype="int64"),
        "x_lo": xs, "lo": ys, "x_hi": xs, "hi": ys,
    }).sort_values(["run_id", "key", "x"], kind="stable", ignore_index=True)


def _empty_line() -> tuple[dict, dict, dict]:
    return ({"x": [], "y": [], "label": [], "lo": [], "hi": [], "n": []}, {"x": [], "y1": [], "y2": []},
            dict(EMPTY))


def _read_growth(state, run_ids, keys, x, seen, base_span, width):
    """(grown series -> extent, the full extent, their new buckets) since ``seen``; ``None`` if none grew."""
    extents = state.series_extents(run_ids, keys, x)
    last = {pair: extent[1] for pair, extent in seen.items()}
    grown = {p: e for p, e in extents.items() if e[1] > last.get(p, -math.inf)}
    if not grown:
        return None
    full = (min(e[0] for e in extents.values()), max(e[1] for e in extents.values()))
    low = min((last[p] for p in grown if p in last), default=full[0])
    buckets = max(1, math.ceil(width * (full[1] - low) / base_span))
    after = {p: last[p] for p in grown if p in last}
    read = state.series_buckets(sorted({p[0] for p in grown}), sorted({p[1] for p in grown}), x, (low, full[1]),
                                buckets, after=after)
    return grown, full, read
