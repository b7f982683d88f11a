"""The ray executor against a real local Ray (one per session, see conftest.py):
placement and GPU limits, every record reaching DuckDB, cancel, timeout, retry,
and a killed worker. Run functions are nested so cloudpickle ships them by value."""

from __future__ import annotations

import json
import os
import signal

import pytest
from _ray_waits import wait_for, wait_output, wait_running

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError, GpuUnavailable
from notebook_exp.models import RunStatus


def test_a_local_ray_was_started_and_said_so(ray_cluster):
    import ray

    assert ray_cluster.started_here and not ray_cluster.client and ray_cluster.node_id
    assert "notebook_exp started a local Ray" in ray_cluster.message
    assert "4 CPUs, 2 GPUs (the fake_gpus setting)" in ray_cluster.message
    assert ray.cluster_resources()["GPU"] == 2


def test_a_run_records_everything_through_the_driver(ray_scheduler, read_only, store_path, tmp_path):
    ray_scheduler(telemetry_interval=0.2)
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(os.urandom(5 * 2**20 + 7))  # more than one chunk

    def train(run, lr, n):
        import os
        import sys
        import time

        import numpy as np

        print("hello from", os.getpid(), run.device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        print("to stderr", file=sys.stderr)
        for i in range(n):
            run.log(loss=lr / (i + 1), acc=i / n)
        run.log_text("note", "a note")
        run.log_histogram("w", np.arange(100.0), bins=10)
        run.log_image("img", np.zeros((4, 6)))
        run.log_params(extra=7)
        run.set_tags(["ray", "worker"])
        stored_at = run.log_artifact(artifact, "ckpt/weights.bin")
        artifact.write_bytes(b"changed after logging")  # the copy was taken at the call
        deadline = time.monotonic() + 30  # until this node's GPU telemetry was sampled once
        while not any(key.startswith("gpu/") for key in run.last_values()) and time.monotonic() < deadline:
            run.log(waiting=1.0)
            time.sleep(0.02)
        return {"gpus": run.gpus, "stored_at": str(stored_at), "duckdb": "duckdb" in sys.modules}

    n = 20_000
    job = nx.submit(train, {"lr": 0.5, "n": n}, gpus=1, executor="ray")
    result = job.result(timeout=120)
    placement = job.placement
    assert placement.pid != os.getpid() and list(placement.gpus) == result["gpus"] and len(result["gpus"]) == 1
    assert job.gpus == result["gpus"] and job.node == placement.label
    assert result["duckdb"] is False  # the worker never opens the store
    dest = store_path.parent / "artifacts" / job.run_id / "ckpt" / "weights.bin"
    assert result["stored_at"] == str(dest)
    _hello, pid, device, visible = job.output.splitlines()[0].split(" ", 1)[1].split()
    assert int(pid) == placement.pid and device == "cuda:0" and visible == "0"
    assert "to stderr" in job.output

    def q(sql):
        return read_only(store_path, sql, [job.run_id])

    assert q("SELECT key, count(*), min(step), max(step) FROM metrics WHERE run_id = ? AND key IN ('loss', 'acc') "
             "GROUP BY key ORDER BY key") == [("acc", n, 0, n - 1), ("loss", n, 0, n - 1)]
    assert q("SELECT value FROM metrics WHERE run_id = ? AND key = 'loss' AND step = 9") == [(0.05,)]
    assert q("SELECT text FROM texts WHERE run_id = ?") == [("a note",)]
    assert q("SELECT len(counts) FROM histograms WHERE run_id = ?") == [(10,)]
    assert q("SELECT width, height FROM images WHERE run_id = ?") == [(6, 4)]
    assert dest.read_bytes() != b"changed after logging" and dest.stat().st_size == 5 * 2**20 + 7
    assert q("SELECT name, size FROM artifacts WHERE run_id = ?") == [("ckpt/weights.bin", 5 * 2**20 + 7)]
    status, executor, gpus, params, tags, output = q(
        "SELECT status, executor, gpus, params, tags, output FROM runs WHERE run_id = ?")[0]
    assert (status, executor, gpus) == ("completed", "ray", result["gpus"])
    assert json.loads(params) == {"lr": 0.5, "n": n, "extra": 7} and tags == ["ray", "worker"]
    assert output == job.output
    # telemetry is the worker's: its GPU (gpu/<physical id>/...) and its process (sys/...)
    keys = {key for (key,) in q("SELECT DISTINCT key FROM metrics WHERE run_id = ?")}
    assert f"gpu/{result['gpus'][0]}/utilization_percent" in keys and "sys/memory_rss_mb" in keys
    placed = json.loads(q("SELECT detail FROM events WHERE run_id = ? AND event = 'placed'")[0][0])
    assert placed["pid"] == placement.pid and placed["gpus"] == result["gpus"] and placed["local"] is True
    assert placed["environment"]["python"]


def test_four_one_gpu_runs_never_run_more_than_two_at_once(ray_scheduler, fresh_gate):
    import ray

    ray_scheduler()
    gate = fresh_gate

    def hold(run, i):
        import ray

        met = ray.get(gate.enter.remote(2, 60))  # wait for a partner: two do run at once
        run.log(met=float(met))
        ray.get(gate.leave.remote())
        return run.gpus

    jobs = [nx.submit(hold, {"i": i}, gpus=1, executor="ray") for i in range(4)]
    gpus = [job.result(timeout=180) for job in jobs]
    assert ray.get(gate.peak.remote()) == 2
    assert all(len(g) == 1 and g[0] in (0, 1) for g in gpus)


def test_a_half_gpu_sweep_runs_four_at_once(ray_scheduler, fresh_gate):
    import ray

    ray_scheduler()
    gate = fresh_gate

    def share(run, i):
        import ray

        ray.get(gate.enter.remote(4, 90))
        ray.get(gate.leave.remote())
        return run.gpus

    sweep = nx.sweep(share, {"i": [0, 1, 2, 3]}, gpus=0.5, executor="ray")
    gpus = [job.result(timeout=180) for job in sweep]
    assert ray.get(gate.peak.remote()) == 4
    assert sorted(g[0] for g in gpus) == [0, 0, 1, 1]  # two halves on each GPU


def test_cancel_ends_a_running_run_and_keeps_what_it_logged(ray_scheduler, read_only, store_path):
    ray_scheduler()

    def loop(run):
        import time

        n = 0
        try:
            while True:
                run.log(x=float(n))  # raises RunCancelled once cancelled, as in a thread run
                n += 1
                if n == 100:
                    run.flush()
                    print("flushed", flush=True)
                time.sleep(0.001)
        finally:
            run.log_text("logged", str(n))

    job = nx.submit(loop, executor="ray")
    wait_output(job, "flushed")
    assert job.cancel()
    assert job.wait(60) == RunStatus.CANCELLED
    assert job.error.startswith("cancelled by")
    (logged,), = read_only(store_path, "SELECT text FROM texts WHERE key = 'logged'")
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(int(logged),)]
    assert read_only(store_path, "SELECT status FROM runs") == [("cancelled",)]


