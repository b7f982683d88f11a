"""The launcher form, driven as a user would: set values, click buttons, read the store."""

import enum
from typing import Literal

import ipywidgets as widgets
import pytest
from pydantic import BaseModel, Field, model_validator

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.widgets.submit_form import LauncherForm, launcher


class Schedule(str, enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


class TrainParams(BaseModel):
    lr: float = Field(0.1, gt=0, lt=1, description="learning rate")
    batch_size: int = Field(32, ge=8, le=256)
    epochs: int = 2
    momentum: float = 0.9
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    schedule: Schedule = Schedule.COSINE
    shuffle: bool = True
    tag: str = Field("base", min_length=2)

    @model_validator(mode="after")
    def _small_batches_for_adam(self):
        if self.optimizer == "adam" and self.batch_size > 128:
            raise ValueError("adam takes batch_size <= 128")
        return self


def train(run, lr, batch_size, epochs, momentum, optimizer, schedule, shuffle, tag):
    run.log(score=lr * batch_size, step=0)
    return optimizer


def simple(run, lr, epochs, label, shuffle, optimizer):
    run.log(score=lr, step=0)


def _params(frame) -> list[dict]:
    cols = [c for c in frame.columns if c.startswith("params.")]
    return [{c.removeprefix("params."): row[c] for c in cols} for _, row in frame.iterrows()]


def test_model_fields_get_controls_by_type_and_bounds():
    form = launcher(train, TrainParams)
    c = form.controls
    assert isinstance(c["lr"], widgets.FloatSlider)
    # exclusive bounds are nudged one step (1/100 of the range) inside
    assert (c["lr"].min, c["lr"].max, c["lr"].step, c["lr"].value) == pytest.approx((0.01, 0.99, 0.01, 0.1))
    assert c["lr"].tooltip == "learning rate"
    assert isinstance(c["batch_size"], widgets.IntSlider)
    assert (c["batch_size"].min, c["batch_size"].max, c["batch_size"].value) == (8, 256, 32)
    assert isinstance(c["epochs"], widgets.IntText) and c["epochs"].value == 2
    assert isinstance(c["momentum"], widgets.FloatText) and c["momentum"].value == 0.9
    assert isinstance(c["optimizer"], widgets.Dropdown)
    assert [v for _label, v in c["optimizer"].options] == ["sgd", "adam", "rmsprop"]
    assert c["optimizer"].value == "sgd"
    assert isinstance(c["schedule"], widgets.Dropdown) and c["schedule"].value is Schedule.COSINE
    assert isinstance(c["shuffle"], widgets.Checkbox) and c["shuffle"].value is True
    assert isinstance(c["tag"], widgets.Text) and c["tag"].value == "base"
    assert set(form.sweep_toggles) == {"optimizer", "schedule", "shuffle"}
    assert form.run_button.disabled is False and form.sweep_button.disabled is True


def test_dict_defaults_get_controls_by_value():
    form = LauncherForm(simple, {"lr": 0.1, "epochs": 3, "label": "x", "shuffle": False,
                                 "optimizer": ["sgd", "adam"]})
    c = form.controls
    assert isinstance(c["lr"], widgets.FloatText) and c["lr"].value == 0.1
    assert isinstance(c["epochs"], widgets.IntText) and c["epochs"].value == 3
    assert isinstance(c["label"], widgets.Text) and c["label"].value == "x"
    assert isinstance(c["shuffle"], widgets.Checkbox) and c["shuffle"].value is False
    assert isinstance(c["optimizer"], widgets.Dropdown) and c["optimizer"].value == "sgd"
    assert form.values == {"lr": 0.1, "epochs": 3, "label": "x", "shuffle": False, "optimizer": "sgd"}


def test_invalid_values_show_an_error_and_queue_nothing():
    form = launcher(train, TrainParams)
    form.controls["tag"].value = "x"
    form.run_button.click()
    assert "tag" in form.error.value and "at least 2" in form.error.value
    assert form.jobs == [] and nx.runs().empty

    form.controls["tag"].value = "ok"
    form.controls["optimizer"].value = "adam"
    form.controls["batch_size"].value = 200
    form.run_button.click()
    assert "adam takes batch_size &lt;= 128" in form.error.value
    assert form.jobs == [] and nx.runs().empty


def test_run_submits_one_job_with_the_shown_values():
    form = launcher(train, TrainParams, experiment="lab", name="try")
    form.controls["lr"].value = 0.5
    form.controls["batch_size"].value = 64
    form.controls["optimizer"].value = "adam"
    form.controls["schedule"].value = Schedule.CONSTANT
    form.controls["shuffle"].value = False
    form.run_button.click()
    assert form.error.value == ""
    assert len(form.jobs) == 1
    assert nx.wait(form.jobs) == [nx.RunStatus.COMPLETED]
    assert form.jobs[0].result() == "adam"
    frame = nx.runs()
    assert list(frame["experiment"]) == ["lab"] and list(frame["name"]) == ["try"]
    assert _params(frame) == [{"lr": 0.5, "batch_size": 64, "epochs": 2, "momentum": 0.9, "optimizer": "adam",
                               "schedule": "constant", "shuffle": False, "tag": "base"}]
    assert form.jobs[0].run_id in form.status.value and "try" in form.status.value


def test_sweep_submits_the_cartesian_product():
    form = launcher(train, TrainParams, experiment="grid")
    form.sweep_toggles["optimizer"].value = True
    form.sweep_toggles["shuffle"].value = True
    assert form.sweep_button.disabled is False and form.run_button.disabled is True
    assert form.multi["optimizer"] in form.children[4].children  # swapped in for the dropdown
    form.multi["optimizer"].value = ("sgd", "rmsprop")
    form.multi["shuffle"].value = (False, True)
    form.controls["lr"].value = 0.25
    form.sweep_button.click()
    assert form.error.value == ""
    assert len(form.jobs) == 4
    assert set(nx.wait(form.jobs)) == {nx.RunStatus.COMPLETED}
    params = _params(nx.runs("grid"))
    assert {(p["optimizer"], p["shuffle"]) for p in params} == {
        ("sgd", False), ("sgd", True), ("rmsprop", False), ("rmsprop", True)}
    assert {(p["lr"], p["batch_size"], p["schedule"]) for p in params} == {(0.25, 32, "cosine")}
    assert all(job.name in form.status.value for job in form.jobs)

    form.sweep_toggles["optimizer"].value = False
    form.sweep_toggles["shuffle"].value = False
    assert form.sweep_button.disabled is True and form.run_button.disabled is False


def test_sweep_checks_every_combination_before_queueing_any():
    form = launcher(train, TrainParams)
    form.controls["batch_size"].value = 200
    form.sweep_toggles["optimizer"].value = True
    form.multi["optimizer"].value = ("sgd", "adam")  # adam fails the model's check
    form.sweep_button.click()
    assert "adam takes batch_size" in form.error.value
    form.multi["optimizer"].value = ()
    form.sweep_button.click()
    assert "pick at least one value of optimizer" in form.error.value
    assert form.jobs == [] and nx.runs().empty


def test_submission_errors_show_in_the_form():
    form = LauncherForm(lambda run, lr: None, {"lr": 0.1, "epochs": 3})  # fn lacks epochs
    form.run_button.click()
    assert "ConfigError" in form.error.value and "epochs" in form.error.value
    assert form.jobs == [] and nx.runs().empty

    form = LauncherForm(simple, {"lr": 0.1, "epochs": 3, "label": "x", "shuffle": False,
                                 "optimizer": ["sgd"]}, priority=99)
    form.run_button.click()
    assert "priority" in form.error.value and nx.runs().empty


def test_bad_construction_raises_config_error():
    with pytest.raises(ConfigError, match="unknown submit option.*colour"):
        launcher(simple, {"lr": 0.1}, colour="red")
    with pytest.raises(ConfigError, match=r"'layers' \(dict\) has no form control"):
        launcher(simple, {"layers": {"a": 1}})

    class Model(BaseModel):
        layers: list[int] = [64, 64]

    with pytest.raises(ConfigError, match=r"'layers' \(list\[int\]\) has no form control"):
        launcher(simple, Model)
    with pytest.raises(ConfigError, match="pydantic model class or a dict"):
        launcher(simple, [1, 2])


def test_repr_is_stable():
    form = launcher(train, TrainParams)
    text = "<LauncherForm train: lr, batch_size, epochs, momentum, optimizer, schedule, shuffle, tag>"
    assert repr(form) == text
    assert form._repr_mimebundle_()["text/plain"] == text  # what a notebook saves and nbval compares
    form.run_button.click()
    nx.wait(form.jobs)
    assert repr(form) == text
    assert launcher(simple, {"lr": 0.1}).__repr__() == "<LauncherForm simple: lr>"
