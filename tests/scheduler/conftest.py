import pytest

from notebook_exp.config import reset_settings


@pytest.fixture
def settings_env(monkeypatch):
    """Set NOTEBOOK_EXP_* variables for this test's scheduler (before its first use)."""

    def apply(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"NOTEBOOK_EXP_{key.upper()}", str(value))
        reset_settings()

    return apply
