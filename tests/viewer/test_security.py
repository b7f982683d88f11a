"""Security of the viewer without a browser: binding, escaping, SQL (Chromium checks: test_browser)."""

from __future__ import annotations

import pytest
from notebook_exp_viewer import main, serve
from notebook_exp_viewer.components.common import (
    choice_options,
    kv_table,
    message,
    text_block,
    title,
)
from notebook_exp_viewer.server import is_loopback

from notebook_exp.exceptions import ConfigError
from notebook_exp.store import get_store
from notebook_exp.store.queries import FilterError

PAYLOAD = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_serve_off_loopback_needs_auth(host, tmp_path):
    with pytest.raises(ConfigError) as info:
        serve(store=tmp_path / "s.duckdb", host=host, port=0)
    text = str(info.value)
    assert "without authentication" in text and "basic_auth=" in text and "--basic-auth" in text


def test_cli_refuses_off_loopback_without_auth(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--store", str(tmp_path / "s.duckdb"), "--host", "0.0.0.0"])
    assert info.value.code == 2
    assert "--basic-auth" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("myhost", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_escaping_helpers():
    assert title(PAYLOAD) == ESCAPED
    assert ESCAPED in kv_table([(PAYLOAD, PAYLOAD)]) and "<img" not in kv_table([(PAYLOAD, PAYLOAD)])
    assert ESCAPED in text_block(PAYLOAD).object and "<img" not in text_block(PAYLOAD).object
    assert "<img" not in message(PAYLOAD)
    assert choice_options([PAYLOAD]) == {ESCAPED: PAYLOAD}


def test_injected_values_are_only_values(state, sample):
    path, ids = sample
    payloads = [
        "name = 'x''; DROP TABLE runs; --'",
        "opt = '\\'; DELETE FROM runs; --'",
        "`lr) OR 1=1 --` < 1",
    ]
    for expression in payloads:
        try:
            frame = state.list_runs(expression=expression)
        except FilterError:
            continue
        assert len(frame) == 0
    assert get_store(path).query("SELECT count(*) AS n FROM runs")["n"][0] == len(ids)


def test_statement_separators_never_parse(state):
    for expression in ["lr < 1; DROP TABLE runs", "lr < 1 -- comment", "lr < 1 /* x */"]:
        with pytest.raises(FilterError):
            state.list_runs(expression=expression)
