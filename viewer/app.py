"""The viewer app: pages assembled from components (serving them: ``server.py``).

    import notebook_exp_viewer as viewer
    viewer.serve(store="runs.duckdb")                  # blocks; http://127.0.0.1:5006
    server = viewer.serve(threaded=True)               # from a kernel; server.stop() later

Pages (tabs): Runs (filter, select, open), Compare (the selected runs, or a
whole sweep), Run (one run) and Sweeps (each sweep's progress and best run). Each browser session gets its own ``ViewerState``, whose reads run
off the server's event loop; a periodic callback refreshes what is live and
retries reads that found the store busy, and the header says so meanwhile
("store busy, retrying"). ``/health`` answers JSON for probes.
"""

from __future__ import annotations

import logging
from functools import partial

import panel as pn

from notebook_exp.collectors import is_telemetry
from notebook_exp.models import RunStatus

from . import DEFAULT_REFRESH
from .components.common import heading, message, preferred_key, title
from .components.export import MetricsExport
from .components.metric_chart import MetricChart
from .components.parallel_coords import ParallelCoords
from .components.params_diff import ParamsDiff
from .components.run_detail import RunDetail
from .components.runs_table import RunsList
from .components.scatter import ParamScatter
from .components.sweeps import SweepsView
from .state import ViewerState

__all__ = ["ComparePage", "ViewerApp", "create_app"]

log = logging.getLogger("notebook_exp.viewer")

RUNS_TAB, COMPARE_TAB, RUN_TAB, SWEEPS_TAB = 0, 1, 2, 3


class ComparePage:
    """Overlaid metric chart, params diff, parallel coordinates, scatter and export;
    ``sweep`` picks a whole sweep to compare (``on_sweep(sweep_id)``)."""

    def __init__(self, state, on_sweep=None) -> None:
        self.state = state
        self.on_sweep = on_sweep
        self.sweep = pn.widgets.Select(label="compare a whole sweep", options=[""], value="", width=220,
                                       css_classes=["nx-compare-sweep"])
        self.sweep.param.watch(self._on_sweep, "value")
        self.run_ids: list[str] = []
        self.names: dict[str, str] = {}
        self._updating = False
        self.key = pn.widgets.Select(label="metric", options=[], width=260)
        self.key.param.watch(lambda _e: self._plot(), "value")
        self.chart = MetricChart(state, css_class="nx-compare-chart")
        self.diff = ParamsDiff(state)
        self.parcoords = ParallelCoords(state)
        self.scatter = ParamScatter(state)
        self.export = MetricsExport(state)
        self.note = pn.pane.HTML(message("Select runs on the Runs page, then open Compare."))

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(
            self.note, pn.Row(self.key, self.sweep, self.export.panel()), self.chart.panel(),
            heading("Params"), self.diff.panel(), heading("Parallel coordinates"), self.parcoords.panel(),
            heading("Param vs metric"), self.scatter.panel(), sizing_mode="stretch_width",
        )

    def update(self) -> None:
        """Load the state's selected runs (shown when the read arrives)."""
        run_ids, state = list(self.state.selected), self.state

        def read():
            return state.compare_data(run_ids), state.facets(refresh=True).get("sweeps", [])

        state.reads.submit("compare", read, partial(self._on_data, run_ids))

    def _on_sweep(self, event) -> None:
        if event.new and not self._updating and self.on_sweep is not None:
            self.on_sweep(event.new)

    def _on_data(self, run_ids: list[str], result) -> None:
        data, sweeps = result
        self._updating = True
        try:
            self.sweep.options = ["", *sweeps]
            self.sweep.value = ""
        finally:
            self._updating = False
        self.run_ids = run_ids
        self.names = dict(zip(data["runs"]["run_id"], data["runs"]["name"], strict=True))
        self.note.object = message(
            f"Comparing {len(self.run_ids)} run(s)." if self.run_ids
            else "Select runs on the Runs page, then open Compare.")
        keys = sorted(set(data["summary"]["key"])) if len(data["summary"]) else []
        plain = [k for k in keys if not is_telemetry(k)] + [k for k in keys if is_telemetry(k)]
        current = self.key.value
        self._updating = True
        try:
            self.key.options = plain
            self.key.value = current if current in plain else preferred_key(plain)
        finally:
            self._updating = False
        self._plot()
        self.diff.update(data)
        self.parcoords.update(data)
        self.scatter.update(data)

    def _plot(self) -> None:
        if self._updating:
            return
        keys = [self.key.value] if self.key.value else []
        self.chart.set_series(self.run_ids, keys, self.names)

    def refresh(self) -> None:
        self.chart.refresh()


