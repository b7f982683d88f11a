"""The failure policy of sinks (docs/architecture.md §6) and backpressure, with real runs."""

import threading
import time
import warnings

import pytest

import notebook_exp as nx
from notebook_exp import _plugins as plugins
from notebook_exp.exceptions import SinkError
from notebook_exp.sinks import dispatch, registry
from notebook_exp.testing import MemorySink


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKOFF_BASE", 0.001)


class FlakySink(MemorySink):
    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def log_metrics(self, batch):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("flaky")
        super().log_metrics(batch)


class BrokenSink(MemorySink):
    name = "broken"

    def log_metrics(self, batch):
        raise ConnectionError("down")


def test_flaky_sink_is_retried_and_loses_nothing():
    sink = FlakySink(failures=2)
    with nx.start_run(sinks=[sink]) as run:
        for i in range(10):
            run.log(x=float(i))
    assert [p[3] for p in sink.points] == [float(i) for i in range(10)]
    assert run.dropped == {}


def test_broken_sink_is_disabled_with_one_warning_others_lose_nothing(store_path):
    broken, healthy = BrokenSink(), MemorySink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nx.start_run(sinks=["duckdb", broken, healthy]) as run:
            for i in range(50):
                run.log(x=float(i))
                if i % 10 == 0:
                    run.flush()
    disabled = [w for w in caught if "disabled" in str(w.message)]
    assert len(disabled) == 1 and "broken" in str(disabled[0].message)
    assert len(healthy.points) == 50
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 50
    assert run.status == nx.RunStatus.COMPLETED
    assert run.dropped["broken"] == 50
    assert broken.closed and broken.methods[-2:] == ["end_run", "close"]
    assert nx.runs().dropped[0] == 50


def test_sink_failing_at_start_fails_loudly_and_leaves_no_running_run(store_path):
    class NoStart(MemorySink):
        def start_run(self, run):
            raise PermissionError("tracking server refused")

    other = MemorySink()
    with pytest.raises(SinkError, match="tracking server refused"):
        nx.start_run(sinks=[other, NoStart()])
    assert other.closed
    (status, error), = nx.sql("SELECT status, error FROM runs").itertuples(index=False)
    assert status == "failed" and "tracking server refused" in error


def test_close_and_end_failures_never_mask_the_run(store_path):
    class BadEnd(MemorySink):
        def end_run(self, status, error):
            raise RuntimeError("end broke")

        def close(self):
            raise RuntimeError("close broke")

    with pytest.raises(ValueError, match="the real error"):
        with nx.start_run(sinks=["duckdb", BadEnd()]):
            raise ValueError("the real error")
    assert nx.runs().status[0] == "failed"
    with nx.start_run(sinks=[BadEnd()]) as run:
        run.log(x=1.0)
    assert run.status == nx.RunStatus.COMPLETED


def test_slow_sink_never_blocks_log_and_drops_are_counted(store_path):
    release = threading.Event()

    class SlowSink(MemorySink):
        max_pending_rows = 1_000

        def log_metrics(self, batch):
            release.wait(10)
            super().log_metrics(batch)

    slow = SlowSink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nx.start_run(sinks=["duckdb", slow]) as run:
            started = time.perf_counter()
            for step in range(20):
                for i in range(500):
                    run.log(x=float(i))
                run.flush(timeout=0)  # hand over batches while the slow sink is stuck
            logging_time = time.perf_counter() - started
            release.set()
    assert logging_time < 5  # the stuck sink never blocked run.log
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 10_000  # duckdb never drops
    assert run.dropped["memory"] > 0
    assert len(slow.points) + run.dropped["memory"] == 10_000
    assert any("dropped" in str(w.message) for w in caught)


def test_unknown_sink_name_lists_the_registered_ones():
    with pytest.raises(SinkError, match="registered sinks: .*duckdb"):
        nx.start_run(sinks=["nope"])


def test_sinks_setting_picks_sinks_by_name(settings_env, store_path):
    settings_env(SINKS="duckdb, jsonl")
    with nx.start_run() as run:
        run.log(x=1.0)
    assert (store_path.parent / "jsonl" / f"{run.run_id}.jsonl").exists()


def test_third_party_plugin_through_entry_points(tmp_path, monkeypatch):
    """A plugin installed as a distribution is found; a broken one fails clearly at start."""
    dist = tmp_path / "thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[notebook_exp.sinks]\ncounting = thirdparty_sinks:CountingSink\nbroken = thirdparty_broken:Nope\n"
    )
    (tmp_path / "thirdparty_sinks.py").write_text(
        "from notebook_exp.testing import MemorySink\n"
        "class CountingSink(MemorySink):\n    name = 'counting'\n"
    )
    (tmp_path / "thirdparty_broken.py").write_text("raise ImportError('missing native lib')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    try:
        assert {"counting", "broken"} <= set(registry.available())
        with nx.start_run(sinks=["counting"]) as run:
            run.log(x=1.0)
        with pytest.raises(SinkError, match="'broken'.*missing native lib"):
            nx.start_run(sinks=["broken"])
    finally:
        monkeypatch.undo()
        plugins.reset()
    assert run.status == nx.RunStatus.COMPLETED


def test_a_sink_that_is_not_a_sink_is_refused():
    with pytest.raises(SinkError, match="registered name or a Sink"):
        nx.start_run(sinks=[object()])
