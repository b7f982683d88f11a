"""The DuckDB store: schema, short-lock sessions, the background writer, queries."""

from .compact import compact
from .core import Store, close_all, get_store, utcnow
from .queries import metrics, runs, sql

__all__ = ["Store", "close_all", "compact", "get_store", "metrics", "runs", "sql", "utcnow"]
