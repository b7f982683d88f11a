"""start_run(capture=["tensorboard"]): SummaryWriter calls made inside a run become its records.

Real writers, real event files read back with TensorBoard's EventAccumulator,
real DuckDB.
"""

import threading

import pytest
import tensorboard  # noqa: F401 - the locked test environment has it
import torch
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError, RunCancelled

ORIGINALS = {name: SummaryWriter.__dict__[name] for name in
             ("add_scalar", "add_scalars", "add_histogram", "add_image", "add_text", "add_hparams")}


def accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def restored() -> bool:
    return all(SummaryWriter.__dict__[name] is fn for name, fn in ORIGINALS.items())


def train(writer, steps=10):
    """A loop logging the way existing TensorBoard code does."""
    for step in range(steps):
        writer.add_scalar("loss/train", torch.tensor(1.0 / (step + 1)), step)
        writer.add_scalars("lr", {"group0": 0.1 * step, "group1": 0.2}, step)
        writer.add_histogram("weights", torch.arange(100.0) + step, step)
    writer.add_image("sample", torch.ones(3, 4, 6) * 0.5, 0)
    writer.add_text("notes", "first epoch done", 0)
    writer.add_hparams({"lr": 0.1, "layers": 2}, {"hparam/acc": 0.75})


def test_writer_calls_reach_the_store_and_the_writers_own_files(store_path, read_only, tmp_path):
    with nx.start_run("tb", capture=["tensorboard"]) as run:
        assert not restored()
        writer = SummaryWriter(tmp_path / "tb")
        train(writer)
        writer.close()
    assert restored()

    q = lambda sql: read_only(store_path, sql + " WHERE run_id = ? ORDER BY 1, 2", [run.run_id])  # noqa: E731
    rows = q("SELECT key, step, value FROM metrics")
    assert [r for r in rows if r[0] == "loss/train"] == [("loss/train", i, pytest.approx(1 / (i + 1))) for i in range(10)]
    assert [r[:2] for r in rows if r[0].startswith("lr/")] == [("lr/group0", i) for i in range(10)] + [
        ("lr/group1", i) for i in range(10)]
    assert [r for r in rows if r[0] == "hparam/acc"] == [("hparam/acc", 0, 0.75)]  # once: not again via add_scalar
    histos = q("SELECT key, step, list_sum(counts) FROM histograms")
    assert histos == [("weights", i, 100) for i in range(10)]
    assert q("SELECT key, step, width, height FROM images") == [("sample", 0, 6, 4)]
    assert q("SELECT key, step, text FROM texts") == [("notes", 0, "first epoch done")]
    (params,), = read_only(store_path, "SELECT params FROM runs WHERE run_id = ?", [run.run_id])
    assert params == '{"lr": 0.1, "layers": 2}'

    own = accumulator(tmp_path / "tb")  # the writer wrote its own files as usual
    assert [(e.step, round(e.value, 5)) for e in own.Scalars("loss/train")] == [
        (i, round(1 / (i + 1), 5)) for i in range(10)]
    assert len(own.Histograms("weights")) == 10 and len(own.Images("sample")) == 1
    assert own.Tags()["tensors"] == ["notes/text_summary"]
    group0 = accumulator(tmp_path / "tb" / "lr_group0")
    assert [e.step for e in group0.Scalars("lr")] == list(range(10))


def test_without_write_the_calls_reach_only_the_run(store_path, read_only, tmp_path):
    with nx.start_run(capture=[("tensorboard", {"write": False})]) as run:
        writer = SummaryWriter(tmp_path / "tb")
        train(writer, steps=3)
        writer.close()
    stored = read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'loss/train'")
    assert stored == [(3,)]
    own = accumulator(tmp_path / "tb")
    assert own.Tags()["scalars"] == [] and own.Tags()["histograms"] == [] and own.Tags()["images"] == []
    assert not (tmp_path / "tb" / "lr_group0").exists()
    assert run.status == nx.RunStatus.COMPLETED and restored()


def test_the_writer_is_restored_after_a_run_that_raised(store_path, read_only, tmp_path):
    writer = SummaryWriter(tmp_path / "tb")
    with pytest.raises(ValueError, match="diverged"), nx.start_run(capture="tensorboard") as run:
        writer.add_scalar("loss", 1.0, 0)
        raise ValueError("diverged")
    assert restored() and run.status == nx.RunStatus.FAILED
    writer.add_scalar("loss", 2.0, 1)  # after the run: the writer's alone
    writer.close()
    assert read_only(store_path, "SELECT step, value FROM metrics") == [(0, 1.0)]
    assert [e.step for e in accumulator(tmp_path / "tb").Scalars("loss")] == [0, 1]


