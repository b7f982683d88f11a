"""Parallel coordinates over the params that vary between runs, plus one metric.

Each axis is scaled to [0, 1]: numbers linearly (or by log10 when positive
and spanning more than two decades, as learning rates do), text params by
category. One line per run, drawn with bokeh ``multi_line``; every label is
drawn on the canvas, so no store text becomes HTML.
"""

from __future__ import annotations

import math

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool, LabelSet, Range1d
from bokeh.plotting import figure

from notebook_exp.store.queries import SUMMARY_COLUMNS

from .common import color_for, format_value, message, preferred_key

__all__ = ["ParallelCoords", "metric_values", "scale_axis", "varying_params"]

DEFAULT_MAX_AXES = 12


def varying_params(run_ids: list[str], params: dict[str, dict]) -> list[str]:
    """Names of params whose value is not the same in every run."""
    names = sorted({n for r in run_ids for n in params.get(r, {})})
    out = []
    for name in names:
        values = {repr(params.get(r, {}).get(name)) for r in run_ids}
        if len(values) > 1:
            out.append(name)
    return out


def metric_values(summary, run_ids: list[str], key: str, agg: str = "last") -> list[float]:
    """One number per run from ``metric_summary`` rows (NaN where missing)."""
    column = SUMMARY_COLUMNS[agg]
    rows = summary[summary["key"] == key] if len(summary) else summary
    found = dict(zip(rows["run_id"], rows[column], strict=True)) if len(rows) else {}
    out = []
    for run_id in run_ids:
        value = found.get(run_id)
        out.append(math.nan if value is None else float(value))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scale_axis(values: list) -> tuple[list[float], str, str]:
    """Values scaled to [0, 1] (NaN when missing), and labels for the axis bottom and top."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(_is_number(v) for v in present):
        nums = np.array([math.nan if v is None else float(v) for v in values])
        lo, hi = float(np.nanmin(nums)), float(np.nanmax(nums))
        use_log = lo > 0 and hi / lo > 100
        scaled = np.log10(nums) if use_log else nums
        a, b = (math.log10(lo), math.log10(hi)) if use_log else (lo, hi)
        norm = (scaled - a) / (b - a) if b > a else np.where(np.isnan(scaled), np.nan, 0.5)
        return list(norm), format_value(lo), format_value(hi)
    cats = sorted({format_value(v) for v in present})
    pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    scaled = [math.nan if v is None else pos[format_value(v)] for v in values]
    return scaled, cats[0] if cats else "", cats[-1] if cats else ""


class ParallelCoords:
    """Lines across the varying params and a chosen metric of the compared runs."""

    def __init__(self, state, height: int = 360) -> None:
        self.state = state
        self.height = height
        self.data: dict | None = None
        self.metric = pn.widgets.Select(label="metric", options=[], width=200)
        self.agg = pn.widgets.Select(label="value", options=list(SUMMARY_COLUMNS), value="last", width=90)
        self.note = pn.pane.HTML("", css_classes=["nx-parcoords-note"])
        self.pane = pn.pane.Bokeh(sizing_mode="stretch_width", height=height, css_classes=["nx-parcoords"])
        for widget in (self.metric, self.agg):
            widget.param.watch(lambda _e: self._render(), "value")

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(pn.Row(self.metric, self.agg), self.note, self.pane, sizing_mode="stretch_width")

    def update(self, data: dict) -> None:
        self.data = data
        keys = sorted(set(data["summary"]["key"])) if len(data["summary"]) else []
        current = self.metric.value
        self.metric.options = keys
        self.metric.value = current if current in keys else preferred_key(keys)
        self._render()

    def axes(self) -> tuple[list[str], list[list[float]], list[tuple[str, str]]]:
        """Axis names, each run's scaled values, and each axis's (low, high) labels."""
        data = self.data
        run_ids = list(data["runs"]["run_id"])
        names = varying_params(run_ids, data["params"])[:DEFAULT_MAX_AXES]
        columns, ends = [], []
        for name in names:
            scaled, lo, hi = scale_axis([data["params"].get(r, {}).get(name) for r in run_ids])
            columns.append(scaled)
            ends.append((lo, hi))
        if self.metric.value:
            values = metric_values(data["summary"], run_ids, self.metric.value, self.agg.value)
            scaled, lo, hi = scale_axis(values)
            names.append(f"{self.metric.value} ({self.agg.value})")
            columns.append(scaled)
            ends.append((lo, hi))
        per_run = [list(row) for row in zip(*columns, strict=True)] if columns else []
        return names, per_run, ends

    def _render(self) -> None:
        if not self.data or not len(self.data["runs"]):
            self.note.object = message("Select runs to see their params side by side.")
            self.pane.object = None
            return
        names, per_run, ends = self.axes()
        if len(names) < 2:
            self.note.object = message("Needs at least two axes: params that differ, or a metric.")
            self.pane.object = None
            return
        self.note.object = ""
        self.pane.object = self._figure(names, per_run, ends)

    def _figure(self, names, per_run, ends):
        runs = self.data["runs"]
        fig = figure(height=self.height, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset,save",
                     x_range=Range1d(-0.3, len(names) - 0.7), y_range=Range1d(-0.1, 1.1))
        fig.yaxis.visible = False
        fig.ygrid.visible = False
        fig.xaxis.ticker = FixedTicker(ticks=list(range(len(names))))
        fig.xaxis.major_label_overrides = {i: n for i, n in enumerate(names)}
        fig.segment(x0=list(range(len(names))), y0=0, x1=list(range(len(names))), y1=1, color="#999")
        xs = [list(range(len(names)))] * len(per_run)
        source = ColumnDataSource({
            "xs": xs, "ys": per_run, "color": [color_for(i) for i in range(len(per_run))],
            "name": list(runs["name"]),
        })
        lines = fig.multi_line("xs", "ys", source=source, color="color", line_width=2, alpha=0.8,
                               name="nx-parcoords-lines")
        fig.add_tools(HoverTool(renderers=[lines], tooltips=[("run", "@name")]))
        labels = ColumnDataSource({
            "x": [i for i in range(len(names)) for _ in (0, 1)],
            "y": [y for _ in names for y in (-0.06, 1.04)],
            "text": [t for lo_hi in ends for t in lo_hi],
        })
        fig.add_layout(LabelSet(x="x", y="y", text="text", source=labels, text_font_size="9pt",
                                text_align="center"))
        return fig
