"""The package as a user gets it: a wheel built from this checkout, installed into a
fresh virtual environment, logging 800,000 points that plain duckdb then reads."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """
import sys
import notebook_exp as nx
for r in range(4):
    with nx.start_run(f"r{r}", experiment="install", params={"lr": 10.0 ** -r}) as run:
        for i in range(100_000):
            run.log(loss=1.0 / (i + 1), acc=i / 100_000, step=i)
print("logged")
"""


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_in_a_fresh_venv_logs_800k_points_that_plain_duckdb_reads(tmp_path, read_only):
    uv = shutil.which("uv")
    assert uv, "uv is missing: .ci/run installs it (python3 -m pip install uv)"
    run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(ROOT)])
    (wheel,) = (tmp_path / "dist").glob("notebook_exp-*.whl")
    venv = tmp_path / "venv"
    run([uv, "venv", "-q", "-p", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    run([uv, "pip", "install", "-q", "-p", str(python), str(wheel)])
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBOOK_EXP_")}
    run([str(python), "-c", textwrap.dedent(SWEEP)], cwd=work, env=env)  # the default store path
    store = work / ".notebook_exp" / "store.duckdb"
    assert read_only(store, "SELECT count(*) FROM metrics WHERE key IN ('loss', 'acc')") == [(800_000,)]
    assert read_only(store, "SELECT status, count(*) FROM runs GROUP BY 1") == [("completed", 4)]
    assert read_only(store, "SELECT count(*), sum(count) FROM metric_summary WHERE key IN ('loss', 'acc')") == [(8, 800_000)]
    # the viewer and the CLI come with the wheel, not only with the checkout
    run([str(python), "-c", "import notebook_exp_viewer, notebook_exp.widgets.run_card"], cwd=work, env=env)
    help_text = run([str(venv / "bin" / "notebook-exp"), "view", "--help"], cwd=work, env=env).stdout
    assert "--basic-auth" in help_text
