import math
import warnings

import numpy as np
import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError, InvalidMetric, RunCancelled, StoreError
from notebook_exp.testing import MemorySink


def test_context_manager_stores_points_and_completes(store_path, read_only):
    with nx.start_run("a", experiment="e", params={"lr": 0.1, "layers": [64, 64]}, tags=["x"]) as run:
        for i in range(1000):
            run.log(loss=1 / (i + 1), acc=i / 1000, step=i)
    assert run.status == nx.RunStatus.COMPLETED
    rows = read_only(store_path, "SELECT key, count(*), min(step), max(step) FROM metrics WHERE key NOT LIKE 'sys/%' GROUP BY 1 ORDER BY 1")
    assert rows == [("acc", 1000, 0, 999), ("loss", 1000, 0, 999)]
    (status, name, params, tags, ended), = read_only(
        store_path, "SELECT status, name, params, tags, ended_at FROM runs"
    )
    assert (status, name, tags) == ("completed", "a", ["x"])
    assert '"layers": [64, 64]' in params and ended is not None


def test_auto_step_counts_per_key_and_follows_explicit_steps(store_path):
    with nx.start_run() as run:
        run.log(loss=1.0)
        run.log(loss=2.0)
        run.log(acc=0.5)
        run.log(loss=3.0, step=10)
        run.log(loss=4.0)
    frame = nx.metrics(run.run_id)
    assert list(zip(frame.key, frame.step)) == [("acc", 0), ("loss", 0), ("loss", 1), ("loss", 10), ("loss", 11)]


def test_scalars_of_numpy_and_friends_are_accepted(store_path):
    from decimal import Decimal

    with nx.start_run() as run:
        run.log(a=np.float32(0.5), b=np.int64(3), c=True, d=7, e=Decimal("0.25"), f=np.array(2.5), step=np.int32(1))
    frame = nx.metrics(run.run_id).set_index("key")
    assert frame.value.to_dict() == {"a": 0.5, "b": 3.0, "c": 1.0, "d": 7.0, "e": 0.25, "f": 2.5}
    assert set(frame.step) == {1}


def test_nan_and_inf_are_stored_as_such(store_path, read_only):
    with nx.start_run() as run:
        run.log(x=float("nan"), y=float("inf"), z=float("-inf"), step=0)
    values = dict(read_only(store_path, "SELECT key, value FROM metrics"))
    assert math.isnan(values["x"]) and values["y"] == math.inf and values["z"] == -math.inf
    summary = dict(read_only(store_path, "SELECT key, last_value FROM metric_summary"))
    assert math.isnan(summary["x"]) and summary["y"] == math.inf


def test_non_numeric_value_names_the_key_and_logs_nothing_of_that_call(store_path):
    with nx.start_run() as run:
        run.log(ok=1.0, step=0)
        with pytest.raises(TypeError, match="'bad'") as info:
            run.log(good=2.0, bad="0.3", step=1)
        assert isinstance(info.value, InvalidMetric)
        with pytest.raises(TypeError, match="'vec'"):
            run.log(vec=np.array([1.0, 2.0]))
        with pytest.raises(TypeError, match="'c'"):
            run.log(c=1 + 2j)
        run.log(good=3.0)
    frame = nx.metrics(run.run_id)
    assert list(zip(frame.key, frame.step, frame.value)) == [("good", 0, 3.0), ("ok", 0, 1.0)]


@pytest.mark.parametrize("key", ["", "   ", "k" * 251, "a\nb"])
def test_bad_keys_are_rejected(key):
    with nx.start_run() as run:
        with pytest.raises(InvalidMetric):
            run.log(**{key: 1.0})


@pytest.mark.parametrize("step", [1.5, "3", True, 2**70, 2**53 + 1])
def test_bad_steps_are_rejected(step):
    with nx.start_run() as run:
        with pytest.raises(InvalidMetric):
            run.log(x=1.0, step=step)


def test_exception_marks_failed_with_traceback(store_path, read_only):
    with pytest.raises(ZeroDivisionError):
        with nx.start_run("boom") as run:
            run.log(x=1.0)
            1 / 0
    (status, error), = read_only(store_path, "SELECT status, error FROM runs")
    assert status == "failed"
    assert "Traceback" in error and "ZeroDivisionError" in error and "1 / 0" in error
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'x'") == [(1,)]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RunCancelled])
def test_interrupt_marks_cancelled(store_path, read_only, exc):
    with pytest.raises(exc):
        with nx.start_run():
            raise exc()
    assert read_only(store_path, "SELECT status FROM runs") == [("cancelled",)]


