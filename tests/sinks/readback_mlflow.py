"""Reading back what the mlflow sink wrote, with a plain ``MlflowClient``.

``verify`` is the contract suite's check of the run ``test_contract.py`` logs;
the helpers serve ``test_mlflow_sink.py`` too. The tracking location is
resolved exactly as the sink resolves it (``tracking_location``): the
``NOTEBOOK_EXP_MLFLOW_*`` settings, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///<store folder>/mlflow.db``.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

from notebook_exp._plugins import settings_for
from notebook_exp.sinks.mlflow import MLflowSettings, tracking_location

MAX_FLOAT = 1.7976931348623157e308


def client_for(store_path):
    """An ``MlflowClient`` of the place the sink logs runs of ``store_path`` to."""
    from mlflow.tracking import MlflowClient

    uri, _artifacts = tracking_location(settings_for("mlflow", MLflowSettings), store_path)
    return MlflowClient(tracking_uri=uri)


def find_run(client, experiment: str, run_id: str):
    """The one MLflow run of notebook_exp run ``run_id`` in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`notebook_exp.run_id` = '{run_id}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs for notebook_exp run {run_id}"
    return runs[0]


def as_stored(value: float) -> float:
    """What a SQL tracking store gives back for ``value``: ±inf comes back as ±max float."""
    return math.copysign(MAX_FLOAT, value) if math.isinf(value) else value


def same(a: float, b: float) -> bool:
    """Equal floats, NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)


def metric_rows(client, mlflow_run, keys=None) -> list[tuple[str, int, float]]:
    """``(key, step, value)`` of every point of ``mlflow_run``, by key then step."""
    keys = sorted(keys if keys is not None else mlflow_run.data.metrics)
    rows = []
    for key in keys:
        history = client.get_metric_history(mlflow_run.info.run_id, key)
        rows.extend(sorted((key, m.step, m.value) for m in history))
    return rows


def assert_same_rows(got, expected) -> None:
    """``got`` (from MLflow) matches ``expected`` (notebook_exp's values), row by row."""
    assert [(k, s) for k, s, _v in got] == [(k, s) for k, s, _v in expected]
    for (key, step, value), (_k, _s, want) in zip(got, expected):
        assert same(value, as_stored(want)), f"{key} at step {step}: MLflow has {value}, expected {want}"


def artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of the run, sorted."""
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def artifact_bytes(client, run_id: str, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def verify(run, store_path, read_only):
    """The contract run (params lr/bs, tag t, loss/acc x 100 with a NaN, text, histogram,
    image, artifact, completed) is in MLflow as one finished run."""
    client = client_for(store_path)
    found = find_run(client, run.experiment, run.run_id)
    rid = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name == run.name
    assert found.data.params == {"lr": "0.1", "bs": "8"}
    tags = found.data.tags
    assert tags["notebook_exp.tag.t"] == "true" and json.loads(tags["notebook_exp.tags"]) == ["t"]
    expected = [("acc", i, float("nan") if i == 5 else i / 100) for i in range(100)]
    expected += [("loss", i, 1.0 / (i + 1)) for i in range(100)]
    assert_same_rows(metric_rows(client, found), expected)
    assert artifact_paths(client, rid) == [
        "a.txt", "histograms/w/step_00000000.json", "images/img/step_00000000.png", "text/sample/step_00000000.txt",
    ]
    assert artifact_bytes(client, rid, "a.txt") == b"x"
    assert artifact_bytes(client, rid, "text/sample/step_00000000.txt") == b"hello"
    hist = json.loads(artifact_bytes(client, rid, "histograms/w/step_00000000.json"))
    assert sum(hist["counts"]) == 1000 and len(hist["bin_edges"]) == len(hist["counts"]) + 1
    assert png_size(artifact_bytes(client, rid, "images/img/step_00000000.png")) == (3, 2)
