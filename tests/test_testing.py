"""notebook_exp.testing: each helper, for real (a real store, real schedulers and leases)."""

import os
import threading
import time

import pytest

import notebook_exp as nx
from notebook_exp import testing
from notebook_exp.config import Settings, get_settings
from notebook_exp.exceptions import ConfigError
from notebook_exp.models import RunStatus
from notebook_exp.scheduler.core import Scheduler, get_scheduler
from notebook_exp.scheduler.executors.base import Executor
from notebook_exp.testing import (
    FakeGpus,
    MemorySink,
    inline_scheduler,
    make_settings,
    use_scheduler,
)

GiB = 1024**3


def test_every_public_name_is_documented_with_an_example_or_a_how():
    for name in testing.__all__:
        value = getattr(testing, name)
        if name == "THREAD_PREFIX":
            continue
        assert value.__doc__ and len(value.__doc__.strip()) > 40, f"testing.{name} needs a docstring"
    assert testing.__all__ == sorted(testing.__all__)


def test_memory_sink_records_a_run_in_order():
    sink = MemorySink()
    with nx.start_run("r", params={"lr": 0.1}, sinks=[sink]) as run:
        run.log(loss=0.5, step=1)
    assert sink.methods[0] == "start_run" and sink.methods[-2:] == ["end_run", "close"]
    assert sink.run.run_id == run.run_id and sink.status == RunStatus.COMPLETED and sink.closed
    assert [(key, step, value) for key, step, _ts, value in sink.points if key == "loss"] == [("loss", 1, 0.5)]


def test_temporary_store_points_at_a_fresh_file_and_restores_the_setting(store_path):
    with testing.temporary_store() as path:
        assert get_settings().store_path == path and path != store_path
        nx.start_run("inside").end()
        assert list(nx.runs().name) == ["inside"]
    assert get_settings().store_path == store_path
    assert os.environ["NOTEBOOK_EXP_STORE"] == str(store_path)
    assert nx.runs().empty


def test_the_module_docstring_example_runs():
    def train(run, lr):
        for step in range(3):
            run.log(loss=lr / (step + 1), step=step)

    with testing.temporary_store(), testing.FakeGpus(2) as gpus:
        with testing.inline_scheduler(inventory=gpus.inventory):
            job = nx.submit(train, {"lr": 0.1}, gpus=1)  # returns once the run ended
        assert job.status == nx.RunStatus.COMPLETED
        assert not nx.metrics(job.run_id, "loss").empty


# -- FakeGpus ----------------------------------------------------------------


def test_fake_gpus_are_listed_and_leased_in_the_block(store_path):
    with FakeGpus(2) as gpus:
        infos = nx.gpus()
        assert [g.index for g in infos] == [0, 1] and [g.name for g in infos] == ["Virtual GPU 0", "Virtual GPU 1"]
        assert get_settings().fake_gpus == 2  # child processes declare the same GPUs
        gate = threading.Event()
        job = nx.submit(lambda run: gate.wait(30), gpus=1)
        deadline = time.monotonic() + 10
        while job.status != RunStatus.RUNNING:
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.005)
        held = nx.gpus()
        gate.set()
        assert job.wait(30) == RunStatus.COMPLETED
        assert [g.holder for g in held].count(job.run_id) == 1 and len(job.gpus) == 1
        assert get_scheduler().inventory is gpus.inventory
    assert get_settings().fake_gpus is None and "NOTEBOOK_EXP_FAKE_GPUS" not in os.environ
    assert get_scheduler().inventory is not gpus.inventory


def test_fake_gpu_readings_set_by_the_test_are_what_nx_gpus_shows(store_path):
    with FakeGpus(2, memory=8 * GiB, name="Test GPU", reserved=[0]) as gpus:
        gpus.backend.set(1, memory_used=6 * GiB, utilization=97.5, temperature=81.0)
        zero, one = nx.gpus()
        assert zero.reserved and not one.reserved and one.name == "Test GPU 1"
        assert (one.memory_total, one.memory_free, one.utilization, one.temperature) == (8 * GiB, 2 * GiB, 97.5, 81.0)
        job = nx.submit(lambda run: run.gpus, gpus=1)
        assert job.result(timeout=30) == [1]  # GPU 0 is reserved
        with pytest.raises(nx.GpuUnavailable):
            nx.submit(lambda run: None, gpus=2)


def test_fake_gpus_without_entering_is_an_inventory_for_schedulers(store_path, tmp_path):
    gpus = FakeGpus(3)
    assert gpus.inventory.devices() == [0, 1, 2] and gpus.inventory.is_fake
    gpus.backend.set(2, utilization=50.0)
    assert gpus.inventory.info(2).utilization == 50.0
    settings = make_settings(store=store_path, lock_dir=tmp_path / "locks", telemetry_interval=0.1)
    with FakeGpus(1) as one, use_scheduler(Scheduler(settings, inventory=one.inventory)):
        one.backend.set(0, utilization=90.0, power=123.0)
        job = nx.submit(lambda run: time.sleep(0.6), gpus=1)
        assert job.wait(30) == RunStatus.COMPLETED
    points = nx.metrics(job.run_id)
    assert set(points[points.key == "gpu/0/utilization_percent"].value) == {90.0}  # telemetry read the fake
    assert set(points[points.key == "gpu/0/power_w"].value) == {123.0}