def test_cancel_interrupts_code_that_never_logs(ray_scheduler):
    ray_scheduler()

    def sleeper(run):
        import time

        print("sleeping", flush=True)
        try:
            time.sleep(600)
        except BaseException as exc:
            print("woken by", type(exc).__name__, flush=True)
            raise

    job = nx.submit(sleeper, executor="ray")
    wait_output(job, "sleeping")
    assert job.cancel()
    assert job.wait(60) == RunStatus.CANCELLED
    assert "woken by RunCancelled" in job.output


def test_code_that_swallows_the_cancel_is_killed_after_the_grace(ray_scheduler):
    ray_scheduler(cancel_grace=0.5)

    def stubborn(run):
        import time

        print("started", flush=True)
        while True:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: BLE001 - it will not stop
                continue

    job = nx.submit(stubborn, executor="ray")
    wait_output(job, "started")
    pid = job.placement.pid
    assert job.cancel()
    assert job.wait(60) == RunStatus.CANCELLED
    assert not _alive(pid)


def test_a_run_waiting_for_gpus_is_cancelled_before_it_starts(ray_scheduler, fresh_gate):
    import ray

    ray_scheduler()
    gate = fresh_gate

    def both(run):
        import ray

        ray.get(gate.enter.remote(99, 120))  # holds both GPUs until the gate opens
        ray.get(gate.leave.remote())

    first = nx.submit(both, gpus=2, executor="ray")
    wait_running(first)
    second = nx.submit(both, gpus=2, executor="ray")
    assert second.status == RunStatus.QUEUED
    assert second.cancel()
    assert second.wait(60) == RunStatus.CANCELLED and second.started_at is None
    ray.get(gate.open.remote())
    assert first.wait(60) == RunStatus.COMPLETED
    assert nx.sql("SELECT count(*) AS n FROM events WHERE run_id = ? AND event = 'placed'",
                  [second.run_id]).n[0] == 0


def test_a_timeout_counts_from_the_start_and_fails_the_run(ray_scheduler):
    ray_scheduler()

    def forever(run):
        import time

        while True:
            run.log(x=1.0)
            time.sleep(0.01)

    job = nx.submit(forever, executor="ray", timeout=1.0)
    assert job.wait(90) == RunStatus.FAILED
    assert job.error.startswith("timeout") and job.ended_at - job.started_at >= 1.0
    assert nx.runs().status[0] == "failed"


