"""NotebookExpCallback in real (tiny, randomly initialised) transformers.Trainer runs on the CPU."""

import gc
import json

# transformers.Trainer needs accelerate (transformers[torch]); see the module docstring of the integration
import accelerate  # noqa: F401 - the locked test environment has it
import pytest
import torch  # noqa: E402
import transformers  # noqa: F401 - the locked test environment has it
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import notebook_exp as nx  # noqa: E402
from notebook_exp.integrations.transformers import NotebookExpCallback  # noqa: E402
from notebook_exp.testing import shutdown  # noqa: E402


def dataset(n=32, length=8):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (n, length), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def make_trainer(tmp_path, callback, *, extra=(), max_steps=20, **options):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        vocab_size=100, max_position_embeddings=16)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, logging_steps=2,
                             per_device_train_batch_size=4, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, learning_rate=1e-3, **options)
    data = dataset()
    return Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=data, eval_dataset=data[:8],
                   callbacks=[callback, *extra])


def test_log_history_is_in_the_store_and_params_hold_args_and_config(tmp_path, points, run_rows, read_only,
                                                                       store_path):
    callback = NotebookExpCallback(params={"note": "tiny"})
    trainer = make_trainer(tmp_path, callback, run_name="bert-tiny")
    trainer.train()

    run_id = callback.run.run_id
    assert run_rows() == {run_id: ("bert-tiny", "huggingface", "completed", None)}
    history = trainer.state.log_history
    expected = sorted((key, entry["step"], float(value)) for entry in history for key, value in entry.items()
                      if key != "step" and isinstance(value, (int, float)))
    losses = [(step, value) for key, step, value in expected if key == "loss"]
    assert [step for step, _ in losses] == list(range(2, 21, 2))  # logging_steps=2, max_steps=20
    assert points(run_id) == expected  # loss, grad_norm, learning_rate, epoch, train_runtime, ...
    ((params,),) = read_only(store_path, "SELECT params FROM runs WHERE run_id=?", [run_id])
    params = json.loads(params)
    assert params["note"] == "tiny"
    assert params["args"]["max_steps"] == 20 and params["args"]["logging_steps"] == 2
    assert params["args"]["train_batch_size"] == 4 and params["args"]["report_to"] == []
    assert params["model"]["hidden_size"] == 16 and params["model"]["model_type"] == "bert"


def test_evaluate_after_training_continues_the_run(tmp_path, points, run_rows):
    callback = NotebookExpCallback(experiment="exp", run_name="named")
    trainer = make_trainer(tmp_path, callback, max_steps=4)
    trainer.train()
    metrics = trainer.evaluate()
    run_id = callback.run.run_id
    assert run_rows() == {run_id: ("named", "exp", "completed", None)}
    assert ("eval_loss", 4, metrics["eval_loss"]) in points(run_id)


def test_inside_a_run_it_logs_into_that_run(tmp_path, points, run_rows):
    with nx.start_run("outer", experiment="mine") as run:
        callback = NotebookExpCallback()
        make_trainer(tmp_path, callback, max_steps=4).train()
        assert callback.run is run and run.status.value == "running"
    assert run_rows() == {run.run_id: ("outer", "mine", "completed", None)}
    assert [(s, k) for k, s, _ in points(run.run_id) if k == "loss"] == [(2, "loss"), (4, "loss")]


class Explode(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom at step 3")


def test_a_training_that_raises_never_ends_completed(tmp_path, run_rows):
    callback = NotebookExpCallback()
    trainer = make_trainer(tmp_path, callback, extra=[Explode()])
    with pytest.raises(RuntimeError, match="boom at step 3"):
        trainer.train()
    run = callback.run
    assert run_rows()[run.run_id][2] == "running"  # nothing told the callback yet
    del trainer, callback
    gc.collect()  # the trainer and its callbacks are gone: the run ends failed
    assert run.status.value == "failed"
    shutdown()  # let the store commit the end (which the collector did not wait for)
    ((_name, _experiment, status, error),) = run_rows().values()
    assert status == "failed" and "training did not finish" in error and "garbage collected" in error


def test_a_new_training_ends_the_abandoned_one_failed(tmp_path, run_rows):
    callback = NotebookExpCallback()
    with pytest.raises(RuntimeError):
        make_trainer(tmp_path, callback, extra=[Explode()]).train()
    first = callback.run.run_id
    make_trainer(tmp_path, callback, max_steps=2).train()
    second = callback.run.run_id
    rows = run_rows()
    assert first != second and rows[first][2] == "failed" and rows[second][2] == "completed"
