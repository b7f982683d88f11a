"""Configs and sweeps through the front door and %%experiment.

These need the wiring of nx.sweep/nx.submit (scheduler/api.py), clean_params (tracking/values.py),
ExperimentSpec.sweep (scheduler/spec.py), the magic's --sample/-n/--seed/--config (magics.py) and the
exports MedianStop, ASHA, space (__init__.py)."""

from __future__ import annotations

import dataclasses

import pytest
from IPython.core.error import UsageError
from pydantic import BaseModel, Field

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.scheduler import sweeps
from notebook_exp.scheduler.core import get_scheduler
from notebook_exp.tracking.params import restore


class Optim(BaseModel):
    name: str = "adam"
    lr: float = Field(0.1, gt=0, lt=1)


class Model(BaseModel):
    layers: list[int] = [64, 64]


class Config(BaseModel):
    optim: Optim = Optim()
    model: Model = Model()


@dataclasses.dataclass
class Data:
    path: str = "/data"
    batch: int = 32


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "notebook_exp")
    shell.user_ns["Config"] = Config
    yield shell
    shell.user_ns.pop("config", None)


def _params(frame) -> list[dict]:
    cols = sorted(c for c in frame.columns if c.startswith("params."))
    return [{c.removeprefix("params."): row[c] for c in cols} for _, row in frame.sort_values("created_at").iterrows()]


def test_config_objects_are_params_at_the_front_door():
    config = Config(optim=Optim(lr=0.01))
    with nx.start_run("cfg", params=config) as run:
        run.log(loss=1.0, step=0)
    assert run.params == {"optim": {"name": "adam", "lr": 0.01}, "model": {"layers": [64, 64]}}
    assert restore(Config, run.params) == config
    job = nx.submit(lambda run, path, batch: batch, Data(batch=8))
    assert job.result(timeout=30) == 8
    assert set(nx.runs().columns) >= {"params.optim.lr", "params.model.layers", "params.path", "params.batch"}


def test_nx_sweep_with_a_base_a_random_space_and_a_stop_rule(settings_env):
    settings_env(TELEMETRY_INTERVAL="0")
    sweep = nx.sweep(lambda run, optim, model: run.log(loss=optim["lr"]),
                     {"optim.lr": nx.space.loguniform(1e-4, 1e-1)}, base=Config(), method="random", n=3, seed=0,
                     stop=nx.MedianStop("loss"), experiment="door")
    assert isinstance(sweep, sweeps.Sweep) and nx.wait(sweep, timeout=60) == [RunStatus.COMPLETED] * 3
    assert set(nx.runs("door")["sweep_id"]) == {sweep.id}
    assert isinstance(nx.ASHA("loss"), nx.ASHA)
    (resubmitted,) = nx.resubmit([sweep[0].run_id])
    nx.wait([resubmitted], timeout=30)
    assert resubmitted.spec.sweep["id"] == sweep.id  # a run queued again stays in its sweep


def test_magic_overrides_a_cells_config_by_dotted_name(shell, settings_env):
    settings_env(TELEMETRY_INTERVAL="0")
    cell = "config = Config()\nrun.log(lr=config.optim.lr, width=config.model.layers[0])\nconfig.optim.lr"
    shell.run_cell_magic("experiment", 'g -e magic --config config -p optim.lr=1e-3 '
                                        '--grid model.layers="[32,32]","[64,64]"', cell)
    jobs = get_scheduler().jobs()
    assert nx.wait(jobs, timeout=60) == [RunStatus.COMPLETED] * 2
    assert [job.result() for job in jobs] == [1e-3, 1e-3]
    assert _params(nx.runs("magic")) == [{"model.layers": [32, 32], "optim.lr": 1e-3, "optim.name": "adam"},
                                         {"model.layers": [64, 64], "optim.lr": 1e-3, "optim.name": "adam"}]
    assert set(nx.runs("magic")["name"]) == {"g model.layers=[32, 32]", "g model.layers=[64, 64]"}


def test_magic_samples_a_reproducible_random_sweep(shell, settings_env):
    settings_env(TELEMETRY_INTERVAL="0")
    shell.user_ns["config"] = Config()
    shell.run_cell_magic("experiment", "-e rand --config config --sample optim.lr=loguniform(1e-5,1e-1) "
                                       "--sample optim.name=choice('adam','sgd') -n 4 --seed 0", "run.log(x=1.0)")
    nx.wait(get_scheduler().jobs(), timeout=60)
    expected, _ = sweeps.plan({"optim.lr": nx.space.loguniform(1e-5, 1e-1),
                               "optim.name": nx.space.choice(["adam", "sgd"])}, base=Config(), method="random",
                              n=4, seed=0)
    assert sorted(p["optim.lr"] for p in _params(nx.runs("rand"))) == sorted(
        p.params["optim"]["lr"] for p in expected)
    assert len(set(nx.runs("rand")["sweep_id"])) == 1


def test_magic_without_a_config_nests_dotted_params(shell, settings_env):
    settings_env(TELEMETRY_INTERVAL="0")
    shell.run_cell_magic("experiment", "-e plain -p optim.lr=0.5 -p seed=1", "optim['lr'] * seed")
    (job,) = get_scheduler().jobs()
    assert job.result(timeout=30) == 0.5 and job.params == {"optim": {"lr": 0.5}, "seed": 1}


@pytest.mark.parametrize(("line", "message"), [
    ("--config config -p optim.lrr=1", "unknown param 'optim.lrr'"),
    ("--config config -p optim.lr=5", "optim.lr: Input should be less than 1"),
    ("--config config --grid optim.lr=0.1,7", "optim.lr=7: invalid config"),
    ("--config config --sample optim.lr=uniform(0.1,3) -n 30 --seed 0", "optim.lr: Input should be less than 1"),
    ("--config nothing", "no variable 'nothing'"),
    ("--grid x=1,2 --sample y=uniform(0,1) -n 2", "do not mix"),
    ("--sample y=uniform(0,1)", "needs n"),
    ("--sample y=gauss(0,1) -n 2", "is not one of"),
    ("-p 1x.lr=2", "dotted path"),
])
def test_magic_errors_are_one_line_and_queue_nothing(shell, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell_magic("experiment", line, "config = Config()\nrun.log(x=1.0)")
    assert "\n" not in str(info.value)
    assert nx.runs().empty
