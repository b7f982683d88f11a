"""GpuInventory over the shipped FakeGpuBackend, and the real NVML path of this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notebook_exp.exceptions import ConfigError, GpuUnavailable
from notebook_exp.inventory import (
    DEFAULT_FAKE_MEMORY,
    FakeGpuBackend,
    GpuInfo,
    GpuInventory,
    NvmlBackend,
    _nvml_call,
)

ROOT = Path(__file__).resolve().parents[2]


def fake(count: int = 4, **kwargs) -> GpuInventory:
    return GpuInventory.detect(
        fake_gpus=count, cuda_visible_devices=kwargs.pop("cvd", None), **kwargs
    )


def test_fake_inventory_counts_and_plausible_snapshot():
    inventory = fake(3)
    assert inventory.is_fake
    assert inventory.devices() == [0, 1, 2]
    assert inventory.unavailable_reason is None
    snapshot = inventory.snapshot()
    assert [g.index for g in snapshot] == [0, 1, 2]
    assert [g.name for g in snapshot] == ["Virtual GPU 0", "Virtual GPU 1", "Virtual GPU 2"]
    assert len({g.uuid for g in snapshot}) == 3
    for gpu in snapshot:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory_total == DEFAULT_FAKE_MEMORY == 16 * 1024**3
        assert 0 <= gpu.memory_used <= gpu.memory_total
        assert 0 <= gpu.utilization <= 100
        assert 20 <= gpu.temperature <= 90
        assert gpu.holders == () and gpu.holder is None and not gpu.reserved


def test_zero_fake_gpus_is_an_empty_inventory():
    inventory = fake(0)
    assert inventory.devices() == [] and inventory.snapshot() == []


def test_fake_readings_are_set_through_the_backend():
    backend = FakeGpuBackend(2, memory_total=8 * 1024**3)
    inventory = GpuInventory(backend)
    backend.set(1, memory_used=6 * 1024**3, utilization=97.5, temperature=81.0)
    gpu = inventory.info(1)
    assert (gpu.utilization, gpu.temperature) == (97.5, 81.0)
    assert inventory.free_memory(1) == gpu.memory_free == 2 * 1024**3
    assert inventory.free_memory(0) == 8 * 1024**3
    with pytest.raises(ConfigError):
        backend.set(5, utilization=1.0)
    with pytest.raises(ConfigError):
        backend.set(0, memory_used=9 * 1024**3)


def test_cuda_visible_devices_by_index_keeps_only_those_ids():
    inventory = fake(4, cvd="3,1")
    assert inventory.devices() == [1, 3]
    assert [g.index for g in inventory.snapshot()] == [1, 3]
    # cuda:<n> inside this process follows the variable's order
    assert inventory.cuda_ordinal(3) == 0 and inventory.cuda_ordinal(1) == 1
    assert inventory.visible_devices_value([1, 3]) == "1,3"
    with pytest.raises(ConfigError, match="not visible"):
        inventory.info(0)


def test_cuda_visible_devices_by_uuid_and_uuid_prefix():
    uuids = [g.uuid for g in fake(4).snapshot()]
    assert fake(4, cvd=f"{uuids[2]},{uuids[0]}").devices() == [0, 2]
    assert fake(4, cvd=f" {uuids[3][:12]} ,1").devices() == [1, 3]  # unique prefix, spaces
    assert fake(4, cvd=f"{uuids[1].lower()}").devices() == [1]


def test_cuda_visible_devices_read_as_cuda_does():
    assert fake(4, cvd="").devices() == []  # empty: no GPU
    assert fake(4, cvd="0,7,2").devices() == [0]  # an unknown id ends the list
    assert fake(4, cvd="1,nonsense,2").devices() == [1]
    assert fake(4, cvd="GPU-,3").devices() == []  # an ambiguous prefix names no GPU
    assert fake(4, cvd="2,2").devices() == [2]


def test_reserved_gpus_are_not_leasable_but_still_reported():
    inventory = fake(4, reserved=[0, 2])
    assert inventory.devices() == [1, 3]
    assert inventory.visible() == [0, 1, 2, 3]
    assert [g.reserved for g in inventory.snapshot()] == [True, False, True, False]
    assert fake(4, cvd="2,3", reserved=[3]).devices() == [2]
    with pytest.raises(ConfigError):
        fake(2, reserved=[-1])


def test_gpu_info_holder_joins_holders():
    gpu = GpuInfo(0, "GPU-x", "X", 100, 40, 10.0, 40.0, holders=("a", "b"))
    assert gpu.holder == "a, b" and gpu.memory_free == 60


def test_nvml_on_this_machine_gives_devices_or_a_helpful_gpu_unavailable():
    """No skip: on a machine without a driver NVML errors become GpuUnavailable."""
    import pynvml

    try:
        backend = NvmlBackend()
    except GpuUnavailable as exc:
        assert isinstance(exc.__cause__, pynvml.NVMLError)
        assert "NVML is not available" in str(exc)
        assert "NOTEBOOK_EXP_FAKE_GPUS=N" in str(exc)
        inventory = GpuInventory.detect(fake_gpus=None, cuda_visible_devices=None)
        assert inventory.devices() == [] and inventory.snapshot() == []
        assert inventory.unavailable_reason == str(exc)
    else:
        inventory = GpuInventory(backend)
        count = _nvml_call("nvmlDeviceGetCount")
        assert inventory.devices() == list(range(count))
        for gpu in inventory.snapshot():
            assert gpu.uuid.startswith("GPU-") and gpu.memory_total > 0
            assert 0 <= gpu.memory_used <= gpu.memory_total


def test_a_failing_nvml_call_never_lets_nvml_error_escape():
    import pynvml

    with pytest.raises(GpuUnavailable) as caught:
        _nvml_call("nvmlDeviceGetHandleByIndex", 10_000)  # no such GPU, or no NVML at all
    assert isinstance(caught.value.__cause__, pynvml.NVMLError)
    assert "nvmlDeviceGetHandleByIndex" in str(caught.value) or "not available" in str(caught.value)


def test_importing_the_package_does_not_load_pynvml():
    code = (
        "import sys, notebook_exp, notebook_exp.inventory, notebook_exp.scheduler.leases\n"
        "from notebook_exp.inventory import GpuInventory\n"
        "GpuInventory.detect(fake_gpus=2, cuda_visible_devices=None).snapshot()\n"
        "assert 'pynvml' not in sys.modules, 'pynvml imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