def test_a_failing_attempt_is_retried_and_keeps_only_the_last_attempts_data(ray_scheduler, tmp_path):
    ray_scheduler()
    counter = tmp_path / "attempts"

    def flaky(run, path):
        from pathlib import Path

        p = Path(path)
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        run.log(n=float(n))
        if n < 2:
            raise RuntimeError(f"attempt {n}")
        return n

    job = nx.submit(flaky, {"path": str(counter)}, executor="ray", retries=1, retry_backoff=0.05)
    assert job.result(timeout=120) == 2 and job.attempts == 2
    events = list(nx.sql("SELECT event FROM events WHERE run_id = ? ORDER BY ts", [job.run_id]).event)
    assert events.count("retry") == 1 and events[-1] == "completed"
    assert list(nx.metrics(job.run_id, "n").value) == [2.0]


def test_an_exception_fails_the_run_with_its_traceback(ray_scheduler):
    ray_scheduler()

    def broken(run):
        raise KeyError("missing column")

    job = nx.submit(broken, executor="ray")
    assert job.wait(60) == RunStatus.FAILED
    assert "KeyError: 'missing column'" in job.error and "Traceback" in job.error


def test_killing_the_worker_fails_the_run_as_lost(ray_scheduler, read_only, store_path):
    ray_scheduler()

    def wait_to_be_killed(run):
        import time

        for i in range(50):
            run.log(x=float(i))
        run.flush()
        print("flushed", flush=True)
        while True:
            time.sleep(0.05)

    job = nx.submit(wait_to_be_killed, gpus=1, executor="ray")
    wait_output(job, "flushed")
    pid = job.placement.pid
    os.kill(pid, signal.SIGKILL)
    assert job.wait(60) == RunStatus.FAILED
    assert job.error.startswith("lost: ") and f"pid {pid}" in job.error
    assert read_only(store_path, "SELECT status, error LIKE 'lost: %' FROM runs") == [("failed", True)]
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(50,)]
    again = nx.submit(lambda run: run.gpus, gpus=1, executor="ray")  # its GPU lease went with it
    assert len(again.result(timeout=120)) == 1


def test_gpus_leased_on_the_node_make_the_run_wait(ray_scheduler, store_path, tmp_path):
    from notebook_exp.inventory import GpuInventory
    from notebook_exp.scheduler.leases import LeaseManager

    ray_scheduler()
    other = LeaseManager(GpuInventory.detect(2, None), tmp_path / "locks")  # another notebook here
    held = other.try_acquire("someone-else", 2)
    assert held is not None
    job = nx.submit(lambda run: run.gpus, gpus=1, executor="ray")
    wait_for(job, lambda j: getattr(j, "waiting", None) is not None or j.done)
    assert job.status == RunStatus.QUEUED and "leased on this machine by" in job.waiting
    held.release()
    gpus = job.result(timeout=90)
    assert len(gpus) == 1
    holders = {index: [h.run_id for h in found] for index, found in other.holders().items()}
    assert job.run_id not in [run for runs in holders.values() for run in runs]  # released at its end


def test_a_run_no_node_can_hold_is_refused_unless_it_may_wait(ray_scheduler):
    from notebook_exp.scheduler.spec import validate

    scheduler = ray_scheduler()
    with pytest.raises(GpuUnavailable, match="no node of the Ray cluster can hold this run"):
        nx.submit(lambda run: None, gpus=4, executor="ray")
    with pytest.raises(ConfigError, match="memory"):
        scheduler.submit(validate(fn=lambda run: None, memory="100TB", executor="ray"))
    assert nx.runs().empty
    job = nx.submit(lambda run: None, gpus=4, executor="ray", wait_for_gpus=True)
    assert job.status == RunStatus.QUEUED
    assert job.cancel() and job.wait(60) == RunStatus.CANCELLED


def test_what_cannot_be_shipped_or_placed_is_refused_at_submit(ray_scheduler):
    import threading

    from notebook_exp.scheduler.spec import validate

    scheduler = ray_scheduler()
    lock = threading.Lock()

    def uses_lock(run):
        with lock:
            pass

    with pytest.raises(ConfigError, match="cannot ship"):
        nx.submit(uses_lock, executor="ray")
    with pytest.raises(ConfigError, match="num_gpus"):
        validate(fn=lambda run: None, executor="ray", ray_options={"num_gpus": 1})
    with pytest.raises(ConfigError, match="Ray refuses"):
        scheduler.submit(validate(fn=lambda run: None, executor="ray", ray_options={"no_such_option": 1}))
    assert nx.runs().empty


def test_cpus_memory_and_custom_resources_reach_ray(ray_scheduler):
    from notebook_exp.scheduler.spec import validate

    scheduler = ray_scheduler()

    def resources(run):
        import ray

        return ray.get_runtime_context().get_assigned_resources()

    spec = validate(fn=resources, executor="ray", cpus=0.5, memory="64MB", ray_options={"scheduling_strategy": "SPREAD"})
    assigned = scheduler.submit(spec).result(timeout=120)
    assert assigned["CPU"] == 0.5 and assigned["memory"] == 64_000_000
    assert json.loads(nx.sql("SELECT spec FROM runs").spec[0])["ray_options"] == {"scheduling_strategy": "SPREAD"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
