"""``SourceCollector``: the code a run came from and the notebook it was started in.

- ``source`` (the ``runs.source`` column): the cell of a ``%%experiment`` run
  (the magic submits it as ``source=``), else the source of the function given
  to ``nx.submit`` / ``nx.sweep`` when Python can find it (``inspect.getsource``:
  functions of files and of notebook cells; a lambda gives its line). A run
  started with ``start_run`` has none.
- ``notebook`` (in ``runs.info``): the notebook's path, when the kernel knows it.
  Looked up, first found wins: ``__vsc_ipynb_file__`` in the shell's namespace
  (VS Code), ``__session__`` there (ipykernel sets it from ``JPY_SESSION_NAME``),
  the ``JPY_SESSION_NAME`` variable itself (jupyter-server sets it for the
  kernels it starts: the notebook's path, absolute or relative to the server's
  root), and the ``jupyter_session`` entry of the kernel's connection file
  (jupyter-client writes it there). Nothing asks a server over the network.

Nothing here fails: what cannot be found is left out.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from typing import Any

from .base import Collector, RunContext

__all__ = ["SourceCollector", "function_source", "notebook_path"]


class SourceCollector(Collector):
    """The cell or function source of a run, and its notebook's path."""

    capabilities = ("source",)

    def collect(self, context: RunContext) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        code = context.source if context.source is not None else function_source(context.fn)
        if code is not None:
            fields["source"] = code
        path = notebook_path()
        if path:
            fields["notebook"] = path
        return fields


def function_source(fn: Any) -> str | None:
    """The source text of ``fn`` (a function, a method, a ``functools.partial`` of one,
    or an object whose class defines ``__call__``), or None if Python cannot find it."""
    try:
        while isinstance(fn, functools.partial):
            fn = fn.func
        fn = inspect.unwrap(fn) if callable(fn) else fn
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        if code is None and callable(fn):
            call = getattr(type(fn), "__call__", None)  # noqa: B004 - a callable object's method
            code = getattr(call, "__code__", None)
        if code is None:
            return None
        qualname = getattr(code, "co_qualname", code.co_name)  # Python 3.10 has no co_qualname
        return _code_source(code.co_filename, code.co_firstlineno, qualname, code)
    except Exception:  # noqa: BLE001 - the source is a nicety, never a reason to fail
        return None


@functools.lru_cache(maxsize=256)
def _code_source(filename: str, line: int, qualname: str, code) -> str | None:
    """Cached by where the code is and the code itself (a sweep's runs share one function)."""
    try:
        return inspect.getsource(code)
    except (OSError, TypeError, IndexError, SyntaxError):
        return None


def notebook_path() -> str | None:
    """The path of the notebook this kernel runs (see the module docstring), or None."""
    shell = _shell()
    if shell is not None:
        namespace = getattr(shell, "user_ns", None) or {}
        for name in ("__vsc_ipynb_file__", "__session__"):
            value = namespace.get(name)
            if isinstance(value, str) and value:
                return value
    value = os.environ.get("JPY_SESSION_NAME")
    if value:
        return value
    return _connection_session()


def _shell():
    """The running IPython shell, without importing IPython when it is not loaded."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a half-initialised IPython
        return None


def _connection_session() -> str | None:
    """``jupyter_session`` of this kernel's connection file, when this is an ipykernel."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is None:
        return None
    try:
        app_class = kernelapp.IPKernelApp
        if not app_class.initialized():
            return None
        path = app_class.instance().abs_connection_file
    except Exception:  # noqa: BLE001 - another ipykernel than the one we know
        return None
    return _session_in(path)


@functools.lru_cache(maxsize=4)
def _session_in(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh).get("jupyter_session")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
