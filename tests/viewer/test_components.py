"""The views, driven through their widgets without a browser (Chromium checks them in test_browser)."""

from __future__ import annotations

import json
import types

import pytest
from bokeh.models import LabelSet
from notebook_exp_viewer.app import ViewerApp
from notebook_exp_viewer.components.export import MetricsExport
from notebook_exp_viewer.components.metric_chart import MetricChart
from notebook_exp_viewer.components.parallel_coords import ParallelCoords, scale_axis
from notebook_exp_viewer.components.params_diff import params_frame
from notebook_exp_viewer.components.run_detail import RunDetail, git_rows
from notebook_exp_viewer.components.runs_table import RunsList
from notebook_exp_viewer.components.scatter import ParamScatter
from notebook_exp_viewer.components.telemetry import TelemetryCharts, group_keys
from notebook_exp_viewer.state import ViewerState
from viewer_support import XSS_NAME, XSS_PARAM

from notebook_exp.collectors import GPU_READINGS, SYSTEM_KEYS
from notebook_exp.collectors.git import git_info


def curves(chart: MetricChart) -> dict[tuple, int]:
    return {tuple(r.tags): len(r.data_source.data["x"]) for r in chart.figure.renderers if r.name == "nx-curve"}


def test_runs_table_columns_titles_and_formatters(state, sample):
    table = RunsList(state)
    value = table.table.value
    assert len(value) == len(sample[1])
    titles = table.table.titles
    assert titles[f"param:{XSS_PARAM}"] == "&lt;i onmouseover=alert(3)&gt;p&lt;/i&gt;"
    assert titles["best:loss"] == "loss (best \u2193)" and titles["best:acc"] == "acc (best \u2191)"
    formatters = table.table.formatters
    for column in ("name", "experiment", "tags", "run_id", "param:opt"):
        assert formatters[column] == {"type": "plaintext"}
    assert type(formatters["status"]).__name__ == "StringFormatter"
    assert table.table.pagination == "remote" and "created" in table.table.hidden_columns


def test_runs_table_widths_come_from_the_text_and_stay_put_on_a_reload(state, sample):
    """Column widths are set in px from the rows' text (the browser measures nothing), the run id
    column fits its 16 characters, and a reload of the same rows changes no column: each column
    change makes the browser's Tabulator rebuild its columns."""
    import pandas as pd
    from notebook_exp_viewer.components.runs_table import (
        CELL_PAD_PX,
        CHAR_PX,
        DEFAULT_MAX_COLUMN_WIDTH,
        column_widths,
    )

    table = RunsList(state)
    widths = table.table.widths
    assert set(widths) == set(table.table.value.columns)
    assert widths["run_id"] >= 16 * CHAR_PX + CELL_PAD_PX
    assert all(0 < w <= DEFAULT_MAX_COLUMN_WIDTH for w in widths.values())
    changed = []
    table.table.param.watch(lambda event: changed.append(event.name), ["titles", "formatters", "widths"])
    table.reload()
    table._load(table.table.value.copy())
    assert changed == []

    frame = pd.DataFrame({"name": ["a" * 200, "b"], "param:lr": [0.5, -12345.678], "duration": [1234567.0, None],
                          "best:loss": [1e-7, 0.25]})
    found = column_widths(frame, {"name": "name", "param:lr": "lr", "duration": "d", "best:loss": "loss"})
    assert found["name"] == DEFAULT_MAX_COLUMN_WIDTH  # a long name is cut with "...", never the run id
    assert found["param:lr"] == len("-12345.6780") * CHAR_PX + CELL_PAD_PX
    assert found["duration"] == len("1,234,567.0") * CHAR_PX + CELL_PAD_PX  # with thousands separators
    assert found["best:loss"] == len("-1.2345e-07") * CHAR_PX + CELL_PAD_PX  # scientific below 1e-4


