"""The viewer app: pages assembled from components, ``serve`` and the CLI entry point.

    import notebook_exp_viewer as viewer
    viewer.serve(store="runs.duckdb")                  # blocks; http://127.0.0.1:5006
    server = viewer.serve(threaded=True)               # from a kernel; server.stop() later

Pages (tabs): Runs (filter, select, open), Compare (the selected runs) and Run
(one run). Each browser session gets its own ``ViewerState``; a periodic
callback refreshes what is live. ``/health`` answers JSON for probes.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import secrets
import socket
from pathlib import Path

import panel as pn
from tornado.web import RequestHandler

from notebook_exp.collectors import is_telemetry
from notebook_exp.config import get_settings
from notebook_exp.exceptions import ConfigError

from .components.common import heading, message, preferred_key, title
from .components.export import MetricsExport
from .components.metric_chart import MetricChart
from .components.parallel_coords import ParallelCoords
from .components.params_diff import ParamsDiff
from .components.run_detail import RunDetail
from .components.runs_table import RunsTable
from .components.scatter import ParamScatter
from .state import ViewerState

__all__ = ["ComparePage", "ViewerApp", "create_app", "main", "serve"]

log = logging.getLogger("notebook_exp.viewer")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006
DEFAULT_REFRESH = 2.0
RUNS_TAB, COMPARE_TAB, RUN_TAB = 0, 1, 2
AUTH_HINT = (
    "pass basic_auth='<password or path of a file holding it>' to serve() "
    "(CLI: notebook-exp view --basic-auth FILE), or keep host='127.0.0.1' and reach it "
    "through an SSH tunnel (ssh -L 5006:127.0.0.1:5006 HOST)"
)


class ComparePage:
    """Overlaid metric chart, params diff, parallel coordinates, scatter and export."""

    def __init__(self, state) -> None:
        self.state = state
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
            self.note, pn.Row(self.key, self.export.panel()), self.chart.panel(),
            heading("Params"), self.diff.panel(), heading("Parallel coordinates"), self.parcoords.panel(),
            heading("Param vs metric"), self.scatter.panel(), sizing_mode="stretch_width",
        )

    def update(self) -> None:
        """Load the state's selected runs."""
        self.run_ids = list(self.state.selected)
        data = self.state.compare_data(self.run_ids)
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
        self.runs = RunsTable(state, on_open_run=self.open_run, on_compare=self.open_compare)
        self.compare = ComparePage(state)
        self.run = RunDetail(state)
        self.status = pn.pane.HTML("", css_classes=["nx-status"])
        self.tabs = pn.Tabs(
            ("Runs", self.runs.panel()), ("Compare", self.compare.panel()), ("Run", self.run.panel()),
            dynamic=True, sizing_mode="stretch_width",
        )
        self._compare_stale = True
        state.param.watch(self._on_selected, "selected")
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

    def _on_selected(self, _event) -> None:
        self._compare_stale = True
        if self.tabs.active == COMPARE_TAB:
            self._update_compare()

    def _on_tab(self, event) -> None:
        if event.new == COMPARE_TAB:
            self._update_compare()

    def _update_compare(self) -> None:
        if self._compare_stale:
            self._compare_stale = False
            self.compare.update()

    def refresh(self) -> None:
        """The periodic callback: live rows, and the visible page's live charts."""
        try:
            self.runs.refresh()
            if self.tabs.active == COMPARE_TAB and self._has_live(self.compare.run_ids):
                self.compare.refresh()
            if self.tabs.active == RUN_TAB:
                self.run.refresh()
            self.status.object = ""
        except Exception as exc:  # noqa: BLE001 - keep refreshing; say what went wrong
            log.warning("viewer refresh failed: %s", exc)
            self.status.object = message(f"refresh failed: {exc}", "error")

    def _has_live(self, run_ids: list[str]) -> bool:
        """Whether any of these runs is queued/running (or not listed, so unknown)."""
        value = self.runs.table.value
        status = dict(zip(value["run_id"].tolist(), value["status"].tolist(), strict=True))
        return any(status.get(run_id, "running") in ("queued", "running") for run_id in run_ids)


