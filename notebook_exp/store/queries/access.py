"""How the read path reaches the file: one short read-only session per read.

Every read attaches the store read-only for the length of its queries only,
retrying while another process holds it (``lock_timeout``, or the caller's
``timeout``), so readers never keep writers out for long (docs/architecture.md
§3). Shaping results in pandas happens after the file is released.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from ...config import get_settings
from ...exceptions import StoreError
from ..core import Store, get_store

__all__ = ["Reader", "read", "reader", "sql"]

T = TypeVar("T")
#: Runs ``work(conn)`` in one read session and returns its result, or ``None`` when there is no store.
Reader = Callable[[Callable[..., T]], "T | None"]


def _store(store) -> Store:
    """The ``Store`` of a path (default: the ``store`` setting), or ``store`` itself."""
    if isinstance(store, Store):
        return store
    settings = get_settings()
    return get_store(store if store is not None else settings.store_path, settings.lock_timeout)


def _missing(target: Store) -> StoreError:
    return StoreError(f"no store at {target.path} (nothing has been logged there yet)")


def read(work: Callable[..., T], *, store: str | os.PathLike | Store | None = None,
         timeout: float | None = -1.0) -> T:
    """``work(conn)`` in one read-only session of ``store`` (a path, a ``Store``, default
    the current store), waiting at most ``timeout`` for the file (default its
    ``lock_timeout``). Raises ``StoreError`` when there is no store yet, and
    ``StoreLocked`` when the file stays held."""
    target = _store(store)
    if not target.path.exists():
        raise _missing(target)
    with target.session(write=False, timeout=timeout) as conn:
        return work(conn)


def reader(store: str | os.PathLike | Store | None = None) -> Reader:
    """A ``Reader`` over ``store`` (see ``read``) that gives ``None`` when there is no store yet."""
    target = _store(store)

    def run(work):
        if not target.path.exists():
            return None
        with target.session(write=False) as conn:
            return work(conn)

    return run


def sql(query: str, params: list | dict | None = None, *, store: str | os.PathLike | None = None):
    """Run a read-only SQL query on the store; returns a pandas DataFrame.

    Tables: runs, metrics, metric_summary, events, texts, histograms, images,
    artifacts. Writing statements fail (the file is attached read-only).
    """
    target = _store(store)
    if not target.path.exists():
        raise _missing(target)
    return target.query(query, params)
