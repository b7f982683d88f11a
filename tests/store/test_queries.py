"""The read path (notebook_exp.store.queries): one runs-table builder, its layouts, the small reads."""

from __future__ import annotations

import datetime as dt

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import StoreError
from notebook_exp.models import RunStatus
from notebook_exp.store import queries
from notebook_exp.store.queries import API_LAYOUT, LIST_LAYOUT, RunFilter


def _sweep() -> dict[str, str]:
    """Two finished runs of a sweep (params of several JSON types) and a failed one."""
    ids = {}
    for name, lr, bs in [("a", 0.1, 32), ("b", 0.01, 64)]:
        with nx.start_run(name, experiment="sweep", params={"lr": lr, "bs": bs, "opt": "adam", "dims": [1, 2]},
                          tags=["t"]) as run:
            for step in range(5):
                run.log(loss=lr * (5 - step), acc=step / 10, step=step)
        ids[name] = run.run_id
    with pytest.raises(RuntimeError), nx.start_run("c", experiment="other", params={"lr": 1.0}) as run:
        run.log(loss=9.0, step=0)
        raise RuntimeError("boom")
    ids["c"] = run.run_id
    return ids


def test_one_builder_gives_both_layouts():
    ids = _sweep()
    api = queries.runs_table(queries.reader(), layout=API_LAYOUT)
    assert list(api.columns[:16]) == list(API_LAYOUT.columns)
    assert set(api.columns[16:20]) == {"params.bs", "params.dims", "params.lr", "params.opt"}  # as first seen
    assert list(api.columns[20:]) == ["metrics.acc", "metrics.loss"]
    assert api["sweep_id"].isna().all()  # runs of start_run belong to no sweep
    row = api.set_index("run_id").loc[ids["b"]]
    assert row["params.bs"] == 64 and row["params.dims"] == [1, 2] and row["metrics.loss"] == pytest.approx(0.01)

    listed = queries.runs_table(queries.reader(), layout=LIST_LAYOUT, keys=["loss", "acc"])
    assert list(listed.columns) == [
        "name", "experiment", "status", "started", "duration", "gpus", "tags",
        "last:loss", "best:loss", "last:acc", "best:acc",
        "param:bs", "param:dims", "param:lr", "param:opt", "sweep", "run_id", "created",
    ]
    row = listed.set_index("run_id").loc[ids["a"]]
    assert row["param:bs"] == 32.0 and row["param:dims"] == "[1,2]" and row["tags"] == "t"
    assert row["best:loss"] == pytest.approx(0.1) and row["best:acc"] == pytest.approx(0.4)
    assert list(listed["run_id"]) == list(api["run_id"]) == [ids["c"], ids["b"], ids["a"]]  # newest first


def test_keys_or_every_key_are_options_of_either_layout():
    ids = _sweep()
    every = queries.runs_table(queries.reader(), layout=LIST_LAYOUT)  # keys=None: every non-telemetry key
    assert [c for c in every.columns if ":" in c and not c.startswith("param:")] == [
        "last:acc", "best:acc", "last:loss", "best:loss"]
    assert every.set_index("run_id").loc[ids["c"], "best:loss"] == 9.0
    chosen = queries.runs_table(queries.reader(), RunFilter(experiments=["sweep"]), layout=API_LAYOUT,
                                keys=["loss", "nope"])
    assert [c for c in chosen.columns if c.startswith("metrics.")] == ["metrics.loss", "metrics.nope"]
    assert chosen["metrics.nope"].isna().all() and set(chosen["run_id"]) == {ids["a"], ids["b"]}


