"""Values from frameworks: one-element tensors and numpy scalars in run.log.

A CPU tensor is read at the call; a tensor on a device is kept and read at the
flush, on the flusher's thread. Here the device is played by ``OnDevice``: a real
torch tensor (the real detach, clone, stack and tolist run on it) that reports
itself as not on the CPU and records every torch operation run on it, and in
which thread. On a machine with CUDA the last test logs real CUDA tensors.
"""

import threading
import time

import numpy as np
import pytest
import torch

import notebook_exp as nx
from notebook_exp.exceptions import InvalidMetric
from notebook_exp.tracking.values import as_value, resolve

#: Operations that read a tensor's data on the host (a device sync on a GPU).
READS = {"item", "tolist", "__float__", "__int__", "__bool__", "_local_scalar_dense", "cpu", "numpy", "to", "__repr__"}


class OnDevice(torch.Tensor):
    """A CPU tensor posing as one on a device; ``ops`` holds (operation, thread name) of each use."""

    ops: list = []

    @property
    def is_cpu(self):
        return False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.ops.append((getattr(func, "__name__", str(func)), threading.current_thread().name))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def on_device():
    OnDevice.ops = []
    return lambda value, **kw: torch.tensor(value, **kw).as_subclass(OnDevice)


def reads(thread: str | None = None) -> list:
    return [(op, name) for op, name in OnDevice.ops if op in READS and (thread is None or name == thread)]


def points(run):
    frame = nx.metrics(run.run_id)
    return [(k, int(s), v) for k, s, v in zip(frame.key, frame.step, frame.value)]


def test_cpu_tensors_and_numpy_scalars_mix_with_floats_in_one_key(store_path):
    grad = torch.tensor(3.0, requires_grad=True) * 2  # requires_grad, 0-d
    values = [0.5, torch.tensor(1.5), torch.tensor([2.5]), grad, np.float32(4.5), np.float64(5.5), np.int64(7),
              np.bool_(True), np.array(8.5), torch.tensor(9, dtype=torch.int32), torch.tensor([[10.5]])]
    with nx.start_run() as run:
        for value in values:
            run.log(loss=value)
        run.log(step=20, a=torch.tensor(1.25), b=np.float32(2.0), c=3.0)
    expected = [0.5, 1.5, 2.5, 6.0, 4.5, 5.5, 7.0, 1.0, 8.5, 9.0, 10.5]
    assert points(run) == [("a", 20, 1.25), ("b", 20, 2.0), ("c", 20, 3.0)] + [
        ("loss", i, v) for i, v in enumerate(expected)
    ]


def test_a_cpu_tensor_is_read_at_the_call():
    assert as_value("x", torch.tensor([0.25])).__class__ is float
    assert as_value("x", torch.tensor(0.5, requires_grad=True)).__class__ is float


@pytest.mark.parametrize("value", [torch.tensor([1.0, 2.0]), torch.zeros(2, 3), torch.tensor([]),
                                   torch.tensor(1 + 2j)])
def test_a_tensor_that_is_not_one_real_number_is_refused_at_the_call(store_path, value):
    with nx.start_run() as run:
        run.log(ok=1.0, step=0)
        with pytest.raises(InvalidMetric, match="metric 'vec' must be a real number, got Tensor"):
            run.log(good=2.0, vec=value, step=1)
        with pytest.raises(TypeError, match="'vec'"):
            run.log(vec=value)
    assert points(run) == [("ok", 0, 1.0)]  # nothing of the refused calls


def test_device_tensors_are_read_at_flush_on_the_flusher_thread_in_order(store_path, settings_env, on_device):
    settings_env(FLUSH_INTERVAL="0.05")
    with nx.start_run() as run:
        logged = []
        for i in range(30):
            value = on_device(i / 4) if i % 3 else float(i)  # floats and device tensors in one key
            run.log(loss=value)
            run.log(step=i, acc=on_device(float(i), dtype=torch.float16), lr=0.1)
            logged.append(i / 4 if i % 3 else float(i))
        here = threading.current_thread().name
        run.last_values()  # a widget asking for the last values reads nothing either
        assert reads(here) == []  # the training thread read nothing of them
        deadline = time.monotonic() + 10
        while run.points < 90 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.points == 90  # the flusher flushed everything
        assert reads() and {name for _op, name in reads()} == {"notebook_exp-flusher"}
    got = points(run)
    assert [(k, s, v) for k, s, v in got if k == "loss"] == [("loss", i, v) for i, v in enumerate(logged)]
    assert [(k, s, v) for k, s, v in got if k == "acc"] == [("acc", i, float(i)) for i in range(30)]
    assert [v for k, _s, v in got if k == "lr"] == [0.1] * 30


def test_a_device_tensor_keeps_its_value_as_of_the_call(store_path, on_device):
    total = on_device(0.0)
    with nx.start_run() as run:
        for _ in range(5):
            total += 1  # an accumulator changed in place after it was logged
            run.log(total=total)
    assert [v for _k, _s, v in points(run)] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_device_tensor_that_needs_grad_is_kept_without_its_graph(on_device):
    weight = on_device(2.0, requires_grad=True)
    kept = as_value("loss", weight * 3)
    assert isinstance(kept, torch.Tensor) and not kept.requires_grad and kept.grad_fn is None


def test_resolve_reads_groups_of_dtypes_and_shapes_in_order():
    values = [torch.tensor(1.5), torch.tensor([2], dtype=torch.int64), torch.tensor(True), torch.tensor(0.25),
              torch.tensor([[3.0]], dtype=torch.bfloat16)]
    assert resolve(values) == [1.5, 2.0, 1.0, 0.25, 3.0]
