"""Flow control of remote-style sinks: the circuit breaker and the rate limit (sinks.flow)."""

import threading
import time
import warnings

import pytest

import notebook_exp as nx
from notebook_exp.sinks.flow import MAX_COOLDOWN, Breaker, BreakerState, RateLimiter
from notebook_exp.testing import MemorySink


class Outage(MemorySink):
    """A sink whose backend is down until ``up`` is set: every call raises meanwhile."""

    name = "outage"
    breaker_failures = 3

    def __init__(self):
        super().__init__()
        self.up = threading.Event()
        self.failed_calls = 0

    def log_metrics(self, batch):
        if not self.up.is_set():
            self.failed_calls += 1
            raise ConnectionError("backend unreachable")
        super().log_metrics(batch)


def _events(run_id, kind):
    frame = nx.sql("SELECT detail FROM events WHERE run_id = ? AND event = ? ORDER BY ts", [run_id, kind])
    return list(frame.detail)


def _wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_sink_down_then_up_gets_every_held_batch_and_the_run_loses_nothing(store_path):
    sink = Outage()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nx.start_run("breaker", sinks=["duckdb", (sink, {"breaker_cooldown": 0.2})]) as run:
            for i in range(200):
                run.log(x=float(i), step=i)
                if i % 20 == 0:
                    run._flush(force=True)
            _wait_for(lambda: any("open" in d for d in _events(run.run_id, "sink_breaker")))
            waited = time.monotonic()
            assert run.flush(timeout=30) is False  # the outage sink does not have it all ...
            assert time.monotonic() - waited < 5  # ... and the loop is not held up by it
            _wait_for(lambda: any("half-open" in d for d in _events(run.run_id, "sink_breaker")))
            sink.up.set()
            _wait_for(lambda: any("closed" in d for d in _events(run.run_id, "sink_breaker")))
            for i in range(200, 250):
                run.log(x=float(i), step=i)
    assert run.status == nx.RunStatus.COMPLETED
    assert nx.sql("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [run.run_id]).n[0] == 250
    assert [s for _k, s, _t, _v in sink.points] == list(range(250))  # the held ones, in order, then the rest
    assert run.dropped == {}
    assert sink.failed_calls >= 4  # three to open, at least one failed probe
    failing = [w for w in caught if "outage" in str(w.message)]
    assert len(failing) == 1 and "backend unreachable" in str(failing[0].message)
    assert len(_events(run.run_id, "sink_failed")) == 1 and "outage" in _events(run.run_id, "sink_failed")[0]
    states = [d.split(": ")[1] for d in _events(run.run_id, "sink_breaker")]
    assert states[0] == "open" and states[-1] == "closed" and "half-open" in states
    assert all(a != b for a, b in zip(states, states[1:]))  # only changes are recorded


def test_a_sink_still_down_at_the_end_costs_one_cooldown_and_is_counted(store_path):
    sink = Outage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nx.start_run(sinks=["duckdb", (sink, {"breaker_cooldown": 0.5})]) as run:
            for i in range(100):
                run.log(x=float(i), step=i)
        ended = time.monotonic()
    assert run.status == nx.RunStatus.COMPLETED
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 100
    assert run.dropped == {"outage": 100}
    assert nx.sql("SELECT dropped FROM runs").dropped[0] == 100
    gave_up = _events(run.run_id, "sink_gave_up")
    assert len(gave_up) == 1 and "100 points" in gave_up[0]
    assert sink.closed and ended  # closed, after end_run


def test_held_batches_are_bounded_by_the_sinks_queue(store_path):
    class Small(Outage):
        max_pending_rows = 50

    sink = Small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nx.start_run(sinks=["duckdb", (sink, {"breaker_cooldown": 0.1})]) as run:
            for i in range(200):
                run.log(x=float(i), step=i)
                if i % 10 == 9:
                    run._flush(force=True)
            _wait_for(lambda: any("open" in d for d in _events(run.run_id, "sink_breaker")))
            sink.up.set()
            _wait_for(lambda: any("closed" in d for d in _events(run.run_id, "sink_breaker")))
    received = len(sink.points)
    assert received + run.dropped.get("outage", 0) == 200
    assert run.dropped.get("outage", 0) > 0 and received >= 10


def test_the_rate_limit_paces_calls_and_merges_what_waits(store_path):
    sink = MemorySink()
    started = time.monotonic()
    with nx.start_run(sinks=[(sink, {"rate": 4, "burst": 1})]) as run:
        for i in range(50):
            run.log(x=float(i), step=i)
            run._flush(force=True)
            time.sleep(0.01)
    elapsed = time.monotonic() - started
    calls = sum(1 for method, _ in sink.calls if method == "log_metrics")
    assert [s for _k, s, _t, _v in sink.points] == list(range(50))
    assert 1 <= calls <= 4 * elapsed + 2, (calls, elapsed)
    assert calls < 50


# -- the state machines, on a clock of our own ----------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_gcra_lets_a_burst_through_then_one_call_per_interval():
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    delays = []
    for _ in range(5):
        delays.append(limiter.delay())
        limiter.take()
    assert delays[:3] == [0.0, 0.0, 0.0] and delays[3] == pytest.approx(0.5) and delays[4] == pytest.approx(1.0)
    clock.now += 10
    assert limiter.delay() == 0.0


def test_breaker_opens_probes_backs_off_and_closes():
    clock = Clock()
    changes = []
    breaker = Breaker(failures=2, cooldown=1.0, on_change=lambda s, d: changes.append(s), clock=clock)
    breaker.failure(OSError())
    assert breaker.state is BreakerState.CLOSED
    breaker.failure(OSError())
    assert breaker.state is BreakerState.OPEN and breaker.reopen_at == 101.0
    breaker.probe()
    breaker.failure(OSError())
    assert breaker.state is BreakerState.OPEN and breaker.cooldown == 2.0
    for _ in range(20):
        breaker.probe()
        breaker.failure(OSError())
    assert breaker.cooldown == MAX_COOLDOWN
    breaker.probe()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.cooldown == 1.0 and breaker.consecutive == 0
    assert changes[:4] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.HALF_OPEN]
    assert changes[-1] is BreakerState.CLOSED
