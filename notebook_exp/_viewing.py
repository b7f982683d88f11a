"""``nx.view()``: the viewer served from this kernel (reading through its own store connection).

The server runs on a background thread and stops with the kernel: its stop is
a shutdown step (``_exit``, order 30, with the widgets), so browser sessions
are closed before the stores flush and close.
"""

from __future__ import annotations

import html
import threading

_server = None
_lock = threading.Lock()


class ViewerLink:
    """The link to the viewer this kernel serves; renders as a clickable link."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"viewer: {self.url}"

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return f'<a href="{url}" target="_blank">notebook_exp viewer: {url}</a>'


def view(port: int = 0, store=None) -> ViewerLink:
    """Serve the viewer on 127.0.0.1 (a free port unless ``port``) from this process,
    once; returns its link. The server reads through this kernel's store connection
    and stops with the kernel (or with ``stop_view()``)."""
    global _server
    with _lock:
        if _server is None:
            import notebook_exp_viewer as viewer

            from . import _exit
            from .config import get_settings

            _server = viewer.serve(store=store or get_settings().store_path, host="127.0.0.1", port=port,
                                   show=False, threaded=True)
            _exit.on_shutdown(stop_view, order=30)
        return ViewerLink(_server.url)


def stop_view() -> None:
    """Stop the viewer this kernel serves, closing its browser sessions (idempotent)."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop()
