"""The ray executor's parts that need no cluster: GPU id normalisation, its settings and
spec fields, and how a ``%%experiment`` cell travels."""

from __future__ import annotations

import re

import cloudpickle
import pytest

from notebook_exp._cell import CellFunction
from notebook_exp.config import Settings, reset_settings
from notebook_exp.exceptions import ConfigError
from notebook_exp.inventory import FakeGpuBackend
from notebook_exp.scheduler._ray_cluster import Placement, physical_gpu_ids
from notebook_exp.scheduler.executors.ray import detached
from notebook_exp.scheduler.spec import validate
from notebook_exp.scheduler.sweeps import ConfigCall

IDENTITIES = FakeGpuBackend(4).identities()


@pytest.mark.parametrize(("ray_ids", "physical", "unknown"), [
    ([0], [0], []),  # ints: the raylet started without CUDA_VISIBLE_DEVICES
    (["2", "3"], [2, 3], []),  # strings: its CUDA_VISIBLE_DEVICES entries, physical indices
    ([IDENTITIES[3].uuid, IDENTITIES[1].uuid[:12]], [3, 1], []),  # UUIDs, or unique prefixes of them
    (["1", 1], [1], []),  # the same GPU once
    (["7", "MIG-1234", "GPU-"], [], ["7", "MIG-1234", "GPU-"]),  # nothing of this machine
])
def test_ray_gpu_ids_become_physical_ids(ray_ids, physical, unknown):
    assert physical_gpu_ids(ray_ids, IDENTITIES) == (physical, unknown)


def test_without_an_inventory_numbers_are_taken_as_physical():
    assert physical_gpu_ids(["5", 2], []) == ([5, 2], [])


def test_a_placement_reads_as_the_card_shows_it():
    placement = Placement("n1", "10.0.0.7", "gpu-box", 4242, gpus=(1,), ray_gpu_ids=("1",))
    assert placement.label == "gpu-box (10.0.0.7)"
    assert str(placement) == "gpu-box (10.0.0.7), pid 4242, GPU 1"
    assert placement.describe()["gpus"] == [1]


def test_ray_settings_read_notebook_exp_then_rays_own_address(monkeypatch):
    for name in ("RAY_ADDRESS", "NOTEBOOK_EXP_RAY_ADDRESS", "NOTEBOOK_EXP_RAY_START_LOCAL"):
        monkeypatch.delenv(name, raising=False)
    reset_settings()
    assert Settings().ray_address is None and Settings().ray_start_local is True
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert Settings().ray_address == "ray://head:10001"
    monkeypatch.setenv("NOTEBOOK_EXP_RAY_ADDRESS", "head:6379")
    assert Settings().ray_address == "head:6379"
    assert Settings(ray_address="auto").ray_address == "auto"
    monkeypatch.setenv("NOTEBOOK_EXP_RAY_START_LOCAL", "false")
    assert Settings().ray_start_local is False


def test_ray_spec_fields_are_validated():
    spec = validate(fn=lambda run: None, executor="ray", gpus=0.25, cpus=0.5, memory="2GiB",
                    ray_options={"resources": {"TPU": 1}, "scheduling_strategy": object()})
    assert (spec.cpus, spec.memory) == (0.5, 2 * 2**30)
    described = spec.describe()
    assert described["ray_options"]["resources"] == {"TPU": 1}
    assert described["ray_options"]["scheduling_strategy"].startswith("<object object")  # stored as its repr
    assert validate(fn=lambda run: None).cpus == 1  # Ray's own default for a task
    for bad, message in [({"num_gpus": 1}, "num_gpus (use gpus)"), ({"max_retries": 3}, "max_retries (use retries)"),
                         ("SPREAD", "takes a dict")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(fn=lambda run: None, executor="ray", ray_options=bad)
    with pytest.raises(ConfigError, match="cpus"):
        validate(fn=lambda run: None, executor="ray", cpus=-1)


def test_a_cell_bound_to_the_notebook_travels_with_copies_of_the_variables_it_uses():
    namespace = {"scale": 3, "unused": object(), "lr": 99}
    cell = CellFunction("total = lr * scale\ntotal", {"lr"}, namespace=namespace)
    shipped = detached(cell)
    assert shipped is not cell and shipped._namespace is None and shipped.captured == {"scale": 3}
    assert cloudpickle.loads(cloudpickle.dumps(shipped))(None, lr=2) == 6
    namespace["scale"] = 5  # the copy was taken when it left
    assert shipped(None, lr=2) == 6 and cell(None, lr=2) == 10
    wrapped = detached(ConfigCall(cell, "cfg", {}))
    assert wrapped.fn.captured == {"scale": 5}
    plain = lambda run: None  # noqa: E731
    assert detached(plain) is plain
