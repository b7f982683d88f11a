"""The TensorBoard sink: each run as TensorBoard event files, its params in the HParams tab.

Registered as the ``tensorboard`` entry point. It needs only the ``tensorboard``
package (``pip install 'notebook-exp[tensorboard]'``), imported when a run starts,
never when this module is; no TensorFlow, no torch.

Each run gets a folder ``<dir>/<experiment>/<run name>-<run id>`` (names made
safe for the filesystem): ``dir`` is the ``dir`` setting
(``NOTEBOOK_EXP_TENSORBOARD_DIR``), by default ``tensorboard/`` beside the store
file, so ``tensorboard --logdir <dir>`` shows every run. The folder holds:

* the stream ``events.out.tfevents.<time>.<host>.<pid>.1``: scalars as the
  32-bit simple values TensorBoard (and PyTorch) write, NaN and ±inf kept, one
  event per step and time holding every key logged together; text, histograms
  and images; and, when the run ends, the HParams session end info with its
  status, and the exact status (with the error) as text under ``_notebook_exp/status``;
* ``events.out.tfevents.0000000000.hparams``: the HParams session start info,
  the run's params flattened to ``a.b`` names (numbers, bools and strings as
  they are, anything else as JSON), written at start and rewritten whole when
  the params change. TensorBoard keeps the first summary of a tag in a run and
  ignores later ones, so updated params cannot be appended to the stream; this
  file sorts first instead. (A TensorBoard already reading the run shows updated
  params once it restarts.)

Statuses map to the HParams ones: completed is ``STATUS_SUCCESS``, failed
``STATUS_FAILURE``, running ``STATUS_RUNNING``; cancelled and queued, which
TensorBoard has no word for, are ``STATUS_UNKNOWN``.

A new attempt of a run (a retry; same run id) replaces the event files of the
earlier one, as the store clears the data of a retried attempt.

Records are written with tensorboard's ``RecordWriter`` to one buffered file on
the sink's own worker thread: its ``EventFileWriter`` reopens the file for every
event and hands each one to a second thread, about five times slower. What
costs most is then tensorboard's pure-Python CRC32C of every record.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import Field

from ..exceptions import MissingDependency
from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink, SinkSettings

__all__ = [
    "HPARAMS_FILE",
    "STATUS_TAG",
    "TensorBoardSettings",
    "TensorBoardSink",
    "event_root",
    "hparam_values",
    "run_folder",
]

#: The file holding a run's HParams session start info (sorts before the stream).
HPARAMS_FILE = "events.out.tfevents.0000000000.hparams"
#: The text tag holding the exact final status of a run (and its error).
STATUS_TAG = "_notebook_exp/status"
MAX_NAME = 100  # characters of a run name or experiment in a folder name
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
_EXACT_INT = 2**53
_PNG_COLORSPACE = {0: 1, 4: 2, 2: 3, 3: 3, 6: 4}  # PNG colour type -> TensorBoard colorspace


class TensorBoardSettings(SinkSettings):
    """Settings of the TensorBoard sink (``NOTEBOOK_EXP_TENSORBOARD_<FIELD>``)."""

    dir: Path | None = Field(
        None,
        description=(
            "Folder of the event files, one sub-folder <experiment>/<run name>-<run id> per run "
            "(default: tensorboard/ beside the store file)."
        ),
    )


def safe_name(text: str) -> str:
    """``text`` as one folder name: runs of other characters than letters, digits
    and ``._+=-`` become ``_``; no leading or trailing dots; at most ``MAX_NAME``."""
    name = _UNSAFE.sub("_", text).strip("._ ")[:MAX_NAME]
    return name or "_"


def event_root(directory: str | os.PathLike | None, store_path: str | os.PathLike | None) -> Path:
    """Where the runs' folders go: ``directory`` (the ``dir`` setting), else
    ``tensorboard/`` beside the store file (``store_path``)."""
    if directory is not None:
        return Path(directory)
    return (Path(store_path).parent if store_path else Path.cwd()) / "tensorboard"


def run_folder(root: str | os.PathLike, experiment: str, name: str, run_id: str) -> Path:
    """The folder of one run's event files under ``root``."""
    return Path(root) / safe_name(experiment) / f"{safe_name(name)}-{safe_name(run_id)}"


