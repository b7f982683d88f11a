"""Sweeps where people look: the runs table, the filters, the Sweeps page, Compare (without a browser)."""

from __future__ import annotations

import math
import time

import pandas as pd
from pydantic import BaseModel

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.scheduler import sweeps
from notebook_exp.scheduler.stopping import MedianStop
from notebook_exp.store import queries
from notebook_exp.store.queries import FilterNames, RunFilter, compile_filter


class Optim(BaseModel):
    name: str = "adam"
    lr: float = 0.1


class Config(BaseModel):
    optim: Optim = Optim()
    depth: int = 2


def train(run, optim, depth):
    bad = optim["lr"] > 0.05
    for step in range(300):
        run.log(**{"val/loss": (3.0 if bad else 0.0) + math.exp(-step / 100) + optim["lr"]}, step=step)
        time.sleep(0.002)


def make_sweep(settings_env):
    """A finished sweep of 4 runs over a pydantic config (the 2 with a high lr stopped early) and a plain run."""
    settings_env(TELEMETRY_INTERVAL="0", FLUSH_INTERVAL="0.05", MAX_CONCURRENT="4")
    with nx.start_run("alone", params={"lr": 1.0}) as run:
        run.log(**{"val/loss": 9.0}, step=0)
    sweep = sweeps.sweep(train, {"optim.lr": [0.01, 0.02, 0.1, 0.2]}, base=Config(), experiment="sw",
                         stop=MedianStop("val/loss", grace=20, min_runs=3))
    nx.wait(sweep, timeout=120)
    assert [job.status for job in sweep] == [RunStatus.COMPLETED] * 2 + [RunStatus.CANCELLED] * 2
    return sweep, run.run_id


def test_the_read_path_knows_sweeps(settings_env):
    sweep, alone = make_sweep(settings_env)
    ids = [job.run_id for job in sweep]
    table = nx.runs()
    assert pd.isna(table.set_index("run_id").loc[alone, "sweep_id"])
    assert sorted(table.dropna(subset=["sweep_id"])["run_id"]) == sorted(ids)
    assert table.groupby("sweep_id").size().to_dict() == {sweep.id: 4}
    where = RunFilter(sweeps=[sweep.id])
    assert sorted(queries.runs_table(queries.reader(), where)["run_id"]) == sorted(ids)
    facets = queries.read(queries.facets)
    assert facets["sweeps"] == [sweep.id] and "optim.lr" in facets["params"]
    names = FilterNames(facets["param_pointers"], facets["metrics"])
    expression = compile_filter(f"sweep_id = '{sweep.id}' and optim.lr < 0.05", names)
    assert sorted(queries.runs_table(queries.reader(), RunFilter(expression=expression))["run_id"]) == sorted(ids[:2])
    assert queries.read(lambda conn: queries.sweep_runs(conn, sweep.id)) == ids
    (row,) = queries.read(lambda conn: queries.sweeps(conn, "nope", "min")).to_dict("records")
    assert row["sweep_id"] == sweep.id and row["experiment"] == "sw" and row["method"] == "grid"
    assert row["rule"] == "MedianStop" and row["metric"] == "val/loss" and row["mode"] == "min"  # the rule's
    assert (row["runs"], row["started"], row["running"], row["stopped_early"], row["completed"], row["failed"],
            row["queued"]) == (4, 4, 0, 2, 2, 0, 0)
    best, value = sweep.best()
    assert row["best_run_id"] == best.run_id == ids[0] and row["best_value"] == value  # lr=0.01 converges first
    assert row["best_run"] == "optim.lr=0.01"


def test_viewer_state_sweeps_page_and_compare(settings_env):
    from notebook_exp_viewer.app import COMPARE_TAB, ViewerApp
    from notebook_exp_viewer.components.params_diff import params_frame
    from notebook_exp_viewer.components.sweeps import SweepsView
    from notebook_exp_viewer.state import ViewerState

    sweep, alone = make_sweep(settings_env)
    ids = [job.run_id for job in sweep]
    state = ViewerState(nx.get_settings().store_path)
    assert sorted(state.list_runs(sweeps=[sweep.id])["run_id"]) == sorted(ids)
    listed = state.list_runs()
    assert {"param:optim.lr", "param:optim.name", "param:depth", "sweep"} <= set(listed.columns)
    assert set(listed["sweep"]) == {sweep.id, ""}
    assert sorted(state.list_runs(expression="optim.lr < 0.05")["run_id"]) == sorted(ids[:2])

    compared = state.compare_data(ids[:2] + [alone])
    assert compared["params"][ids[0]] == {"optim.name": "adam", "optim.lr": 0.01, "depth": 2}
    assert list(params_frame(ids[:2] + [alone], compared["params"])["param"]) == ["depth", "lr", "optim.lr",
                                                                                 "optim.name"]
    assert state.run_overview(ids[1])["run"]["params"]["optim.lr"] == 0.02

    opened, compared_sweeps = [], []
    view = SweepsView(state, on_compare=compared_sweeps.append, on_open_run=opened.append)
    view.update()  # no server: the read runs inline
    shown = view.table.value.to_dict("records")
    assert len(shown) == 1 and shown[0]["progress"] == "4/4" and shown[0]["stopped_early"] == 2
    assert shown[0]["completed"] == 2 and shown[0]["best_run"] == "optim.lr=0.01" and not view.live()
    view._on_click(type("Click", (), {"row": 0, "column": "best_run"})())
    view._on_click(type("Click", (), {"row": 0, "column": "sweep_id"})())
    assert opened == [ids[0]] and compared_sweeps == [sweep.id]

    app = ViewerApp(ViewerState(nx.get_settings().store_path))
    app.runs.group.value = True
    assert app.runs.table.groupby == ["sweep"] and "sweep" not in app.runs.table.hidden_columns
    app.compare_sweep(sweep.id)
    assert app.tabs.active == COMPARE_TAB and app.state.selected == ids and app.compare.run_ids == ids
    assert sweep.id in app.compare.sweep.options
    assert "optim.lr" in app.compare.parcoords.axes()[0]
