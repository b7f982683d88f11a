"""The package as a user gets it: a wheel built from this checkout, installed into a
fresh virtual environment, logging 800,000 points that plain duckdb then reads; and the
environment the tests run in, which must be exactly the one uv.lock pins."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


@pytest.mark.slow
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


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_for_this_interpreter(uv):
    """What `uv sync --locked --extra test` installs here: uv.lock exported for the test
    extra, each line's markers evaluated for the running interpreter."""
    from packaging.requirements import Requirement

    out = run([uv, "export", "-q", "--frozen", "--offline", "--extra", "test", "--no-hashes", "--no-header",
               "--no-annotate", "--no-emit-project", "--format", "requirements-txt"], cwd=ROOT).stdout
    pins = {}
    for line in out.splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                (spec,) = req.specifier
                assert spec.operator == "==", line
                pins[canonical(req.name)] = spec.version
    return pins


def test_the_tests_run_on_exactly_the_locked_versions():
    """Every package uv.lock knows that is installed here has the locked version, and every
    package the lock installs for the test extra is here. `bash .ci/run --upgrade`, which tests
    the newest versions on purpose, deselects this test."""
    import tomllib

    uv = shutil.which("uv")
    assert uv, "uv is missing: .ci/run installs it (python3 -m pip install uv)"
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    in_lock = {}
    for package in lock["package"]:
        in_lock.setdefault(canonical(package["name"]), set()).add(package["version"])
    pins = locked_for_this_interpreter(uv)
    assert {"duckdb", "panel", "bokeh", "pyarrow", "pytest"} <= pins.keys()
    installed = {}
    for dist in importlib.metadata.distributions():  # the first on sys.path wins, as for imports
        installed.setdefault(canonical(dist.metadata["Name"]), dist.version)
    wrong = []
    for name, version in sorted(installed.items()):
        if name in pins:
            if version != pins[name]:
                wrong.append(f"{name}: installed {version}, locked {pins[name]}")
        elif name in in_lock and version not in in_lock[name]:  # e.g. another extra's package
            wrong.append(f"{name}: installed {version}, locked {' or '.join(sorted(in_lock[name]))}")
    missing = [f"{name}: locked {version}, not installed" for name, version in sorted(pins.items())
               if name not in installed]
    assert installed.get("notebook-exp") in in_lock["notebook-exp"]
    assert not wrong + missing, (
        f"{sys.prefix} is not the environment uv.lock pins (bash .ci/run syncs it):\n  "
        + "\n  ".join(wrong + missing))


def test_the_lock_matches_pyproject():
    """uv.lock is up to date with pyproject.toml's dependencies (after changing them: `uv lock`)."""
    uv = shutil.which("uv")
    assert uv, "uv is missing: .ci/run installs it (python3 -m pip install uv)"
    proc = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"uv.lock is out of date with pyproject.toml; run `uv lock`:\n{proc.stderr}"
