"""Fixtures of the framework integration tests: real (tiny) trainings, no telemetry."""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras (there is no tensorflow)


@pytest.fixture(autouse=True)
def no_telemetry(store_path, settings_env):
    """These tests compare exactly the points a framework logged: no telemetry beside them."""
    settings_env(TELEMETRY_INTERVAL="0")


@pytest.fixture
def run_rows(read_only, store_path):
    """``run_rows()``: every run of the test's store as ``{run_id: (name, experiment, status, error)}``."""

    def rows():
        found = read_only(store_path, "SELECT run_id, name, experiment, status, error FROM runs")
        return {run_id: tuple(rest) for run_id, *rest in found}

    return rows


@pytest.fixture
def points(read_only, store_path):
    """``points(run_id)``: a run's metric points in the store, ``[(key, step, value), ...]`` sorted."""

    def read(run_id):
        return sorted(read_only(store_path, "SELECT key, step, value FROM metrics WHERE run_id=?", [run_id]))

    return read
