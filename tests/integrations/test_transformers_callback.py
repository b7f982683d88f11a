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
    options = {"save_strategy": "no", **options}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, logging_steps=2,
                             per_device_train_batch_size=4, report_to="none", use_cpu=True,
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


def history_points(history):
    return sorted((key, entry["step"], float(value)) for entry in history for key, value in entry.items()
                  if key != "step" and isinstance(value, (int, float)))


@pytest.mark.parametrize("restore", [False, True], ids=["new-callback", "restored-callback"])
def test_training_resumed_from_a_checkpoint_continues_its_run(tmp_path, points, run_rows, read_only, store_path,
                                                               restore):
    first = make_trainer(tmp_path, NotebookExpCallback(experiment="hf", store=store_path), max_steps=8,
                         save_strategy="steps", save_steps=8)
    first.train()
    ((run_id, row),) = run_rows().items()
    assert (tmp_path / "out" / "checkpoint-8" / "trainer_state.json").is_file()

    # a later process: a new Trainer and a new callback, training on from the checkpoint to step 16
    callback = NotebookExpCallback(experiment="hf", store=store_path)
    again = make_trainer(tmp_path, callback, max_steps=16, restore_callback_states_from_checkpoint=restore)
    again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-8"))

    ours = [cb for cb in again.callback_handler.callbacks if isinstance(cb, NotebookExpCallback)]
    assert len(ours) == 1 and ours[0].run.run_id == run_id  # (a rebuilt callback when restore=True)
    assert run_rows() == {run_id: row} and row[1:] == ("hf", "completed", None)
    stored = points(run_id)
    # log_history of the resumed training holds the checkpoint's entries and the new ones; one train_runtime
    # entry each training wrote at its end is in the store besides (the first one is not in the checkpoint)
    expected = history_points(again.state.log_history)
    end_of_first = history_points(first.state.log_history[-1:])
    if restore:  # the rebuilt callback comes after Hugging Face's printer, which pops total_flos from the logs
        expected = [p for p in expected if not (p[0] == "total_flos" and p[1] == 16)]
    assert sorted(expected + end_of_first) == stored
    losses = [step for key, step, _ in stored if key == "loss"]
    assert losses == list(range(2, 17, 2))  # each step once
    assert len(read_only(store_path, "SELECT 1 FROM events WHERE run_id=? AND event='resumed'", [run_id])) == 1


def test_a_fresh_training_after_a_resumable_one_starts_a_new_run(tmp_path, run_rows):
    callback = NotebookExpCallback()
    make_trainer(tmp_path, callback, max_steps=4, save_strategy="steps", save_steps=4).train()
    first = callback.run.run_id
    make_trainer(tmp_path, callback, max_steps=4).train()  # from step 0: not a resume
    assert callback.run.run_id != first and len(run_rows()) == 2
