"""The inline runs table and metric plot, over runs logged into a real store."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bokeh.models import DatetimeAxis, GlyphRenderer, HoverTool, Legend, Line, LinearAxis, LogAxis

import notebook_exp as nx
from notebook_exp._inline import MetricPlot, RunsTable, runs_table
from notebook_exp.exceptions import ConfigError
from notebook_exp.store.queries import ema

STEPS = {"a": 10, "b": 5, "<b>x</b>": 3}
CHROMIUM = "/usr/bin/chromium"


def _loss(name: str, i: int) -> float:
    return (len(name) + 1) / (i + 1)


@pytest.fixture
def table():
    """A RunsTable of three finished runs that logged ``loss`` (and ``a`` also ``acc``)."""
    for name, steps in STEPS.items():
        with nx.start_run(name, experiment="e", params={"lr": 0.1, "note": "<i>n</i>"}) as run:
            for i in range(steps):
                run.log(loss=_loss(name, i), step=i)
            if name == "a":
                run.log(acc=0.5, step=0)
    return runs_table(nx.runs())


def _lines(plot: MetricPlot) -> dict[str, GlyphRenderer]:
    """Line renderers by legend label."""
    legend = plot.figure.select_one(Legend)
    return {item.label["value"]: r for item in legend.items for r in item.renderers if isinstance(r.glyph, Line)}


def test_runs_table_keeps_its_type_and_store_through_slicing(table, store_path):
    assert isinstance(table, RunsTable) and table.store == store_path
    for part in (table[table["name"] == "a"], table.iloc[:2], table[["run_id", "name"]],
                 table.sort_values("name"), table.head(1), table.loc[table.index[1:]]):
        assert isinstance(part, RunsTable) and part.store == store_path
    assert type(table["name"]) is pd.Series
    assert type(pd.DataFrame(table)) is pd.DataFrame
    assert isinstance(pd.DataFrame(table).plot, pd.plotting.PlotAccessor)  # pandas' plotting stays there
    assert RunsTable(table).store == store_path


def test_runs_table_defaults_to_the_store_setting(table, store_path):
    assert runs_table(pd.DataFrame(table)).store == store_path
    assert runs_table(table, store="/elsewhere.duckdb").store == "/elsewhere.duckdb"


def test_html_escapes_colours_status_and_groups_columns(table):
    text = table._repr_html_()
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "<i>n</i>" not in text and "&lt;i&gt;n&lt;/i&gt;" in text
    assert text.count('style="background:#2ca02c;color:white">completed</td>') == 3
    assert '>params</th>' in text and '>metrics</th>' in text
    assert '<th title="params.lr">lr</th>' in text and '<th title="metrics.loss">loss</th>' in text
    assert "3 runs" in text


def test_html_cuts_long_values_and_rows():
    frame = runs_table(pd.DataFrame({"run_id": ["r1"], "name": ["y" * 200], "status": ["failed"]}))
    text = frame._repr_html_()
    assert f'title="{"y" * 200}"' in text and "y" * 79 + "\u2026" in text
    frame = runs_table(pd.DataFrame({"run_id": [f"r{i}" for i in range(100)], "status": "queued"}))
    with pd.option_context("display.max_rows", 20, "display.min_rows", 4):
        text = frame._repr_html_()
    assert text.split("<tbody>")[1].count("<tr><th>") == 4 and ">r99<" in text and ">r50<" not in text


def test_plot_draws_one_line_per_run(table):
    plot = table.plot("loss")
    assert isinstance(plot, MetricPlot) and repr(plot) == "<MetricPlot loss: 3 runs>"
    lines = _lines(plot)
    assert set(lines) == set(STEPS)
    for name, renderer in lines.items():
        data = renderer.data_source.data
        assert list(data["step"]) == list(range(STEPS[name]))
        assert list(data["value"]) == pytest.approx([_loss(name, i) for i in range(STEPS[name])])
        assert set(data["run"]) == {name}
    hover = plot.figure.select_one(HoverTool)
    assert [label for label, _field in hover.tooltips][:4] == ["run", "step", "time", "value"]
    assert isinstance(plot.figure.xaxis[0], LinearAxis) and isinstance(plot.figure.yaxis[0], LinearAxis)
    assert repr(table[table["name"] == "b"].plot("loss")) == "<MetricPlot loss: 1 run>"


def test_smoothing_is_a_debiased_ema(table):
    raw = [_loss("a", i) for i in range(STEPS["a"])]
    expected, acc, norm = [], 0.0, 0.0
    for v in raw:
        acc, norm = acc * 0.6 + 0.4 * v, norm * 0.6 + 0.4
        expected.append(acc / norm)
    data = _lines(table.plot("loss", smooth=0.6))["a"].data_source.data
    assert list(data["value"]) == pytest.approx(expected)
    assert list(data["raw"]) == pytest.approx(raw)
    assert list(data["value"]) != pytest.approx(raw)
    assert list(ema(np.array([1.0, np.nan, 3.0]), 0.5)[[0, 2]]) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_time_axis_and_log_scale(table):
    plot = table.plot("loss", x="time", logy=True)
    assert isinstance(plot.figure.xaxis[0], DatetimeAxis)
    assert isinstance(plot.figure.yaxis[0], LogAxis)
    data = _lines(plot)["a"].data_source.data
    assert np.array_equal(data["x"], data["ts"]) and np.issubdtype(data["x"].dtype, np.datetime64)


def test_repeated_names_get_their_own_legend_entries(table):
    with nx.start_run("a", experiment="e") as run:
        run.log(loss=1.0, step=0)
    labels = set(_lines(runs_table(nx.runs()).plot("loss")))
    assert "a" not in labels and f"a ({run.run_id[:6]})" in labels and len(labels) == 4


def test_html_embeds_bokeh_inline(table):
    plot = table.plot("loss")
    bundle = plot._repr_mimebundle_()
    assert bundle["text/plain"] == "<MetricPlot loss: 3 runs>"
    text = bundle["text/html"]
    assert plot._repr_html_().startswith('<div class="nx-metric-plot">')
    assert "Bokeh" in text and "<script" in text and "data-root-id" in text
    assert "cdn.bokeh.org" not in text and "<iframe" not in text
    assert "<b>x</b>" not in text


def test_unknown_key_names_the_available_ones(table):
    with pytest.raises(ValueError, match=r"no metric 'nope' in these 3 runs; available: 'acc', 'loss'"):
        table.plot("nope")
    with pytest.raises(ConfigError, match="x must be one of step, time"):
        table.plot("loss", x="wall")
    with pytest.raises(ConfigError, match=r"smooth is an EMA weight in \[0, 1\)"):
        table.plot("loss", smooth=1.0)
    with pytest.raises(ConfigError, match="run_id column"):
        table[["name"]].plot("loss")
    with pytest.raises(ConfigError, match="the table is empty"):
        table.iloc[:0].plot("loss")


@pytest.mark.slow
def test_plot_renders_in_chromium_without_network(table, tmp_path: Path):
    """The saved HTML draws its canvas with every network request refused (.ci/run installs Chromium)."""
    from playwright import sync_api as playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run .ci/run (it installs it)"
    page_file = tmp_path / "plot.html"
    page_file.write_text(f"<html><body>{table.plot('loss').to_html()}</body></html>", encoding="utf-8")
    requests, errors = [], []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.route("http*://**", lambda route: (requests.append(route.request.url), route.abort()))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_file.as_uri())
        page.locator("canvas").first.wait_for(state="attached", timeout=20_000)
        lines = page.evaluate("() => Bokeh.documents[0].roots()[0].renderers.length")
        browser.close()
    assert requests == [] and errors == []
    assert lines == 3
