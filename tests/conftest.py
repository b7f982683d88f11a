import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from notebook_exp.config import reset_settings
from notebook_exp.scheduler.core import Scheduler, stop_scheduler
from notebook_exp.testing import (
    FakeGpus,
    leaked_threads,
    make_settings,
    package_threads,
    shutdown,
    use_scheduler,
)

ROOT = Path(__file__).resolve().parents[1]
READ_ONLY_WAIT = 30.0  # seconds a plain read-only connect keeps trying past writers' windows
THREAD_GRACE = 2.0  # seconds the package's threads get to end after a test's teardown


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """After each test's teardown (``store_path`` runs ``shutdown()`` before this ends),
    no thread of the package started during the test may still be alive."""
    before = package_threads()
    yield
    leaked = leaked_threads(ignore=before, timeout=THREAD_GRACE)
    if leaked:
        pytest.fail(f"threads of notebook_exp outlived the test: {', '.join(leaked)}", pytrace=False)


@pytest.fixture(autouse=True)
def store_path(no_leaked_threads, tmp_path, monkeypatch):
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
    """Query a store file with plain duckdb, read-only, as an outside user would: a
    connect that meets a writer's short window (another process's lock, or this
    process's own writer: "Unique file handle conflict") is tried again, for up to
    ``READ_ONLY_WAIT`` seconds, as the README tells users to do."""
    import duckdb

    def query(path, sql, params=None):
        deadline = time.monotonic() + READ_ONLY_WAIT
        while True:
            try:
                con = duckdb.connect(str(path), read_only=True)
                break
            except duckdb.Error as exc:
                text = str(exc)
                busy = "Could not set lock" in text or "Unique file handle conflict" in text
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
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


@pytest.fixture
def fake_gpus(store_path):
    """Declare virtual GPUs for the rest of the test: ``gpus = fake_gpus(2)`` enters
    ``notebook_exp.testing.FakeGpus(2)`` (same arguments) and returns it."""
    with contextlib.ExitStack() as stack:
        yield lambda count, **options: stack.enter_context(FakeGpus(count, **options))


@pytest.fixture
def use_settings(store_path, tmp_path):
    """Give this test a scheduler of its own settings: ``use_settings(max_concurrent=1)``
    installs ``Scheduler(make_settings(store=<the test's store>, lock_dir=..., **overrides))``
    as the process's scheduler (``inventory=`` is passed on) until the test ends; returns it."""
    with contextlib.ExitStack() as stack:

        def apply(inventory=None, **overrides):
            settings = make_settings(store=store_path, lock_dir=tmp_path / "locks", **overrides)
            return stack.enter_context(use_scheduler(Scheduler(settings, inventory=inventory)))

        yield apply
