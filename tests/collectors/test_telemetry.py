import statistics
import subprocess
import sys
import threading
import time

import pytest

import notebook_exp as nx
from notebook_exp.collectors import telemetry
from notebook_exp.config import reset_settings
from notebook_exp.scheduler.core import get_scheduler

INTERVAL = 0.2


@pytest.fixture
def fast_telemetry(monkeypatch):
    monkeypatch.setenv("NOTEBOOK_EXP_TELEMETRY_INTERVAL", str(INTERVAL))
    reset_settings()


def _series(store_path, read_only, run_id, key):
    rows = read_only(store_path, "SELECT value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step",
                     [run_id, key])
    return [v for (v,) in rows]


def _keys(store_path, read_only, run_id):
    rows = read_only(store_path, "SELECT DISTINCT key FROM metrics WHERE run_id = ? ORDER BY key", [run_id])
    return [k for (k,) in rows]


def test_a_run_gets_system_readings_while_it_runs(fast_telemetry, store_path, read_only):
    with nx.start_run("watched") as run:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            run.log(loss=1.0)
            time.sleep(0.01)
    keys = _keys(store_path, read_only, run.run_id)
    assert {"sys/cpu_percent", "sys/memory_rss_mb", "sys/system_cpu_percent",
            "sys/system_memory_percent"} <= set(keys)
    rss = _series(store_path, read_only, run.run_id, "sys/memory_rss_mb")
    assert len(rss) >= 4 and all(20 < mb < 20_000 for mb in rss)
    assert all(0 <= p <= 100 for p in _series(store_path, read_only, run.run_id, "sys/system_memory_percent"))


def test_cpu_of_child_processes_and_memory_growth_are_seen(fast_telemetry, store_path, read_only):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.2: pass\n"
    with nx.start_run("busy-child") as run:
        time.sleep(telemetry.FIRST_SAMPLE + 2 * INTERVAL)  # a few samples before
        child = subprocess.Popen([sys.executable, "-c", burn])
        ballast = b"\x01" * (300 * 2**20)  # written: resident
        child.wait(timeout=60)
        time.sleep(3 * INTERVAL)
        del ballast
    cpu = _series(store_path, read_only, run.run_id, "sys/cpu_percent")
    rss = _series(store_path, read_only, run.run_id, "sys/memory_rss_mb")
    assert max(cpu) > 50, cpu  # the child's busy second counts for the run's process
    assert max(rss) - rss[0] > 250, rss


def test_nothing_is_added_after_the_run_ends(fast_telemetry, store_path, read_only):
    with nx.start_run("short") as run:
        time.sleep(3 * INTERVAL)
    before = _series(store_path, read_only, run.run_id, "sys/memory_rss_mb")
    time.sleep(4 * INTERVAL)
    assert before and _series(store_path, read_only, run.run_id, "sys/memory_rss_mb") == before
    assert run.run_id not in telemetry.sampler.watching()


def test_a_run_the_sampler_never_got_to_is_sampled_at_its_end_if_it_lasted(fast_telemetry, store_path, read_only,
                                                                           monkeypatch):
    monkeypatch.setattr(telemetry.sampler, "step", lambda: None)  # a sampler thread that never gets to it
    with nx.start_run("long enough") as long_run:
        time.sleep(telemetry.FIRST_SAMPLE + 0.1)
    with nx.start_run("trivial") as trivial:
        pass
    assert len(_series(store_path, read_only, long_run.run_id, "sys/memory_rss_mb")) == 1
    assert _keys(store_path, read_only, trivial.run_id) == []


def test_telemetry_names_are_exact_and_reserved_while_telemetry_is_on(fast_telemetry, store_path, monkeypatch):
    from notebook_exp.collectors import GPU_READINGS, SYSTEM_KEYS, is_telemetry
    from notebook_exp.collectors.system import SystemCollector

    collector = SystemCollector()
    collector.sample()
    time.sleep(0.05)
    assert set(collector.sample()) == set(SYSTEM_KEYS)
    assert all(is_telemetry(f"gpu/3/{reading}") for reading in GPU_READINGS)
    with nx.start_run("mine") as run:
        with pytest.raises(nx.InvalidMetric, match="telemetry key"):
            run.log(**{"sys/cpu_percent": 5.0, "loss": 1.0})
        run.log(**{"gpu/mem_allocated": 2.0, "sys/epoch_seconds": 3.0})  # the run's own, not telemetry
    assert "loss" not in nx.metrics(run.run_id)["key"].tolist()  # nothing of the rejected call
    assert {"metrics.gpu/mem_allocated", "metrics.sys/epoch_seconds"} <= set(nx.runs().columns)
    monkeypatch.setenv("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0")
    reset_settings()
    with nx.start_run("own-telemetry") as run:
        run.log(**{"sys/cpu_percent": 5.0})  # telemetry off: the name is free
    with pytest.raises(ValueError, match="telemetry_interval"):
        monkeypatch.setenv("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0.01")
        reset_settings()
        nx.get_settings()


