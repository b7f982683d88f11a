"""Planning and submitting sweeps: grids and random search over a base config, by dotted name."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.models import RunStatus
from notebook_exp.scheduler import sweeps
from notebook_exp.space import choice, loguniform, randint, uniform


class Optim(BaseModel):
    name: str = "adam"
    lr: float = Field(0.1, gt=0, lt=1)


class Model(BaseModel):
    layers: list[int] = [64, 64]


class Config(BaseModel):
    optim: Optim = Optim()
    model: Model = Model()


def train(run, optim, model):
    run.log(score=optim["lr"] * sum(model["layers"]), step=0)
    return optim["name"]


def test_grid_over_a_pydantic_base_by_dotted_name():
    points, seed = sweeps.plan({"optim.lr": [1e-3, 1e-2], "model.layers": [[32, 32], [64, 64]]}, base=Config())
    assert seed is None and len(points) == 4
    assert points[1].params == {"optim": {"name": "adam", "lr": 1e-3}, "model": {"layers": [64, 64]}}
    assert points[1].varied == {"optim.lr": 1e-3, "model.layers": [64, 64]}
    nested, _ = sweeps.plan({"optim": {"lr": [1e-3, 1e-2]}}, base=Config())  # a nested space is dotted
    assert [p.varied for p in nested] == [{"optim.lr": 1e-3}, {"optim.lr": 1e-2}]
    chosen, _ = sweeps.plan({"optim.name": choice(["sgd", "adam"])}, {"optim.lr": 0.5}, base=Config())
    assert [p.params["optim"] for p in chosen] == [{"name": "sgd", "lr": 0.5}, {"name": "adam", "lr": 0.5}]
    listed, _ = sweeps.plan([{"optim.lr": 0.2}, {"model": {"layers": [1]}}], base=Config())
    assert listed[0].params["optim"]["lr"] == 0.2 and listed[1].params["model"] == {"layers": [1]}


def test_random_search_is_reproducible_and_recorded():
    space = {"optim.lr": loguniform(1e-5, 1e-1), "optim.name": ["adam", "sgd"], "model.layers": [[8], [16]]}
    first, seed = sweeps.plan(space, base=Config(), method="random", n=20, seed=0)
    again, _ = sweeps.plan(dict(reversed(space.items())), base=Config(), method="random", n=20, seed=0)
    assert seed == 0 and [p.params for p in first] == [p.params for p in again]  # key order does not matter
    other, _ = sweeps.plan(space, base=Config(), method="random", n=20, seed=1)
    assert [p.params for p in other] != [p.params for p in first]
    assert all(1e-5 <= p.params["optim"]["lr"] <= 1e-1 for p in first)
    assert {p.params["optim"]["name"] for p in first} == {"adam", "sgd"}
    _points, drawn = sweeps.plan({"x": uniform(0, 1)}, method="random", n=1)
    assert isinstance(drawn, int)  # no seed: one is drawn, so the sweep can be repeated


def test_random_sweep_records_values_seed_and_sweep_id(settings_env):
    settings_env(TELEMETRY_INTERVAL="0", MAX_CONCURRENT="4")
    sweep = sweeps.sweep(train, {"optim.lr": loguniform(1e-4, 1e-1), "model.layers": [[4], [8]]}, base=Config(),
                         method="random", n=6, seed=3, experiment="rand", name="r")
    assert nx.wait(sweep, timeout=60) == [RunStatus.COMPLETED] * 6
    again, _ = sweeps.plan({"optim.lr": loguniform(1e-4, 1e-1), "model.layers": [[4], [8]]}, base=Config(),
                           method="random", n=6, seed=3)
    table = nx.runs("rand").sort_values("created_at")
    assert sorted(table["params.optim.lr"]) == sorted(p.params["optim"]["lr"] for p in again)
    assert set(table["sweep_id"]) == {sweep.id} and sweep.seed == 3 and sweep.method == "random"
    assert all(name.startswith("r model.layers=") and "optim.lr=" in name for name in table["name"])
    assert sweep[0].spec.sweep == {"id": sweep.id, "method": "random", "size": 6, "seed": 3, "stop": None,
                                   "index": 0}
    assert sweep.progress() == {"runs": 6, "queued": 0, "started": 6, "running": 0, "stopped_early": 0,
                                "completed": 6, "failed": 0, "cancelled": 0}
    best, value = sweep.best("score", "max")
    assert value == max(table["metrics.score"]) and best.run_id in set(table["run_id"])


def test_a_grid_keeps_the_old_names_and_fixed_params(settings_env):
    settings_env(TELEMETRY_INTERVAL="0", MAX_CONCURRENT="4")
    jobs = sweeps.sweep(lambda run, lr, bs, seed: run.log(score=lr * bs), {"lr": [0.1, 0.2], "bs": [8]},
                        {"seed": 1}, experiment="grid")
    assert nx.wait(jobs, timeout=60) == [RunStatus.COMPLETED] * 2
    table = nx.runs("grid")
    assert set(table["name"]) == {"lr=0.1 bs=8", "lr=0.2 bs=8"} and set(table["params.seed"]) == {1}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: sweeps.sweep(train, {"optim.lr": [0.1, 2.0]}, base=Config()),
     r"optim\.lr=2\.0: invalid config \(Config\): optim\.lr: Input should be less than 1"),
    (lambda: sweeps.sweep(train, {"optim.lrr": [0.1]}, base=Config()), r"unknown param 'optim\.lrr'"),
    (lambda: sweeps.sweep(train, {"optim.lr": loguniform(1e-4, 2.0)}, base=Config(), method="random", n=50,
                          seed=0), r"optim\.lr: Input should be less than 1"),
    (lambda: sweeps.sweep(train, {"optim.lr": loguniform(1e-4, 1e-1)}, base=Config()), "method='random'"),
    (lambda: sweeps.sweep(train, {"optim.lr": [0.1]}, base=Config(), n=3), "pass method='random'"),
    (lambda: sweeps.sweep(train, {"optim.lr": uniform(0, 1)}, method="random"), "needs n"),
    (lambda: sweeps.sweep(train, {"optim.lr": []}), "at least one value"),
    (lambda: sweeps.sweep(train, {"x": [1]}, method="bayes"), "'grid' or 'random'"),
    (lambda: sweeps.sweep(train, {"seed": [1, 2]}, base=Config()), "unknown param 'seed'"),
    (lambda: sweeps.sweep(lambda run, optim: None, {"optim.lr": [0.1]}, base=Config()), "cannot be called as"),
    (lambda: sweeps.sweep(train, {"model.depth": randint(1, 4)}, method="random", n=2), "cannot be called as"),
    (lambda: sweeps.sweep(train, {"optim.lr": [0.1]}, base=Config(), resume="abc"), "continues one run"),
])
def test_a_bad_path_or_value_is_one_error_and_nothing_is_queued(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
    assert nx.runs().empty
