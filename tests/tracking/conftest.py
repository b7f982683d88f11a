"""Fixtures of the tracking tests."""

import pytest


@pytest.fixture(autouse=True)
def no_telemetry(store_path, settings_env):
    """These tests count exactly the points they log: no telemetry samples beside them."""
    settings_env(TELEMETRY_INTERVAL="0")