def create_app(store=None, refresh_seconds: float = DEFAULT_REFRESH) -> pn.viewable.Viewable:
    """Build the viewer for one session (``?run=<id>`` opens that run)."""
    state = ViewerState(store, refresh_seconds=refresh_seconds)
    app = ViewerApp(state)
    run_arg = (pn.state.session_args or {}).get("run")
    if run_arg:
        app.open_run(run_arg[0].decode("utf-8", "replace"))
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.add_periodic_callback(app.refresh, period=int(refresh_seconds * 1000))
    return app.layout()


class HealthHandler(RequestHandler):
    """``GET /health``: ``{"status": "ok", "store": ..., "runs": N}`` (no store path behind auth)."""

    def initialize(self, store_path: Path, detail: bool) -> None:
        self.store_path = store_path
        self.detail = detail

    async def get(self) -> None:
        body: dict = {"status": "ok"}
        try:
            count = ViewerState(self.store_path, lock_timeout=2.0).count_runs
            body["runs"] = await asyncio.get_running_loop().run_in_executor(None, count)
        except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
            self.set_status(503)
            body = {"status": "error", "error": type(exc).__name__}
        if self.detail:
            body["store"] = str(self.store_path)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _origins(host: str, port: int) -> list[str]:
    names = {"localhost", "127.0.0.1", host}
    if not is_loopback(host):
        names |= {socket.gethostname(), socket.getfqdn()}
    return sorted(f"{name}:{port}" for name in names if name not in ("0.0.0.0", "::"))


def serve(store=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, show: bool = False,
          basic_auth: str | None = None, threaded: bool = False, **kw):
    """Serve the viewer with Panel and return the server (a stoppable thread when ``threaded``).

    ``store`` defaults to the ``store`` setting (``NOTEBOOK_EXP_STORE``). A
    host other than loopback needs ``basic_auth`` (a password, or a file
    holding it) or an ``oauth_provider``: otherwise ``ConfigError``. ``port=0``
    picks a free port; the returned object carries ``port`` and ``url``.
    ``threaded=True`` serves from a background thread (in a kernel; stop it
    with ``.stop()``) and reads through this process's ``Store``. Other keywords go to
    ``panel.serve`` (``websocket_origin``, ``cookie_secret``, ``refresh_seconds``
    is the viewer's live refresh period).
    """
    path = Path(store if store is not None else get_settings().store_path).expanduser().absolute()
    authenticated = bool(basic_auth or kw.get("oauth_provider"))
    if not is_loopback(host) and not authenticated:
        raise ConfigError(f"refusing to serve the viewer on {host!r} without authentication: {AUTH_HINT}")
    if port == 0:
        port = free_port(host if is_loopback(host) else "0.0.0.0")
    refresh = float(kw.pop("refresh_seconds", DEFAULT_REFRESH))
    patterns = [*kw.pop("extra_patterns", []),
                (r"/health", HealthHandler, {"store_path": path, "detail": not authenticated})]
    if basic_auth:
        kw.setdefault("cookie_secret", secrets.token_hex(32))
    kw.setdefault("websocket_origin", _origins(host, port))
    kw.setdefault("title", "notebook_exp viewer")
    kw.setdefault("verbose", not threaded)

    def app() -> pn.viewable.Viewable:  # panel.serve calls plain functions once per session
        return create_app(path, refresh_seconds=refresh)

    server = pn.serve(app, port=port, address=host, show=show, threaded=threaded,
                      basic_auth=basic_auth, extra_patterns=patterns, **kw)
    if server is not None:
        server.port = port
        server.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    return server


def main(argv: list[str] | None = None) -> int:
    """``notebook-exp view`` / ``python -m notebook_exp_viewer``: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="notebook-exp view", description="Browse and compare runs.")
    parser.add_argument("--store", help="store file (default: NOTEBOOK_EXP_STORE or ./.notebook_exp/store.duckdb)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 5006; 0 picks one)")
    parser.add_argument("--show", action="store_true", help="open a browser tab")
    parser.add_argument("--basic-auth", metavar="PASSWORD_OR_FILE",
                        help="require this password (or the one in this file); needed off loopback")
    parser.add_argument("--refresh", type=float, default=DEFAULT_REFRESH, help="live refresh period (s)")
    args = parser.parse_args(argv)
    try:
        serve(store=args.store, host=args.host, port=args.port, show=args.show,
              basic_auth=args.basic_auth, refresh_seconds=args.refresh)
    except ConfigError as exc:
        parser.error(str(exc))
    return 0
