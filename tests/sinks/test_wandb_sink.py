"""The wandb sink against the real wandb, offline: runs are read back from their
transaction logs (``readback_wandb``) and compared with what the store holds."""

import math
import threading

import numpy as np
import psutil
import pytest
import wandb  # noqa: F401 - the locked test environment has it
from readback_wandb import find_run, same_points, store_points, verify

import notebook_exp as nx
from notebook_exp import _plugins as plugins
from notebook_exp.exceptions import RunCancelled
from notebook_exp.models import MetricBatch, RunInfo, RunStatus
from notebook_exp.sinks import registry
from notebook_exp.sinks.wandb import STEP_PREFIX, WandbSink, coarsen, wandb_id
from notebook_exp.testing import shutdown

SINKS = ["duckdb", "wandb"]


@pytest.mark.parametrize("sinks", [["wandb"], SINKS], ids=["alone", "with-duckdb"])
def test_the_contract_run_reads_back(sinks, store_path, read_only, tmp_path):
    """What the shared contract suite logs (it runs each sink alone), checked by the
    verifier it imports."""
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    with nx.start_run("contract", params={"lr": 0.1}, sinks=sinks) as run:
        run.log_params(bs=8)
        run.set_tags(["t"])
        for i in range(100):
            run.log(loss=1.0 / (i + 1), acc=float("nan") if i == 5 else i / 100, step=i)
        run.log_text("sample", "hello")
        run.log_histogram("w", np.random.default_rng(0).normal(size=1000))
        run.log_image("img", np.ones((2, 3)))
        run.log_artifact(artifact)
        assert run.flush(timeout=30)
    if sinks == SINKS:  # the comparison with the store really happened
        assert len(store_points(read_only, store_path, run.run_id)) == 200
    verify(run, store_path, read_only)


