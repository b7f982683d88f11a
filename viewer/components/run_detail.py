"""The Run page: one run's params, tags, status history, error, charts, output, media and source.

Everything the store holds is shown as escaped text. While the run is queued
or running, ``refresh()`` re-reads its row and events and grows its charts.
Reads go through ``state.reads``: the page changes when their answer arrives.
"""

from __future__ import annotations

import json
from functools import partial

import pandas as pd
import panel as pn

from notebook_exp.collectors import is_telemetry
from notebook_exp.models import RunStatus

from .common import (
    STATUS_COLORS,
    choice_options,
    format_value,
    heading,
    kv_table,
    message,
    text_block,
    title,
)
from .metric_chart import MetricChart
from .run_media import RunMedia
from .telemetry import TelemetryCharts

__all__ = ["RunDetail"]

INFO_FIELDS = [
    ("run id", "run_id"), ("experiment", "experiment"), ("status", "status"),
    ("created (UTC)", "created_at"), ("started (UTC)", "started_at"), ("ended (UTC)", "ended_at"),
    ("host", "host"), ("pid", "pid"), ("executor", "executor"), ("priority", "priority"),
    ("attempts", "attempts"), ("GPUs", "gpus"), ("dropped points", "dropped"),
]
DEFAULT_KEYS = 4


