"""The tensorboard sink, read back with TensorBoard's own readers and compared with the store."""

import math

import numpy as np
import pytest
from readback_tensorboard import (
    accumulator,
    end_status,
    folder_of,
    hparams,
    same,
    same_rows,
    scalar_rows,
    texts,
)

import notebook_exp as nx
from notebook_exp.models import MetricBatch, RunInfo, RunStatus
from notebook_exp.sinks import registry
from notebook_exp.sinks.tensorboard import HPARAMS_FILE, STATUS_TAG, TensorBoardSink

SINKS = ["duckdb", "tensorboard"]
METRICS_SQL = "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY key, step"


def test_scalars_are_what_the_store_holds(store_path, read_only):
    values = [0.5, math.nan, math.inf, -math.inf, 1e-3, -2.25]
    with nx.start_run("scalars", experiment="tb", params={"lr": 0.1}, sinks=SINKS) as run:
        for i, v in enumerate(values):
            run.log(**{"train/loss": v, "train/acc": i / 7}, step=10 * i)
        run.log(**{"val/loss": 0.25}, step=3)  # a key of its own, at a step no other key has
        run.log(**{"val/loss": 0.125})  # its next step: 4
        assert run.flush(timeout=30)
    acc = accumulator(folder_of(run, store_path))
    stored = read_only(store_path, METRICS_SQL, [run.run_id])
    assert len(stored) == 14
    got = scalar_rows(acc)
    assert [row[:2] for row in got] == [row[:2] for row in stored]
    assert same_rows(got, stored), got
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert math.isnan(losses[1]) and losses[2:4] == [math.inf, -math.inf]


def test_wall_times_are_the_points_times(store_path, read_only):
    with nx.start_run("times", experiment="tb", sinks=SINKS) as run:
        for i in range(5):
            run.log(a=float(i), b=-float(i), step=i)
    acc = accumulator(folder_of(run, store_path))
    stored = read_only(
        store_path, "SELECT key, step, epoch_us(ts) / 1e6 FROM metrics WHERE run_id = ? ORDER BY key, step",
        [run.run_id],
    )
    got = [(key, e.step, e.wall_time) for key in ("a", "b") for e in acc.Scalars(key)]
    assert [row[:2] for row in got] == [row[:2] for row in stored]
    assert all(abs(g[2] - s[2]) < 1e-5 for g, s in zip(got, stored)), (got, stored)


def test_params_are_flattened_into_hparams(store_path):
    params = {
        "lr": 0.01,
        "epochs": 3,
        "amp": True,
        "name": "resnet",
        "optimizer": {"kind": "adam", "betas": [0.9, 0.999], "decay": {"rate": 0.5}},
        "layers": [64, 32],
        "seed": None,
        "huge": 2**60,
    }
    with nx.start_run("params", experiment="tb", params=params, sinks=SINKS) as run:
        run.log(loss=1.0)
        run.log_params(bs=8, lr=0.02)  # an update after the first points
    folder = folder_of(run, store_path)
    assert hparams(accumulator(folder)) == {
        "lr": 0.02,
        "epochs": 3.0,
        "amp": True,
        "name": "resnet",
        "optimizer.kind": "adam",
        "optimizer.betas": "[0.9, 0.999]",
        "optimizer.decay.rate": 0.5,
        "layers": "[64, 32]",
        "seed": "null",
        "huge": str(2**60),
        "bs": 8.0,
    }
    files = sorted(p.name for p in folder.iterdir())
    assert files[0] == HPARAMS_FILE and len(files) == 2  # no partial file left behind


def _completed():
    pass


def _failed():
    raise ValueError("boom in the training loop")


def _cancelled():
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("body", "raises", "status", "hparams_status"),
    [
        (_completed, None, "completed", "STATUS_SUCCESS"),
        (_failed, ValueError, "failed", "STATUS_FAILURE"),
        (_cancelled, KeyboardInterrupt, "cancelled", "STATUS_UNKNOWN"),
    ],
)
def test_terminal_status(body, raises, status, hparams_status, store_path, read_only):
    run = nx.start_run(f"ends-{status}", experiment="tb", params={"lr": 0.1}, sinks=SINKS)
    if raises is None:
        with run:
            run.log(loss=1.0)
            body()
    else:
        with pytest.raises(raises), run:
            run.log(loss=1.0)
            body()
    assert read_only(store_path, "SELECT status FROM runs WHERE run_id = ?", [run.run_id]) == [(status,)]
    acc = accumulator(folder_of(run, store_path))
    assert end_status(acc) == hparams_status
    ((step, report),) = texts(acc, STATUS_TAG)
    assert report.splitlines()[0] == status
    if status == "failed":
        assert "ValueError: boom in the training loop" in report


