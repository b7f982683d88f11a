"""The run page's System tab: a run's telemetry, one chart per kind of reading.

Readings of different units never share an axis (a 3,000 MiB line would flatten
a 40 % one): telemetry keys are grouped by the unit their name ends with, and
each group gets a chart with time since the run started on x.
"""

from __future__ import annotations

import panel as pn

from notebook_exp.collectors import is_telemetry

from .common import message
from .metric_chart import MetricChart

__all__ = ["TELEMETRY_GROUPS", "TelemetryCharts", "group_keys"]

#: (title, key prefix, key suffix) of each chart, in page order.
TELEMETRY_GROUPS = [
    ("CPU and memory in use (%)", "sys/", "_percent"),
    ("resident memory (MiB)", "sys/", "_mb"),
    ("GPU utilisation (%)", "gpu/", "_percent"),
    ("GPU memory used (MiB)", "gpu/", "_mb"),
    ("GPU temperature (\u00b0C)", "gpu/", "_c"),
    ("GPU power (W)", "gpu/", "_w"),
]
DEFAULT_HEIGHT = 220


def group_keys(keys: list[str]) -> dict[str, list[str]]:
    """Telemetry keys by chart title, in page order; other keys are left out."""
    groups: dict[str, list[str]] = {}
    for key in sorted(k for k in keys if is_telemetry(k)):
        title = next(t for t, prefix, suffix in TELEMETRY_GROUPS if key.startswith(prefix) and key.endswith(suffix))
        groups.setdefault(title, []).append(key)
    return {title: groups[title] for title, _p, _s in TELEMETRY_GROUPS if title in groups}


class TelemetryCharts:
    """The charts of one run's telemetry; ``show`` picks the run, ``refresh`` grows them."""

    def __init__(self, state) -> None:
        self.state = state
        self.run_id: str | None = None
        self.charts: dict[str, MetricChart] = {}
        self.layout = pn.Column(sizing_mode="stretch_width", css_classes=["nx-telemetry"])

    def panel(self) -> pn.viewable.Viewable:
        return self.layout

    def show(self, run_id: str, keys: list[str]) -> None:
        """Chart ``run_id``'s telemetry among ``keys`` (all of its metric keys)."""
        self.run_id = run_id
        self.charts = {}
        self._build(group_keys(keys))

    def refresh(self, keys: list[str]) -> None:
        """Grow the charts of a live run; new kinds of readings get their chart."""
        groups = group_keys(keys)
        if {t: c.keys for t, c in self.charts.items()} != groups:
            self._build(groups)
            return
        for chart in self.charts.values():
            chart.refresh()

    def _build(self, groups: dict[str, list[str]]) -> None:
        charts = {}
        for title, keys in groups.items():
            chart = self.charts.get(title)
            if chart is None:
                css = "nx-gpu-chart" if keys[0].startswith("gpu/") else "nx-sys-chart"
                chart = MetricChart(self.state, height=DEFAULT_HEIGHT, title=title, css_class=css, x="relative")
            if chart.keys != keys or chart.run_ids != [self.run_id]:
                chart.set_series([self.run_id], keys, {self.run_id: "this run"})
            else:
                chart.refresh()
            charts[title] = chart
        self.charts = charts
        if not charts:
            self.layout.objects = [pn.pane.HTML(message("No system or GPU telemetry for this run."))]
        else:
            self.layout.objects = [chart.panel(controls=False) for chart in charts.values()]
