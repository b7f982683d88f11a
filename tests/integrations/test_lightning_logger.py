"""NotebookExpLogger in real (tiny) Lightning fits on the CPU."""

import csv
import json
from argparse import Namespace
from collections import Counter

import pytest
import torch  # noqa: E402
from lightning.pytorch import LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import notebook_exp as nx  # noqa: E402
from notebook_exp.integrations.lightning import NotebookExpLogger  # noqa: E402


class TinyMLP(LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05, fail_at: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at is not None and self.global_step >= self.hparams.fail_at:
            raise RuntimeError("boom in training_step")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loaders():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randn(64, 1, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)


def trainer(tmp_path, loggers, **options):
    options = {"enable_checkpointing": False, "max_epochs": 2, **options}
    return Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                   logger=loggers, default_root_dir=tmp_path, log_every_n_steps=2, **options)


def csv_points(path):
    """``(key, step, value)`` of every filled cell of a CSVLogger's metrics.csv."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            out += [(key, step, float(value)) for key, value in row.items() if value != ""]
    return sorted(out)


def test_fit_logs_every_csv_point_and_completes(tmp_path, points, run_rows, read_only, store_path):
    logger = NotebookExpLogger(name="mnist", run_name="tiny")
    csv_logger = CSVLogger(tmp_path / "csv")
    train, val = loaders()
    trainer(tmp_path, [logger, csv_logger]).fit(TinyMLP(), train, val)

    expected = csv_points(csv_logger.log_dir + "/metrics.csv")
    assert {key for key, _, _ in expected} >= {"train_loss_step", "train_loss_epoch", "val_loss", "epoch"}
    got = points(logger.version)
    assert Counter(got) == Counter(expected)  # same keys, steps and values; nothing more, nothing less
    assert run_rows() == {logger.version: ("tiny", "mnist", "completed", None)}
    (params,) = read_only(store_path, "SELECT params FROM runs WHERE run_id=?", [logger.version])[0]
    assert '"hidden": 8' in params and '"lr": 0.05' in params and '"fail_at": null' in params


def test_a_fit_that_raises_fails_its_run(tmp_path, run_rows):
    logger = NotebookExpLogger(name="broken")
    train, _ = loaders()
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer(tmp_path, [logger]).fit(TinyMLP(fail_at=3), train)
    ((_name, _experiment, status, error),) = run_rows().values()
    assert status == "failed"
    assert "RuntimeError: boom in training_step" in error


def test_checkpoints_become_artifacts_with_log_model(tmp_path, read_only, store_path):
    logger = NotebookExpLogger(log_model=True)
    train, val = loaders()
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer(tmp_path, [logger], enable_checkpointing=True, callbacks=[checkpoint]).fit(TinyMLP(), train, val)

    rows = read_only(store_path, "SELECT name, path FROM artifacts WHERE run_id=?", [logger.version])
    names = {name for name, _ in rows}
    assert "checkpoints/last.ckpt" in names
    assert any(name.startswith("checkpoints/epoch=") for name in names)
    stored = tmp_path / "artifacts"  # the store's folder is tmp_path
    for name, path in rows:
        assert path.startswith(str(stored)) and torch.load(path, weights_only=False)["state_dict"]


def test_inside_a_run_it_logs_into_that_run(tmp_path, points, run_rows):
    train, val = loaders()
    with nx.start_run("outer", experiment="exp") as run:
        logger = NotebookExpLogger()
        trainer(tmp_path, [logger]).fit(TinyMLP(), train, val)
        assert logger.version == run.run_id and logger.name == "exp"
        assert run.status.value == "running"  # finalize left the run to its owner
        run.log(after=1.0, step=0)
    assert list(run_rows()) == [run.run_id]
    assert run_rows()[run.run_id][2] == "completed"
    keys = {key for key, _, _ in points(run.run_id)}
    assert {"train_loss_step", "val_loss", "after"} <= keys


def test_hyperparams_from_namespace_and_odd_values(tmp_path, read_only, store_path):
    logger = NotebookExpLogger()
    logger.log_hyperparams(Namespace(lr=0.1, layers=(4, 8), act=torch.nn.ReLU, path=tmp_path))
    logger.log_hyperparams({"nested": {"a": 1, "b": [1.5, "x"]}, "t": torch.tensor(3)})
    logger.log_metrics({"m": 1.0, "text": "skipped", "step": 7}, step=3)
    logger.finalize("success")
    import json

    ((params, status),) = read_only(store_path, "SELECT params, status FROM runs WHERE run_id=?",
                                    [logger.version])
    assert json.loads(params) == {"lr": 0.1, "layers": [4, 8], "act": str(torch.nn.ReLU), "path": str(tmp_path),
                                  "nested": {"a": 1, "b": [1.5, "x"]}, "t": 3}
    assert status == "completed"


def test_a_second_fit_continues_the_same_run(tmp_path, points, run_rows):
    logger = NotebookExpLogger()
    train, val = loaders()
    trainer(tmp_path, [logger]).fit(TinyMLP(), train, val)
    first = logger.version
    before = {key for key, _, _ in points(first)}
    trainer(tmp_path, [logger]).validate(TinyMLP(), val)  # logs again, then finalizes "success" again
    assert logger.version == first
    assert list(run_rows()) == [first] and run_rows()[first][2] == "completed"
    assert "val_loss" not in before or len([p for p in points(first) if p[0] == "val_loss"]) > 2


@pytest.mark.parametrize("status, exc, expected", [
    ("success", None, "completed"),
    ("finished", None, "completed"),  # SLURM's requeue signal
    ("failed", RuntimeError("boom"), "failed"),
    ("failed", KeyboardInterrupt(), "cancelled"),
    ("failed", None, "failed"),
    ("aborted", None, "failed"),
])
def test_finalize_status_mapping(status, exc, expected):
    from notebook_exp.integrations.lightning import fit_outcome

    if exc is None:
        assert fit_outcome(status)[0].value == expected
        return
    try:
        raise exc
    except BaseException:  # Lightning calls finalize("failed") inside its except block
        found, error = fit_outcome(status)
    assert found.value == expected
    assert expected == "cancelled" or "boom" in error


def test_a_pickled_logger_continues_the_same_run(tmp_path):
    import pickle

    logger = NotebookExpLogger(name="spawned")
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))  # as ddp_spawn sends it to its processes
    assert copy.run is None and copy._version == logger.version
    logger.finalize("success")
    copy.log_metrics({"a": 2.0}, step=1)
    assert copy.version == logger.version and copy.run.status.value == "running"
    copy.finalize("success")


def events_of(read_only, store_path, run_id, event):
    return read_only(store_path, "SELECT detail FROM events WHERE run_id=? AND event=? ORDER BY ts", [run_id, event])


def test_a_fit_resumed_from_its_checkpoint_continues_the_same_run(tmp_path, points, run_rows, read_only, store_path):
    train, val = loaders()
    first = NotebookExpLogger(name="resume", params={"phase": 1})
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first], enable_checkpointing=True, callbacks=[checkpoints]).fit(TinyMLP(), train, val)
    run_id = first.version
    before = points(run_id)
    last_step = max(step for key, step, _ in before if key == "train_loss_step")

    # a new process would build a new logger: the run is named by version=, the checkpoint gives the steps
    again = NotebookExpLogger(name="resume", version=run_id, params={"phase": 2})
    log = CSVLogger(tmp_path / "csv")
    resumed = trainer(tmp_path, [again, log], enable_checkpointing=True, max_epochs=4,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    resumed.fit(TinyMLP(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    assert again.version == run_id and list(run_rows()) == [run_id]
    assert run_rows()[run_id][1:3] == ("resume", "completed")
    after = points(run_id)
    assert Counter(before) <= Counter(after)  # the first fit's points stay, every one
    new = sorted(set(after) - set(before))
    assert new and min(step for key, step, _ in new if key == "train_loss_step") > last_step
    # no step holds two values (Lightning logs "epoch" with every call at a step: the same value again)
    assert len({(key, step) for key, step, _ in after}) == len(set(after))
    assert set(csv_points(f"{log.log_dir}/metrics.csv")) == set(new)  # what the resumed fit logged, and only that
    ((params,),) = read_only(store_path, "SELECT params FROM runs WHERE run_id=?", [run_id])
    assert json.loads(params)["phase"] == 2 and json.loads(params)["hidden"] == 8
    assert len(events_of(read_only, store_path, run_id, "resumed")) == 1


def test_a_fit_from_a_checkpoint_without_version_warns_with_the_run_id(tmp_path, run_rows):
    train, val = loaders()
    first = NotebookExpLogger(name="resume")  # checkpoints go where Lightning puts this logger's: <exp>/<run>/
    trainer(tmp_path, [first], enable_checkpointing=True, max_epochs=1).fit(TinyMLP(), train, val)
    ckpt = next((tmp_path / "resume" / first.version / "checkpoints").glob("*.ckpt"))
    second = NotebookExpLogger(name="resume")
    with pytest.warns(RuntimeWarning, match=f"NotebookExpLogger\\(version='{first.version}'\\) continues"):
        trainer(tmp_path, [second], max_epochs=2).fit(TinyMLP(), train, val, ckpt_path=str(ckpt))
    assert second.version != first.version and set(run_rows()) == {first.version, second.version}


def test_a_version_the_store_does_not_hold_starts_that_run(tmp_path, run_rows):
    train, val = loaders()
    logger = NotebookExpLogger(name="named", version="my-run-1")
    trainer(tmp_path, [logger], max_epochs=1).fit(TinyMLP(), train, val)
    assert run_rows()["my-run-1"][1:3] == ("named", "completed")
