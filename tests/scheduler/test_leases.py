"""GPU leases with real lock files, real threads and real child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from notebook_exp.exceptions import ConfigError, GpuUnavailable
from notebook_exp.inventory import FakeGpuBackend, GpuInventory
from notebook_exp.scheduler.leases import (
    SLOTS_PER_GPU,
    LeaseHolder,
    LeaseManager,
    default_lock_dir,
    slots_for,
)
from notebook_exp.testing import FakeGpus

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_lease_child.py")
GiB = 1024**3


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def manager(lock_dir: Path, count: int = 2, **kwargs) -> LeaseManager:
    inventory = GpuInventory.detect(fake_gpus=count, cuda_visible_devices=None, **kwargs)
    return LeaseManager(inventory, lock_dir)


class Child:
    """A real child process holding a lease until closed or killed."""

    def __init__(self, lock_dir, run_id, gpus, count=2, start_at=None, share=False):
        args = [sys.executable, str(CHILD), str(lock_dir), str(count), run_id, str(gpus)]
        args += [str(start_at) if start_at else "-"] + (["share"] if share else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"child exited with {self.proc.wait()}"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def children():
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
        child.proc.stdout.close()
        child.proc.stdin.close()


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(0, (0, 0)), (0.25, (0, 1)), (0.5, (0, 2)), (0.75, (0, 3)), (1, (1, 0)), (3.0, (3, 0))],
)
def test_slots_for_valid_requests(gpus, expected):
    assert slots_for(gpus) == expected


@pytest.mark.parametrize("gpus", [0.3, 1.5, -1, float("nan"), float("inf"), "1", True])
def test_slots_for_rejects_malformed_requests(gpus):
    with pytest.raises(ConfigError) as caught:
        slots_for(gpus)
    assert isinstance(caught.value, ValueError)


def test_default_lock_dir_is_in_the_temp_dir():
    assert default_lock_dir().name == "notebook_exp-locks"


def test_two_managers_in_one_process_never_share_a_gpu(lock_dir):
    first, second = manager(lock_dir), manager(lock_dir)
    a = first.try_acquire("a", 1)
    b = second.try_acquire("b", 1)
    assert (a.gpus, b.gpus) == ((0,), (1,))
    assert first.try_acquire("c", 1) is None and second.try_acquire("c", 0.25) is None
    b.release()
    c = first.try_acquire("c", 1)
    assert c.gpus == (1,)
    assert sorted(lease.run_id for lease in first.leases()) == ["a", "c"]
    first.release_all()
    assert first.leases() == [] and second.try_acquire("d", 2).gpus == (0, 1)


def test_fractions_pack_best_fit_and_whole_gpus_stay_whole(lock_dir):
    leases = manager(lock_dir)
    a, b = leases.try_acquire("a", 0.5), leases.try_acquire("b", 0.5)
    assert a.gpus == b.gpus == (0,) and a.fraction == 0.5
    c = leases.try_acquire("c", 0.5)
    assert c.gpus == (1,)  # GPU 0 is full
    assert leases.try_acquire("whole", 1) is None  # GPU 1 is half used: not taken whole
    d = leases.try_acquire("d", 0.25)
    assert d.gpus == (1,)
    b.release()
    # GPU 0 has 2 free slots, GPU 1 has 1: best fit puts a quarter on GPU 1
    assert leases.try_acquire("e", 0.25).gpus == (1,)
    assert leases.try_acquire("f", 0.75) is None
    assert leases.try_acquire("g", 0.5).gpus == (0,)


def test_a_fraction_goes_to_the_shared_gpu_not_a_free_one(lock_dir):
    leases = manager(lock_dir)
    assert leases.try_acquire("half", 0.5).gpus == (0,)
    assert leases.try_acquire("whole", 1).gpus == (1,)  # does not take the half-used GPU 0
    leases.release_all()
    assert leases.try_acquire("whole", 1).gpus == (0,)  # lowest free id first
    assert leases.try_acquire("quarter", 0.25).gpus == (1,)
    assert leases.try_acquire("quarter2", 0.25).gpus == (1,)


def test_more_gpus_than_exist_can_never_be_met(lock_dir):
    leases = manager(lock_dir)
    with pytest.raises(GpuUnavailable, match="has 2 leasable GPU"):
        leases.try_acquire("big", 3)
    with pytest.raises(ConfigError):
        leases.try_acquire("odd", 1.5)


def test_no_gpu_machine_explains_why(lock_dir):
    inventory = GpuInventory(
        FakeGpuBackend(0), unavailable_reason="NVML is not available (no NVIDIA driver?)"
    )
    leases = LeaseManager(inventory, lock_dir)
    with pytest.raises(GpuUnavailable, match="no GPU to lease: NVML is not available"):
        leases.try_acquire("r", 0.5)
    assert leases.try_acquire("cpu", 0).gpus == ()  # a CPU run needs no lock


def test_reserved_gpus_are_never_leased(lock_dir):
    leases = manager(lock_dir, 3, reserved=[0])
    assert leases.try_acquire("a", 1).gpus == (1,)
    assert leases.try_acquire("b", 0.5).gpus == (2,)
    assert leases.try_acquire("c", 1) is None
    with pytest.raises(GpuUnavailable, match=r"GPUs \[0\] are reserved"):
        leases.try_acquire("d", 3)


def test_gpu_memory_admits_only_gpus_with_that_much_free(lock_dir):
    gpus = FakeGpus(2)
    leases = LeaseManager(gpus.inventory, lock_dir)
    gpus.backend.set(0, memory_used=14 * GiB)
    assert leases.try_acquire("a", 0.5, gpu_memory=4 * GiB).gpus == (1,)
    assert leases.try_acquire("b", 0.5, gpu_memory=4 * GiB).gpus == (1,)
    assert leases.try_acquire("c", 0.25, gpu_memory=4 * GiB) is None  # GPU 0 lacks memory
    assert leases.try_acquire("d", 0.25, gpu_memory=2 * GiB).gpus == (0,)
    gpus.backend.set(0, memory_used=15 * GiB)
    assert leases.try_acquire("e", 0.25, gpu_memory=2 * GiB) is None
    with pytest.raises(GpuUnavailable, match="have that much memory"):
        leases.try_acquire("e", 1, gpu_memory=32 * GiB)


def test_release_is_idempotent_and_a_context_manager(lock_dir):
    leases = manager(lock_dir, 1)
    with leases.try_acquire("a", 1) as lease:
        assert not lease.released and leases.try_acquire("b", 0.25) is None
    assert lease.released
    lease.release()
    lease.release()
    assert leases.try_acquire("b", 1).gpus == (0,)
    assert not list(lock_dir.glob("*.holder.*.tmp"))


def test_release_from_another_thread(lock_dir):
    leases, other = manager(lock_dir, 1), manager(lock_dir, 1)
    lease = leases.try_acquire("a", 1)
    worker = threading.Thread(target=lease.release)
    worker.start()
    worker.join()
    assert lease.released
    assert other.try_acquire("b", 1).gpus == (0,)  # really free, not only marked so
    other.release_all()

    # acquired in a (scheduler) thread that then ends, released in this one
    got = []
    thread = threading.Thread(target=lambda: got.append(leases.try_acquire("c", 0.5)))
    thread.start()
    thread.join()
    assert other.try_acquire("d", 1) is None
    got[0].release()
    assert other.try_acquire("d", 1).gpus == (0,)


def test_holders_across_managers(lock_dir):
    first, second = manager(lock_dir), manager(lock_dir)
    first.try_acquire("a", 0.5)
    second.try_acquire("b", 0.25)
    second.try_acquire("c", 1)
    pid = os.getpid()
    holders = first.holders()
    assert sorted(holders[0], key=lambda h: h.run_id) == [
        LeaseHolder("a", pid, 2),
        LeaseHolder("b", pid, 1),
    ]
    assert holders[1] == [LeaseHolder("c", pid, SLOTS_PER_GPU)]
    assert holders[1][0].fraction == 1.0
    assert [g.holders for g in second.snapshot()] == [("a", "b"), ("c",)]


def write_sidecar(lock_dir: Path, gpu: int, slot: int, run_id: str, pid: int) -> Path:
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"gpu{gpu}.slot{slot}.lock.holder"
    path.write_text(json.dumps({"run_id": run_id, "pid": pid, "gpus": 1, "since": 0}))
    return path


def test_holders_ignore_stale_sidecars(lock_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leases = manager(lock_dir)
    stale = [
        write_sidecar(lock_dir, 0, 0, "ghost", dead.pid),  # dead pid, lock free
        write_sidecar(lock_dir, 0, 1, "ghost2", os.getpid()),  # live pid, but lock free
    ]
    assert leases.holders() == {}
    assert not any(path.exists() for path in stale)  # cleaned up under the lock
    # stale sidecars do not make a GPU look busy either
    write_sidecar(lock_dir, 0, 2, "ghost3", dead.pid)
    assert leases.try_acquire("a", 1).gpus == (0,)
    assert leases.holders() == {0: [LeaseHolder("a", os.getpid(), SLOTS_PER_GPU)]}


def test_a_held_lock_with_a_stale_sidecar_has_an_unknown_holder(lock_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leases = manager(lock_dir)
    write_sidecar(lock_dir, 1, 3, "ghost", dead.pid)
    raw = FileLock(lock_dir / "gpu1.slot3.lock", timeout=0)
    with raw:  # a holder that has not written its sidecar yet
        assert leases.holders() == {1: [LeaseHolder(None, None, 1)]}
        assert leases.try_acquire("a", 1).gpus == (0,)
        assert leases.try_acquire("b", 1) is None
        assert leases.try_acquire("c", 0.75).gpus == (1,)


def test_a_child_process_and_this_one_never_share_a_gpu(lock_dir, children):
    children.append(child := Child(lock_dir, "child", 1))
    result = child.result()
    assert result["gpus"] == [0]
    leases = manager(lock_dir)
    assert leases.try_acquire("parent", 1).gpus == (1,)
    assert leases.try_acquire("parent2", 0.25) is None
    assert leases.holders()[0] == [LeaseHolder("child", result["pid"], SLOTS_PER_GPU)]
    child.close()  # the child releases on a clean exit
    assert leases.try_acquire("parent2", 1).gpus == (0,)
    assert leases.holders()[0] == [LeaseHolder("parent2", os.getpid(), SLOTS_PER_GPU)]


def test_racing_children_get_distinct_gpus(lock_dir, children):
    start_at = time.time() + 1.0
    for k in range(6):
        children.append(Child(lock_dir, f"r{k}", 1, count=3, start_at=start_at))
    got = [child.result()["gpus"] for child in children]
    winners = [g[0] for g in got if g is not None]
    assert len(winners) == len(set(winners)) <= 3
    leases = manager(lock_dir, 3)
    free = leases.try_acquire("parent", 1)
    assert (free is None) == (len(winners) == 3)


def test_killing_the_holder_frees_its_gpu_at_once(lock_dir, children):
    children.append(child := Child(lock_dir, "victim", 0.5, count=1))
    assert child.result()["gpus"] == [0]
    leases = manager(lock_dir, 1)
    assert leases.try_acquire("waiting", 1) is None
    assert leases.try_acquire("neighbour", 0.5).gpus == (0,)  # the other half is free
    killed_at = time.perf_counter()
    os.kill(child.proc.pid, signal.SIGKILL)
    lease = None
    while lease is None and time.perf_counter() - killed_at < 5:
        time.sleep(0.002)  # poll like a scheduler; spinning would starve the dying child
        lease = leases.try_acquire("after", 0.5)
    waited = time.perf_counter() - killed_at
    assert lease is not None and lease.gpus == (0,)
    # typically 3-10 ms; the bound leaves room for a loaded CI machine
    assert waited < 0.25, f"the lease came back {waited * 1000:.0f} ms after SIGKILL"
    child.proc.wait()
    assert {h.run_id for h in leases.holders()[0]} == {"neighbour", "after"}


def test_a_process_sharing_the_lock_fds_keeps_the_lease_after_the_holder_dies(lock_dir, children):
    children.append(child := Child(lock_dir, "parent-run", 1, count=1, share=True))
    result = child.result()
    assert result["gpus"] == [0]
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait()
    leases = manager(lock_dir, 1)
    try:
        assert leases.try_acquire("x", 0.25) is None  # the sharer still holds every slot
        assert leases.holders() == {0: [LeaseHolder(None, None, SLOTS_PER_GPU)]}  # run died
    finally:
        os.kill(result["sharer"], signal.SIGKILL)
    deadline = time.perf_counter() + 5
    while (lease := leases.try_acquire("x", 1)) is None and time.perf_counter() < deadline:
        time.sleep(0.002)
    assert lease is not None and lease.gpus == (0,)


def test_lock_fds_are_the_held_files_and_release_frees_them_for_every_sharer(lock_dir):
    leases, other = manager(lock_dir, 1), manager(lock_dir, 1)
    lease = leases.try_acquire("a", 0.5)
    fds = lease.lock_fds()
    assert len(fds) == 2
    sharer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=fds)
    try:
        assert other.try_acquire("b", 1) is None
        lease.release()  # unlocks the shared open files, for the sharer too
        assert lease.lock_fds() == []
        assert other.try_acquire("b", 1).gpus == (0,)
    finally:
        sharer.kill()
        sharer.wait()
