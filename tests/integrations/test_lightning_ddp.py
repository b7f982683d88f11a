"""NotebookExpLogger under torchrun: two CPU ranks (gloo), one run per fit, owned by rank 0."""

import os
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401 - the locked test environment has it
import pytest

JOB = Path(__file__).with_name("lightning_ddp_job.py")


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory):
    """Run the job once: its store, and the run ids of the default and all_ranks fits."""
    folder = tmp_path_factory.mktemp("ddp")
    store = folder / "store.duckdb"
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(store), "NOTEBOOK_EXP_LOCK_DIR": str(folder / "locks"),
           "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("NOTEBOOK_EXP_SINKS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(JOB)],
        env=env, cwd=folder, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RUNS ")]
    _, default, every = line.split()
    return store, default, every


def series(read_only, store, run_id):
    out = {}
    for key, step, value in read_only(store, "SELECT key, step, value FROM metrics WHERE run_id=? ORDER BY step",
                                      [run_id]):
        out.setdefault(key, []).append((step, value))
    return out


@pytest.mark.slow
def test_one_run_per_fit_with_rank_zeros_points(ddp_job, read_only):
    store, default, every = ddp_job
    runs = read_only(store, "SELECT run_id, name, experiment, status FROM runs ORDER BY name")
    assert runs == [(every, "all-ranks", "ddp", "completed"), (default, "rank0-only", "ddp", "completed")]
    points = series(read_only, store, default)
    assert set(points) == {"train_loss", "rank_seen", "epoch"}  # no other rank's keys
    assert [value for _, value in points["rank_seen"]] == [0.0] * 4  # 32 samples, 2 ranks, batches of 4
    assert [step for step, _ in points["train_loss"]] == [0, 1, 2, 3]


@pytest.mark.slow
def test_all_ranks_puts_rank_one_under_its_prefix(ddp_job, read_only):
    store, _, every = ddp_job
    points = series(read_only, store, every)
    assert set(points) == {"train_loss", "rank_seen", "epoch", "rank1/train_loss", "rank1/rank_seen", "rank1/epoch"}
    assert [value for _, value in points["rank_seen"]] == [0.0] * 4
    assert [value for _, value in points["rank1/rank_seen"]] == [1.0] * 4  # written by rank 1 itself
    assert [s for s, _ in points["rank1/train_loss"]] == [s for s, _ in points["train_loss"]] == [0, 1, 2, 3]
    assert points["rank1/train_loss"] != points["train_loss"]  # each rank's own shard of the data
