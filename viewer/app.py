"""The viewer app: pages assembled from components (serving them: ``server.py``).

    import notebook_exp_viewer as viewer
    viewer.serve(store="runs.duckdb")                  # blocks; http://127.0.0.1:5006
    server = viewer.serve(threaded=True)               # from a kernel; server.stop() later

Pages (tabs): Runs (filter, select, open), Compare (the selected runs, or a
whole sweep), Run (one run), Sweeps (each sweep's progress and best run) and
Queue (what every process of the machine has queued or running, and its GPUs;
with ``allow_control`` also cancel and priority, ``components/queue_page.py``).
Each browser session gets its own ``ViewerState``, whose reads run off the
server's event loop; a periodic callback refreshes what is live (the header's
run counts included) and retries reads that found the store busy, and the header
says so meanwhile ("store busy, retrying"). ``/health`` answers JSON for probes,
``/api/v1`` is the JSON API (``api.py``).

**The address is the view.** The page, the selected runs, the open run and the
filters live in the URL's query (``URL_QUERY``): ``?page=compare&runs=["id1",
"id2"]``, ``?run=<id>``, ``?filter=lr < 0.01``. Changing the view updates the
address bar (no reload); opening an address restores its view, so views can be
bookmarked and shared.
"""

from __future__ import annotations

import logging
from functools import partial

import panel as pn
import param

from notebook_exp.collectors import is_telemetry
from notebook_exp.models import RunStatus

from . import DEFAULT_REFRESH
from .components.common import STATUS_COLORS, heading, message, preferred_key, title
from .components.export import MetricsExport
from .components.metric_chart import MetricChart
from .components.parallel_coords import ParallelCoords
from .components.params_diff import ParamsDiff
from .components.queue_page import QueuePage
from .components.run_detail import RunDetail
from .components.runs_table import RunsList
from .components.scatter import ParamScatter
from .components.sweeps import SweepsView
from .state import ViewerState

__all__ = ["ComparePage", "ViewerApp", "ViewerTemplate", "create_app"]

log = logging.getLogger("notebook_exp.viewer")

RUNS_TAB, COMPARE_TAB, RUN_TAB, SWEEPS_TAB, QUEUE_TAB = 0, 1, 2, 3, 4
HEADER_BACKGROUND = "#17324d"
CONTROL_ANSWER_WAIT = 5.0  # seconds the Queue page waits for a run's owner to answer a request
PAGES = ("runs", "compare", "run", "sweeps", "queue")  # the tabs' names in the address, in tab order
#: ``ViewerState`` params kept in the address, by their query name.
URL_QUERY = {"selected": "runs", "current_run": "run", "expression": "filter", "text": "q",
             "experiments": "experiment", "statuses": "status", "tags": "tag", "sweeps": "sweep"}


class Navigation(param.Parameterized):
    """The page shown, by name (``PAGES``): what the address's ``page=`` holds."""

    page = param.Selector(default="runs", objects=list(PAGES))


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


class ViewerTemplate(pn.template.VanillaTemplate):
    """The served page: Panel's VanillaTemplate, less its one outside resource (Lato from
    Google Fonts; the template's CSS falls back to the system's sans-serif), so the viewer
    loads nothing but from its own server and works offline; plus
    ``static/tabulator_guard.js``, which keeps Tabulator from failing when a table's columns
    change before it is built (the file says why)."""

    _resources = {"css": {}}
    _js = "static/tabulator_guard.js"