def test_keys_with_their_own_steps_read_back_as_stored(store_path, read_only):
    params = {"lr": 0.01, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "layers": 3}
    with nx.start_run("steps", experiment="wb", params=params, tags=["a", "b"], sinks=SINKS) as run:
        for i in range(50):
            run.log(loss=math.exp(-i / 10), step=i)
            if i % 10 == 0:
                run.log(**{"val/acc": i / 50, "a.b": -i}, step=i // 10)
        run.log(late=float("inf"), step=3)  # a key that starts below the others' steps
        run.log(late=float("-inf"), step=1)  # and goes down
        run.log(late=1e-300, step=7)
        run.log(loss=float("nan"), step=50)
        run.set_tags(["a", "b", "c"])
    w = find_run(store_path.parent, run.run_id)
    want = store_points(read_only, store_path, run.run_id)
    assert len(want) == 50 + 5 + 5 + 3 + 1
    assert same_points(w.points(), want)
    assert (w.run_id, w.project, w.name) == (run.run_id, "wb", "steps")
    assert {k: w.config[k] for k in params} == params  # nested values kept as they are
    assert w.tags == ["a", "b", "c"]
    for key in ("loss", "val/acc", "a.b", "late"):
        assert w.metrics[key] == STEP_PREFIX + key
        assert w.metrics[STEP_PREFIX + key] == ""  # an x axis of its own, hidden
    steps = [row["_step"] for row in w.history]
    assert steps == list(range(len(steps)))  # W&B's own counter only goes up
    assert w.summary["loss"] is not None and math.isnan(w.summary["loss"])
    assert w.summary["notebook_exp/status"] == "completed" and w.exit_code == 0


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [(RunStatus.COMPLETED, 0), (RunStatus.FAILED, 1), (RunStatus.CANCELLED, 130)],
)
def test_terminal_status_and_exit_code(status, exit_code, store_path, read_only):
    def body(run):
        run.log(x=1.0, step=0)
        if status is RunStatus.FAILED:
            raise ValueError("boom")
        if status is RunStatus.CANCELLED:
            raise RunCancelled("stopped by the test")

    with pytest.raises((ValueError, RunCancelled)) if status is not RunStatus.COMPLETED else _nothing():
        with nx.start_run("s", experiment="status", sinks=SINKS) as run:
            body(run)
    ((stored,),) = read_only(store_path, "SELECT status FROM runs WHERE run_id=?", [run.run_id])
    assert stored == status.value
    w = find_run(store_path.parent, run.run_id)
    assert w.summary["notebook_exp/status"] == status.value
    assert w.exit_code == exit_code
    assert same_points(w.points(), store_points(read_only, store_path, run.run_id))
    if status is RunStatus.FAILED:
        assert "ValueError: boom" in w.summary["notebook_exp/error"]
    elif status is RunStatus.CANCELLED:
        assert w.summary["notebook_exp/error"] == "stopped by the test"
    else:
        assert "notebook_exp/error" not in w.summary


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_batch_is_one_row_per_step(store_path):
    """Driven by hand: points of one step share a row; a repeated step gets another."""
    sink = registry.create("wandb")
    sink.start_run(RunInfo(run_id="rows1", experiment="e", name="n", store_path=str(store_path)))
    rows = [("a", 0, 10.0, 0.0), ("a", 1, 11.0, 1.0), ("a", 1, 12.0, 1.5), ("b", 1, 13.0, -1.0),
            ("b", 0, 9.0, -0.5), ("c", 5, 14.0, 5.0), ("c", 3, 15.0, 3.0)]
    sink.log_metrics(MetricBatch.from_rows("rows1", rows))
    sink.log_metrics(MetricBatch.from_rows("rows1", [("a", 0, 16.0, 2.0)]))  # an old step, later
    sink.log_metrics(MetricBatch.from_rows("rows1", []))
    sink.end_run(RunStatus.COMPLETED, None)
    sink.close()
    sink.close()  # safe twice
    w = find_run(store_path.parent, "rows1")
    history = [{k: v for k, v in row.items() if not k.startswith("_")} | {"_timestamp": row["_timestamp"]}
               for row in w.history]
    assert history == [
        {"a": 0.0, STEP_PREFIX + "a": 0, "b": -0.5, STEP_PREFIX + "b": 0, "_timestamp": 10.0},
        {"a": 1.0, STEP_PREFIX + "a": 1, "b": -1.0, STEP_PREFIX + "b": 1, "_timestamp": 13.0},
        {"a": 1.5, STEP_PREFIX + "a": 1, "_timestamp": 12.0},
        {"c": 3.0, STEP_PREFIX + "c": 3, "_timestamp": 15.0},
        {"c": 5.0, STEP_PREFIX + "c": 5, "_timestamp": 14.0},
        {"a": 2.0, STEP_PREFIX + "a": 0, "_timestamp": 16.0},
    ]
    assert sorted(w.points()) == sorted((k, s, v) for k, s, _t, v in [*rows, ("a", 0, 16.0, 2.0)])


def test_runs_live_at_once_from_threads_stay_apart(store_path, read_only):
    count, steps = 3, 300
    barrier = threading.Barrier(count)
    runs, errors = [None] * count, []

    def work(i):
        try:
            barrier.wait(timeout=30)
            with nx.start_run(f"t{i}", experiment="threads", params={"i": i}, sinks=SINKS) as run:
                runs[i] = run
                for s in range(steps):
                    run.log(x=i * 1000 + s, y=-float(i), step=s)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, run in enumerate(runs):
        w = find_run(store_path.parent, run.run_id)
        got = w.points()
        assert len(got) == 2 * steps and same_points(got, store_points(read_only, store_path, run.run_id))
        assert {v for k, _s, v in got if k == "y"} == {-float(i)}
        assert (w.name, w.config["i"], w.exit_code) == (f"t{i}", i, 0)


