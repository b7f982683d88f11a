"""``nx.view()``: the viewer served from this kernel (reading through its own store connection)."""

from __future__ import annotations

import html

_server = None
_url = None


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
    once; returns its link. The server reads through this kernel's store connection."""
    global _server, _url
    if _server is None:
        import notebook_exp_viewer as viewer

        from .config import get_settings

        if not port:
            port = viewer.free_port()
        _server = viewer.serve(store=store or get_settings().store_path, host="127.0.0.1", port=port,
                               show=False, threaded=True)
        _url = f"http://127.0.0.1:{port}/"
    return ViewerLink(_url)


def stop_view() -> None:
    """Stop the viewer this kernel serves (idempotent)."""
    global _server, _url
    if _server is not None:
        _server.stop()
        _server = _url = None
