"""Scatter of any param against any metric's final (or min/max) value across the compared runs."""

from __future__ import annotations

import math

import panel as pn
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool
from bokeh.plotting import figure

from notebook_exp.store.queries import SUMMARY_COLUMNS

from .common import color_for, format_value, message, preferred_key
from .parallel_coords import metric_values, varying_params

__all__ = ["ParamScatter", "param_axis"]


def param_axis(values: list) -> tuple[list[float], dict[int, str] | None]:
    """Numbers as they are; text params as category positions with their tick labels."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return [math.nan if v is None else float(v) for v in values], None
    cats = sorted({format_value(v) for v in present})
    pos = {c: i for i, c in enumerate(cats)}
    return [math.nan if v is None else float(pos[format_value(v)]) for v in values], dict(enumerate(cats))


class ParamScatter:
    """One point per run: x = a param, y = a metric's last/min/max value."""

    def __init__(self, state, height: int = 340) -> None:
        self.state = state
        self.height = height
        self.data: dict | None = None
        self.param_name = pn.widgets.Select(label="param (x)", options=[], width=200)
        self.metric = pn.widgets.Select(label="metric (y)", options=[], width=200)
        self.agg = pn.widgets.Select(label="value", options=list(SUMMARY_COLUMNS), value="last", width=90)
        self.log_x = pn.widgets.Checkbox(label="log x", value=False, width=70)
        self.note = pn.pane.HTML("", css_classes=["nx-scatter-note"])
        self.pane = pn.pane.Bokeh(sizing_mode="stretch_width", height=height, css_classes=["nx-scatter"])
        for widget in (self.param_name, self.metric, self.agg, self.log_x):
            widget.param.watch(lambda _e: self._render(), "value")

    def panel(self) -> pn.viewable.Viewable:
        row = pn.Row(self.param_name, self.metric, self.agg, self.log_x)
        return pn.Column(row, self.note, self.pane, sizing_mode="stretch_width")

    def update(self, data: dict) -> None:
        self.data = data
        names = sorted({n for p in data["params"].values() for n in p})
        keys = sorted(set(data["summary"]["key"])) if len(data["summary"]) else []
        varying = varying_params(list(data["runs"]["run_id"]), data["params"])
        defaults = ((self.param_name, names, varying[0] if varying else (names[0] if names else None)),
                    (self.metric, keys, preferred_key(keys)))
        for widget, options, default in defaults:
            current = widget.value
            widget.options = options
            widget.value = current if current in options else default
        self._render()

    def points(self) -> dict:
        run_ids = list(self.data["runs"]["run_id"])
        xs, ticks = param_axis([self.data["params"].get(r, {}).get(self.param_name.value) for r in run_ids])
        ys = metric_values(self.data["summary"], run_ids, self.metric.value, self.agg.value)
        return {"x": xs, "y": ys, "ticks": ticks, "name": list(self.data["runs"]["name"])}

    def _render(self) -> None:
        if not self.data or not len(self.data["runs"]) or not self.param_name.value or not self.metric.value:
            self.note.object = message("Pick a param and a metric of the selected runs.")
            self.pane.object = None
            return
        self.note.object = ""
        pts = self.points()
        log_x = self.log_x.value and pts["ticks"] is None and all(x > 0 for x in pts["x"] if x == x)
        fig = figure(height=self.height, sizing_mode="stretch_width",
                     x_axis_type="log" if log_x else "linear", tools="pan,wheel_zoom,box_zoom,reset,save")
        fig.xaxis.axis_label = self.param_name.value
        fig.yaxis.axis_label = f"{self.metric.value} ({self.agg.value})"
        if pts["ticks"]:
            fig.xaxis.ticker = FixedTicker(ticks=list(pts["ticks"]))
            fig.xaxis.major_label_overrides = pts["ticks"]
        source = ColumnDataSource({
            "x": pts["x"], "y": pts["y"], "name": pts["name"],
            "color": [color_for(i) for i in range(len(pts["x"]))],
        })
        dots = fig.scatter("x", "y", source=source, size=11, color="color", name="nx-scatter-points")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("run", "@name"), ("x", "@x"), ("y", "@y")]))
        self.pane.object = fig