def test_duration_of_a_running_run_counts_to_now_in_utc():
    with nx.start_run("live") as run:
        run.log(x=1.0, step=0)
        assert run.flush(timeout=10)
        (started,) = queries.read(lambda conn: conn.execute(
            "SELECT started_at FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0])
        now = started + dt.timedelta(seconds=90)
        for layout in (API_LAYOUT, LIST_LAYOUT):
            frame = queries.runs_table(queries.reader(), layout=layout, now=now)
            assert frame["duration"].tolist() == [90.0]
        assert nx.runs()["status"].tolist() == [RunStatus.RUNNING.value]


def test_nx_runs_filters_and_empty_tables(tmp_path):
    ids = _sweep()
    assert set(nx.runs("sweep")["run_id"]) == {ids["a"], ids["b"]}
    assert set(nx.runs(status=RunStatus.FAILED)["run_id"]) == {ids["c"]}
    assert nx.runs(status=[]).empty  # as before: an empty list matches no status
    missing = nx.runs(store=tmp_path / "none.duckdb")
    assert list(missing.columns) == list(API_LAYOUT.columns) and missing.empty
    empty = queries.empty_runs_table(LIST_LAYOUT, ["loss"])
    assert list(empty.columns) == ["name", "experiment", "status", "started", "duration", "gpus", "tags",
                                   "last:loss", "best:loss", "sweep", "run_id", "created"]
    assert empty["last:loss"].dtype == "float64"


def test_small_reads_of_the_widgets_the_cli_and_the_viewer(tmp_path):
    ids = _sweep()
    recent = queries.read(lambda conn: queries.recent_runs(conn, 2))
    assert [r[0] for r in recent] == [ids["c"], ids["b"]] and recent[0][1:4] == ("c", "other", "failed")
    assert queries.read(lambda conn: queries.last_values(conn, ids["a"])) == {
        "acc": (4, pytest.approx(0.4)), "loss": (4, pytest.approx(0.1))}
    assert queries.read(lambda conn: queries.metric_keys(conn, [ids["c"]])) == ["loss"]
    assert queries.read(queries.count_runs) == 3
    facets = queries.read(queries.facets)
    assert facets["statuses"] == ["completed", "failed"]  # RunStatus order
    assert facets["experiments"] == ["other", "sweep"] and facets["params"] == ["bs", "dims", "lr", "opt"]
    assert facets["param_pointers"]["lr"] == "/lr" and facets["sweeps"] == []
    points = queries.read(lambda conn: queries.metric_points(conn, [ids["a"]], ["loss"], run_names=True))
    assert points.column_names == ["run_name", "run_id", "key", "step", "ts", "value"] and points.num_rows == 5
    demo = queries.read(lambda conn: queries.demo_summary(conn, [ids["a"], ids["b"]])).to_pandas()
    assert demo["name"].tolist() == ["b", "a"] and demo["points"].tolist() == [10, 10]
    with pytest.raises(StoreError, match="nothing has been logged"):
        queries.read(queries.count_runs, store=tmp_path / "none.duckdb")
    assert queries.reader(tmp_path / "none.duckdb")(queries.count_runs) is None


def test_metrics_reads_points_in_order():
    ids = _sweep()
    frame = nx.metrics([ids["b"], ids["a"]], "loss")
    assert list(frame.columns) == ["run_id", "key", "step", "ts", "value"]
    assert frame["run_id"].is_monotonic_increasing and len(frame) == 10
    assert nx.metrics([]).empty


def test_nested_params_are_dotted_columns_in_both_layouts():
    params = {"optim": {"name": "adam", "lr": 0.1}, "model": {"layers": [64, 64], "act": {}}, "flat.key": 3}
    with nx.start_run("nested", params=params) as run:
        run.log(loss=1.0, step=0)
    assert run.params == params  # stored as given: the round trip
    api = nx.runs()
    assert {"params.optim.name", "params.optim.lr", "params.model.layers", "params.model.act",
            "params.flat.key"} <= set(api.columns)
    row = api.iloc[0]
    assert row["params.optim.lr"] == 0.1 and row["params.model.layers"] == [64, 64] and row["params.model.act"] == {}
    listed = queries.runs_table(queries.reader(), layout=LIST_LAYOUT, keys=["loss"])
    assert [c for c in listed.columns if c.startswith("param:")] == [
        "param:flat.key", "param:model.act", "param:model.layers", "param:optim.lr", "param:optim.name"]
    row = listed.iloc[0]
    assert row["param:optim.lr"] == 0.1 and row["param:model.layers"] == "[64,64]" and row["param:flat.key"] == 3.0
    facets = queries.read(queries.facets)
    assert facets["params"] == ["flat.key", "model.act", "model.layers", "optim.lr", "optim.name"]
    assert facets["param_pointers"]["optim.lr"] == "/optim/lr" and facets["param_pointers"]["flat.key"] == "/flat.key"


def test_flatten_and_param_paths():
    assert queries.flatten({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}, "f": {}}) == {
        "a.b.c": 1, "a.d": [1, {"e": 2}], "f": {}}
    assert queries.flatten(5) == {}
    paths = queries.param_paths('{"a": {"b": "DOUBLE", "c~/": "VARCHAR"}, "n": ["UBIGINT"], "x": "JSON"}')
    assert paths == [("a.b", "/a/b", True), ("a.c~/", "/a/c~0~1", False), ("n", "/n", False), ("x", "/x", False)]
    assert queries.param_paths("not json") == [] and queries.param_paths(None) == []
