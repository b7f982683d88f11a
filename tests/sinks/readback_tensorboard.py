"""Reading back what the tensorboard sink wrote, with TensorBoard's own ``EventAccumulator``.

``verify`` is the contract suite's check of the run ``test_contract.py`` logs;
the helpers serve ``test_tensorboard_sink.py`` too. A run's folder is found as
the sink finds it: the ``NOTEBOOK_EXP_TENSORBOARD_DIR`` setting, else
``tensorboard/`` beside the store, then ``<experiment>/<run name>-<run id>``.
"""

from __future__ import annotations

import math
from pathlib import Path

from notebook_exp.sinks.tensorboard import STATUS_TAG, TensorBoardSink, event_root, run_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def folder_of(run, store_path) -> Path:
    """The folder holding ``run``'s event files."""
    root = event_root(TensorBoardSink().settings.dir, store_path)  # the settings a new sink gets
    return run_folder(root, run.experiment, run.name, run.run_id)


def accumulator(folder):
    """An ``EventAccumulator`` of ``folder`` that kept every event, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_rows(acc, keys=None) -> list[tuple[str, int, float]]:
    """``(key, step, value)`` of every scalar point, by key then step."""
    keys = sorted(acc.Tags()["scalars"] if keys is None else keys)
    return [(key, e.step, e.value) for key in keys for e in sorted(acc.Scalars(key), key=lambda e: e.step)]


def same(a: float, b: float) -> bool:
    """Equal as TensorBoard keeps scalars (32-bit floats), NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30)


def same_rows(got, want) -> bool:
    """The same keys and steps in the same order, and the same values (see :func:`same`)."""
    return len(got) == len(want) and all(
        g[:2] == w[:2] and same(g[2], w[2]) for g, w in zip(got, want)
    )


def texts(acc, tag: str) -> list[tuple[int, str]]:
    """``(step, text)`` of every text record under ``tag``."""
    from tensorboard.util import tensor_util

    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors(tag)]


def hparams(acc) -> dict:
    """The params of the HParams session start info (the first one, as TensorBoard reads it)."""
    from tensorboard.plugins.hparams import metadata

    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def end_status(acc) -> str:
    """The HParams session end status, by name (``STATUS_SUCCESS``, ...)."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG]
    return api_pb2.Status.Name(metadata.parse_session_end_info_plugin_data(content).status)


def verify(run, store_path, read_only) -> None:
    """What the contract run logged is in its event files, as TensorBoard reads them."""
    acc = accumulator(folder_of(run, store_path))
    want = [("acc", i, math.nan if i == 5 else i / 100) for i in range(100)]
    want += [("loss", i, 1.0 / (i + 1)) for i in range(100)]
    got = scalar_rows(acc)
    assert same_rows(got, want), got[:5]
    stored = read_only(store_path, "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY key, step",
                       [run.run_id])
    assert not stored or same_rows(got, stored)  # the duckdb sink ran beside it
    assert hparams(acc) == {"lr": 0.1, "bs": 8.0}
    assert end_status(acc) == "STATUS_SUCCESS"
    assert texts(acc, STATUS_TAG) == [(0, "completed")]
    assert texts(acc, "sample") == [(0, "hello")]
    (histo,) = acc.Histograms("w")
    assert histo.histogram_value.num == 1000 and sum(histo.histogram_value.bucket) == 1000
    (image,) = acc.Images("img")
    assert (image.width, image.height) == (3, 2) and image.encoded_image_string.startswith(PNG_SIGNATURE)