def test_runs_table_selection_and_filter_keep_selection(state, sample):
    ids = sample[1]
    opened = []
    table = RunsList(state, on_open_run=opened.append)
    table.select([ids["lr-0.1"], ids["lr-0.01"]])
    assert sorted(state.selected) == sorted([ids["lr-0.1"], ids["lr-0.01"]])
    assert table.compare_button.label == "Compare selected (2)"
    table.expression.value = "lr < 0.05"
    assert set(table.table.value["run_id"]) == {ids["lr-0.01"], ids["lr-0.001"]}
    assert state.selected == [ids["lr-0.01"]]  # the selected run still listed stays selected
    row = list(table.table.value["run_id"]).index(ids["lr-0.001"])
    table._on_click(types.SimpleNamespace(row=row, column="name"))
    assert opened == [ids["lr-0.001"]]


def test_runs_table_bad_filter_shows_error_and_keeps_rows(state, sample):
    table = RunsList(state)
    before = table.table.value
    table.expression.value = "name = ''; DROP TABLE runs; --"
    assert "Filter not applied" in table.error.object and "unexpected" in table.error.object
    assert table.table.value is before and state.expression == ""
    table.expression.value = "lr < 0.2"
    assert table.error.object == "" and len(table.table.value) == 3


def test_runs_table_refresh_patches_live_rows_and_keeps_selection(tmp_path):
    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "live.duckdb"
    with nx.start_run("done", store=path, params={"lr": 0.1}) as done:
        done.log(loss=1.0, step=0)
    live = nx.start_run("live", store=path, params={"lr": 0.2})
    try:
        live.log(loss=0.9, step=0)
        live.flush()
        state = ViewerState(path, metric_columns=["loss"])
        table = RunsList(state)
        table.select([done.run_id, live.run_id])
        frame = table.table.value
        for step in range(1, 5):
            live.log(loss=0.9 - step / 10, step=step)
        live.flush()
        table.refresh()
        assert table.table.value is frame  # patched in place, not replaced
        row = frame.set_index("run_id").loc[live.run_id]
        assert row["status"] == "running" and row["last:loss"] == pytest.approx(0.5)
        extra = nx.start_run("late", store=path, params={"lr": 0.3})
        extra.log(loss=2.0, step=0)
        extra.flush()
        table.refresh()
        assert set(table.table.value["run_id"]) == {done.run_id, live.run_id, extra.run_id}
        extra.end()
        live.end()
        table.refresh()
        statuses = table.table.value.set_index("run_id")["status"]
        assert statuses[live.run_id] == "completed" and statuses[extra.run_id] == "completed"
        assert sorted(state.selected) == sorted([done.run_id, live.run_id])
        assert len(table.table.selection) == 2
    finally:
        live.end()
        close_all()


def test_metric_chart_lines_zoom_and_reset(state, sample):
    ids = sample[1]
    chart = MetricChart(state, width=50)
    chart.set_series([ids["lr-0.1"], ids["lr-0.01"]], ["loss"], {ids["lr-0.1"]: "a", ids["lr-0.01"]: "b"})
    full = curves(chart)
    assert len(full) == 2 and all(0 < n <= 100 for n in full.values())
    assert [item.label.value for item in chart.figure.legend[0].items] == ["a", "b"]
    chart._on_ranges(types.SimpleNamespace(x0=20, x1=40))
    zoomed = curves(chart)  # the window and a quarter of its width more on each side
    assert chart.window == (20.0, 40.0) and all(n == 31 for n in zoomed.values())
    assert chart.points["x"].min() == 15 and chart.points["x"].max() == 45
    chart._on_reset(None)
    assert chart.window is None and curves(chart) == full
    chart.smoothing.value = 0.9
    raw = [r for r in chart.figure.renderers if r.name == "nx-raw"]
    assert all(len(r.data_source.data["x"]) for r in raw)
    chart.log_y.value = True
    assert type(chart.figure.y_scale).__name__ == "LogScale"
    chart.x_kind.value = "wall"
    assert type(chart.figure.xaxis[0]).__name__ == "DatetimeAxis" and sum(curves(chart).values())


def test_metric_chart_grows_with_a_live_run(tmp_path):
    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "grow.duckdb"
    live = nx.start_run("live", store=path)
    try:
        def log(steps):
            for step in steps:
                live.log(loss=1.0 / (step + 1), step=step)
            live.flush()

        log(range(100))
        chart = MetricChart(ViewerState(path), width=50)
        chart.set_series([live.run_id], ["loss"])
        assert chart.points["x"].max() == 99 and len(chart.points) <= 100
        log(range(100, 140))
        chart.refresh()  # only the tail is read and appended
        xs = chart.points["x"]
        assert xs.max() == 139 and xs.is_unique and set(range(100, 140)) <= set(xs)
        before = chart.points
        chart.refresh()  # nothing new: the points stay as they are
        assert chart.points is before
        log(range(140, 400))
        chart.refresh()  # the extent more than doubled: everything is re-bucketed
        assert chart.points["x"].max() == 399 and len(chart.points) <= 100
        assert sum(curves(chart).values()) == len(chart.buckets)  # one mean per bucket held
    finally:
        live.end()
        close_all()