def test_histograms_images_and_text_read_back(store_path, read_only):
    rng = np.random.default_rng(1)
    with nx.start_run("rich", experiment="tb", sinks=SINKS) as run:
        for step in range(3):
            run.log_histogram("weights", rng.normal(loc=step, size=500), step=step, bins=16)
        run.log_image("sample", rng.random((4, 5, 3)))
        run.log_image("mask", np.eye(3))
        run.log_text("note", "first *markdown*")
        run.log_text("note", "second")
    acc = accumulator(folder_of(run, store_path))
    stored = read_only(store_path, "SELECT step, bin_edges, counts FROM histograms ORDER BY step")
    histos = acc.Histograms("weights")
    assert [h.step for h in histos] == [row[0] for row in stored] == [0, 1, 2]
    for h, (_step, edges, counts) in zip(histos, stored):
        value = h.histogram_value
        assert list(value.bucket) == counts and value.num == sum(counts) == 500
        assert value.min == edges[0] and value.max == edges[-1]
        assert all(same(a, b) for a, b in zip(value.bucket_limit, edges[1:]))
    pngs = dict(read_only(store_path, "SELECT key, png FROM images"))
    (sample,), (mask,) = acc.Images("sample"), acc.Images("mask")
    assert (sample.width, sample.height, sample.encoded_image_string) == (5, 4, pngs["sample"])
    assert (mask.width, mask.height, mask.encoded_image_string) == (3, 3, pngs["mask"])
    assert texts(acc, "note") == [(0, "first *markdown*"), (1, "second")]
    assert read_only(store_path, "SELECT step, text FROM texts ORDER BY step") == texts(acc, "note")


