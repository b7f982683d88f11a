"""The mlflow sink against a real local SQLite tracking store, read back with MlflowClient."""

import json
import sys
import threading

import mlflow  # noqa: F401 - the locked test environment has it
import numpy as np
import pytest
from readback_mlflow import (
    artifact_bytes,
    artifact_paths,
    assert_same_rows,
    client_for,
    find_run,
    metric_rows,
    verify,
)

import notebook_exp as nx
from notebook_exp import _plugins as plugins
from notebook_exp.exceptions import SinkError
from notebook_exp.models import MetricBatch, RunInfo

METRICS_SQL = "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY key, step"


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory):
    """One tracking database for the module: MLflow migrates a new one for seconds."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def tracking(mlflow_dir, monkeypatch, store_path):
    uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NOTEBOOK_EXP_MLFLOW_ARTIFACT_LOCATION", (mlflow_dir / "mlartifacts").as_uri())
    monkeypatch.delenv("NOTEBOOK_EXP_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NOTEBOOK_EXP_MLFLOW_EXPERIMENT", raising=False)
    return uri


def _readback(run, store_path, experiment=None):
    client = client_for(store_path)
    return client, find_run(client, experiment or run.experiment, run.run_id)


def test_completed_run_matches_what_duckdb_stored(store_path, read_only, tmp_path):
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(bytes(range(256)))
    params = {"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "flag": True}
    with nx.start_run("complete", experiment="mlflow-complete", params=params, tags=["baseline", "gpu"],
                      sinks=["duckdb", "mlflow"]) as run:
        special = [float("nan"), float("inf"), -float("inf")]
        for i in range(1500):  # 3000 points: several log_batch calls of at most 1000
            run.log(loss=1.0 / (i + 1), acc=special[i % 3] if i % 100 == 7 else i * 1e-3, step=i)
        run.log_text("note", "hello mlflow")
        run.log_histogram("w", np.random.default_rng(1).normal(size=500), bins=8)
        run.log_image("img", np.linspace(0, 1, 12).reshape(3, 4))
        run.log_artifact(artifact, name="ckpt/weights.bin")
    client, found = _readback(run, store_path, "mlflow-complete")
    rid = found.info.run_id

    expected = read_only(store_path, METRICS_SQL, [run.run_id])
    assert len(expected) == 3000
    assert_same_rows(metric_rows(client, found), expected)
    assert found.info.status == "FINISHED" and found.info.end_time is not None
    assert client.get_experiment(found.info.experiment_id).name == "mlflow-complete"
    assert found.info.run_name == "complete"
    assert found.data.params == {"lr": "0.1", "opt.name": "adam", "opt.betas": "[0.9, 0.99]", "flag": "True"}
    tags = found.data.tags
    assert tags["notebook_exp.run_id"] == run.run_id and tags["mlflow.runName"] == "complete"
    assert tags["notebook_exp.tag.baseline"] == tags["notebook_exp.tag.gpu"] == "true"
    assert json.loads(tags["notebook_exp.tags"]) == ["baseline", "gpu"]
    assert "notebook_exp.error" not in tags

    assert artifact_paths(client, rid) == [
        "ckpt/weights.bin", "histograms/w/step_00000000.json", "images/img/step_00000000.png",
        "text/note/step_00000000.txt",
    ]
    assert artifact_bytes(client, rid, "ckpt/weights.bin") == bytes(range(256))
    [(text,)] = read_only(store_path, "SELECT text FROM texts WHERE run_id = ?", [run.run_id])
    assert artifact_bytes(client, rid, "text/note/step_00000000.txt").decode() == text
    [(png,)] = read_only(store_path, "SELECT png FROM images WHERE run_id = ?", [run.run_id])
    assert artifact_bytes(client, rid, "images/img/step_00000000.png") == png
    [(edges, counts)] = read_only(store_path, "SELECT bin_edges, counts FROM histograms WHERE run_id = ?",
                                  [run.run_id])
    hist = json.loads(artifact_bytes(client, rid, "histograms/w/step_00000000.json"))
    assert (hist["key"], hist["step"], hist["bin_edges"], hist["counts"]) == ("w", 0, edges, counts)


def test_metric_timestamps_are_the_logged_times(store_path, read_only):
    with nx.start_run("times", sinks=["duckdb", "mlflow"]) as run:
        for i in range(5):
            run.log(x=float(i))
    client, found = _readback(run, store_path)
    stored = read_only(store_path, "SELECT step, epoch_us(ts) FROM metrics WHERE run_id = ? ORDER BY step",
                       [run.run_id])
    got = sorted((m.step, m.timestamp) for m in client.get_metric_history(found.info.run_id, "x"))
    assert [s for s, _ in got] == [s for s, _ in stored] == list(range(5))
    for (_s, ms), (_t, us) in zip(got, stored):
        assert abs(ms - us / 1000) <= 1


def test_failed_run_is_failed_with_its_error(store_path, read_only):
    with pytest.raises(ValueError, match="boom"):
        with nx.start_run("fails", sinks=["duckdb", "mlflow"]) as run:
            run.log(loss=0.5, step=0)
            run.log(loss=0.25, step=1)
            raise ValueError("boom")
    client, found = _readback(run, store_path)
    assert found.info.status == "FAILED"
    assert "ValueError: boom" in found.data.tags["notebook_exp.error"]
    assert_same_rows(metric_rows(client, found), read_only(store_path, METRICS_SQL, [run.run_id]))
    assert [m.value for m in sorted(client.get_metric_history(found.info.run_id, "loss"), key=lambda m: m.step)] \
        == [0.5, 0.25]


def test_cancelled_run_is_killed(store_path, read_only):
    run = nx.start_run("cancelled", sinks=["duckdb", "mlflow"])
    run.log(loss=1.0)
    run.end(nx.RunStatus.CANCELLED, "stopped by hand")
    client, found = _readback(run, store_path)
    assert found.info.status == "KILLED"
    assert found.data.tags["notebook_exp.error"] == "stopped by hand"
    assert read_only(store_path, "SELECT status FROM runs WHERE run_id = ?", [run.run_id]) == [("cancelled",)]
    assert metric_rows(client, found) == [("loss", 0, 1.0)]


def test_a_changed_param_keeps_its_first_value_and_tags_the_current_one(store_path):
    with pytest.warns(RuntimeWarning, match="MLflow params cannot change") as caught:
        with nx.start_run("params", params={"lr": 0.1}, tags=["a", "b"], sinks=["mlflow"]) as run:
            run.log_params(lr=0.2, bs=8)
            run.log_params(lr=0.3)
            run.set_tags(["b", "c"])
            run.log(x=1.0)
            assert run.flush(timeout=30)
    assert len([w for w in caught if "params cannot change" in str(w.message)]) == 1
    _client, found = _readback(run, store_path)
    assert found.data.params == {"lr": "0.1", "bs": "8"}
    tags = found.data.tags
    assert tags["notebook_exp.param.lr"] == "0.3"
    assert "notebook_exp.tag.a" not in tags and tags["notebook_exp.tag.b"] == tags["notebook_exp.tag.c"] == "true"
    assert json.loads(tags["notebook_exp.tags"]) == ["b", "c"]


def test_names_mlflow_refuses_are_renamed_once(store_path, read_only):
    with pytest.warns(RuntimeWarning, match="does not accept these metric names") as caught:
        with nx.start_run("names", sinks=["duckdb", "mlflow"]) as run:
            for i in range(3):
                run.log(**{"loss@val": float(i), "a//b": -float(i), "ok/key": 1.0})
                assert run.flush(timeout=30)
    assert len([w for w in caught if "metric names" in str(w.message)]) == 1
    client, found = _readback(run, store_path)
    assert set(found.data.metrics) == {"loss_val", "a/b", "ok/key"}
    stored = read_only(store_path, METRICS_SQL, [run.run_id])
    renamed = {"loss@val": "loss_val", "a//b": "a/b", "ok/key": "ok/key"}
    expected = sorted((renamed[k], s, v) for k, s, v in stored)
    assert_same_rows(metric_rows(client, found), expected)


def test_a_retried_batch_adds_no_duplicates(store_path):
    """The dispatcher retries a failed call with the same batch: MLflow keeps each point once."""
    sink = plugins.load("sink", "mlflow")()
    sink.start_run(RunInfo(run_id="retry1", experiment="retries", name="r", store_path=str(store_path)))
    batch = MetricBatch.from_rows("retry1", [("k", i, 1.0 + i, i / 7) for i in range(1200)])
    sink.log_metrics(batch)
    sink.log_metrics(batch)
    sink.end_run(nx.RunStatus.COMPLETED, None)
    sink.close()
    sink.close()
    client = client_for(store_path)
    found = find_run(client, "retries", "retry1")
    assert found.info.status == "FINISHED"
    assert_same_rows(metric_rows(client, found), [("k", i, i / 7) for i in range(1200)])


def test_a_sink_closed_before_its_run_ended_marks_it_killed(store_path):
    sink = plugins.load("sink", "mlflow")()
    sink.start_run(RunInfo(run_id="closed1", experiment="closed", name="c", store_path=str(store_path)))
    sink.close()
    assert find_run(client_for(store_path), "closed", "closed1").info.status == "KILLED"


def test_runs_logging_at_once_from_threads_share_one_new_experiment(store_path):
    runs, errors = [], []

    def work(n):
        try:
            with nx.start_run(f"t{n}", experiment="mlflow-threads", sinks=["mlflow"]) as run:
                runs.append(run)
                for i in range(300):
                    run.log(v=float(n * 1000 + i), step=i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(runs) == 4
    client = client_for(store_path)
    for run in runs:
        n = int(run.name[1:])
        found = find_run(client, "mlflow-threads", run.run_id)
        assert found.info.status == "FINISHED"
        assert_same_rows(metric_rows(client, found), [("v", i, float(n * 1000 + i)) for i in range(300)])


def test_settings_override_the_environment(store_path, tmp_path, monkeypatch, tracking):
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    monkeypatch.setenv("NOTEBOOK_EXP_MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("NOTEBOOK_EXP_MLFLOW_EXPERIMENT", "mlflow-override")
    with nx.start_run("override", experiment="ignored", sinks=["mlflow"]) as run:
        run.log(x=2.0)
    assert not elsewhere.exists()
    client, found = _readback(run, store_path, "mlflow-override")
    assert metric_rows(client, found) == [("x", 0, 2.0)]
    assert client.get_experiment_by_name("ignored") is None


def test_a_deleted_experiment_fails_the_start_loudly(store_path):
    client = client_for(store_path)
    client.delete_experiment(client.create_experiment("mlflow-deleted"))
    with pytest.raises(SinkError, match="is deleted"):
        nx.start_run("deleted", experiment="mlflow-deleted", sinks=["mlflow"])


def test_without_mlflow_tracking_uri_it_logs_beside_the_store(store_path, read_only, tmp_path, monkeypatch):
    """The contract run, with no MLflow environment: sqlite beside the store, read by ``verify``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("NOTEBOOK_EXP_MLFLOW_ARTIFACT_LOCATION")
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    with nx.start_run("contract", params={"lr": 0.1}, sinks=["mlflow"]) as run:
        run.log_params(bs=8)
        run.set_tags(["t"])
        for i in range(100):
            run.log(loss=1.0 / (i + 1), acc=float("nan") if i == 5 else i / 100, step=i)
        run.log_text("sample", "hello")
        run.log_histogram("w", np.random.default_rng(0).normal(size=1000))
        run.log_image("img", np.ones((2, 3)))
        run.log_artifact(artifact)
        assert run.flush(timeout=30)
    verify(run, store_path, read_only)
    assert (store_path.parent / "mlflow.db").is_file()
    client, found = _readback(run, store_path)
    assert found.info.artifact_uri.startswith((store_path.parent / "mlartifacts").as_uri())


def test_listing_and_importing_the_sink_needs_no_mlflow(monkeypatch, run_python):
    run_python("import sys, notebook_exp.sinks.mlflow; assert 'mlflow' not in sys.modules")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    listed = plugins.info("sink", "mlflow")
    assert not listed.loads and listed.install == "pip install 'notebook-exp[mlflow]'"
    with pytest.raises(SinkError, match=r"notebook-exp\[mlflow\]"):
        nx.start_run("nomlflow", sinks=["mlflow"])