class ViewerApp:
    """The pages of one browser session, wired to one ``ViewerState``."""

    def __init__(self, state: ViewerState, control=None) -> None:
        self.state = state
        self.runs = RunsList(state, on_open_run=self.open_run, on_compare=self.open_compare)
        self.compare = ComparePage(state, on_sweep=self.compare_sweep)
        self.run = RunDetail(state)
        self.sweeps = SweepsView(state, on_compare=self.compare_sweep, on_open_run=self.open_run)
        self.queue = QueuePage(state, control=control)
        self.status = pn.pane.HTML("", css_classes=["nx-status"])
        self.counts = pn.pane.HTML("", css_classes=["nx-run-counts"], styles={"color": "white", "white-space": "nowrap"},
                                   margin=(6, 10), align="center")
        self.nav = Navigation()
        self.tabs = pn.Tabs(
            ("Runs", self.runs.panel()), ("Compare", self.compare.panel()), ("Run", self.run.panel()),
            ("Sweeps", self.sweeps.panel()), ("Queue", self.queue.panel()),
            dynamic=True, sizing_mode="stretch_width",
        )
        self._compare_stale = True
        state.param.watch(self._on_selected, "selected")
        state.param.watch(self._on_status, "status")
        self.tabs.param.watch(self._on_tab, "active")
        self.nav.param.watch(self._on_page, "page")

    def template(self) -> pn.template.BaseTemplate:
        """The served page: Panel's plain template, its header bar holding the project's
        name, the store and the live run counts, the pages in its main area."""
        store = pn.pane.HTML(f'<span style="color:#c9d6e3">{title(self.state.store_path)}</span>',
                             css_classes=["nx-header"], styles={"white-space": "nowrap"}, margin=(6, 10),
                             align="center")
        return ViewerTemplate(
            title="notebook_exp viewer", header_background=HEADER_BACKGROUND, header=[store, pn.HSpacer(), self.counts],
            main=[self.status, self.tabs],
        )

    def layout(self) -> pn.viewable.Viewable:
        header = pn.pane.HTML(
            f'<b style="font-size:1.15em">notebook_exp</b>&nbsp;&nbsp;'
            f'<span style="color:#c9d6e3">{title(self.state.store_path)}</span>',
            css_classes=["nx-header"], styles={"color": "white"}, margin=(6, 10),
        )
        bar = pn.Row(header, pn.HSpacer(), self.counts, sizing_mode="stretch_width",
                     styles={"background": HEADER_BACKGROUND, "border-radius": "4px"})
        return pn.Column(bar, self.status, self.tabs, sizing_mode="stretch_width")

    def restore(self) -> None:
        """Show what the state and ``nav`` say (an address just applied to them)."""
        if self.state.current_run:
            self.run.show(self.state.current_run)
        page = PAGES.index(self.nav.page)
        if page != self.tabs.active:
            self.tabs.active = page
        elif page == COMPARE_TAB:
            self._update_compare()

    def update_counts(self) -> None:
        """The header's run counts (read off the loop)."""
        self.state.reads.submit("counts", self.state.status_counts, self._show_counts, periodic=True)

    def _show_counts(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        live = "".join(
            f' <span class="nx-live-count" style="background:{STATUS_COLORS[s]};color:white;border-radius:3px;'
            f'padding:1px 6px;margin-left:6px">{counts[s]} {s}</span>'
            for s in ("running", "queued") if counts.get(s))
        self.counts.object = f'<span class="nx-totals">{total} run{"s" if total != 1 else ""}</span>{live}'

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

    def _on_page(self, event) -> None:
        page = PAGES.index(event.new)
        if self.tabs.active != page:
            self.tabs.active = page

    def _on_tab(self, event) -> None:
        self.nav.page = PAGES[event.new]
        if event.new == COMPARE_TAB:
            self._update_compare()
        elif event.new == SWEEPS_TAB:
            self.sweeps.update()
        elif event.new == QUEUE_TAB:
            self.queue.update()

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
            self.update_counts()
            self.runs.refresh()
            if self.tabs.active == COMPARE_TAB and self._has_live(self.compare.run_ids):
                self.compare.refresh()
            if self.tabs.active == RUN_TAB:
                self.run.refresh()
            if self.tabs.active == SWEEPS_TAB:
                self.sweeps.refresh()
            if self.tabs.active == QUEUE_TAB:
                self.queue.refresh()
        except Exception as exc:  # noqa: BLE001 - keep refreshing; say what went wrong
            log.warning("viewer refresh failed: %s", exc)
            self.state.reads.report(f"refresh failed: {exc}")

    def _has_live(self, run_ids: list[str]) -> bool:
        """Whether any of these runs is queued/running (or not listed, so unknown)."""
        value = self.runs.table.value
        status = dict(zip(value["run_id"].tolist(), value["status"].tolist(), strict=True))
        active = RunStatus.values(active=True)
        return any(status.get(run_id, RunStatus.RUNNING.value) in active for run_id in run_ids)


def create_app(store=None, refresh_seconds: float = DEFAULT_REFRESH, allow_control: bool = False) -> pn.viewable.Viewable:
    """Build the viewer for one session; in a server session the address's query
    (``URL_QUERY``, ``page=``) restores a view and follows it.

    In a server session the page is a Panel template (``ViewerApp.template``: a header bar
    with the store and live run counts over the pages) and its reads run off the event loop,
    filling the page as they arrive; anywhere else (a test, a notebook) it is a plain column
    with the same header and pages, and reads run at once. ``allow_control``
    gives the Queue page its cancel and priority buttons."""
    doc = pn.state.curdoc
    served = doc is not None and doc.session_context is not None
    state = ViewerState(store, refresh_seconds=refresh_seconds, doc=doc if served else None)
    location = pn.state.location if served else None
    if location is not None:
        location.sync(state, URL_QUERY, on_error=lambda bad: log.warning("address values not applied: %s", bad))
    app = ViewerApp(state, control=viewer_control(state.store_path, pn.state.user) if allow_control else None)
    if location is not None:
        location.sync(app.nav, {"page": "page"})
        args = pn.state.session_args or {}
        if state.current_run and "page" not in args:  # ?run=<id> alone opens that run
            app.nav.page = "run"
    app.restore()
    app.update_counts()
    if served:
        pn.state.add_periodic_callback(app.refresh, period=int(refresh_seconds * 1000))
        pn.state.on_session_destroyed(lambda _context: state.reads.close())
        return app.template()
    return app.layout()


def viewer_control(store_path, user: str | None):
    """The Queue page's control: ``(run_id, action, value) -> message``, asking the run's
    owner through the store (``scheduler.control.ask``) in the name of the viewer's user."""
    import os

    from notebook_exp.store import get_store
    from notebook_exp.store._host import HOST

    who = f"viewer user {user or 'anonymous'} ({HOST} pid {os.getpid()})"

    def control(run_id: str, action: str, value: int | None) -> str:
        from notebook_exp.scheduler.control import ask

        result = ask(run_id, action, value, who, store=get_store(store_path), timeout=CONTROL_ANSWER_WAIT)
        return f"{action} {run_id}: {result.outcome}, {result.message}"

    return control
