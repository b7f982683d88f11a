"""The MLflow sink: one MLflow run per notebook_exp run.

Registered as the ``mlflow`` entry point; needs ``pip install 'notebook-exp[mlflow]'``
(mlflow is imported in ``start_run``, never when this module is imported).

Where it logs, first found:

* the ``tracking_uri`` setting (``NOTEBOOK_EXP_MLFLOW_TRACKING_URI``),
* ``MLFLOW_TRACKING_URI``,
* ``sqlite:///<store folder>/mlflow.db``, beside the DuckDB store, with the
  artifacts of the experiments it creates in ``<store folder>/mlartifacts``
  (``mlflow ui --backend-store-uri sqlite:///<store folder>/mlflow.db`` shows them).

The ``artifact_location`` setting chooses where an experiment this sink creates
keeps its artifacts; unset, and the tracking URI not the default one, MLflow's
own default applies. The experiment is the run's (or the ``experiment``
setting), created if missing.

What goes where (``<key>`` as MLflow names it, see below):

=====================  ==================================================================
notebook_exp           MLflow
=====================  ==================================================================
metrics                metrics, ``log_batch`` of at most 1000 points per call; NaN stays
                       NaN, ±inf becomes ±1.797e308 in SQL stores (MLflow's own rule)
params                 params, nested dicts flattened to ``a.b``; strings as they are,
                       lists and dicts as JSON, other values ``str()``
a param changed later  MLflow params cannot change: the first value stays, the current
                       one goes to tag ``notebook_exp.param.<key>``, with one warning
tags ``["a", "b"]``    tags ``notebook_exp.tag.a = "true"`` ... (removed ones deleted) and
                       ``notebook_exp.tags = '["a", "b"]'`` (JSON, exact)
run id, name           tag ``notebook_exp.run_id``; the run name (``mlflow.runName``)
text                   artifact ``text/<key>/step_<step>.txt``
histogram              artifact ``histograms/<key>/step_<step>.json``
                       (``{"key", "step", "timestamp", "bin_edges", "counts"}``)
image                  artifact ``images/<key>/step_<step>.png`` (the PNG bytes as logged)
artifact ``name``      artifact ``name`` (sub-folders kept)
completed / failed /   status FINISHED / FAILED / KILLED (``set_terminated``); a failure's
cancelled              reason in tag ``notebook_exp.error`` (its last 8000 characters)
=====================  ==================================================================

``<step>`` is zero-padded to 8 digits. MLflow accepts fewer characters in names
than notebook_exp: other characters become ``_``, empty, ``.`` and ``..``
path segments are dropped or replaced, and a name that is too long or that
would collide with another one in the same run gets a short hash suffix (one
warning per renamed key). A sink closed before its run ended marks the MLflow
run KILLED.

Calls run on the sink's worker thread; every one is idempotent, so a retried
``log_metrics`` resumes at the first ``log_batch`` that failed. A run retried by
the scheduler gets a new MLflow run per attempt, with the same
``notebook_exp.run_id`` tag. After 5 consecutive failures the dispatcher opens
this sink's circuit breaker (``breaker_failures``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from ..exceptions import SinkError
from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink, SinkSettings

__all__ = ["MLflowSettings", "MLflowSink", "default_tracking_uri", "mlflow_name", "tracking_location"]

#: MLflow's limits (``mlflow.utils.validation``), kept here so listing the sink imports nothing.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

STATUS = {RunStatus.COMPLETED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.CANCELLED: "KILLED"}
TAG_PREFIX = "notebook_exp.tag."
PARAM_TAG_PREFIX = "notebook_exp.param."
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"

# What MLflow refuses in metric, param and tag names (it takes no colon on Windows).
_BAD_CHARS = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")


class MLflowSettings(SinkSettings):
    """Settings of the MLflow sink, from ``NOTEBOOK_EXP_MLFLOW_<FIELD>``."""

    tracking_uri: str | None = Field(
        None,
        description=(
            "MLflow tracking URI; None: MLFLOW_TRACKING_URI, else sqlite:///<store folder>/mlflow.db."
        ),
    )
    experiment: str | None = Field(
        None, description="MLflow experiment every run logs to; None: the run's own experiment."
    )
    artifact_location: str | None = Field(
        None,
        description=(
            "Artifact root of the experiments this sink creates; None: <store folder>/mlartifacts "
            "with the default tracking URI, else MLflow's default."
        ),
    )


def mlflow_name(name: str) -> str:
    """``name`` as MLflow accepts it (before the length limit): unaccepted characters
    become ``_``, empty segments between slashes go, ``.``/``..`` segments become ``_``."""
    parts = [("_" if part in (".", "..") else part) for part in _BAD_CHARS.sub("_", name).split("/") if part]
    return "/".join(parts) or "_"


def default_tracking_uri(store_folder: str | os.PathLike) -> str:
    """The SQLite tracking URI beside a store: ``sqlite:///<store_folder>/mlflow.db``."""
    from urllib.request import pathname2url

    return "sqlite:///" + pathname2url(str(Path(store_folder).resolve() / DEFAULT_DB))