def test_params_diff_only_differing():
    params = {"a": {"lr": 0.1, "bs": 32, "opt": "adam"}, "b": {"lr": 0.01, "bs": 32, "opt": "adam", "wd": 0.0}}
    frame = params_frame(["a", "b"], params)
    assert list(frame["param"]) == ["lr", "wd"]
    assert list(frame.loc[frame["param"] == "wd", "a"]) == [""]
    assert list(params_frame(["a", "b"], params, show_all=True)["param"]) == ["bs", "lr", "opt", "wd"]


def test_compare_views(state, sample):
    ids = sample[1]
    state.selected = [ids["lr-0.1"], ids["lr-0.01"], ids["lr-0.001"]]
    data = state.compare_data(state.selected)
    parcoords = ParallelCoords(state)
    parcoords.update(data)
    names, per_run, ends = parcoords.axes()
    assert names == ["bs", "lr", "loss (last)"] and len(per_run) == 3
    assert ends[1] == ("0.001", "0.1")  # lr spans two decades: a log axis
    assert any(isinstance(r, LabelSet) for r in parcoords.pane.object.center)
    scatter = ParamScatter(state)
    scatter.update(data)
    assert scatter.param_name.value == "bs" and scatter.metric.value == "loss"
    scatter.param_name.value = "lr"
    assert scatter.points()["x"] == [0.1, 0.01, 0.001]
    assert scale_axis(["b", None, "a"])[0][0] == 1.0


def test_export_download_callback(state, sample):
    state.selected = [sample[1]["lr-0.01"]]
    export = MetricsExport(state)
    assert export._file().getvalue().startswith(b'"run_name","run_id","key"')
    export.format.value = "parquet"
    assert export.download.filename == "metrics.parquet"
    assert export._file().getvalue()[:4] == b"PAR1"


def test_run_detail_failed_and_rich_run(state, sample):
    ids = sample[1]
    detail = RunDetail(state)
    detail.show(ids["xss"])
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail.header.object
    assert "<img" not in detail.header.object
    error_html = detail.error.objects[1].object
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in error_html and "<script>" not in error_html
    detail.show(ids["lr-0.1"])
    assert detail.error.objects == []
    assert detail.metric_keys.value == ["acc", "loss"]
    assert set(curves(detail.chart).values()) == {200}
    charts = detail.telemetry.charts
    assert list(charts)[:2] == ["CPU and memory in use (%)", "resident memory (MiB)"]
    assert charts["resident memory (MiB)"].keys == ["sys/memory_rss_mb"]
    assert "sys/system_memory_percent" in charts["CPU and memory in use (%)"].keys
    assert charts["GPU utilisation (%)"].keys == ["gpu/0/utilization_percent"]
    assert all(chart.x_kind.value == "relative" for chart in charts.values())
    assert ("git commit" in detail.info.object) == (git_info() is not None)  # the runs ran in this checkout
    assert "not bold" in detail.output.objects[0].object and "&lt;b&gt;" in detail.output.objects[0].object
    assert detail.media.texts.value["text"].tolist() == ["the <b>model</b> said hello"]
    assert len(detail.media.histograms.objects) == 1 and len(detail.media.images.objects) == 1
    download = detail.media.artifacts.objects[0][1]
    assert download.filename == "model.txt" and download.file.endswith("model.txt")
    detail.show("missing")
    assert "No run with id" in detail.header.object


