"""Configs as params: pydantic models, dataclasses and OmegaConf as nested JSON, dotted overrides."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.tracking import params as configs


class Act(str, enum.Enum):
    RELU = "relu"
    GELU = "gelu"


class Optim(BaseModel):
    name: str = "adam"
    lr: float = Field(0.1, gt=0, lt=1)


class Model(BaseModel):
    layers: list[int] = [64, 64]
    act: Act = Act.RELU


class TrainConfig(BaseModel):
    optim: Optim = Optim()
    model: Model = Model()
    out: Path = Path("/tmp/out")
    seed: int = 0


@dataclasses.dataclass
class DOptim:
    name: str = "sgd"
    lr: float = 0.01


@dataclasses.dataclass
class DConfig:
    optim: DOptim = dataclasses.field(default_factory=DOptim)
    layers: tuple[int, ...] = (32, 32)
    note: str | None = None


PLAIN = {"optim": {"name": "adam", "lr": 0.1}, "model": {"layers": [64, 64], "act": "relu"}, "out": "/tmp/out",
         "seed": 0}


def test_pydantic_config_round_trips_through_the_store():
    config = TrainConfig(optim=Optim(lr=0.05))
    plain = configs.to_plain(config)
    assert plain == {**PLAIN, "optim": {"name": "adam", "lr": 0.05}}
    with nx.start_run("pyd", params=plain) as run:
        run.log(loss=1.0, step=0)
    assert run.params == plain
    assert configs.restore(TrainConfig, run.params) == config  # the round trip
    row = nx.runs().iloc[0]
    assert row["params.optim.lr"] == 0.05 and row["params.model.layers"] == [64, 64]
    assert row["params.model.act"] == "relu" and "params.optim" not in nx.runs().columns


def test_dataclass_config_round_trips_through_the_store():
    config = DConfig(optim=DOptim(lr=0.5), layers=(8, 16), note="x")
    plain = configs.to_plain(config)
    assert plain == {"optim": {"name": "sgd", "lr": 0.5}, "layers": [8, 16], "note": "x"}
    with nx.start_run("dc", params=plain) as run:
        pass
    restored = configs.restore(DConfig, run.params)
    assert restored == config and isinstance(restored.optim, DOptim) and restored.layers == (8, 16)
    assert set(nx.runs().columns) >= {"params.optim.name", "params.optim.lr", "params.layers", "params.note"}


def test_configs_nest_inside_dicts_and_each_other():
    mixed = {"train": TrainConfig(), "data": DConfig(), "extra": ({"a": DOptim()},)}
    plain = configs.to_plain(mixed)
    assert plain["train"] == PLAIN and plain["data"]["optim"] == {"name": "sgd", "lr": 0.01}
    assert plain["extra"] == [{"a": {"name": "sgd", "lr": 0.01}}]
    assert configs.to_plain(5) == 5 and configs.is_config(DConfig()) and not configs.is_config({"a": 1})


def test_flatten_and_unflatten_are_inverse():
    flat = configs.flatten(PLAIN)
    assert flat == {"optim.name": "adam", "optim.lr": 0.1, "model.layers": [64, 64], "model.act": "relu",
                    "out": "/tmp/out", "seed": 0}
    assert configs.unflatten(flat) == PLAIN


def test_apply_sets_dotted_overrides_and_validates_a_pydantic_base():
    plain = configs.apply(TrainConfig(), {"optim.lr": "0.001", "model.layers": [32, 32], "model.act": "gelu"})
    assert plain["optim"] == {"name": "adam", "lr": 0.001}  # coerced by the model
    assert plain["model"] == {"layers": [32, 32], "act": "gelu"}
    assert configs.apply(TrainConfig, {"seed": 3})["seed"] == 3  # a class: its defaults
    with pytest.raises(ConfigError, match=r"optim\.lr: Input should be less than 1 \(got 2\.0\)") as info:
        configs.apply(TrainConfig(), {"optim.lr": 2.0})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown param 'optim\.lrr' \(it has optim\.lr, optim\.name\)"):
        configs.apply(TrainConfig(), {"optim.lrr": 0.1})
    with pytest.raises(ConfigError, match=r"'model\.layers' is a list"):
        configs.apply(TrainConfig(), {"model.layers.0": 8})
    with pytest.raises(ConfigError, match="not a dotted name"):
        configs.apply(TrainConfig(), {"optim..lr": 8})


def test_apply_on_a_dataclass_and_a_dict():
    assert configs.apply(DConfig(), {"optim.lr": 0.2})["optim"] == {"name": "sgd", "lr": 0.2}
    with pytest.raises(ConfigError, match="unknown param 'optim.momentum'"):
        configs.apply(DConfig(), {"optim.momentum": 0.9})
    assert configs.apply({"a": 1}, {"b.c": 2}) == {"a": 1, "b": {"c": 2}}  # a dict takes new names
    assert configs.apply(None, {"optim.lr": 1e-3}) == {"optim": {"lr": 1e-3}}
    with pytest.raises(ConfigError, match="'a' is a int"):
        configs.apply({"a": 1}, {"a.b": 2})
    base = {"optim": {"lr": 1}}
    configs.apply(base, {"optim.lr": 2})
    assert base == {"optim": {"lr": 1}}  # the base is never changed


def test_build_makes_a_config_like_the_base():
    assert configs.build(TrainConfig(), PLAIN) == TrainConfig()
    assert configs.build(DConfig(), {"optim": {"name": "x", "lr": 1.0}}) == DConfig(optim=DOptim("x", 1.0))
    assert configs.build({"a": 1}, {"a": 2}) == {"a": 2}


def test_omegaconf_configs_are_plain_and_validated():
    import omegaconf
    conf = omegaconf.OmegaConf.create({"optim": {"lr": 0.1, "name": "adam"}, "scaled": "${optim.lr}"})
    assert configs.to_plain(conf) == {"optim": {"lr": 0.1, "name": "adam"}, "scaled": 0.1}
    assert configs.apply(conf, {"optim.lr": 0.5})["optim"]["lr"] == 0.5
    with pytest.raises(ConfigError, match="unknown param 'optim.beta'"):
        configs.apply(conf, {"optim.beta": 0.5})
    typed = omegaconf.OmegaConf.structured(DConfig)
    assert configs.apply(typed, {"optim.lr": 0.25})["optim"] == {"name": "sgd", "lr": 0.25}
    with pytest.raises(ConfigError, match="optim.lr"):
        configs.apply(typed, {"optim.lr": "fast"})
