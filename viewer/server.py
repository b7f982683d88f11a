"""Serving the viewer: ``serve``, the ``main`` entry point, ``/health`` and ``ViewerServer``.

``serve()`` blocks in the main thread until SIGINT (Ctrl-C) or SIGTERM, then
stops cleanly and returns: it stops accepting connections, tells every
browser session it is going away (websocket close 1001), destroys the
sessions (their periodic refreshes and pending reads end), stops the loop,
cancels and ends the tasks still pending on it, and puts the previous signal
handlers back. A write to a browser that has gone (bokeh's "Failed sending
message as connection was closed", tornado's ``WebSocketClosedError``) is
normal and logged at DEBUG, not printed: in a kernel it landed in a cell. A second signal while stopping ends
the loop at once. ``threaded=True`` serves from a background thread instead
(in a kernel) and returns at once; ``.stop()`` ends it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import secrets
import signal
import socket
import threading
from pathlib import Path

from tornado.web import RequestHandler

from notebook_exp.config import get_settings
from notebook_exp.exceptions import ConfigError

from . import DEFAULT_REFRESH

__all__ = ["HealthHandler", "ViewerServer", "free_port", "is_loopback", "main", "serve"]

log = logging.getLogger("notebook_exp.viewer")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_CLOSE_WAIT = 0.5  # seconds stopping waits for browsers to answer the websocket close
DEFAULT_START_TIMEOUT = 60.0
AUTH_HINT = (
    "pass basic_auth='<password or path of a file holding it>' to serve() "
    "(CLI: notebook-exp view --basic-auth FILE), or keep host='127.0.0.1' and reach it "
    "through an SSH tunnel (ssh -L 5006:127.0.0.1:5006 HOST)"
)


class HealthHandler(RequestHandler):
    """``GET /health``: ``{"status": "ok", "store": ..., "runs": N}`` (no store path behind auth).

    The count is read off the event loop with the viewer's short lock wait; a
    busy or broken store answers 503 ``{"status": "error", "error": "StoreLocked"}``.
    """

    def initialize(self, store_path: Path, detail: bool) -> None:
        self.store_path = store_path
        self.detail = detail

    async def get(self) -> None:
        from .background import read_pool
        from .state import ViewerState

        body: dict = {"status": "ok"}
        try:
            count = ViewerState(self.store_path).count_runs
            body["runs"] = await asyncio.get_running_loop().run_in_executor(read_pool(), count)
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


CLOSED_TAB_WARNING = "Failed sending message as connection was closed"


class ClosedTabFilter(logging.Filter):
    """Demotes bokeh's warning for an update sent to a browser tab that just closed to DEBUG.

    A tab closing while its session still has an update on the way (a live
    refresh, a chart's read) is normal; bokeh warns anyway, and in a kernel
    that warning lands on stderr in whatever cell runs next (nbval fails on it).
    Nothing is lost: the session is destroyed with its tab. With the
    ``bokeh.server.views.ws`` logger at DEBUG the record still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.getMessage() != CLOSED_TAB_WARNING:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_closed_tabs() -> None:
    """Installs ``ClosedTabFilter`` on bokeh's websocket logger (once)."""
    ws_log = logging.getLogger("bokeh.server.views.ws")
    if not any(isinstance(f, ClosedTabFilter) for f in ws_log.filters):
        ws_log.addFilter(ClosedTabFilter())


class ViewerServer:
    """One viewer server: its ``port`` and ``url``, ``stop()``, and how it ended.

    ``make()`` builds the (unstarted) bokeh server on the calling thread's
    loop. ``signal`` is the signal that stopped a blocking server (else
    ``None``); ``sessions_closed`` counts the browser sessions closed at stop.
    """

    def __init__(self, make, host: str) -> None:
        self._make = make
        self.host = host
        self.signal: signal.Signals | None = None
        self.sessions_closed = 0
        self._server = None
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        """The port the server is bound to (read from its socket once bound; kept after stop)."""
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/"

    def __repr__(self) -> str:
        return f"<ViewerServer {self.url if self._server is not None else '(not started)'}>"

    # -- running ------------------------------------------------------------------
    def run(self) -> None:
        """Serve in this (main) thread until SIGINT or SIGTERM, then stop cleanly."""
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            self._build()  # (panel.serve installs a SIGINT handler of its own: replaced next)
            for sig in STOP_SIGNALS:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            self._serve()
        finally:
            for sig, handler in previous.items():
                if self._loop is not None:
                    self._loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    def start_thread(self) -> None:
        """Serve from a daemon thread; returns once the port is bound (raises what binding raised)."""
        self._thread = threading.Thread(target=self._thread_main, name="notebook_exp-viewer", daemon=True)
        self._thread.start()
        if not self._ready.wait(DEFAULT_START_TIMEOUT):
            raise TimeoutError(f"the viewer did not start in {DEFAULT_START_TIMEOUT:.0f} s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for it, at most ``timeout`` seconds (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._begin_stop)
        except RuntimeError:  # the loop closed meanwhile
            return
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- internals ----------------------------------------------------------------
    def _build(self) -> None:
        self._server = self._make()
        self._port = self._server.port
        self._loop = self._server.io_loop.asyncio_loop

    def _serve(self) -> None:
        self._loop.set_exception_handler(quiet_closed_sockets)
        self._server.start()
        self._server.io_loop.start()  # returns once _shutdown stopped it
        drain(self._loop)

    def _thread_main(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._build()
        except BaseException as exc:  # noqa: BLE001 - handed to start_thread's caller
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            self._serve()
        finally:
            self._server.io_loop.close(all_fds=True)

    def _on_signal(self, sig: int) -> None:
        if self._stopping:
            log.warning("second %s while stopping: stopping now", signal.Signals(sig).name)
            self._loop.stop()
            return
        self.signal = signal.Signals(sig)
        self._begin_stop()

    def _begin_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        server = self._server
        try:
            server.unlisten()
            self.sessions_closed = await close_sessions(server)
            server.stop(wait=False)
        except Exception:  # noqa: BLE001 - stopping must end the loop whatever failed
            log.exception("stopping the viewer failed")
        finally:
            self._loop.stop()


def quiet_closed_sockets(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The server loop's exception handler: a write to a websocket whose browser has gone
    (tornado's ``WebSocketClosedError`` or ``StreamClosedError``, left in a task nobody
    awaits once its session ended) is logged at DEBUG; anything else goes to asyncio's
    default handler, as before."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
        log.debug("a write to a closed browser connection: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


def drain(loop: asyncio.AbstractEventLoop, timeout: float = DEFAULT_CLOSE_WAIT) -> int:
    """Cancel the tasks still pending on the stopped server ``loop`` and let them end (at
    most ``timeout`` seconds), as ``asyncio.run`` does; returns how many there were.

    Without it, the tasks sessions leave behind (Panel's indicator throttles, a
    pending read) were destroyed pending when the loop closed, each printing "Task
    was destroyed but it is pending!" (into a kernel's cell, from ``.stop()``).
    """
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout))
    for task in pending:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("a viewer task ended with %r while stopping", task.exception())
    loop.run_until_complete(loop.shutdown_asyncgens())
    return len(pending)


async def close_sessions(server) -> int:
    """Close every browser session of a bokeh ``server``; returns how many were destroyed.

    bokeh's own ``stop()`` leaves connections and sessions as they are (a TODO
    in ``BokehTornado.stop``) and has no public way to end them, so this reaches
    into its application contexts: close each websocket (1001, going away),
    give browsers ``DEFAULT_CLOSE_WAIT`` to answer, then destroy each session with no
    connection left (which runs its ``on_session_destroyed`` callbacks).
    """
    app = server._tornado
    for connection in list(app._clients):
        connection._socket.close(1001, "server stopping")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEFAULT_CLOSE_WAIT
    while app._clients and loop.time() < deadline:
        await asyncio.sleep(0.01)
    closed = 0
    for context in app._applications.values():
        for session in list(context.sessions):
            if session.connection_count == 0:
                await context._discard_session(session, lambda _session: True)
                closed += 1
    if app._clients:
        log.warning("%d browser connection(s) did not close in time", len(app._clients))
    return closed


def serve(store=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, show: bool = False,
          basic_auth: str | None = None, threaded: bool = False, allow_control: bool = False,
          **kw) -> ViewerServer:
    """Serve the viewer with Panel; returns its ``ViewerServer`` (``port``, ``url``, ``stop()``).

    Blocking (the default) serves until SIGINT or SIGTERM, stops cleanly (see
    the module docstring) and returns; ``.signal`` says which signal it was.
    ``threaded=True`` serves from a background thread (in a kernel) and
    returns at once; stop it with ``.stop()``. ``store`` defaults to the
    ``store`` setting (``NOTEBOOK_EXP_STORE``); the server reads through this
    process's ``Store``. A host other than loopback needs ``basic_auth`` (a
    password, or a file holding it) or an ``oauth_provider``: otherwise
    ``ConfigError``. ``port=0`` picks a free port. ``allow_control`` lets the
    Queue page cancel runs and change queued runs' priorities (of any process on
    the machine, asked through the store; each action's event names the viewer's
    user); without it the viewer reads only. Other keywords go to
    ``panel.serve`` (``websocket_origin``, ``cookie_secret``);
    ``refresh_seconds`` is the viewer's live refresh period.
    """
    path = Path(store if store is not None else get_settings().store_path).expanduser().absolute()
    authenticated = bool(basic_auth or kw.get("oauth_provider"))
    if not is_loopback(host) and not authenticated:
        raise ConfigError(f"refusing to serve the viewer on {host!r} without authentication: {AUTH_HINT}")
    if port == 0:
        port = free_port(host if is_loopback(host) else "0.0.0.0")
    refresh = float(kw.pop("refresh_seconds", DEFAULT_REFRESH))
    options = _panel_options(path, host, port, basic_auth, authenticated, threaded, kw)

    def app():  # panel.serve calls plain functions once per session
        from .app import create_app

        return create_app(path, refresh_seconds=refresh, allow_control=allow_control)

    def make():
        import panel as pn

        quiet_closed_tabs()
        return pn.serve(app, port=port, address=host, show=show, start=False, threaded=False, **options)

    server = ViewerServer(make, host)
    if threaded:
        server.start_thread()
    else:
        server.run()
    return server


def _panel_options(path: Path, host: str, port: int, basic_auth, authenticated: bool, threaded: bool,
                   kw: dict) -> dict:
    """``panel.serve`` keywords: ``/health``, the JSON API (``viewer.api``), auth, allowed
    websocket origins, title, verbosity."""
    options = dict(kw, basic_auth=basic_auth)
    from .api import api_patterns

    options["extra_patterns"] = [*kw.get("extra_patterns", []),
                                 (r"/health", HealthHandler, {"store_path": path, "detail": not authenticated}),
                                 *api_patterns(path, basic_auth, authenticated)]
    if basic_auth:
        options.setdefault("cookie_secret", secrets.token_hex(32))
    options.setdefault("websocket_origin", _origins(host, port))
    options.setdefault("title", "notebook_exp viewer")
    options.setdefault("verbose", not threaded)
    return options


def main(argv: list[str] | None = None) -> int:
    """``python -m notebook_exp_viewer``: serve until SIGINT or SIGTERM, then exit 0.

    (``notebook-exp view`` is the same server behind the package's CLI.)
    """
    parser = argparse.ArgumentParser(
        prog="notebook-exp view", description="Browse and compare runs.",
        epilog="Ctrl-C (SIGINT) or SIGTERM stops the server cleanly; the exit status is then 0.")
    parser.add_argument("--store", help="store file (default: NOTEBOOK_EXP_STORE or ./.notebook_exp/store.duckdb)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 5006; 0 picks one)")
    parser.add_argument("--show", action="store_true", help="open a browser tab")
    parser.add_argument("--basic-auth", metavar="PASSWORD_OR_FILE",
                        help="require this password (or the one in this file); needed off loopback")
    parser.add_argument("--refresh", type=float, default=DEFAULT_REFRESH, help="live refresh period (s)")
    parser.add_argument("--allow-control", action="store_true",
                        help="let the Queue page cancel runs and change queued runs' priorities (any process's); "
                             "off by default: the viewer only reads")
    args = parser.parse_args(argv)
    try:
        server = serve(store=args.store, host=args.host, port=args.port, show=args.show,
                       basic_auth=args.basic_auth, refresh_seconds=args.refresh, allow_control=args.allow_control)
    except ConfigError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:  # Ctrl-C before the server was up
        return 130
    print(stopped_line(server), flush=True)
    return 0


def stopped_line(server: ViewerServer) -> str:
    """What a stopped blocking server prints: why it stopped and the sessions it closed."""
    why = f" on {server.signal.name}" if server.signal is not None else ""
    n = server.sessions_closed
    return f"viewer stopped{why}; {n} browser session{'s' if n != 1 else ''} closed"