def tracking_location(settings: MLflowSettings, store_path: str | os.PathLike | None) -> tuple[str, str | None]:
    """``(tracking URI, artifact location for new experiments)`` a run with the store
    ``store_path`` logs to (see the module docstring); ``None``: MLflow's default."""
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri:
        return uri, settings.artifact_location
    if store_path is None:
        from ..config import get_settings

        store_path = get_settings().store_path
    folder = Path(store_path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = settings.artifact_location or (folder / DEFAULT_ARTIFACTS).as_uri()
    return default_tracking_uri(folder), artifacts


def _flatten(params: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, name + ".")
        elif isinstance(value, str):
            yield name, value
        elif isinstance(value, (list, tuple, dict)):
            yield name, json.dumps(value, default=str)
        else:
            yield name, str(value)


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))


class _Names:
    """notebook_exp names to MLflow names within one run: valid, short enough, distinct."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.of: dict[str, str] = {}
        self._taken: set[str] = set()
        self.renamed: list[tuple[str, str]] = []  # (name, MLflow name), newest last

    def __call__(self, name: str) -> str:
        found = self.of.get(name)
        if found is not None:
            return found
        out = self.prefix + mlflow_name(name)
        if len(out) > MAX_KEY_LENGTH or out in self._taken:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            out = out[: MAX_KEY_LENGTH - 9] + "_" + digest
        if out != self.prefix + name:
            self.renamed.append((name, out))
        self.of[name] = out
        self._taken.add(out)
        return out


class MLflowSink(Sink):
    """Logs each run to an MLflow tracking server or store, as one MLflow run."""

    name = "mlflow"
    # busy in Python, but measured (benchmarks/bench_sinks.py) a loop on 2 cores ran faster with it on a
    # thread than in the sink host: opt in with process=True (sinks._host)
    isolated = False
    libraries = ("mlflow",)
    extra = "mlflow"
    capabilities = ("metrics", "params", "tags", "text", "histograms", "images", "artifacts")
    Settings = MLflowSettings
    breaker_failures = 5

    def __init__(self) -> None:
        self.client = None  # mlflow.tracking.MlflowClient, made in start_run
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.mlflow_run_id: str | None = None
        self._run_id = ""
        self._keys = _Names()
        self._param_names = _Names()
        self._tag_names = _Names(TAG_PREFIX)
        self._params: dict[str, str] = {}  # MLflow param name -> value logged (immutable)
        self._changed: dict[str, str] = {}  # MLflow param name -> current value, where it changed
        self._tags: set[str] = set()  # MLflow tag keys made from notebook_exp tags, set now
        self._warned_params = False
        self._resume: tuple[MetricBatch, int] | None = None  # a batch half sent, and its calls done
        self._ended = False

    # -- start ---------------------------------------------------------------
    def start_run(self, run: RunInfo) -> None:
        self.check_libraries()
        from mlflow.tracking import MlflowClient

        settings = self.settings
        self.tracking_uri, artifacts = tracking_location(settings, run.store_path)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._experiment(settings.experiment or run.experiment, artifacts)
        started = run.started_at.timestamp() if run.started_at is not None else time.time()
        created = self.client.create_run(
            self.experiment_id, start_time=_ms(started), run_name=run.name,
            tags={"notebook_exp.run_id": run.run_id},
        )
        self.mlflow_run_id = created.info.run_id
        self._run_id = run.run_id
        self.log_params(run.params)
        self.set_tags(run.tags)

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        """The id of experiment ``name``, created if missing (another process creating
        it at the same moment is fine)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise SinkError(f"MLflow experiment {name!r} could neither be created nor found")
        if found.lifecycle_stage == "deleted":
            raise SinkError(
                f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore "
                f"--experiment-id {found.experiment_id}) or choose another with NOTEBOOK_EXP_MLFLOW_EXPERIMENT"
            )
        return found.experiment_id

    # -- params and tags -------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        new: dict[str, str] = {}
        changed: dict[str, str] = {}
        for key, value in _flatten(params):
            name = self._param_names(key)
            value = value[:MAX_PARAM_VALUE_LENGTH]
            if name not in self._params:
                new[name] = value
            elif value != self._params[name] or name in self._changed:
                if self._changed.get(name) != value:
                    changed[name] = value[:MAX_TAG_VALUE_LENGTH]
        self._batches(params=[Param(k, v) for k, v in new.items()],
                      tags=[RunTag(PARAM_TAG_PREFIX + k, v) for k, v in changed.items()])
        self._params.update(new)
        self._changed.update(changed)
        if changed and not self._warned_params:
            self._warned_params = True
            warnings.warn(
                f"run {self._run_id}: MLflow params cannot change; {', '.join(sorted(changed))} keep "
                f"their first value, the current one is in tag {PARAM_TAG_PREFIX}<name> (said once per run)",
                RuntimeWarning, stacklevel=2,
            )
        self._warn_renamed(self._param_names, "param")

    def set_tags(self, tags: list[str]) -> None:
        from mlflow.entities import RunTag

        keys = {self._tag_names(tag) for tag in tags}
        values = [RunTag(key, "true") for key in sorted(keys - self._tags)]
        values.append(RunTag("notebook_exp.tags", json.dumps(list(tags))[:MAX_TAG_VALUE_LENGTH]))
        self._batches(tags=values)
        for key in sorted(self._tags - keys):
            self.client.delete_tag(self.mlflow_run_id, key)
        self._tags = keys

    def _batches(self, params=(), tags=()) -> None:
        """``log_batch`` calls within MLflow's limits of params and tags per call."""
        step = MAX_PARAMS_TAGS_PER_BATCH
        for i in range(0, max(len(params), len(tags)), step):
            self.client.log_batch(
                self.mlflow_run_id, params=params[i : i + step], tags=tags[i : i + step], synchronous=True
            )

    # -- metrics ----------------------------------------------------------------
    def log_metrics(self, batch: MetricBatch) -> None:
        """Send ``batch`` in ``log_batch`` calls of at most 1000 points; a retry of the
        same batch skips the calls that succeeded."""
        done = self._resume[1] if self._resume is not None and self._resume[0] is batch else 0
        for n, metrics in enumerate(self._chunks(batch)):
            if n < done:
                continue
            self._resume = (batch, n)
            self.client.log_batch(self.mlflow_run_id, metrics=metrics, synchronous=True)
        self._resume = None
        self._warn_renamed(self._keys, "metric")

    def _chunks(self, batch: MetricBatch) -> Iterator[list]:
        from mlflow.entities import Metric

        out: list = []
        for key, points in batch.chunks:
            name = self._keys(key)
            for i in range(0, len(points), 3):
                out.append(Metric(name, points[i + 2], _ms(points[i + 1]), int(points[i])))
                if len(out) == MAX_METRICS_PER_BATCH:
                    yield out
                    out = []
        if out:
            yield out

    def _warn_renamed(self, names: _Names, what: str) -> None:
        if names.renamed:
            shown = ", ".join(f"{old!r} -> {new!r}" for old, new in names.renamed)
            names.renamed.clear()
            warnings.warn(f"run {self._run_id}: MLflow does not accept these {what} names; logged as {shown}",
                          RuntimeWarning, stacklevel=3)

    # -- rich records -------------------------------------------------------------
    def _path(self, folder: str, key: str, step: int, suffix: str) -> str:
        return f"{folder}/{mlflow_name(key)}/step_{step:08d}.{suffix}"

    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        self.client.log_text(self.mlflow_run_id, text, self._path("text", key, step, "txt"))

    def log_histogram(self, key: str, step: int, ts: float, bin_edges: list[float], counts: list[int]) -> None:
        record = {"key": key, "step": step, "timestamp": ts, "bin_edges": list(bin_edges), "counts": list(counts)}
        self.client.log_text(self.mlflow_run_id, json.dumps(record), self._path("histograms", key, step, "json"))

    def log_image(self, key: str, step: int, ts: float, png: bytes, width: int, height: int) -> None:
        self._upload(self._path("images", key, step, "png"), lambda local: local.write_bytes(png))

    def log_artifact(self, name: str, path: str) -> None:
        folder, _, filename = name.rpartition("/")
        if Path(path).name == filename:  # the store's copy is named like the artifact: no copy
            self.client.log_artifact(self.mlflow_run_id, path, folder or None)
        else:
            self._upload(name, lambda local: shutil.copyfile(path, local))

    def _upload(self, name: str, write) -> None:
        """Log artifact ``name``, a file ``write(local_path)`` makes in a temporary folder."""
        folder, _, filename = name.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="notebook_exp-mlflow-") as tmp:
            local = Path(tmp) / filename
            write(local)
            self.client.log_artifact(self.mlflow_run_id, str(local), folder or None)

    # -- end ----------------------------------------------------------------------
    def end_run(self, status: RunStatus, error: str | None) -> None:
        if self.mlflow_run_id is None or self._ended:
            return
        if error and status is not RunStatus.COMPLETED:
            self.client.set_tag(self.mlflow_run_id, "notebook_exp.error", error[-MAX_TAG_VALUE_LENGTH:])
        self.client.set_terminated(self.mlflow_run_id, STATUS.get(RunStatus(status), "KILLED"), _ms(time.time()))
        self._ended = True

    def close(self) -> None:
        """Mark a run that never ended KILLED (the sink hears no more of it)."""
        if self.mlflow_run_id is not None and not self._ended:
            self._ended = True
            self.client.set_terminated(self.mlflow_run_id, "KILLED", _ms(time.time()))
        self._resume = None

