"""The demo: a real (small) sweep, logged into the store, read back from DuckDB.

Each run trains a logistic-regression classifier with numpy on a synthetic,
fixed dataset by mini-batch gradient descent. It logs the batch ``loss`` every
step, ``loss_smooth`` (its debiased exponential moving average, what a person
reads the trend from) every step, and the full-data ``acc`` every
``eval_every`` steps. The grid (learning rate x batch size) gives curves that
separate: a large learning rate converges in a few hundred steps, a small one
is still falling at the end; small batches are noisy, large ones smooth.

Two more runs show the other ends a run can have, so the viewer has every
state to show: one with a learning rate far too large, whose loss blows up and
which fails with ``Diverged`` (a ``FloatingPointError``), and one stopped a third of the way in,
which ends ``cancelled`` (as a cancel button or Ctrl-C would end it).

Telemetry is sampled every ``DEMO_TELEMETRY`` seconds (unless turned off), so
the viewer's System tab has something to show for runs of about a second.
"""

from __future__ import annotations

import itertools
import time

__all__ = ["DEFAULT_STEPS", "DIVERGING", "STOPPED", "Diverged", "run_sweep", "train"]

DEFAULT_STEPS = 12_000
DEMO_TELEMETRY = 0.25
SMOOTHING = 0.98  # EMA weight of loss_smooth (TensorBoard's default slider is 0.6; batch losses of 8 need more)
DIVERGING = {"lr": 50.0, "batch_size": 32}  # the run that fails: its loss blows up
STOPPED = {"lr": 0.1, "batch_size": 32}  # the run that is cancelled a third of the way in
CHANCE = 0.6931  # the loss of always answering 1/2: a run still above it past its first tenth is diverging


class Diverged(FloatingPointError):
    """Raised by ``train`` when the loss does not come down (the learning rate is too large)."""


class Stopped(Exception):
    """Raised by ``train`` at ``stop_at``: the demo's stand-in for a cancel button."""


def _dataset(n: int = 4096, features: int = 20, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    true_w = rng.normal(size=features)
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


def train(run, lr: float, batch_size: int, steps: int, seed: int = 0, eval_every: int = 50,
          stop_at: int | None = None) -> float:
    """Train; log ``loss`` and ``loss_smooth`` every step and the full-data ``acc`` every
    ``eval_every`` steps. Returns the final accuracy.

    Raises ``Diverged`` (a ``FloatingPointError``) when the loss is not finite, or its
    moving average is still above chance level (``CHANCE``) after a tenth of the
    steps; and ``Stopped`` at step ``stop_at``."""
    import numpy as np

    x, y = _dataset()
    rng = np.random.default_rng(seed)
    w = np.zeros(x.shape[1])
    acc, ema, norm = 0.0, 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(steps):
            if stop_at is not None and step == stop_at:
                raise Stopped(f"stopped at step {step} of {steps}")
            idx = rng.integers(0, len(x), size=batch_size)
            xb, yb = x[idx], y[idx]
            p = 1.0 / (1.0 + np.exp(-(xb @ w)))
            q = np.clip(p, 1e-12, 1 - 1e-12)  # a saturated prediction costs at most -log(1e-12), never below 0
            loss = float(-np.mean(yb * np.log(q) + (1 - yb) * np.log(1 - q)))
            ema, norm = SMOOTHING * ema + (1 - SMOOTHING) * loss, SMOOTHING * norm + (1 - SMOOTHING)
            run.log(loss=loss, loss_smooth=ema / norm, step=step)
            if not np.isfinite(loss) or (step >= max(1, steps // 10) and ema / norm > CHANCE):
                raise Diverged(f"loss diverged: its moving average is {ema / norm:.3f} at step {step}, "
                               f"above chance level {CHANCE} (lr={lr} is too large)")
            w -= lr * xb.T @ (p - yb) / batch_size
            if step % eval_every == 0 or step == steps - 1:
                acc = float(np.mean(((x @ w) > 0) == y))
                run.log(acc=acc, step=step)
    return acc


def run_sweep(lrs=(0.5, 0.002), batch_sizes=(8, 128), steps: int = DEFAULT_STEPS, experiment: str = "demo-sweep",
              store=None, failed: bool = True, cancelled: bool = True) -> list[str]:
    """Run one training per (lr, batch size), then (unless turned off) one that fails
    and one that is cancelled; returns the run ids in that order."""
    from .config import get_settings
    from .models import RunStatus
    from .tracking.run import start_run

    settings = get_settings()
    if settings.telemetry_interval:
        settings = settings.model_copy(update={"telemetry_interval": min(settings.telemetry_interval, DEMO_TELEMETRY)})
    plan = [(lr, bs, None) for lr, bs in itertools.product(lrs, batch_sizes)]
    if failed:
        plan.append((DIVERGING["lr"], DIVERGING["batch_size"], None))
    if cancelled:
        plan.append((STOPPED["lr"], STOPPED["batch_size"], max(1, steps // 3)))
    run_ids = []
    for lr, bs, stop_at in plan:
        started = time.perf_counter()
        outcome = ""
        try:
            with start_run(f"lr={lr} bs={bs}", experiment=experiment, params={"lr": lr, "batch_size": bs},
                           tags=["demo"], store=store, settings=settings) as run:
                try:
                    final = train(run, lr, bs, steps, stop_at=stop_at)
                except Stopped as stop:
                    run.end(RunStatus.CANCELLED, f"cancelled by the demo: {stop}")
                    outcome = f"cancelled ({stop})"
                else:
                    outcome = f"acc={final:.3f}"
        except Diverged as exc:
            outcome = f"failed: {exc}"
        print(f"  {run.name:<18} {outcome}  ({time.perf_counter() - started:.2f} s, {run.points} points)")
        run_ids.append(run.run_id)
    return run_ids
