"""The Sweeps page: one row per sweep, its progress and its best run so far.

Progress counts the sweep's runs: started (of all), running, stopped early (by
its stop rule), completed, failed and queued. The best run is judged by the
sweep's stop rule metric (its min, or max), else by the metric picked here.
Clicking a sweep's row compares all its runs; clicking its best run opens it.
Every cell is plain text (``common``): ids and names come from the store.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import panel as pn

from notebook_exp.collectors import is_telemetry

from .common import format_value, message, preferred_key, title

__all__ = ["SweepsView", "sweeps_frame"]

COLUMNS = {
    "sweep_id": "sweep", "experiment": "experiment", "method": "method", "rule": "stop rule",
    "progress": "started", "running": "running", "stopped_early": "stopped early", "completed": "completed",
    "failed": "failed", "queued": "queued", "best_run": "best run", "best_value": "best", "metric": "metric",
}
READ_KEY = "sweeps"


def sweeps_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The table shown: one row per sweep, counts as numbers, everything else as text."""
    frame = pd.DataFrame({
        "sweep_id": summary["sweep_id"].astype(str),
        "experiment": summary["experiment"].map(format_value),
        "method": summary["method"].map(format_value),
        "rule": summary["rule"].map(format_value),
        "progress": [f"{int(s)}/{int(n)}" for s, n in zip(summary["started"], summary["runs"], strict=True)],
        **{c: summary[c].fillna(0).astype(int) for c in ("running", "stopped_early", "completed", "failed", "queued")},
        "best_run": summary["best_run"].map(format_value),
        "best_value": summary["best_value"].map(format_value),
        "metric": [f"{format_value(k)} ({m})" if k else "" for k, m in zip(summary["metric"], summary["mode"],
                                                                          strict=True)],
    })
    return frame.reset_index(drop=True)


class SweepsView:
    """The sweeps of the store, live while any of them has runs queued or running."""

    def __init__(self, state, on_compare: Callable[[str], None] | None = None,
                 on_open_run: Callable[[str], None] | None = None) -> None:
        self.state = state
        self.on_compare = on_compare
        self.on_open_run = on_open_run
        self.summary = pd.DataFrame()
        self._updating = False
        self.metric = pn.widgets.Select(label="metric (for sweeps without a stop rule)", options=[], width=300)
        self.metric.param.watch(lambda _e: None if self._updating else self.update(), "value")
        self.note = pn.pane.HTML(message("No sweeps yet: nx.sweep(...) or %%experiment --grid/--sample."),
                                 css_classes=["nx-sweeps-note"])
        self.table = pn.widgets.Tabulator(
            sweeps_frame(pd.DataFrame(columns=["sweep_id", "experiment", "method", "rule", "started", "runs",
                                               "running", "stopped_early", "completed", "failed", "queued",
                                               "best_run", "best_value", "metric", "mode"])),
            show_index=False, disabled=True, selectable=False, sizing_mode="stretch_width", layout="fit_data_table",
            titles={c: title(t) for c, t in COLUMNS.items()}, css_classes=["nx-sweeps"],
            formatters={c: {"type": "plaintext"} for c in COLUMNS},
        )
        self.table.on_click(self._on_click)

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(self.metric, self.note, self.table, sizing_mode="stretch_width")

    def update(self, periodic: bool = False) -> None:
        """Read the sweeps again (shown when the read arrives)."""
        state, key = self.state, self.metric.value

        def read():
            keys = [k for k in state.facets(refresh=not periodic)["metrics"] if not is_telemetry(k)]
            return keys, state.sweeps_summary(key or preferred_key(keys))

        state.reads.submit(READ_KEY, read, self._on_data, periodic=periodic)

    def _on_data(self, result) -> None:
        keys, summary = result
        self._updating = True
        try:
            current = self.metric.value
            self.metric.options = keys
            self.metric.value = current if current in keys else preferred_key(keys)
        finally:
            self._updating = False
        self.summary = summary.reset_index(drop=True)
        self.note.object = message(
            "Click a sweep to compare its runs, or its best run to open it." if len(summary)
            else "No sweeps yet: nx.sweep(...) or %%experiment --grid/--sample.")
        self.table.value = sweeps_frame(self.summary)

    def live(self) -> bool:
        """Whether any sweep shown still has runs queued or running."""
        return bool(len(self.summary)) and bool((self.summary["running"] + self.summary["queued"]).sum())

    def refresh(self) -> None:
        if self.live():
            self.update(periodic=True)

    def _on_click(self, event) -> None:
        if event.row is None or event.row >= len(self.summary):
            return
        row = self.summary.iloc[event.row]
        if event.column == "best_run" and isinstance(row["best_run_id"], str):
            if self.on_open_run is not None:
                self.on_open_run(row["best_run_id"])
        elif self.on_compare is not None:
            self.on_compare(row["sweep_id"])