def test_large_histograms_are_merged_to_wandb_limit(store_path, read_only):
    with nx.start_run("h", experiment="hist", sinks=SINKS) as run:
        run.log_histogram("w", np.random.default_rng(1).normal(size=5000), bins=1000)
        run.log_histogram("w", np.arange(10.0), bins=4)
    w = find_run(store_path.parent, run.run_id)
    stored = read_only(store_path, "SELECT step, bin_edges, counts FROM histograms ORDER BY step")
    logged = w.rich("w")
    assert [s for s, _ in logged] == [s for s, _, _ in stored] == [0, 1]
    (_, big), (_, small) = logged
    assert len(big["values"]) == 500 and sum(big["values"]) == 5000
    assert big["bins"][0] == stored[0][1][0] and big["bins"][-1] == stored[0][1][-1]
    assert small["values"] == list(stored[1][2]) and small["bins"] == list(stored[1][1])


def test_coarsen_keeps_totals_and_ends():
    edges, counts = [float(i) for i in range(1026)], [1] * 1025
    new_edges, new_counts = coarsen(edges, counts, 512)
    assert len(new_counts) <= 512 and len(new_edges) == len(new_counts) + 1
    assert sum(new_counts) == 1025 and (new_edges[0], new_edges[-1]) == (0.0, 1025.0)
    assert coarsen([0.0, 1.0], [3], 512) == ([0.0, 1.0], [3])


def test_settings_choose_project_and_folder(store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_EXP_WANDB_PROJECT", "elsewhere")
    monkeypatch.setenv("NOTEBOOK_EXP_WANDB_DIR", str(tmp_path / "wb"))
    with nx.start_run("p", experiment="exp/with:odd?chars", sinks=SINKS) as run:
        run.log(x=1.0, step=0)
    assert not (store_path.parent / "wandb").exists()
    assert find_run(tmp_path / "wb", run.run_id).project == "elsewhere"
    with nx.start_run("q", sinks=["duckdb", ("wandb", {"project": "from-options"})]) as run:
        run.log(x=1.0, step=0)
    assert find_run(tmp_path / "wb", run.run_id).project == "from-options"  # the run's options win


def test_wandb_dir_and_mode_from_the_environment(store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "from_env"))
    with nx.start_run("d", experiment="exp/odd:name", sinks=SINKS) as run:
        run.log(x=1.0, step=0)
    assert find_run(tmp_path / "from_env", run.run_id).project == "exp-odd-name"
    shutdown()  # wandb reads its environment once per service
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_DIR")
    artifact = tmp_path / "f.txt"
    artifact.write_text("y")
    with nx.start_run("off", sinks=SINKS) as run:
        run.log(x=1.0, step=0)
        run.log_text("t", "hi")
        run.log_artifact(artifact)
    assert not (store_path.parent / "wandb").exists()


def test_run_ids_are_kept_or_made_valid():
    assert wandb_id("0123456789abcdef") == "0123456789abcdef"
    assert wandb_id("a/b:c d") == "a-b-c-d"


def test_no_service_process_outlives_shutdown(store_path):
    with nx.start_run("svc", sinks=SINKS) as run:
        run.log(x=1.0, step=0)
    assert find_run(store_path.parent, run.run_id).exit_code == 0
    shutdown()
    left = [p for p in psutil.Process().children(recursive=True) if "wandb" in _name(p)]
    assert not left, left


def _name(process) -> str:
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return ""


def test_plugin_metadata_and_settings():
    assert registry.load("wandb") is WandbSink
    info = plugins.info("sink", "wandb")
    assert info.loads and "metrics" in info.capabilities
    assert (WandbSink.libraries, WandbSink.extra, WandbSink.breaker_failures) == (("wandb",), "wandb", 5)
    assert WandbSink.threaded
    for name, field in WandbSink.Settings.model_fields.items():
        assert field.description, name
    assert WandbSink().settings.mode is None  # offline unless WANDB_MODE says otherwise


def test_importing_the_sink_does_not_import_wandb(run_python):
    proc = run_python(
        "import sys, notebook_exp, notebook_exp.sinks.wandb as m\n"
        "from notebook_exp.sinks import registry\n"
        "assert registry.load('wandb') is m.WandbSink\n"
        "print('wandb' in sys.modules)"
    )
    assert proc.stdout.strip() == "False"