def test_telemetry_keys_are_grouped_by_unit():
    keys = ["loss", "sys/cpu_percent", "sys/memory_rss_mb", "sys/system_cpu_percent", "gpu/1/power_w",
            "gpu/0/memory_used_mb", "gpu/1/memory_used_mb", "gpu/0/temperature_c", "sys/epoch_seconds"]
    assert group_keys(keys) == {
        "CPU and memory in use (%)": ["sys/cpu_percent", "sys/system_cpu_percent"],
        "resident memory (MiB)": ["sys/memory_rss_mb"],
        "GPU memory used (MiB)": ["gpu/0/memory_used_mb", "gpu/1/memory_used_mb"],
        "GPU temperature (\u00b0C)": ["gpu/0/temperature_c"],
        "GPU power (W)": ["gpu/1/power_w"],
    }  # sys/epoch_seconds is the run's own metric
    assert group_keys(["loss", "acc"]) == {}
    every = [*SYSTEM_KEYS, *(f"gpu/0/{reading}" for reading in GPU_READINGS)]
    assert sorted(k for keys in group_keys(every).values() for k in keys) == sorted(every)


def test_git_rows_of_the_run_page():
    value = json.dumps({"commit": "0123456789abcdef0123", "branch": "main", "dirty": True,
                        "remote": "https://example.com/r.git", "root": "/src"})
    assert git_rows(value) == [("git commit", "0123456789ab (uncommitted changes)"), ("git branch", "main"),
                               ("git remote", "https://example.com/r.git")]
    assert git_rows(json.dumps({"commit": "abc", "branch": None, "dirty": False})) == [("git commit", "abc")]
    for missing in (None, float("nan"), "", "not json", "null", "[1]"):
        assert git_rows(missing) == []


def test_app_wiring(sample):
    ids = sample[1]
    app = ViewerApp(ViewerState(sample[0]))
    app.runs.select([ids["lr-0.1"], ids["lr-0.01"]])
    app.open_compare()
    assert app.tabs.active == 1 and app.compare.key.value == "loss"
    assert len(curves(app.compare.chart)) == 2
    assert list(app.compare.diff.table.value["param"]) == ["lr"]
    assert app.compare.diff.table.titles[ids["lr-0.1"]] == "lr-0.1"
    app.open_run(ids["xss"])
    assert app.tabs.active == 2 and app.state.current_run == ids["xss"]
    app.refresh()
    assert app.status.object == ""
    assert XSS_NAME not in app.layout().objects[0].objects[0].object


def test_app_on_a_store_that_does_not_exist_yet(tmp_path):
    app = ViewerApp(ViewerState(tmp_path / "later.duckdb"))
    assert len(app.runs.table.value) == 0 and "0 runs" in app.runs.count.object
    app.refresh()
    app.open_compare()
    assert "Select runs" in app.compare.note.object
    assert not (tmp_path / "later.duckdb").exists()


def test_live_chart_rebuckets_in_memory_and_keeps_extremes(state, sample):
    """A live chart whose extent doubled coarsens what it holds instead of re-reading the store."""
    import numpy as np
    import pandas as pd

    chart = MetricChart(state, width=50)
    xs = np.arange(1000, dtype="float64")
    values = np.sin(xs / 30.0)
    values[437] = 9.0  # a spike
    values[801] = -7.0  # and a dip
    values[5] = float("nan")
    chart.points = pd.DataFrame({"run_id": "r", "key": "loss", "x": xs, "value": values})
    chart._rebucket((0.0, 999.0))
    kept = chart.points
    assert len(kept) <= 2 * 50
    assert kept["value"].max() == 9.0 and kept["value"].min() == -7.0
    assert kept["x"].is_monotonic_increasing
    assert chart.base_span == 999.0


def test_telemetry_charts_follow_new_kinds_of_readings(state, sample):
    run_id = sample[1]["lr-0.1"]
    charts = TelemetryCharts(state)
    charts.show(run_id, ["loss", "sys/memory_rss_mb"])
    assert list(charts.charts) == ["resident memory (MiB)"]
    first = charts.charts["resident memory (MiB)"]
    charts.refresh(["loss", "sys/memory_rss_mb", "gpu/0/utilization_percent"])
    assert list(charts.charts) == ["resident memory (MiB)", "GPU utilisation (%)"]
    assert charts.charts["resident memory (MiB)"] is first  # kept, not rebuilt
    assert len(charts.layout.objects) == 2
    charts.show(run_id, ["loss"])
    assert charts.charts == {} and "No system or GPU telemetry" in charts.layout.objects[0].object