def git_rows(value) -> list[tuple[str, str]]:
    """Info rows for the run's ``git`` column (JSON text, or missing in older stores)."""
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        git = json.loads(value)
    except ValueError:
        return []
    if not isinstance(git, dict) or not git.get("commit"):
        return []
    commit = str(git["commit"])[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    rows = [("git commit", commit)]
    rows += [(f"git {name}", str(git[name])) for name in ("branch", "remote") if git.get(name)]
    return rows


class RunDetail:
    """Shows ``state.current_run``; ``show(run_id)`` switches runs."""

    def __init__(self, state) -> None:
        self.state = state
        self.run_id: str | None = None
        self.status: str | None = None
        self._keys: list[str] = []
        self.run_input = pn.widgets.TextInput(label="Run id", placeholder="paste a run id", width=260)
        self.run_input.param.watch(lambda e: e.new and self.show(e.new.strip()), "value")
        self.header = pn.pane.HTML(message("Click a run name on the Runs page to open it."),
                                   css_classes=["nx-run-header"], sizing_mode="stretch_width")
        self.info = pn.pane.HTML("", css_classes=["nx-run-info"])
        self.params = pn.pane.HTML("", css_classes=["nx-run-params"])
        self.error = pn.Column(sizing_mode="stretch_width")
        self.events = pn.widgets.Tabulator(
            pd.DataFrame({"ts": [], "event": [], "detail": []}), show_index=False, disabled=True,
            selectable=False, sizing_mode="stretch_width", layout="fit_data_stretch",
            css_classes=["nx-events"],
        )
        self.metric_keys = pn.widgets.MultiChoice(label="Metrics", options={}, value=[], width=420)
        self._choosing = False
        self.metric_keys.param.watch(lambda e: self._choosing or self._plot_metrics(), "value")
        self.chart = MetricChart(state, css_class="nx-run-chart")
        self.telemetry = TelemetryCharts(state)
        self.output = pn.Column(sizing_mode="stretch_width")
        self.source = pn.Column(sizing_mode="stretch_width")
        self.media = RunMedia(state)

    def panel(self) -> pn.viewable.Viewable:
        overview = pn.Column(
            pn.Row(pn.Column(heading("Run"), self.info), pn.Column(heading("Params"), self.params)),
            self.error, self.metric_keys, self.chart.panel(), heading("Status history"), self.events,
            sizing_mode="stretch_width",
        )
        tabs = pn.Tabs(("Overview", overview), ("System", self.telemetry.panel()), *self.media.panels().items(),
                       ("Output", self.output), ("Source", self.source), dynamic=True)
        return pn.Column(self.run_input, self.header, tabs, sizing_mode="stretch_width")

    # -- showing a run -------------------------------------------------------------
    def show(self, run_id: str) -> None:
        """Read ``run_id`` and show it (its media follow in a read of their own)."""
        self.state.reads.submit("run", lambda: self.state.run_overview(run_id), partial(self._on_shown, run_id))

    def _on_shown(self, run_id: str, overview: dict | None) -> None:
        if overview is None:
            self.header.object = message(f"No run with id {run_id!r}.", "error")
            return
        self.run_id = run_id
        self.state.current_run = run_id
        self._render(overview, first=True)
        self.media.show(run_id)

    def refresh(self) -> None:
        """Re-read a live run (and once more when it has just ended)."""
        if self.run_id is None or self.status not in RunStatus.values(active=True):
            return
        run_id = self.run_id
        self.state.reads.submit("run", lambda: self.state.run_overview(run_id),
                                partial(self._on_refreshed, run_id), periodic=True)

    def _on_refreshed(self, run_id: str, overview: dict | None) -> None:
        if overview is not None and run_id == self.run_id:
            self._render(overview, first=False)
            self.chart.refresh()

    def _render(self, overview: dict, first: bool) -> None:
        run = overview["run"]
        self.status = run.get("status")
        color = STATUS_COLORS.get(self.status, "#333")
        self.header.object = (
            f'<h2 class="nx-run-name" style="margin:0">{title(run.get("name"))}</h2>'
            f'<span class="nx-run-status" style="color:{color}; font-weight:bold">'
            f'{title(self.status)}</span> <span>{title(run.get("experiment"))}</span>'
        )
        rows = [(label, run.get(field)) for label, field in INFO_FIELDS]
        self.info.object = kv_table(rows + git_rows(run.get("git")))
        tags = run.get("tags")
        tag_list = list(tags) if tags is not None and not isinstance(tags, str) else []
        params = sorted(run["params"].items())
        extra = [("tags", ", ".join(map(str, tag_list)))] if tag_list else []
        self.params.object = kv_table([*params, *extra]) if params or extra else message("(no params)")
        self._render_error(run.get("error"))
        self._render_events(overview["events"])
        keys = list(overview["summary"]["key"]) if len(overview["summary"]) else []
        self._render_charts(keys, first)
        if first:
            self.output.objects = [text_block(run.get("output") or "(no captured output)", "nx-output", 800)]
            self.source.objects = [text_block(run.get("source") or "(no source recorded)", "nx-source", 800)]

    def _render_error(self, error) -> None:
        if error is None or (isinstance(error, float) and error != error) or not str(error).strip():
            self.error.objects = []
            return
        self.error.objects = [pn.pane.HTML("<h3>Error</h3>"), text_block(error, "nx-error", 500)]

    def _render_events(self, events: pd.DataFrame) -> None:
        frame = events.copy()
        for column in ("detail", "host", "event", "pid"):
            if column in frame:
                frame[column] = [format_value(v) for v in frame[column]]
        self.events.titles = {c: title(c) for c in frame.columns}
        self.events.formatters = {c: {"type": "plaintext"} for c in ("event", "detail", "host", "pid")}
        self.events.value = frame

    def _render_charts(self, keys: list[str], first: bool) -> None:
        plain = [k for k in keys if not is_telemetry(k)]
        if first or plain != self._keys:
            current = [k for k in self.metric_keys.value if k in plain] if not first else []
            self._keys = plain
            self._choosing = True
            try:
                self.metric_keys.options = choice_options(plain)
                self.metric_keys.value = current or plain[:DEFAULT_KEYS]
            finally:
                self._choosing = False
            if first or self.metric_keys.value != self.chart.keys:
                self._plot_metrics()
        if first:
            self.telemetry.show(self.run_id, keys)
        else:
            self.telemetry.refresh(keys)

    def _plot_metrics(self) -> None:
        if self.run_id is None:
            return
        keys = list(self.metric_keys.value)
        self.chart.set_series([self.run_id], keys, {self.run_id: "this run"})