def test_fake_gpus_reach_a_process_run(store_path):
    with FakeGpus(2):
        job = nx.submit(lambda run: (os.environ["CUDA_VISIBLE_DEVICES"], run.gpus, run.device),
                        gpus=1, executor="process")
        visible, gpus, device = job.result(timeout=60)
    assert visible == str(gpus[0]) and device == "cuda:0"


def test_fake_gpus_reject_a_negative_count():
    with pytest.raises(ConfigError, match=">= 0"):
        FakeGpus(-1)


# -- make_settings -------------------------------------------------------------


def test_make_settings_takes_the_given_fields_and_nothing_from_the_environment(monkeypatch, tmp_path):
    config = tmp_path / "nx.toml"
    config.write_text("max_concurrent = 7\n")
    monkeypatch.setenv("NOTEBOOK_EXP_CONFIG", str(config))
    monkeypatch.setenv("NOTEBOOK_EXP_FLUSH_INTERVAL", "3")
    before = dict(os.environ)
    settings = make_settings(store=tmp_path / "s.duckdb", sinks="duckdb, jsonl", reserved_gpus="0,1", cancel_grace=1)
    assert type(settings) is Settings
    assert settings.store_path == tmp_path / "s.duckdb"
    assert settings.sinks == ["duckdb", "jsonl"] and settings.reserved_gpus == [0, 1] and settings.cancel_grace == 1.0
    assert settings.flush_interval == 0.5 and settings.max_concurrent is None  # defaults, not the env or file
    assert settings.model_fields_set == {"store", "sinks", "reserved_gpus", "cancel_grace"}
    assert dict(os.environ) == before
    assert make_settings() == make_settings()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"flush_interval": -1}, "flush_interval: Input should be greater than 0"),
        ({"telemetry_interval": 0.01}, "telemetry_interval: must be 0 .off. or at least 0.1"),
        ({"max_concurrent": "many"}, "max_concurrent"),
        ({"flush_intervall": 1}, r"unknown settings \['flush_intervall'\]"),
    ],
)
def test_make_settings_rejects_bad_values_and_unknown_fields(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_settings(**overrides)
    assert isinstance(caught.value, ValueError)


# -- the inline executor ---------------------------------------------------------


def test_inline_submit_returns_once_the_run_ended_in_the_dispatcher_thread(store_path):
    seen = []
    with inline_scheduler() as scheduler:
        job = nx.submit(lambda run, x: seen.append(threading.current_thread().name) or x * 2, {"x": 21})
        assert job.done and job.status == RunStatus.COMPLETED and job.result(timeout=0) == 42
        assert seen == ["notebook_exp-scheduler"]
        assert isinstance(scheduler.executor("thread"), Executor) and scheduler.executor("thread").name == "inline"
        assert nx.runs().status.tolist() == ["completed"]


def test_inline_runs_one_at_a_time_in_queue_order(store_path):
    order, active, overlaps = [], [], []
    gate = threading.Event()

    def record(run, label):
        active.append(label)
        overlaps.append(len(active))
        if label == "first":
            gate.wait(30)
        order.append(label)
        active.remove(label)

    with inline_scheduler(wait=False):
        first = nx.submit(record, {"label": "first"})
        deadline = time.monotonic() + 10
        while first.status != RunStatus.RUNNING:
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.005)
        jobs = [nx.submit(record, {"label": f"p{p}-{i}"}, priority=p) for i, p in enumerate([1, 9, 5, 9])]
        gate.set()
        assert nx.wait([first, *jobs], timeout=30) == [RunStatus.COMPLETED] * 5
    assert order == ["first", "p9-1", "p9-3", "p5-2", "p1-0"]
    assert overlaps == [1] * 5


def test_inline_retries_timeouts_and_nested_submits(store_path):
    calls = []

    def flaky(run):
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("once")
        return "ok"

    def slow(run):
        while True:
            run.log(x=1.0)
            time.sleep(0.01)

    def parent(run):
        return nx.submit(lambda run: "child")  # from inside a run: only queued

    with inline_scheduler():
        retried = nx.submit(flaky, retries=1, retry_backoff=0.01)
        assert retried.status == RunStatus.COMPLETED and retried.attempts == 2
        timed = nx.submit(slow, timeout=0.2)
        assert timed.status == RunStatus.FAILED and timed.error.startswith("timeout")
        child = nx.submit(parent).result(timeout=0)
        assert child.result(timeout=30) == "child"


def test_use_scheduler_installs_and_stops_a_scheduler(store_path, tmp_path):
    ours = Scheduler(make_settings(store=store_path, lock_dir=tmp_path / "locks", max_concurrent=1))
    with use_scheduler(ours) as installed:
        assert installed is ours and get_scheduler() is ours
        assert nx.submit(lambda run: 1).result(timeout=30) == 1
    assert ours._stopping and get_scheduler() is not ours
