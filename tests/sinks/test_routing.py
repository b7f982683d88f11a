"""Routing and processors: what each sink of a run receives (notebook_exp.sinks.routing)."""

import math
import warnings

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.models import MetricBatch
from notebook_exp.processors import Processor
from notebook_exp.processors.builtin import DropNonFinite, Every, Filter, Rename, Scale
from notebook_exp.testing import MemorySink


def _keys(sink):
    return sorted({key for key, *_ in sink.points})


def _log(run, n=100):
    for i in range(n):
        run.log(**{"train/loss": 1.0 / (i + 1), "val/loss": 2.0 / (i + 1), "lr": 0.1}, step=i)
    run.log_text("train/sample", "hi")
    run.log_text("val/sample", "ho")


def test_include_routes_train_keys_to_one_sink_only(store_path):
    only_train, everything = MemorySink(), MemorySink()
    with nx.start_run("routing", sinks=["duckdb", (only_train, {"include": ["train/*"]}), everything]) as run:
        _log(run)
    assert _keys(only_train) == ["train/loss"]
    assert [c[1][0] for c in only_train.calls if c[0] == "log_text"] == ["train/sample"]
    assert _keys(everything) == ["lr", "train/loss", "val/loss"]
    stored = nx.sql("SELECT key, count(*) AS n FROM metrics GROUP BY key ORDER BY key")
    assert list(stored.key) == ["lr", "train/loss", "val/loss"] and set(stored.n) == {100}


def test_exclude_wins_over_include_and_env_sets_routing(settings_env):
    settings_env(MEMORY_INCLUDE="train/*,val/*", MEMORY_EXCLUDE="val/*")
    sink = MemorySink()
    with nx.start_run(sinks=[sink]) as run:
        _log(run, 5)
    assert _keys(sink) == ["train/loss"]


def test_telemetry_reaches_only_sinks_that_ask(settings_env, store_path):
    settings_env(TELEMETRY_INTERVAL="0.1")

    class Plain(MemorySink):
        wants_telemetry = False

    plain, asking = Plain(), MemorySink()
    with nx.start_run(sinks=["duckdb", plain, (asking, {"telemetry": True})]) as run:
        for i in range(40):
            run.log(x=float(i))
            import time

            time.sleep(0.02)
    assert any(k.startswith("sys/") for k in _keys(asking)), _keys(asking)
    assert _keys(plain) == ["x"]
    assert nx.sql("SELECT count(*) AS n FROM metrics WHERE key LIKE 'sys/%'").n[0] > 0


def test_rename_and_every_change_what_one_sink_receives_and_nothing_else(store_path):
    thinned, untouched = MemorySink(), MemorySink()
    processors = [("rename", {"pattern": "train/*", "to": "t/*"}), ("every", {"steps": 10})]
    with nx.start_run(sinks=["duckdb", (thinned, {"processors": processors}), untouched]) as run:
        _log(run)
    assert _keys(thinned) == ["lr", "t/loss", "val/loss"]
    assert [s for k, s, _t, _v in thinned.points if k == "t/loss"] == list(range(0, 100, 10))
    assert len(untouched.points) == 300 and _keys(untouched) == ["lr", "train/loss", "val/loss"]
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 300


def test_shared_processors_apply_to_every_sink_but_duckdb(settings_env, store_path):
    settings_env(PROCESSORS="drop_nonfinite")
    sink = MemorySink()
    with nx.start_run(sinks=["duckdb", sink]) as run:
        run.log(x=1.0, step=0)
        run.log(x=math.nan, step=1)
        run.log(x=math.inf, step=2)
    assert [(s, v) for _k, s, _t, v in sink.points] == [(0, 1.0)]
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 3


