"""NotebookExpCallback in real (tiny) Keras 3 fits, torch backend."""

import json
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; there is no tensorflow
import keras
import numpy as np  # noqa: E402

import notebook_exp as nx  # noqa: E402
from notebook_exp.exceptions import ConfigError  # noqa: E402
from notebook_exp.integrations.keras import NotebookExpCallback  # noqa: E402


def model_and_data(name="tiny"):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")], name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model, x, y


def test_history_is_in_the_store_with_the_epoch_as_step(points, run_rows, read_only, store_path):
    model, x, y = model_and_data()
    callback = NotebookExpCallback(params={"batch_size": 16})
    history = model.fit(x, y, epochs=3, batch_size=16, validation_data=(x[:16], y[:16]), verbose=0,
                        callbacks=[callback])

    run_id = callback.run.run_id
    assert run_rows() == {run_id: ("tiny", "keras", "completed", None)}
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    expected = sorted((key, epoch, float(values[epoch])) for key, values in history.history.items()
                      for epoch in range(3))
    assert points(run_id) == expected
    ((params,),) = read_only(store_path, "SELECT params FROM runs WHERE run_id=?", [run_id])
    params = json.loads(params)
    assert params["epochs"] == 3 and params["steps"] == 4 and params["batch_size"] == 16
    assert params["optimizer"]["name"] == "adam" and params["optimizer"]["learning_rate"] == pytest.approx(0.01)
    assert params["loss"] == "binary_crossentropy" and params["model"] == {"name": "tiny", "params": 49}


def test_every_n_batches_with_the_global_batch_count_as_step(points):
    model, x, y = model_and_data()
    callback = NotebookExpCallback(log_every_n_batches=3)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])  # 4 batches per epoch
    batch = [(key, step) for key, step, _ in points(callback.run.run_id) if key.startswith("batch/")]
    assert batch == sorted((key, step) for key in ("batch/accuracy", "batch/loss") for step in (3, 6, 9, 12))


def test_inside_a_run_it_logs_into_that_run(points, run_rows):
    model, x, y = model_and_data()
    with nx.start_run("outer", experiment="mine") as run:
        callback = NotebookExpCallback()
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[callback])
        assert callback.run is run and run.status.value == "running"
    assert run_rows() == {run.run_id: ("outer", "mine", "completed", None)}
    assert [(k, s) for k, s, _ in points(run.run_id) if k == "loss"] == [("loss", 0), ("loss", 1)]


class Explode(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("boom at epoch 1")


def test_each_fit_is_a_run_and_one_that_raises_ends_failed(run_rows):
    model, x, y = model_and_data()
    callback = NotebookExpCallback(run_name="again")
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, Explode()])
    failed = callback.run.run_id
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    rows = run_rows()
    assert rows[failed][2] == "failed" and "another training started" in rows[failed][3]
    assert rows[callback.run.run_id][:3] == ("again", "keras", "completed")


def test_log_every_n_batches_must_be_positive():
    with pytest.raises(ConfigError, match="log_every_n_batches"):
        NotebookExpCallback(log_every_n_batches=0)
