"""notebook_exp's viewer: a Panel app over the store (installed as ``notebook_exp_viewer``).

    import notebook_exp_viewer as viewer
    viewer.serve(store="runs.duckdb")          # http://127.0.0.1:5006, blocks until Ctrl-C/SIGTERM
    server = viewer.serve(threaded=True)       # from a kernel; server.url, server.stop() to end
    viewer.main(["--store", "runs.duckdb"])    # ``python -m notebook_exp_viewer``

Panel and bokeh are imported on first use of these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "ViewerApp": "notebook_exp_viewer.app",
    "ViewerState": "notebook_exp_viewer.state",
    "create_app": "notebook_exp_viewer.app",
    "ViewerServer": "notebook_exp_viewer.server",
    "free_port": "notebook_exp_viewer.server",
    "main": "notebook_exp_viewer.server",
    "serve": "notebook_exp_viewer.server",
}

#: Seconds between live refreshes of a page (``serve(refresh_seconds=...)``, ``--refresh``).
DEFAULT_REFRESH = 2.0

__all__ = ["ViewerApp", "ViewerServer", "ViewerState", "create_app", "free_port", "main", "serve"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'notebook_exp_viewer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .app import ViewerApp, create_app
    from .server import ViewerServer, free_port, main, serve
    from .state import ViewerState