def test_runs_on_two_threads_capture_only_their_own_calls(store_path, read_only, tmp_path):
    """Two capturing runs at once, and a thread without a run logging meanwhile."""
    both_started, all_logged = threading.Barrier(3), threading.Barrier(3)
    runs, errors = {}, []

    def capturing(label, value):
        try:
            with nx.start_run(label, capture=["tensorboard"]) as run:
                runs[label] = run
                writer = SummaryWriter(tmp_path / label)
                both_started.wait(10)
                for step in range(50):
                    writer.add_scalar("loss", value, step)
                all_logged.wait(10)
                writer.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def bystander():
        writer = SummaryWriter(tmp_path / "bystander")
        both_started.wait(10)
        for step in range(20):
            writer.add_scalar("loss", 9.0, step)
        all_logged.wait(10)
        writer.close()

    threads = [threading.Thread(target=capturing, args=("a", 1.0)), threading.Thread(target=capturing, args=("b", 2.0)),
               threading.Thread(target=bystander)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    for label, value in (("a", 1.0), ("b", 2.0)):
        rows = read_only(store_path, "SELECT step, value FROM metrics WHERE run_id = ? ORDER BY step",
                         [runs[label].run_id])
        assert rows == [(step, value) for step in range(50)]
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE value = 9.0") == [(0,)]
    assert [e.value for e in accumulator(tmp_path / "bystander").Scalars("loss")] == [9.0] * 20
    assert restored()


def test_the_patch_stays_while_any_run_captures(store_path):
    first = nx.start_run(capture=["tensorboard"])
    done = threading.Event()
    second = {}

    def other():
        second["run"] = nx.start_run(capture=["tensorboard"])
        done.set()

    threading.Thread(target=other).start()
    assert done.wait(30)
    first.end()
    assert not restored()  # the other thread's run still captures
    second["run"].end()
    assert restored()


def test_the_setting_captures_runs_started_without_capture(store_path, settings_env, read_only, tmp_path):
    settings_env(CAPTURE_TENSORBOARD="1", TELEMETRY_INTERVAL="0")
    writer = SummaryWriter(tmp_path / "tb", flush_secs=1)
    with nx.start_run() as on:
        writer.add_scalar("x", 1.0, 0)
    with nx.start_run(capture=[]) as off:
        writer.add_scalar("x", 2.0, 1)
    writer.close()
    assert read_only(store_path, "SELECT run_id, value FROM metrics") == [(on.run_id, 1.0)]
    assert off.status == nx.RunStatus.COMPLETED


def test_a_cancelled_run_stops_the_loop_at_its_next_writer_call(store_path, tmp_path):
    writer = SummaryWriter(tmp_path / "tb")
    with pytest.raises(RunCancelled), nx.start_run(capture=["tensorboard"]) as run:
        run.interrupt(RunCancelled("cancelled"))
        writer.add_scalar("loss", 1.0, 0)
    writer.close()
    assert run.status == nx.RunStatus.CANCELLED and restored()


def test_a_record_the_run_refuses_is_warned_about_once(store_path, tmp_path, read_only):
    writer = SummaryWriter(tmp_path / "tb")
    with nx.start_run(capture=["tensorboard"]) as run, pytest.warns(RuntimeWarning, match="add_scalar") as caught:
        writer.add_scalar("bad", 1.0, 1.5)  # a step the writer takes (as 1) and the run does not
        writer.add_scalar("bad", 1.0, 2.5)
        writer.add_scalar("good", 1.0, 0)
    writer.close()
    assert len([w for w in caught if "add_scalar" in str(w.message)]) == 1
    assert read_only(store_path, "SELECT key FROM metrics WHERE run_id = ?", [run.run_id]) == [("good",)]


@pytest.mark.parametrize("capture, match", [
    (["nosuch"], "unknown framework 'nosuch'"),
    ([("tensorboard", {"wirte": False})], "option 'wirte'"),
    ([("tensorboard", ["write"])], "must be a dict"),
])
def test_a_bad_capture_fails_the_start_with_nothing_recorded(store_path, capture, match):
    with pytest.raises(ConfigError, match=match):
        nx.start_run(capture=capture)
    assert not store_path.exists() or nx.sql("SELECT count(*) AS n FROM runs").n[0] == 0
    assert restored()


def test_without_the_tensorboard_package_capture_says_how_to_install_it(run_python):
    child = run_python(
        "import sys; sys.modules['tensorboard'] = None\n"
        "import notebook_exp as nx\n"
        "from notebook_exp.exceptions import MissingDependency\n"
        "try:\n    nx.start_run(capture=['tensorboard'])\n"
        "except MissingDependency as exc:\n    print('MISSING', exc)\n",
        env={"NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"},
    )
    assert "MISSING tensorboard is not installed; install it with: pip install 'notebook-exp[tensorboard]'" in child.stdout
