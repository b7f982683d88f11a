"""The launcher form's random sweeps: sample numbers from ranges, picked choices, n runs, a seed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.widgets.submit_form import LauncherForm, launcher


class Params(BaseModel):
    lr: float = Field(0.01, gt=0, lt=1)
    batch_size: int = Field(32, ge=8, le=256)
    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: int = 1


def train(run, lr, batch_size, optimizer, epochs):
    run.log(score=lr * batch_size, step=0)


def _params(frame) -> list[dict]:
    cols = [c for c in frame.columns if c.startswith("params.")]
    return [{c.removeprefix("params."): row[c] for c in cols} for _, row in frame.iterrows()]


def test_sample_queues_a_reproducible_random_sweep(settings_env):
    settings_env(TELEMETRY_INTERVAL="0")
    form = launcher(train, Params, experiment="rand")
    assert set(form.sample_toggles) == {"lr", "batch_size", "epochs"} and form.sample_button.disabled
    form.sample_toggles["lr"].value = True
    assert form.sample_button.disabled is False and form.run_button.disabled and form.sweep_button.disabled
    low, high, log = form.ranges["lr"]
    assert form.children[0].children[:3] == (low, high, log)  # the range replaced the slider
    low.value, high.value, log.value = 1e-4, 1e-1, True
    form.sample_toggles["batch_size"].value = True
    form.ranges["batch_size"][0].value, form.ranges["batch_size"][1].value = 16, 17
    form.sweep_toggles["optimizer"].value = True
    form.multi["optimizer"].value = ("sgd", "adam")
    form.n.value, form.seed.value = 8, "5"
    form.sample_button.click()
    assert form.error.value == "" and len(form.jobs) == 8
    assert set(nx.wait(form.jobs, timeout=60)) == {RunStatus.COMPLETED}
    drawn = _params(nx.runs("rand"))
    assert all(1e-4 <= p["lr"] <= 1e-1 and p["batch_size"] in (16, 17) and p["epochs"] == 1 for p in drawn)
    assert {p["optimizer"] for p in drawn} <= {"sgd", "adam"} and len({p["lr"] for p in drawn}) == 8
    assert len(set(nx.runs("rand")["sweep_id"])) == 1

    again = launcher(train, Params, experiment="again")
    again.sample_toggles["lr"].value = True
    again.ranges["lr"][0].value, again.ranges["lr"][1].value, again.ranges["lr"][2].value = 1e-4, 1e-1, True
    again.sample_toggles["batch_size"].value = True
    again.ranges["batch_size"][0].value, again.ranges["batch_size"][1].value = 16, 17
    again.sweep_toggles["optimizer"].value = True
    again.multi["optimizer"].value = ("sgd", "adam")
    again.n.value, again.seed.value = 8, "5"
    again.sample_button.click()
    nx.wait(again.jobs, timeout=60)
    key = sorted(tuple(sorted(p.items())) for p in drawn)
    assert sorted(tuple(sorted(p.items())) for p in _params(nx.runs("again"))) == key  # same seed, same draws


def test_sample_checks_every_draw_and_the_seed_before_queueing():
    form = launcher(train, Params)
    form.sample_toggles["lr"].value = True
    form.ranges["lr"][1].value = 5.0  # past the model's lt=1
    form.n.value = 20
    form.sample_button.click()
    assert "lr" in form.error.value and "less than 1" in form.error.value
    form.ranges["lr"][1].value = 0.5
    form.seed.value = "abc"
    form.sample_button.click()
    assert "seed" in form.error.value
    assert form.jobs == [] and nx.runs().empty


def test_a_dict_form_samples_too():
    form = LauncherForm(lambda run, lr, steps: None, {"lr": 0.1, "steps": 10})
    form.sample_toggles["steps"].value = True
    assert (form.ranges["steps"][0].value, form.ranges["steps"][1].value, form.ranges["steps"][2]) == (10, 20, None)
    form.seed.value = "1"
    form.n.value = 3
    form.sample_button.click()
    assert form.error.value == "" and len(form.jobs) == 3
    nx.wait(form.jobs, timeout=60)
    assert all(10 <= v <= 20 for v in nx.runs()["params.steps"]) and set(nx.runs()["params.lr"]) == {0.1}
