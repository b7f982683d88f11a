"""The framework integrations on the hot path: cost per logged scalar through each one,
against ``run.log`` directly and against Lightning's own default loggers.

Each integration is called the way its framework calls it, one scalar per step:
Lightning's logger connector calls ``log_metrics({...}, step)`` then ``save()`` on
every logger; Hugging Face calls ``on_log(args, state, control, logs)``; Keras calls
``on_epoch_end(epoch, logs)`` (and ``on_train_batch_end`` per batch). All
notebook_exp paths log into one run; every sample of every path is taken in turn
(interleaved, so all see the same machine noise), and the medians are printed with
their ratios to ``run.log`` and, for Lightning, to ``CSVLogger`` and ``TensorBoardLogger``.

    python benchmarks/bench_integrations.py [--rounds 21] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; there is no tensorflow
os.environ.setdefault("NOTEBOOK_EXP_TELEMETRY_INTERVAL", "0")


def timed(step_fn: Callable[[int, float], None], start: int, calls: int) -> float:
    """Mean ns per call over ``calls`` calls of ``step_fn(step, value)`` (one sample)."""
    begin = time.perf_counter_ns()
    for i in range(start, start + calls):
        step_fn(i, 0.5)
    return (time.perf_counter_ns() - begin) / calls


def lightning_paths(folder: str) -> dict[str, Callable[[int, float], None]]:
    from lightning.pytorch.loggers import CSVLogger

    from notebook_exp.integrations.lightning import NotebookExpLogger

    def as_trainer_calls(logger):
        def step(i, value):
            logger.log_metrics({"train_loss": value}, step=i)
            logger.save()

        return step

    paths = {"lightning NotebookExpLogger": as_trainer_calls(NotebookExpLogger()),
             "lightning CSVLogger": as_trainer_calls(CSVLogger(folder, name="csv"))}
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        paths["lightning TensorBoardLogger"] = as_trainer_calls(TensorBoardLogger(folder, name="tb"))
    except ModuleNotFoundError as exc:  # neither tensorboard nor tensorboardX
        print(f"TensorBoardLogger skipped: {exc}")
    return paths


def transformers_path(folder: str) -> dict[str, Callable[[int, float], None]]:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from notebook_exp.integrations.transformers import NotebookExpCallback

    args = TrainingArguments(output_dir=folder, report_to="none", use_cpu=True)
    state, control, callback = TrainerState(), TrainerControl(), NotebookExpCallback()

    def step(i, value):
        state.global_step = i
        callback.on_log(args, state, control, logs={"loss": value})

    return {"transformers NotebookExpCallback.on_log": step}


def keras_paths() -> dict[str, Callable[[int, float], None]]:
    import keras

    from notebook_exp.integrations.keras import NotebookExpCallback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    epochs, batches = NotebookExpCallback(), NotebookExpCallback(log_every_n_batches=1)
    for callback in (epochs, batches):
        callback.set_model(model)

    def epoch_end(i, value):
        epochs.on_epoch_end(i, {"loss": value})

    def batch_end(i, value):
        batches.on_train_batch_end(i, {"loss": value})

    return {"keras on_epoch_end": epoch_end, "keras on_train_batch_end (every batch)": batch_end}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="samples per path (median taken)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per sample")
    options = parser.parse_args(argv)

    import notebook_exp as nx

    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("NOTEBOOK_EXP_STORE", os.path.join(folder, "bench.duckdb"))
        with nx.start_run("bench-integrations", experiment="bench") as run:
            paths: dict[str, Callable[[int, float], None]] = {
                "run.log": lambda i, value: run.log(loss=value, step=i),
            }
            paths.update(lightning_paths(folder))
            paths.update(transformers_path(folder))
            paths.update(keras_paths())
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for fn in paths.values():  # warm up: first keys, first files, first imports
                timed(fn, 0, 50)
            for r in range(options.rounds):
                for name, fn in paths.items():
                    samples[name].append(timed(fn, (r + 1) * options.calls, options.calls))
            flushed = run.flush(timeout=60)
        report({name: statistics.median(values) for name, values in samples.items()})
        print(f"all notebook_exp points stored: {flushed}")


def report(medians: dict[str, float]) -> None:
    base = medians["run.log"]
    csv, tb = medians.get("lightning CSVLogger"), medians.get("lightning TensorBoardLogger")
    print(f"{'path':<42} {'us/scalar':>10} {'x run.log':>10} {'x CSV':>8} {'x TB':>8}")
    for name, ns in medians.items():
        lightning = name.startswith("lightning")
        vs_csv = f"{ns / csv:8.2f}" if lightning and csv else " " * 8
        vs_tb = f"{ns / tb:8.2f}" if lightning and tb else " " * 8
        print(f"{name:<42} {ns / 1000:10.3f} {ns / base:10.2f} {vs_csv} {vs_tb}")


if __name__ == "__main__":
    main()
