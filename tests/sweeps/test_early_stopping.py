"""Early stopping of a sweep's runs (MedianStop, ASHA) with real scheduler runs on the thread executor."""

from __future__ import annotations

import math
import time
from array import array

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.models import RunStatus
from notebook_exp.scheduler import sweeps
from notebook_exp.scheduler.stopping import ASHA, MedianStop, StopMonitor, Trace
from notebook_exp.store import queries

STEPS = 600


def curve(step: int, bad: bool) -> float:
    """A synthetic validation loss: the bad runs sit 3 above the good ones at every step."""
    return (3.0 if bad else 0.0) + math.exp(-step / 200)


def train(run, bad: bool, steps: int = STEPS, lr: float = 0.1):
    for step in range(steps):
        run.log(**{"val/loss": curve(step, bad), "train/loss": curve(step, bad)}, step=step)
        time.sleep(0.002)  # a training step: the rule decides while the runs go on


def points(*pairs) -> array:
    return array("d", [x for step, value in pairs for x in (step, 0.0, value)])


def steps_run(run_ids) -> dict[str, int]:
    """Steps each run really made, from the store (its last logged step + 1)."""
    return {r: queries.read(lambda conn, r=r: queries.last_values(conn, r))["val/loss"][0] + 1 for r in run_ids}


def test_trace_keeps_the_best_so_far_by_step():
    trace = Trace()
    trace.add(points((0, 5.0), (1, 4.0), (2, math.nan), (3, 4.5), (4, 3.0)), minimize=True)
    assert trace.best == 3.0 and trace.last_step == 4
    assert [trace.best_until(s) for s in (-1, 0, 2, 3, 4, 99)] == [None, 5.0, 4.0, 4.0, 3.0, 3.0]  # exact
    trace.add(points((5, 3.5), (6, 1.0), (7, 2.0)), minimize=True)
    assert trace.ends == [4, 7] and trace.bests == [3.0, 1.0]
    assert [trace.best_until(s) for s in (4, 5, 6, 7)] == [3.0, 3.0, 1.0, 1.0]  # the latest batch: exact
    trace.add(points((2, 0.5)), minimize=True)  # a step back counts as the last one
    assert trace.last_step == 7 and trace.best == 0.5
    # inside an older batch: the best before that batch
    assert trace.best_until(2) is None and trace.best_until(6) == 3.0 and trace.best_until(7) == 0.5
    only_nan = Trace()
    only_nan.add(points((0, math.nan), (1, math.nan)), minimize=True)
    assert only_nan.best is None and only_nan.best_until(0) is None and only_nan.last_step == 1
    only_nan.add(points((2, math.nan), (3, 2.0)), minimize=True)
    assert only_nan.best == 2.0 and only_nan.best_until(2) is None and only_nan.best_until(3) == 2.0
    up = Trace()
    up.add(points((0, 0.1), (5, 0.9), (6, 0.2)), minimize=False)
    assert up.best == 0.9 and up.best_until(4) == 0.1


def test_median_stop_compares_with_the_other_runs_up_to_the_same_step():
    rule = MedianStop("loss", grace=10, min_runs=2)
    traces = {name: Trace() for name in "abcd"}
    for name, offset in zip("abc", (0.0, 0.1, 0.2)):
        traces[name].add(points(*[(s, 1.0 + offset - s / 100) for s in range(30)]), minimize=True)
    traces["d"].add(points(*[(s, 5.0) for s in range(9)]), minimize=True)
    assert rule.check("d", traces) is None  # within its grace period
    traces["d"].add(points((10, 5.0)), minimize=True)
    step, why = rule.check("d", traces)
    assert step == 10 and "worse than the median 1" in why and "3 other runs" in why
    assert rule.check("a", traces) is None  # the best run goes on
    high = MedianStop("acc", mode="max", min_runs=1)
    assert high.check("a", {"a": traces["a"]}) is None  # no other run yet: no decision


