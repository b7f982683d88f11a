"""The demo: a real (small) sweep, logged into the store, read back from DuckDB.

Each run trains a logistic-regression classifier with numpy on a synthetic,
fixed dataset by mini-batch gradient descent and logs loss and accuracy.
Telemetry is sampled every ``DEMO_TELEMETRY`` seconds (unless turned off), so
the viewer's System tab has something to show for runs of about a second.
"""

from __future__ import annotations

import itertools
import time

__all__ = ["DEFAULT_STEPS", "run_sweep", "train"]

DEFAULT_STEPS = 60_000
DEMO_TELEMETRY = 0.25


def _dataset(n: int = 4096, features: int = 20, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    true_w = rng.normal(size=features)
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


def train(run, lr: float, batch_size: int, steps: int, seed: int = 0, eval_every: int = 50) -> float:
    """Train; log the batch ``loss`` every step and the full-data ``acc`` every
    ``eval_every`` steps. Returns the final accuracy."""
    import numpy as np

    x, y = _dataset()
    rng = np.random.default_rng(seed)
    w = np.zeros(x.shape[1])
    acc = 0.0
    for step in range(steps):
        idx = rng.integers(0, len(x), size=batch_size)
        xb, yb = x[idx], y[idx]
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        loss = float(-np.mean(yb * np.log(p + 1e-12) + (1 - yb) * np.log(1 - p + 1e-12)))
        w -= lr * xb.T @ (p - yb) / batch_size
        run.log(loss=loss, step=step)
        if step % eval_every == 0 or step == steps - 1:
            acc = float(np.mean(((x @ w) > 0) == y))
            run.log(acc=acc, step=step)
    return acc


def run_sweep(lrs=(0.1, 0.001), batch_sizes=(8, 64), steps: int = DEFAULT_STEPS, experiment: str = "demo-sweep",
              store=None) -> list[str]:
    """Run one training per (lr, batch size); returns the run ids."""
    from .config import get_settings
    from .tracking.run import start_run

    settings = get_settings()
    if settings.telemetry_interval:
        settings = settings.model_copy(update={"telemetry_interval": min(settings.telemetry_interval, DEMO_TELEMETRY)})
    run_ids = []
    for lr, bs in itertools.product(lrs, batch_sizes):
        started = time.perf_counter()
        with start_run(f"lr={lr} bs={bs}", experiment=experiment, params={"lr": lr, "batch_size": bs},
                       tags=["demo"], store=store, settings=settings) as run:
            final = train(run, lr, bs, steps)
        print(f"  {run.name:<18} acc={final:.3f}  ({time.perf_counter() - started:.2f} s, {run.points} points)")
        run_ids.append(run.run_id)
    return run_ids