def test_the_hparams_tab_compares_runs(store_path):
    """TensorBoard's own HParams backend (what its HParams tab asks) sees every run,
    its params, its status and its last loss."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    runs = {}
    for lr in (0.1, 0.01):
        with nx.start_run(f"lr{lr}", experiment="sweep", params={"lr": lr}, sinks=SINKS) as run:
            run.log_params(bs=8)
            for i in range(10):
                run.log(loss=lr / (i + 1), step=i)
        runs[run.run_id] = run
    with pytest.raises(RuntimeError), nx.start_run("diverged", experiment="sweep", params={"lr": 1.0},
                                                   sinks=SINKS) as run:
        runs[run.run_id] = run
        run.log(loss=5.0)
        raise RuntimeError("nan loss")
    root = folder_of(run, store_path).parent.parent
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(root))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(root), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(root))
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=[0, 1, 2, 3],
        col_params=[api_pb2.ColParams(hparam="lr"), api_pb2.ColParams(hparam="bs"),
                    api_pb2.ColParams(metric=api_pb2.MetricName(tag="loss"))],
    )
    response = list_session_groups.Handler(
        context.RequestContext(), backend_context.Context(tb), "", request
    ).run()
    seen = {}
    for group in response.session_groups:
        (session,) = group.sessions
        params = {k: v.number_value for k, v in group.hparams.items()}
        (metric,) = group.metric_values
        seen[session.name] = (params, api_pb2.Status.Name(session.status), metric.value)
    folders = {f"sweep/{folder_of(r, store_path).name}": r for r in runs.values()}
    assert set(seen) == set(folders)
    for name, (params, status, loss) in seen.items():
        run = folders[name]
        assert params == {k: float(v) for k, v in run.params.items()}
        assert status == ("STATUS_FAILURE" if run.name == "diverged" else "STATUS_SUCCESS")
        assert same(loss, 5.0 if run.name == "diverged" else run.params["lr"] / 10)


def test_dir_setting_and_safe_folder_names(store_path, settings_env, tmp_path):
    root = tmp_path / "boards"
    settings_env(TENSORBOARD_DIR=root)
    with nx.start_run("my run: 1/2", experiment="../up and away", sinks=["tensorboard"]) as run:
        run.log(loss=0.5)
    folder = folder_of(run, store_path)
    assert folder.parent.parent == root and folder.is_dir()
    assert folder.parent.name == "up_and_away"
    assert folder.name == f"my_run_1_2-{run.run_id}"
    assert not (store_path.parent / "tensorboard").exists()
    assert scalar_rows(accumulator(folder)) == [("loss", 0, 0.5)]


def test_a_new_attempt_of_a_run_replaces_the_earlier_one(store_path, tmp_path):
    info = RunInfo(run_id="r1", experiment="e", name="n", params={"lr": 1}, store_path=str(store_path))
    for attempt, status in ((0, RunStatus.FAILED), (1, RunStatus.COMPLETED)):
        sink = registry.create("tensorboard")
        sink.start_run(info)
        sink.log_metrics(MetricBatch.from_rows("r1", [("k", s, 1.0 + s, float(attempt)) for s in range(3)]))
        sink.end_run(status, "first attempt failed" if attempt == 0 else None)
        sink.close()
        sink.close()  # a second close is harmless
    acc = accumulator(sink.folder)
    assert scalar_rows(acc) == [("k", 0, 1.0), ("k", 1, 1.0), ("k", 2, 1.0)]
    assert end_status(acc) == "STATUS_SUCCESS"
    assert len(list(sink.folder.glob("events.out.tfevents.*"))) == 2


def test_one_event_per_step_and_time_holds_every_key(store_path):
    rows = [(key, step, 100.0 + step, step * 0.5) for step in range(4) for key in ("a", "b", "c")]
    rows.append(("a", 9, 200.0, 1.0))  # a point alone at its step
    sink = TensorBoardSink()
    sink.start_run(RunInfo(run_id="r2", experiment="e", name="n", store_path=str(store_path)))
    sink.log_metrics(MetricBatch.from_rows("r2", rows))
    sink.close()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (stream,) = [p for p in sink.folder.iterdir() if p.name != HPARAMS_FILE]
    events = [e for e in EventFileLoader(str(stream)).Load() if e.HasField("summary")]
    assert [(e.step, e.wall_time, [v.tag for v in e.summary.value]) for e in events] == [
        (0, 100.0, ["a", "b", "c"]), (1, 101.0, ["a", "b", "c"]), (2, 102.0, ["a", "b", "c"]),
        (3, 103.0, ["a", "b", "c"]), (9, 200.0, ["a"]),
    ]


def test_listed_and_explained_without_tensorboard(run_python):
    """Without the tensorboard package, ``notebook-exp plugins`` still lists the sink
    with its install line (importing it imports no tensorboard), and starting it
    says what to install."""
    proc = run_python(
        "import sys\n"
        "sys.modules['tensorboard'] = None  # as if not installed\n"
        "from notebook_exp.cli import main\n"
        "from notebook_exp.exceptions import MissingDependency\n"
        "from notebook_exp.models import RunInfo\n"
        "from notebook_exp.sinks.tensorboard import TensorBoardSink\n"
        "assert sys.modules['tensorboard'] is None\n"
        "main(['plugins'])\n"
        "try:\n"
        "    TensorBoardSink().start_run(RunInfo(run_id='r', experiment='e', name='n'))\n"
        "except MissingDependency as exc:\n"
        "    print('start:', exc)\n"
    )
    (listed,) = [line for line in proc.stdout.splitlines() if line.split()[:2] == ["sink", "tensorboard"]]
    assert "pip install 'notebook-exp[tensorboard]'" in listed
    assert "start: " in proc.stdout and "pip install 'notebook-exp[tensorboard]'" in proc.stdout.split("start: ")[1]


def test_a_resumed_run_keeps_its_earlier_event_files(store_path):
    from readback_tensorboard import accumulator, folder_of, scalar_rows

    with nx.start_run("resumable", sinks=["duckdb", "tensorboard"]) as run:
        for i in range(10):
            run.log(loss=float(i))
    with nx.start_run(run_id=run.run_id, resume=True, sinks=["duckdb", "tensorboard"]) as again:
        for i in range(10, 20):
            again.log(loss=float(i))
    rows = scalar_rows(accumulator(folder_of(again, store_path)), ["loss"])
    assert [step for _k, step, _v in rows] == list(range(20))