def test_interval_zero_turns_telemetry_off(monkeypatch, store_path, read_only):
    monkeypatch.setenv("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0")
    reset_settings()
    with nx.start_run("quiet") as run:
        run.log(loss=1.0)
        time.sleep(0.3)
    assert _keys(store_path, read_only, run.run_id) == ["loss"]
    assert run.run_id not in telemetry.sampler.watching()


def test_telemetry_stays_out_of_the_runs_table_and_the_run_card(fast_telemetry, store_path):
    from notebook_exp.widgets import RunCard

    sampled = threading.Event()

    def train(run):
        run.log(loss=0.5)
        while not any(k.startswith("sys/") for k in run.last_values()):
            time.sleep(0.01)
        sampled.set()
        time.sleep(2 * INTERVAL)

    job = nx.submit(train)
    card = RunCard(job)
    assert sampled.wait(30)
    card.tick()
    assert "loss" in card.metrics.value and "sys/" not in card.metrics.value
    job.wait(timeout=60)
    card.tick()  # from the store's summary now
    table = nx.runs()
    assert "metrics.loss" in table.columns
    assert not [c for c in table.columns if c.startswith(("metrics.sys/", "metrics.gpu/"))]
    assert set(nx.metrics(job.run_id)["key"]) > {"loss"}
    assert "loss" in card.metrics.value and "sys/" not in card.metrics.value


def test_a_thread_run_gets_readings_of_its_own_gpu(fast_telemetry, settings_env, store_path, read_only):
    settings_env(FAKE_GPUS="2")
    backend = get_scheduler().inventory.backend
    started = threading.Event()

    def train(run):
        backend.set(run.gpus[0], utilization=87.0, memory_used=3 * 2**30, temperature=71.0, power=250.0)
        started.set()
        time.sleep(4 * INTERVAL)
        run.log(loss=0.1)

    job = nx.submit(train, gpus=1)
    job.wait(timeout=60)
    assert job.status == "completed"
    (gpu,) = job.gpus
    keys = [k for k in _keys(store_path, read_only, job.run_id) if k.startswith("gpu/")]
    assert keys == [f"gpu/{gpu}/{name}" for name in
                    ("memory_used_mb", "power_w", "temperature_c", "utilization_percent")]
    assert _series(store_path, read_only, job.run_id, f"gpu/{gpu}/utilization_percent")[-1] == 87.0
    assert _series(store_path, read_only, job.run_id, f"gpu/{gpu}/memory_used_mb")[-1] == 3072.0


def test_a_process_run_reads_the_gpu_of_its_lease(fast_telemetry, settings_env, store_path, read_only):
    settings_env(FAKE_GPUS="2")
    job = nx.submit(lambda run: time.sleep(1.0), gpus=1, executor="process")
    job.wait(timeout=60)
    assert job.status == "completed"
    (gpu,) = job.gpus
    keys = _keys(store_path, read_only, job.run_id)
    assert f"gpu/{gpu}/temperature_c" in keys and not [k for k in keys if k.startswith(f"gpu/{1 - gpu}/")]
    assert _series(store_path, read_only, job.run_id, f"gpu/{gpu}/temperature_c")[-1] == 35.0  # an idle fake
    assert "sys/memory_rss_mb" in keys  # sampled in the child


def test_shutdown_stops_the_sampler_thread(fast_telemetry):
    with nx.start_run("x"):
        time.sleep(INTERVAL)
    assert any(t.name == "notebook_exp-telemetry" for t in threading.enumerate())
    nx.testing.shutdown()
    assert not any(t.name == "notebook_exp-telemetry" for t in threading.enumerate())


def test_a_process_run_counts_in_its_own_telemetry_not_in_the_kernels(fast_telemetry, store_path, read_only):
    def burn(run):
        import time as t

        start = t.process_time()
        while t.process_time() - start < 2.0:
            pass

    busy = nx.submit(burn, executor="process")
    idle = nx.submit(lambda run: time.sleep(2.5))
    busy.wait(timeout=60)
    idle.wait(timeout=60)
    assert busy.status == idle.status == "completed"
    nx.testing.shutdown()  # this process's writer lets go of the file before plain duckdb opens it
    assert max(_series(store_path, read_only, busy.run_id, "sys/cpu_percent")) > 60
    # the kernel itself idled, once it had started the child (the first reading covers that)
    assert statistics.median(_series(store_path, read_only, idle.run_id, "sys/cpu_percent")) < 40