def test_interrupt_is_raised_at_next_log():
    with pytest.raises(RunCancelled):
        with nx.start_run() as run:
            run.log(x=1.0)
            run.interrupt(RunCancelled("stop"))
            run.log(x=2.0)
    assert run.status == nx.RunStatus.CANCELLED


def test_current_run_inside_and_outside():
    assert nx.current_run() is None
    with nx.start_run() as run:
        assert nx.current_run() is run
    assert nx.current_run() is None


def test_params_tags_and_rich_records(store_path, read_only, tmp_path):
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights")
    sink = MemorySink()
    with nx.start_run(params={"lr": np.float64(0.1)}, sinks=["duckdb", sink]) as run:
        run.log_params(bs=32)
        run.set_tags(["best", "baseline"])
        run.log_text("note", "hello")
        run.log_text("note", "again")
        run.log_histogram("w", np.arange(100), bins=10)
        run.log_image("img", np.zeros((4, 6, 3)))
        dest = run.log_artifact(artifact)
    assert read_only(store_path, "SELECT params, tags FROM runs") == [('{"lr": 0.1, "bs": 32}', ["best", "baseline"])]
    assert read_only(store_path, "SELECT key, step, text FROM texts ORDER BY step") == [("note", 0, "hello"), ("note", 1, "again")]
    (edges, counts), = read_only(store_path, "SELECT bin_edges, counts FROM histograms")
    assert len(edges) == 11 and sum(counts) == 100
    (width, height, png), = read_only(store_path, "SELECT width, height, png FROM images")
    assert (width, height) == (6, 4) and png[:8] == b"\x89PNG\r\n\x1a\n"
    (name, size, path), = read_only(store_path, "SELECT name, size, path FROM artifacts")
    assert (name, size, path) == ("model.txt", 7, str(dest)) and dest.read_text() == "weights"
    assert sink.methods[0] == "start_run" and sink.methods[-2:] == ["end_run", "close"]
    assert {"log_params", "set_tags", "log_text", "log_histogram", "log_image", "log_artifact"} <= set(sink.methods)


def test_bad_params_fail_at_start_and_nothing_is_recorded(store_path):
    with pytest.raises(ConfigError, match="'model'"):
        nx.start_run(params={"model": object()})
    with pytest.raises(ConfigError):
        nx.start_run(params=[1, 2])
    assert not store_path.exists() or len(nx.runs()) == 0


def test_unwritable_store_fails_at_start_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / "store.duckdb"  # fails for root too
    with pytest.raises(StoreError, match=str(blocker)):
        nx.start_run(store=target)


def test_store_path_that_is_a_folder_fails_at_start(tmp_path):
    target = tmp_path / "store.duckdb"
    target.mkdir()
    with pytest.raises(StoreError, match=str(target)):
        nx.start_run(store=target)


def test_flush_makes_points_visible_to_readers(store_path, read_only):
    with nx.start_run() as run:
        for i in range(10):
            run.log(x=float(i))
        assert run.flush(timeout=10)
        assert nx.sql("SELECT count(*) AS n FROM metrics WHERE key = 'x'").n[0] == 10


def test_runs_table_has_params_and_last_metrics(store_path):
    for lr in (0.1, 0.01):
        with nx.start_run(experiment="sweep", params={"lr": lr}) as run:
            run.log(loss=lr * 2, step=5)
    with nx.start_run(experiment="other"):
        pass
    table = nx.runs("sweep")
    assert sorted(table["params.lr"]) == [0.01, 0.1]
    assert sorted(table["metrics.loss"]) == [0.02, 0.2]
    assert set(table.status) == {"completed"}
    assert len(nx.runs()) == 3 and len(nx.runs(status="failed")) == 0


def test_sql_is_read_only(store_path):
    with nx.start_run():
        pass
    import duckdb

    with pytest.raises(duckdb.Error):
        nx.sql("DELETE FROM runs")
    assert len(nx.runs()) == 1


def test_reading_a_missing_store_is_empty_or_clear(tmp_path):
    assert len(nx.runs(store=tmp_path / "none.duckdb")) == 0
    with pytest.raises(StoreError, match="nothing has been logged"):
        nx.sql("SELECT 1", store=tmp_path / "none.duckdb")


def test_run_end_is_idempotent_and_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = nx.start_run()
        run.end()
        run.end("failed")
    assert run.status == nx.RunStatus.COMPLETED
