"""start_run(run_id=..., resume=True): a stored run continues where it stopped."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError

DUPLICATES = "SELECT key, step, count(*) FROM metrics WHERE run_id = ? GROUP BY key, step HAVING count(*) > 1"


def test_a_resumed_run_goes_on_after_its_last_steps(store_path, read_only):
    with nx.start_run("train", experiment="e", params={"lr": 0.1, "bs": 32}, tags=["a"]) as first:
        for i in range(100):
            first.log(loss=1 / (i + 1))  # auto steps 0-99
            first.log(acc=i / 100, step=2 * i)  # explicit steps 0-198
        first.log_text("note", "epoch 1")
    run_id = first.run_id
    (started, ended), = read_only(store_path, "SELECT started_at, ended_at FROM runs WHERE run_id = ?", [run_id])

    run = nx.start_run(run_id=run_id, resume=True, params={"lr": 0.01, "epochs": 2}, tags=["b", "a"])
    with run:
        run.flush()
        assert nx.sql("SELECT status FROM runs WHERE run_id = ?", [run_id]).status.tolist() == ["running"]
        assert (run.name, run.experiment, run.params) == ("train", "e", {"lr": 0.01, "bs": 32, "epochs": 2})
        for _ in range(50):
            run.log(loss=0.5, acc=0.9)
        run.log_text("note", "epoch 2")

    assert read_only(store_path, DUPLICATES, [run_id]) == []
    steps = dict(read_only(store_path, "SELECT key, list(step ORDER BY step) FROM metrics WHERE run_id = ? "
                                       "GROUP BY key", [run_id]))
    assert steps["loss"] == list(range(150))
    assert steps["acc"] == [2 * i for i in range(100)] + list(range(199, 249))
    assert read_only(store_path, "SELECT step, text FROM texts ORDER BY step") == [(0, "epoch 1"), (1, "epoch 2")]
    (status, params, tags, started_again, ended_again), = read_only(
        store_path, "SELECT status, params, tags, started_at, ended_at FROM runs WHERE run_id = ?", [run_id])
    assert (status, json.loads(params), tags) == ("completed", {"lr": 0.01, "bs": 32, "epochs": 2}, ["a", "b"])
    assert started_again == started and ended_again > ended  # one run: its first start, its last end
    events = [e for (e,) in read_only(store_path, "SELECT event FROM events WHERE run_id = ? ORDER BY ts", [run_id])]
    assert events == ["running", "completed", "resumed", "completed"]


def test_a_failed_run_can_be_resumed(store_path, read_only):
    with pytest.raises(RuntimeError), nx.start_run() as first:
        first.log(loss=1.0)
        raise RuntimeError("out of memory")
    with nx.start_run(run_id=first.run_id, resume=True) as run:
        run.log(loss=2.0)
    assert read_only(store_path, "SELECT status, error FROM runs") == [("completed", None)]
    assert read_only(store_path, "SELECT step, value FROM metrics ORDER BY step") == [(0, 1.0), (1, 2.0)]


def test_without_resume_a_known_run_id_starts_its_steps_again(store_path, read_only):
    """Today's behaviour, which the scheduler's queued runs and retries rely on."""
    with nx.start_run() as first:
        first.log(loss=1.0)
    with nx.start_run(run_id=first.run_id) as again:
        again.log(loss=2.0)
    assert read_only(store_path, "SELECT step, value FROM metrics ORDER BY value") == [(0, 1.0), (0, 2.0)]
    assert ("resumed",) not in read_only(store_path, "SELECT event FROM events")


def test_resuming_needs_a_stored_run(store_path):
    with pytest.raises(ConfigError, match="pass its run_id"):
        nx.start_run(resume=True)
    with pytest.raises(ConfigError, match="'nosuchrun'.*holds no such run"):
        nx.start_run(run_id="nosuchrun", resume=True)
    with nx.start_run(experiment="e") as run:
        pass
    with pytest.raises(ConfigError, match="experiment 'other'.*it is 'e'"):
        nx.start_run(run_id=run.run_id, resume=True, experiment="other")


def test_resume_allow_continues_a_stored_run_and_starts_an_unknown_id(store_path, read_only):
    with nx.start_run(run_id="fresh-id", resume="allow", experiment="e") as run:
        run.log(loss=1.0)
    assert not run.info.resumed
    with nx.start_run(run_id="fresh-id", resume="allow") as again:
        again.log(loss=2.0)
    assert again.info.resumed and again.experiment == "e"
    assert read_only(store_path, "SELECT step, value FROM metrics ORDER BY step") == [(0, 1.0), (1, 2.0)]
    assert read_only(store_path, "SELECT count(*) FROM events WHERE event = 'resumed'") == [(1,)]
    with pytest.raises(ConfigError, match="resume='yes'"):
        nx.start_run(run_id="fresh-id", resume="yes")


def test_a_run_live_in_this_process_is_not_resumed(store_path):
    with nx.start_run() as run:
        with pytest.raises(ConfigError, match=f"this process \\({os.getpid()}\\)"):
            nx.start_run(run_id=run.run_id, resume=True)


HOLDER = """
import sys
import notebook_exp as nx
run = nx.start_run("held")
run.log(loss=1.0)
run.flush()
print(run.run_id, flush=True)
sys.stdin.readline()  # hold the run open until the test says
run.end()
"""


def test_a_run_another_live_process_owns_is_refused_with_its_pid(store_path, read_only):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"})
    try:
        run_id = child.stdout.readline().strip()
        assert run_id, "the child did not start its run"
        with pytest.raises(ConfigError, match=f"running in process {child.pid} on .*still owns it"):
            nx.start_run(run_id=run_id, resume=True)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(60) == 0
    finally:
        child.kill()
        child.wait()
    with nx.start_run(run_id=run_id, resume=True) as run:  # ended: now it can go on here
        run.log(loss=2.0)
    assert read_only(store_path, "SELECT step, value FROM metrics ORDER BY step") == [(0, 1.0), (1, 2.0)]


def test_a_run_queued_again_to_resume_starts_from_its_queued_row(store_path, read_only):
    """The scheduler's path: the stored run is queued again by this process, then its
    executor starts it with resume=True."""
    with nx.start_run("first", params={"lr": 0.1}) as first:
        for _ in range(10):
            first.log(loss=1.0)
    store = first._store
    store.records.queued_to_resume(first.run_id, executor="thread", priority=5, spec={"retries": 0},
                                   detail="priority 5, resuming")
    assert store.writer.flush(10)
    assert read_only(store_path, "SELECT status FROM runs") == [("queued",)]
    with nx.start_run(run_id=first.run_id, resume=True, params={"epochs": 2}) as run:
        run.log(loss=2.0)
    assert read_only(store_path, DUPLICATES, [run.run_id]) == []
    assert read_only(store_path, "SELECT max(step), count(*) FROM metrics") == [(10, 11)]
    (status, params), = read_only(store_path, "SELECT status, params FROM runs")
    assert (status, json.loads(params)) == ("completed", {"lr": 0.1, "epochs": 2})