def test_asha_promotes_the_runs_in_the_best_part_of_each_rung():
    rule = ASHA("loss", min_step=10, reduction=2)
    traces = {name: Trace() for name in "abc"}

    def reach(name: str, step: int, value: float):
        traces[name].add(points((step, value)), minimize=True)
        return rule.check(name, traces)

    assert [rule.rung(k) for k in range(4)] == [10, 20, 40, 80] and ASHA("x", max_step=30).rung(4) is None
    assert reach("a", 10, 1.0) is None  # first at rung 10: promoted
    assert reach("b", 10, 3.0)[0] == 10  # worse than the best half of {1, 3}: stopped at rung 10
    assert reach("c", 10, 0.5) is None  # best half of {1, 3, 0.5}
    assert reach("c", 20, 0.4) is None
    step, why = reach("a", 20, 0.9)  # rung 20 holds {0.4, 0.9}: a is not in its best half
    assert step == 20 and "best 1/2 of 2 runs" in why
    jumped = ASHA("loss", min_step=1, reduction=3)
    assert jumped.cutoff([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.0)
    assert ASHA("acc", mode="max", reduction=3).cutoff([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: MedianStop("", grace=1), "metric key"),
    (lambda: MedianStop("loss", mode="lowest"), "'min'"),
    (lambda: MedianStop("loss", grace=-1), "grace"),
    (lambda: ASHA("loss", reduction=1), "reduction"),
    (lambda: StopMonitor("val/loss", None), "stop rule"),
])
def test_bad_rules_raise_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_median_stop_stops_the_clearly_worse_half(settings_env):
    settings_env(TELEMETRY_INTERVAL="0", FLUSH_INTERVAL="0.05", MAX_CONCURRENT="8")
    rule = MedianStop("val/loss", mode="min", grace=100)
    sweep = sweeps.sweep(train, {"bad": [False, True], "lr": [0.1, 0.2, 0.3, 0.4]}, stop=rule, experiment="ms")
    nx.wait(sweep, timeout=120)
    bad = [job for job in sweep if job.params["bad"]]
    good = [job for job in sweep if not job.params["bad"]]
    assert [job.status for job in good] == [RunStatus.COMPLETED] * 4
    assert [job.status for job in bad] == [RunStatus.CANCELLED] * 4
    for job in bad:
        assert job.error.startswith("early-stopped by MedianStop at step "), job.error
        assert int(job.error.split("at step ")[1].split(":")[0]) >= 100  # never within the grace period
    assert {d.run_id for d in sweep.decisions} == {job.run_id for job in bad}
    made = steps_run([job.run_id for job in sweep])
    assert all(made[job.run_id] == STEPS for job in good) and all(made[job.run_id] < STEPS for job in bad)
    total, without = sum(made.values()), len(sweep) * STEPS
    print(f"\nMedianStop: the sweep ran {total} of {without} steps without the rule (ratio {total / without:.2f})")
    assert total < without
    assert sweep.progress()["stopped_early"] == 4 and sweep.progress()["completed"] == 4
    events = queries.read(lambda conn: conn.execute(
        "SELECT run_id, detail FROM events WHERE event = 'early_stopped'").fetchall())
    assert {r for r, _d in events} == {job.run_id for job in bad}
    table = nx.runs("ms")
    assert set(table["sweep_id"]) == {sweep.id}
    assert table[table["status"] == "cancelled"]["error"].str.startswith("early-stopped by MedianStop").all()


def test_asha_stops_the_bad_runs_at_the_first_rung(settings_env):
    # FIFO in pairs: the good runs reach each rung first
    settings_env(TELEMETRY_INTERVAL="0", FLUSH_INTERVAL="0.05", MAX_CONCURRENT="2")
    order = [{"bad": b, "steps": 200} for b in (False, False, True, True, False, True)]
    sweep = sweeps.sweep(train, order, stop=ASHA("val/loss", min_step=20, reduction=3))
    nx.wait(sweep, timeout=120)
    statuses = [(job.params["bad"], job.status) for job in sweep]
    assert statuses == [(False, RunStatus.COMPLETED)] * 2 + [(True, RunStatus.CANCELLED)] * 2 + [
        (False, RunStatus.COMPLETED), (True, RunStatus.CANCELLED)]
    assert all(job.error.startswith("early-stopped by ASHA at step 20:") for job in sweep if job.params["bad"])
    assert sweep[0].spec.sweep["stop"] == {"rule": "ASHA", "metric": "val/loss", "mode": "min", "min_step": 20,
                                           "reduction": 3, "max_step": None}


def test_a_stopped_run_hands_its_gpu_to_the_next(settings_env, fake_gpus):
    settings_env(TELEMETRY_INTERVAL="0", FLUSH_INTERVAL="0.05")
    fake_gpus(2)  # the good and the bad run start at once; the third waits for a GPU
    sweep = sweeps.sweep(train, [{"bad": False, "steps": STEPS}, {"bad": True, "steps": 5000},
                                 {"bad": False, "steps": 100}], stop=MedianStop("val/loss", grace=50, min_runs=1),
                         gpus=1)
    nx.wait(sweep, timeout=120)
    good, stopped, waiting = sweep
    assert [job.status for job in sweep] == [RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.COMPLETED]
    assert stopped.error.startswith("early-stopped by MedianStop at step ")
    (decision,) = sweep.decisions
    assert waiting.gpus == stopped.gpus != good.gpus  # the stopped run's GPU went to the waiting run ...
    assert decision.at <= waiting.started_at <= good.ended_at  # ... after the decision, while the good one ran
    assert steps_run([stopped.run_id])[stopped.run_id] < 5000


def test_a_stopped_sweep_can_be_saved_for_resubmission():
    import cloudpickle

    monitor = StopMonitor(MedianStop("val/loss", grace=5), scheduler=object())
    copy = cloudpickle.loads(cloudpickle.dumps(monitor.sink))  # what a run's saved payload holds
    assert copy.__self__.rule.grace == 5 and copy.__self__.scheduler is None
    sink = copy()
    sink.start_run(type("Info", (), {"run_id": "r"})())
    sink.log_metrics(type("Batch", (), {"run_id": "r", "chunks": [("val/loss", points((9, 1.0)))]})())
    assert copy.__self__.traces["r"].best == 1.0  # judged alone: never stopped


def test_stop_rules_need_the_thread_executor():
    with pytest.raises(ConfigError, match="executor='thread'"):
        sweeps.sweep(train, {"bad": [True]}, stop=MedianStop("val/loss"), executor="process")
    with pytest.raises(ConfigError, match="stop rule"):
        sweeps.sweep(train, {"bad": [True]}, stop="median")
    assert nx.runs().empty
