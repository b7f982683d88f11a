"""One contract suite, run against every sink registered under notebook_exp.sinks."""

import json

import numpy as np
import pytest
import readback_mlflow
import readback_tensorboard
import readback_wandb

import notebook_exp as nx
from notebook_exp.sinks import Sink, registry


def _verify_duckdb(run, store_path, read_only):
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE run_id = ?", [run.run_id]) == [(200,)]
    assert read_only(store_path, "SELECT text FROM texts") == [("hello",)]
    assert read_only(store_path, "SELECT count(*) FROM histograms") == [(1,)]
    assert read_only(store_path, "SELECT width, height FROM images") == [(3, 2)]
    assert read_only(store_path, "SELECT name FROM artifacts") == [("a.txt",)]


def _verify_jsonl(run, store_path, read_only):
    path = store_path.parent / "jsonl" / f"{run.run_id}.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "completed"
    assert kinds.count("metric") == 200
    assert {"params", "tags", "text", "histogram", "image", "artifact"} <= set(kinds)


VERIFY = {
    "duckdb": _verify_duckdb,
    "jsonl": _verify_jsonl,
    "mlflow": readback_mlflow.verify,
    "tensorboard": readback_tensorboard.verify,
    "wandb": readback_wandb.verify,
}


def test_builtin_sinks_are_registered_through_entry_points():
    assert {"duckdb", "jsonl", "mlflow", "tensorboard", "wandb"} <= set(registry.available())
    for name in registry.available():
        assert issubclass(registry.load(name), Sink)


def test_every_registered_sink_has_a_verifier():
    assert set(registry.available()) <= set(VERIFY), "add a verifier for each new sink"


@pytest.mark.parametrize("name", registry.available())
def test_contract_through_a_real_run(name, store_path, read_only, tmp_path):
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    with nx.start_run("contract", params={"lr": 0.1}, sinks=[name]) as run:
        run.log_params(bs=8)
        run.set_tags(["t"])
        for i in range(100):
            run.log(loss=1.0 / (i + 1), acc=float("nan") if i == 5 else i / 100, step=i)
        run.log_text("sample", "hello")
        run.log_histogram("w", np.random.default_rng(0).normal(size=1000))
        run.log_image("img", np.ones((2, 3)))
        run.log_artifact(artifact)
        assert run.flush(timeout=30)
    VERIFY[name](run, store_path, read_only)


@pytest.mark.parametrize("name", registry.available())
def test_contract_call_order_is_tolerated_directly(name, store_path):
    """Driving a sink by hand in the documented order works; close is safe twice."""
    from notebook_exp.models import MetricBatch, RunInfo, RunStatus
    from notebook_exp.store import get_store

    get_store(store_path).ensure()
    sink = registry.create(name)
    info = RunInfo(run_id="r1", experiment="e", name="n", store_path=str(store_path))
    sink.start_run(info)
    sink.log_params({"a": 1})
    sink.log_metrics(MetricBatch.from_rows("r1", [("k", 0, 1.0, 0.5), ("k", 1, 2.0, float("inf"))]))
    sink.log_metrics(MetricBatch.from_rows("r1", []))
    sink.flush()
    sink.end_run(RunStatus.FAILED, "why")
    sink.close()
