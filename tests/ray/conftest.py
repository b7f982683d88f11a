"""One real local Ray for the whole session, started the way users get one: by
``_ray_cluster.connect`` with ``ray_start_local`` (4 logical CPUs, the 2 virtual
GPUs of ``fake_gpus=2`` as Ray GPUs, no dashboard).

Starting it takes 20-30 s on this machine (2 shared cores): Ray's own Python
processes import ray, and without bytecode caches (``PYTHONDONTWRITEBYTECODE``
is set here and the venv ships no ``.pyc``) each compiles it again; a raylet
whose dashboard agent is not up within its fixed 15 s dies ("The current node
timed out during startup", measured under load). So Ray's processes get a
bytecode cache folder, and a start that timed out is tried again (twice at most).
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import psutil
import pytest

from notebook_exp.testing import make_settings

START_TRIES = 3
SHUTDOWN_TIMEOUT = 30.0
RAY_PROCESSES = ("raylet", "gcs_server")


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray (a ``_ray_cluster.Cluster``); shut down, and checked gone, at the end."""
    import ray

    from notebook_exp.scheduler._ray_cluster import connect

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "notebook_exp-pycache"))
    settings = make_settings(ray_local_cpus=4, fake_gpus=2, ray_start_local=True)
    for attempt in range(1, START_TRIES + 1):
        try:
            cluster = connect(settings)
            break
        except Exception as exc:  # noqa: BLE001 - Ray's start-up timed out on a busy machine: again
            ray.shutdown()
            _wait_gone(_ray_children())
            if attempt == START_TRIES or "timed out" not in str(exc):
                raise
    children = _ray_children()
    try:
        yield cluster
    finally:
        ray.shutdown()
        left = _wait_gone(children)
        assert not left, f"Ray processes outlived ray.shutdown(): {left}"


def _ray_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() in RAY_PROCESSES:
                found.append(child)
        except psutil.Error:
            continue
    return found


def _wait_gone(processes: list[psutil.Process]) -> list[str]:
    _gone, alive = psutil.wait_procs(processes, timeout=SHUTDOWN_TIMEOUT)
    return [f"{p.name()} ({p.pid})" for p in alive]


@pytest.fixture
def ray_scheduler(ray_cluster, fake_gpus, use_settings):
    """``make(**settings)``: this test's scheduler, leasing from 2 virtual GPUs (the
    session Ray's 2 GPUs), 8 runs at once, a 1 s cancel grace; returns it."""
    gpus = fake_gpus(2)

    def make(**overrides):
        options = {"fake_gpus": 2, "max_concurrent": 8, "cancel_grace": 1.0, **overrides}
        return use_settings(inventory=gpus.inventory, **options)

    return make


@pytest.fixture(scope="session")
def gate(ray_cluster):
    """A Ray actor runs meet at: ``enter(quorum, wait)`` waits until ``quorum`` runs are in
    (or ``wait`` s pass, or ``open()``); ``peak()`` is the most that were in at once."""
    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            self.active = 0
            self.most = 0
            self.opened = False
            self.cond = None

        def _cond(self) -> asyncio.Condition:
            if self.cond is None:
                self.cond = asyncio.Condition()
            return self.cond

        async def enter(self, quorum: int, wait: float) -> int:
            cond = self._cond()
            async with cond:
                self.active += 1
                self.most = max(self.most, self.active)
                cond.notify_all()
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: self.active >= quorum or self.opened), wait)
                except asyncio.TimeoutError:
                    pass
                return self.active

        async def leave(self) -> None:
            async with self._cond():
                self.active -= 1

        async def open(self) -> None:
            cond = self._cond()
            async with cond:
                self.opened = True
                cond.notify_all()

        async def peak(self) -> int:
            return self.most

        async def reset(self) -> None:
            self.active, self.most, self.opened = 0, 0, False

    handle = Gate.remote()
    ray.get(handle.reset.remote())
    yield handle
    ray.kill(handle)


@pytest.fixture
def fresh_gate(gate):
    import ray

    ray.get(gate.reset.remote())
    yield gate
    ray.get(gate.open.remote())  # no run of a failed test waits on it