def test_a_processor_that_raises_is_disabled_once_and_isolated(store_path):
    class Exploding(Processor):
        name = "exploding"

        def process(self, batch):
            raise ValueError("boom")

    sink = MemorySink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nx.start_run(sinks=["duckdb", (sink, {"processors": [Exploding(), ("scale", {"factor": 2})]})]) as run:
            for i in range(10):
                run.log(x=float(i), step=i)
                run.flush()
    assert [v for *_, v in sink.points] == [2.0 * i for i in range(10)]
    assert len([w for w in caught if "exploding" in str(w.message)]) == 1
    events = nx.sql("SELECT event, detail FROM events WHERE run_id = ? AND event = 'processor_failed'",
                    [run.run_id])
    assert len(events) == 1 and "boom" in events.detail[0]
    assert run.status == nx.RunStatus.COMPLETED


def test_bad_routing_or_processor_options_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"plugin 'memory': setting 'include'"):
        nx.start_run(sinks=[(MemorySink, {"include": 3})])
    with pytest.raises(ConfigError, match=r"plugin 'memory': setting 'inclde'.*unknown setting"):
        nx.start_run(sinks=[(MemorySink, {"inclde": ["x"]})])
    with pytest.raises(ConfigError, match=r"plugin 'every'.*exactly one of steps or seconds"):
        nx.start_run(sinks=[(MemorySink, {"processors": [("every", {})]})])
    with pytest.raises(ConfigError, match=r"unknown processor 'nope'"):
        nx.start_run(sinks=[(MemorySink, {"processors": ["nope"]})])


# -- the built-in processors on their own ---------------------------------------------


def _batch(rows):
    return MetricBatch.from_rows("r", rows)


def _rows(batch):
    return list(batch)


def test_rename_maps_each_star_and_merges_keys_that_meet():
    out = Rename(pattern="*/loss/*", to="loss.*.*").process(
        _batch([("train/loss/a", 0, 0.0, 1.0), ("val/acc", 0, 0.0, 2.0)]))
    assert _rows(out) == [("loss.train.a", 0, 0.0, 1.0), ("val/acc", 0, 0.0, 2.0)]
    met = Rename(pattern="*/loss", to="loss").process(_batch([("a/loss", 0, 0.0, 1.0), ("b/loss", 1, 0.0, 2.0)]))
    assert _rows(met) == [("loss", 0, 0.0, 1.0), ("loss", 1, 0.0, 2.0)]
    with pytest.raises(ValueError, match="more"):
        Rename(pattern="a", to="*")


def test_filter_scale_and_drop_nonfinite():
    batch = _batch([("a", 0, 0.0, 1.0), ("b", 0, 0.0, math.nan), ("b", 1, 0.0, 3.0), ("c", 0, 0.0, -math.inf)])
    assert [k for k, *_ in Filter(drop=["b", "c"]).process(batch)] == ["a"]
    scaled = _rows(Scale(factor=10, offset=1, keys=["b"]).process(batch))
    assert scaled[0] == ("a", 0, 0.0, 1.0) and math.isnan(scaled[1][3]) and scaled[2] == ("b", 1, 0.0, 31.0)
    assert _rows(DropNonFinite().process(batch)) == [("a", 0, 0.0, 1.0), ("b", 1, 0.0, 3.0)]


def test_every_keeps_one_point_per_window_across_batches():
    every = Every(steps=10)
    first = every.process(_batch([("k", s, float(s), 0.0) for s in range(0, 15)]))
    second = every.process(_batch([("k", s, float(s), 0.0) for s in range(15, 35)]))
    assert [s for _k, s, _t, _v in first] == [0, 10]
    assert [s for _k, s, _t, _v in second] == [20, 30]
    by_time = Every(seconds=2.5).process(_batch([("k", s, s * 1.0, 0.0) for s in range(10)]))
    assert [t for _k, _s, t, _v in by_time] == [0.0, 3.0, 5.0, 8.0]


def test_bad_sink_options_are_refused_at_submit_before_anything_is_queued(use_settings):
    use_settings()
    with pytest.raises(ConfigError, match=r"plugin 'jsonl': setting 'include'"):
        nx.submit(lambda run: None, sinks=[("jsonl", {"include": 5})])
    assert nx.runs().empty
