"""ViewerState: every query the views use, against stores written by real runs."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from notebook_exp_viewer.state import ViewerState
from viewer_support import XSS_TAG

from notebook_exp.store.queries import FilterError


def test_facets(state):
    facets = state.facets()
    assert facets["experiments"] == sorted(["mnist", "<svg onload=alert(2)>"])
    assert facets["statuses"] == ["completed", "failed"]
    assert {"sweep", "baseline", XSS_TAG} <= set(facets["tags"])
    assert {"lr", "bs", "opt", "layers"} <= set(facets["params"])
    assert {"loss", "acc", "sys/memory_rss_mb", "gpu/0/utilization_percent"} <= set(facets["metrics"])
    assert state.default_metric_columns() == ["acc", "loss"]


def test_list_runs_columns_and_summary(state, sample):
    _path, ids = sample
    state.metric_columns = ["loss", "acc"]
    frame = state.list_runs()
    assert len(frame) == len(ids)
    assert list(frame.columns[:7]) == ["name", "experiment", "status", "started", "duration", "gpus", "tags"]
    assert {"param:lr", "param:opt", "last:loss", "best:loss", "best:acc"} <= set(frame.columns)
    row = frame.set_index("run_id").loc[ids["lr-0.001"]]
    assert row["param:bs"] == 64 and row["param:opt"] == "adam" and row["tags"] == "sweep"
    assert row["best:loss"] <= row["last:loss"]  # loss: lower is better
    assert row["best:acc"] >= row["last:acc"]  # acc: higher is better
    assert frame["param:lr"].dtype == np.float64 and frame["duration"].notna().all()
    assert frame["created"].is_monotonic_decreasing


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"experiments": ["mnist"]}, {"lr-0.1", "lr-0.01", "lr-0.001", "exploding"}),
        ({"statuses": ["failed"]}, {"exploding", "xss"}),
        ({"tags": ["sweep", "baseline"]}, {"lr-0.1"}),
        ({"text": "LR-0.00"}, {"lr-0.001"}),
        ({"text": "bold-tag"}, {"xss"}),
        ({"experiments": ["mnist"], "expression": "bs = 32"}, {"lr-0.1", "lr-0.01", "exploding"}),
    ],
)
def test_filters(state, sample, filters, expected):
    by_id = {v: k for k, v in sample[1].items()}
    frame = state.update_filters(**filters)
    assert {by_id[r] for r in frame["run_id"]} == expected
    assert all(getattr(state, k) == v for k, v in filters.items())


def test_bad_expression_changes_nothing(state):
    state.update_filters(statuses=["failed"])
    with pytest.raises(FilterError):
        state.update_filters(expression="lr <", statuses=[])
    assert state.expression == "" and state.statuses == ["failed"]
    with pytest.raises(TypeError):
        state.update_filters(selected=["x"])


def test_rows_and_new_runs(state, sample):
    ids = sample[1]
    rows = state.rows([ids["lr-0.1"], ids["exploding"]])
    assert set(rows["run_id"]) == {ids["lr-0.1"], ids["exploding"]}
    known = set(ids.values()) - {ids["lr-0.01"]}
    new = state.new_runs(known, None)
    assert list(new["run_id"]) == [ids["lr-0.01"]]
    assert state.count_runs() == len(ids)


def test_series_full_and_window(state, sample):
    ids = sample[1]
    run_ids = [ids["lr-0.1"], ids["lr-0.01"]]
    points, full, extents = state.series(run_ids, ["loss"], "step")
    assert full == (0.0, 199.0) and extents[(run_ids[0], "loss")] == (0.0, 199.0)
    assert points.groupby("run_id").size().to_dict() == {r: 200 for r in run_ids}
    window = state.series(run_ids, ["loss"], "step", window=(50, 60)).points
    assert window["x"].between(50, 60).all() and len(window) == 22
    wall, wall_full, _ = state.series(run_ids, ["loss"], "wall")
    assert wall_full[0] < wall_full[1] and len(wall)
    relative, rel_full, _ = state.series(run_ids, ["loss"], "relative")
    assert rel_full[0] == 0 and (relative["x"] >= 0).all()
    with pytest.raises(ValueError):
        state.series(run_ids, ["loss"], "bogus")


def test_downsampling_keeps_spikes_and_bounds_points(tmp_path):
    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "big.duckdb"
    values = np.sin(np.arange(50_000) / 500.0)
    values[12_345] = 50.0
    values[33_333] = -40.0
    with nx.start_run("long", store=path) as run:
        for step, value in enumerate(values):
            run.log(loss=float(value), step=step)
    close_all()
    state = ViewerState(path)
    points, full, _ = state.series([run.run_id], ["loss"], "step", width=500)
    assert full == (0.0, 49_999.0)
    assert len(points) <= 1000
    assert points["value"].max() == 50.0 and points["value"].min() == -40.0
    assert 12_345 in set(points["x"]) and 33_333 in set(points["x"])
    zoom = state.series([run.run_id], ["loss"], "step", window=(12_300, 12_400), width=500).points
    assert list(zoom["x"]) == list(range(12_300, 12_401))  # fewer points than buckets: all of them


def test_compare_data(state, sample):
    ids = sample[1]
    data = state.compare_data([ids["lr-0.01"], ids["lr-0.1"]])
    assert list(data["runs"]["name"]) == ["lr-0.01", "lr-0.1"]
    assert data["params"][ids["lr-0.1"]] == {"lr": 0.1, "bs": 32, "opt": "adam", "layers": 2}
    assert {"loss", "acc"} <= set(data["summary"]["key"])


def test_run_params_are_each_runs_flat_params_and_nothing_for_unknown_ids(state, sample):
    ids = sample[1]
    params = state.run_params([ids["lr-0.01"], ids["lr-0.1"], "no-such-run"])
    assert params == {ids["lr-0.01"]: state.compare_data([ids["lr-0.01"]])["params"][ids["lr-0.01"]],
                      ids["lr-0.1"]: {"lr": 0.1, "bs": 32, "opt": "adam", "layers": 2}}
    assert state.run_params([]) == {}


def test_a_charts_read_is_its_buckets_and_params_in_one_session(state, sample):
    ids = [sample[1]["lr-0.01"], sample[1]["lr-0.1"]]
    buckets, params = state.chart_read(ids, ["loss", "acc"], params=True)
    alone = state.series_buckets(ids, ["loss", "acc"])
    pd.testing.assert_frame_equal(buckets.buckets, alone.buckets)
    assert buckets.full == alone.full and buckets.extents == alone.extents
    assert params == state.run_params(ids)
    sessions = []
    session = state.store.session
    state.store.session = lambda *a, **kw: sessions.append(kw) or session(*a, **kw)
    try:
        again, none = state.chart_read(ids, ["loss"], params=False)
        _, with_params = state.chart_read(ids, ["loss"], params=True)
    finally:
        del state.store.session
    assert len(sessions) == 2 and none is None and with_params == params and len(again.buckets)


def test_run_overview_and_media(state, sample):
    ids = sample[1]
    failed = state.run_overview(ids["exploding"])
    assert failed["run"]["status"] == "failed" and "FloatingPointError" in failed["run"]["error"]
    assert list(failed["events"]["event"]) == ["running", "failed"]
    assert state.run_overview("no-such-run") is None
    media = state.run_media(ids["lr-0.1"])
    assert list(media["texts"]["text"]) == ["the <b>model</b> said hello"]
    assert sorted(media["histograms"]["step"]) == [0, 1, 2]
    assert bytes(media["images"]["png"].iloc[0])[:8] == b"\x89PNG\r\n\x1a\n"
    artifact = media["artifacts"].iloc[0]
    assert artifact["name"] == "model.txt"
    assert state.artifact_file(artifact["path"]).read_text() == "weights: 1 2 3\n"


def test_artifact_outside_the_store_is_refused(state, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    assert state.artifact_file(str(outside)) is None
    assert state.artifact_file("/etc/passwd") is None
    assert state.artifact_file(str(state.store_path.parent / "missing.bin")) is None


def test_export_csv_and_parquet(state, sample):
    ids = sample[1]
    selected = [ids["lr-0.1"], ids["exploding"]]
    frame = pd.read_csv(io.BytesIO(state.export_metrics(selected, "csv")))
    assert list(frame.columns) == ["run_name", "run_id", "key", "step", "ts", "value"]
    assert set(frame["run_name"]) == {"lr-0.1", "exploding"}
    table = pq.read_table(io.BytesIO(state.export_metrics(selected, "parquet")))
    assert table.num_rows == len(frame)
    with pytest.raises(ValueError):
        state.export_metrics(selected, "xlsx")


def test_missing_store_reads_as_empty(tmp_path):
    state = ViewerState(tmp_path / "nothing-yet.duckdb")
    assert state.facets()["experiments"] == []
    assert len(state.list_runs()) == 0 and state.count_runs() == 0
    assert state.series(["a"], ["loss"]).full is None
    assert state.run_overview("a") is None
    assert state.export_metrics(["a"], "csv").startswith(b'"run_name"')
    assert not (tmp_path / "nothing-yet.duckdb").exists()  # reading never creates the store


def test_expression_sees_params_of_runs_that_appeared_later(tmp_path):
    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "grow.duckdb"
    with nx.start_run("first", store=path, params={"a": 1}):
        pass
    state = ViewerState(path)
    assert state.facets()["params"] == ["a"]
    with nx.start_run("second", store=path, params={"b": 2}):
        pass
    close_all()
    assert list(state.list_runs(expression="b = 2")["name"]) == ["second"]
    with pytest.raises(FilterError, match="unknown name 'c'"):
        state.list_runs(expression="c = 1")


def test_filters_select_the_right_runs(state, sample):
    _path, ids = sample
    by_id = {v: k for k, v in ids.items()}

    def names(expression: str) -> set[str]:
        frame = state.list_runs(expression=expression)
        return {by_id.get(r, r) for r in frame["run_id"]}

    assert names("lr < 0.05") == {"lr-0.01", "lr-0.001"}
    assert names("lr < 0.05 and bs >= 64") == {"lr-0.001"}
    assert names("opt = 'adam' and not lr = 0.1") == {"lr-0.01", "lr-0.001"}
    assert names("status = 'failed'") == {"exploding", "xss"}
    assert names("loss < 0.1") == {"lr-0.1", "lr-0.01"}
    assert names("max(loss) >= 1 and min(loss) < 0.8") == {"lr-0.1", "lr-0.01", "lr-0.001"}
    assert names("lr in (0.1, 5)") == {"lr-0.1", "exploding"}
    assert names("name = 'x''; DROP TABLE runs; --'") == set()
    assert len(state.list_runs()) == len(ids)
