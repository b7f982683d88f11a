import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_exp.config import reset_settings
from notebook_exp.scheduler.core import stop_scheduler
from notebook_exp.testing import shutdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def store_path(tmp_path, monkeypatch):
    """Every test logs into its own store; background threads stop after it."""
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("NOTEBOOK_EXP_STORE", str(path))
    monkeypatch.delenv("NOTEBOOK_EXP_SINKS", raising=False)
    monkeypatch.setenv("NOTEBOOK_EXP_LOCK_DIR", str(tmp_path / "locks"))
    reset_settings()
    yield path
    stop_scheduler(timeout=30)
    shutdown()
    reset_settings()


@pytest.fixture
def read_only():
    """Query a store file with plain duckdb, read-only, as an outside user would."""
    import duckdb

    def query(path, sql, params=None):
        con = duckdb.connect(str(path), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    return query


@pytest.fixture
def run_python():
    """Run code in a fresh interpreter (the test's environment); returns the CompletedProcess."""

    def run(code: str, env: dict | None = None, timeout: float = 120, check: bool = True):
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
@pytest.fixture
def settings_env(monkeypatch):
    """Set NOTEBOOK_EXP_* variables for this test's scheduler (before its first use)."""

    def apply(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"NOTEBOOK_EXP_{key.upper()}", str(value))
        reset_settings()

    return apply