class ViewerApp:
    """The pages of one browser session, wired to one ``ViewerState``."""

    def __init__(self, state: ViewerState) -> None:
        self.state = state
        self.runs = RunsList(state, on_open_run=self.open_run, on_compare=self.open_compare)
        self.compare = ComparePage(state, on_sweep=self.compare_sweep)
        self.run = RunDetail(state)
        self.sweeps = SweepsView(state, on_compare=self.compare_sweep, on_open_run=self.open_run)
        self.status = pn.pane.HTML("", css_classes=["nx-status"])
        self.tabs = pn.Tabs(
            ("Runs", self.runs.panel()), ("Compare", self.compare.panel()), ("Run", self.run.panel()),
            ("Sweeps", self.sweeps.panel()),
            dynamic=True, sizing_mode="stretch_width",
        )
        self._compare_stale = True
        state.param.watch(self._on_selected, "selected")
        state.param.watch(self._on_status, "status")
        self.tabs.param.watch(self._on_tab, "active")

    def layout(self) -> pn.viewable.Viewable:
        header = pn.pane.HTML(
            f'<b>notebook_exp</b> <span style="color:#666">{title(self.state.store_path)}</span>',
            css_classes=["nx-header"],
        )
        return pn.Column(pn.Row(header, self.status), self.tabs, sizing_mode="stretch_width")

    def open_run(self, run_id: str) -> None:
        self.run.show(run_id)
        self.tabs.active = RUN_TAB

    def open_compare(self) -> None:
        self.tabs.active = COMPARE_TAB
        self._update_compare()

    def compare_sweep(self, sweep_id: str) -> None:
        """Select every run of the sweep and compare them."""
        def apply(run_ids: list[str]) -> None:
            self.runs.select(run_ids)  # those listed show as selected; Compare takes them all
            self.state.selected = list(run_ids)
            self.open_compare()

        self.state.reads.submit("sweep-runs", lambda: self.state.sweep_runs(sweep_id), apply)

    def _on_selected(self, _event) -> None:
        self._compare_stale = True
        if self.tabs.active == COMPARE_TAB:
            self._update_compare()

    def _on_tab(self, event) -> None:
        if event.new == COMPARE_TAB:
            self._update_compare()
        elif event.new == SWEEPS_TAB:
            self.sweeps.update()

    def _update_compare(self) -> None:
        if self._compare_stale:
            self._compare_stale = False
            self.compare.update()

    def _on_status(self, event) -> None:
        self.status.object = message(event.new, "error") if event.new else ""

    def refresh(self) -> None:
        """The periodic callback: retry reads that found the store busy, then
        live rows and the visible page's live charts (each read off the loop)."""
        try:
            self.state.reads.retry()
            self.runs.refresh()
            if self.tabs.active == COMPARE_TAB and self._has_live(self.compare.run_ids):
                self.compare.refresh()
            if self.tabs.active == RUN_TAB:
                self.run.refresh()
            if self.tabs.active == SWEEPS_TAB:
                self.sweeps.refresh()
        except Exception as exc:  # noqa: BLE001 - keep refreshing; say what went wrong
            log.warning("viewer refresh failed: %s", exc)
            self.state.reads.report(f"refresh failed: {exc}")

    def _has_live(self, run_ids: list[str]) -> bool:
        """Whether any of these runs is queued/running (or not listed, so unknown)."""
        value = self.runs.table.value
        status = dict(zip(value["run_id"].tolist(), value["status"].tolist(), strict=True))
        active = RunStatus.values(active=True)
        return any(status.get(run_id, RunStatus.RUNNING.value) in active for run_id in run_ids)


def create_app(store=None, refresh_seconds: float = DEFAULT_REFRESH) -> pn.viewable.Viewable:
    """Build the viewer for one session (``?run=<id>`` opens that run).

    In a server session its reads run off the event loop and fill the page as
    they arrive; anywhere else (a test, a notebook) they run at once."""
    doc = pn.state.curdoc
    served = doc is not None and doc.session_context is not None
    state = ViewerState(store, refresh_seconds=refresh_seconds, doc=doc if served else None)
    app = ViewerApp(state)
    run_arg = (pn.state.session_args or {}).get("run")
    if run_arg:
        app.open_run(run_arg[0].decode("utf-8", "replace"))
    if served:
        pn.state.add_periodic_callback(app.refresh, period=int(refresh_seconds * 1000))
        pn.state.on_session_destroyed(lambda _context: state.reads.close())
    return app.layout()