def hparam_values(params: dict[str, Any], prefix: str = "") -> dict[str, bool | float | str]:
    """``params`` as HParams values: nested dicts flattened to ``a.b`` names; bools,
    numbers and strings kept (ints beyond ±2**53 as strings, to stay exact);
    anything else (lists, None, empty dicts) as JSON."""
    out: dict[str, bool | float | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(hparam_values(value, name + "."))
        elif isinstance(value, (bool, str, float)) or (isinstance(value, int) and abs(value) <= _EXACT_INT):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def _tensorboard() -> SimpleNamespace:
    """The parts of the ``tensorboard`` package this sink uses (imported here only)."""
    try:
        from tensorboard.compat.proto import (
            event_pb2,
            summary_pb2,
            tensor_pb2,
            tensor_shape_pb2,
            types_pb2,
        )
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from tensorboard.plugins.hparams import metadata as hparams_metadata
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ModuleNotFoundError as exc:
        raise MissingDependency(exc.name or "tensorboard", "tensorboard") from exc
    statuses = {
        RunStatus.COMPLETED: api_pb2.STATUS_SUCCESS,
        RunStatus.FAILED: api_pb2.STATUS_FAILURE,
        RunStatus.RUNNING: api_pb2.STATUS_RUNNING,
        RunStatus.CANCELLED: api_pb2.STATUS_UNKNOWN,
        RunStatus.QUEUED: api_pb2.STATUS_UNKNOWN,
    }
    return SimpleNamespace(
        Event=event_pb2.Event, Summary=summary_pb2.Summary, Value=summary_pb2.Summary.Value,
        HistogramProto=summary_pb2.HistogramProto, TensorProto=tensor_pb2.TensorProto,
        scalar_shape=tensor_shape_pb2.TensorShapeProto(), DT_STRING=types_pb2.DT_STRING,
        SessionStartInfo=plugin_data_pb2.SessionStartInfo, SessionEndInfo=plugin_data_pb2.SessionEndInfo,
        HParamsPluginData=plugin_data_pb2.HParamsPluginData, hparams=hparams_metadata,
        text_metadata=text_metadata.create_summary_metadata("", ""), RecordWriter=RecordWriter,
        statuses=statuses,
    )


class TensorBoardSink(Sink):
    """Writes each run as TensorBoard event files: scalars, text, histograms, images, HParams."""

    name = "tensorboard"
    capabilities = ("metrics", "text", "histograms", "images", "hparams")
    # busy in Python, but measured (benchmarks/bench_sinks.py) a loop on 2 cores ran faster with it on a
    # thread than in the sink host: opt in with process=True (sinks._host)
    isolated = False
    libraries = ("tensorboard",)
    extra = "tensorboard"
    Settings = TensorBoardSettings

    def __init__(self) -> None:
        self.folder: Path | None = None
        self._tb: SimpleNamespace | None = None
        self._records = None  # RecordWriter over the stream file
        self._hparams: dict[str, bool | float | str] | None = None
        self._described: set[str] = set()  # text tags whose first value carried the metadata
        self._started = 0.0

    # -- the run's life ---------------------------------------------------------
    def start_run(self, run: RunInfo) -> None:
        self._tb = _tensorboard()
        root = event_root(self.settings.dir, run.store_path)
        self.folder = run_folder(root, run.experiment, run.name, run.run_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not run.resumed:  # a retried run's earlier attempt is gone from the store: gone here too
            for old in self.folder.glob("events.out.tfevents.*"):
                old.unlink()
        started = run.started_at
        self._started = started.replace(tzinfo=timezone.utc).timestamp() if started else time.time()
        self._write_hparams(run.params)  # first: a TensorBoard reading the folder meets it first
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        number = 1
        while (self.folder / f"events.out.tfevents.{stamp}.{number}").exists():  # a resumed run, same second
            number += 1
        self._records = self._open(self.folder / f"events.out.tfevents.{stamp}.{number}")
        self._records.flush()

    def log_params(self, params: dict[str, Any]) -> None:
        self._write_hparams(params)

    def log_metrics(self, batch: MetricBatch) -> None:
        tb = self._tb
        value = tb.Value
        groups: dict[tuple[float, float], list] = {}  # (step, time) -> the values logged together
        for key, points in batch.chunks:
            for step, t, v in zip(points[0::3], points[1::3], points[2::3]):
                group = groups.get((step, t))
                if group is None:
                    group = groups[(step, t)] = []
                group.append(value(tag=key, simple_value=v))
        write, event, summary = self._records.write, tb.Event, tb.Summary
        for (step, t), values in sorted(groups.items(), key=_by_time):
            write(event(wall_time=t, step=int(step), summary=summary(value=values)).SerializeToString())

    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        self._write(ts, step, self._text_value(key, text))

    def log_histogram(self, key: str, step: int, ts: float, bin_edges: list[float], counts: list[int]) -> None:
        # bucket i holds (bucket_limit[i-1], bucket_limit[i]]; TensorBoard takes min and max as the
        # outer edges. The values are gone: sum and sum_squares take each bucket's middle.
        mids = [(lo + hi) / 2 for lo, hi in zip(bin_edges, bin_edges[1:])]
        histo = self._tb.HistogramProto(
            min=bin_edges[0] if bin_edges else 0.0,
            max=bin_edges[-1] if bin_edges else 0.0,
            num=sum(counts),
            sum=sum(c * m for c, m in zip(counts, mids)),
            sum_squares=sum(c * m * m for c, m in zip(counts, mids)),
            bucket_limit=bin_edges[1:],
            bucket=counts,
        )
        self._write(ts, step, self._tb.Value(tag=key, histo=histo))

    def log_image(self, key: str, step: int, ts: float, png: bytes, width: int, height: int) -> None:
        colour = png[25] if len(png) > 25 else 2  # the colour type in the PNG's IHDR chunk
        image = self._tb.Summary.Image(
            height=height, width=width, colorspace=_PNG_COLORSPACE.get(colour, 3), encoded_image_string=png
        )
        self._write(ts, step, self._tb.Value(tag=key, image=image))

    def flush(self) -> None:
        if self._records is not None:
            self._records.flush()

    def end_run(self, status: RunStatus, error: str | None) -> None:
        tb = self._tb
        status = RunStatus(status)
        now = time.time()
        end = tb.HParamsPluginData(
            session_end_info=tb.SessionEndInfo(status=tb.statuses[status], end_time_secs=now)
        )
        report = status.value + ("\n\n" + _indented(error) if error else "")
        self._write(
            now,
            0,
            self._hparams_value(tb.hparams.SESSION_END_INFO_TAG, end),
            self._text_value(STATUS_TAG, report),
        )
        self._records.flush()

    def close(self) -> None:
        records, self._records = self._records, None
        if records is not None:
            records.close()

    # -- helpers ------------------------------------------------------------------
    def _open(self, path: Path):
        """A RecordWriter over a new event file at ``path``, its version event written."""
        records = self._tb.RecordWriter(open(path, "wb"))
        version = self._tb.Event(wall_time=time.time(), file_version="brain.Event:2")
        records.write(version.SerializeToString())
        return records

    def _write(self, wall_time: float, step: int, *values) -> None:
        event = self._tb.Event(wall_time=wall_time, step=step, summary=self._tb.Summary(value=values))
        self._records.write(event.SerializeToString())

    def _text_value(self, key: str, text: str):
        tb = self._tb
        tensor = tb.TensorProto(dtype=tb.DT_STRING, tensor_shape=tb.scalar_shape, string_val=[text.encode()])
        if key in self._described:
            return tb.Value(tag=key, tensor=tensor)
        self._described.add(key)
        return tb.Value(tag=key, tensor=tensor, metadata=tb.text_metadata)

    def _hparams_value(self, tag: str, data):
        hp = self._tb.hparams
        return self._tb.Value(tag=tag, metadata=hp.create_summary_metadata(data), tensor=hp.NULL_TENSOR)

    def _write_hparams(self, params: dict[str, Any]) -> None:
        """(Re)write the HParams file with ``params``, if they changed; atomically."""
        values = hparam_values(params)
        if values == self._hparams:
            return
        tb = self._tb
        start = tb.SessionStartInfo(start_time_secs=self._started)
        for name, value in values.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, str):
                start.hparams[name].string_value = value
            else:
                start.hparams[name].number_value = value
        value = self._hparams_value(tb.hparams.SESSION_START_INFO_TAG, tb.HParamsPluginData(session_start_info=start))
        event = tb.Event(wall_time=self._started, summary=tb.Summary(value=[value]))
        partial = self.folder / (HPARAMS_FILE.replace("tfevents", "partial") + f".{os.getpid()}")
        records = self._open(partial)
        try:
            records.write(event.SerializeToString())
        finally:
            records.close()
        os.replace(partial, self.folder / HPARAMS_FILE)
        self._hparams = values


def _by_time(item) -> float:
    return item[0][1]


def _indented(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())
