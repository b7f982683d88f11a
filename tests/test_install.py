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


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A wheel built from this checkout, installed with its dependencies (no extras: no
    mlflow, tensorboard, wandb) into a new venv: ``(venv, python, uv)``."""
    uv = shutil.which("uv")
    assert uv, "uv is missing: .ci/run installs it (python3 -m pip install uv)"
    tmp_path = tmp_path_factory.mktemp("fresh")
    run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(ROOT)])
    (wheel,) = (tmp_path / "dist").glob("notebook_exp-*.whl")
    venv = tmp_path / "venv"
    run([uv, "venv", "-q", "-p", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    run([uv, "pip", "install", "-q", "-p", str(python), str(wheel)])
    return venv, python, uv


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("NOTEBOOK_EXP_", "MLFLOW_", "WANDB_"))}


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_logs_800k_points_that_plain_duckdb_reads(fresh_venv, tmp_path, read_only):
    venv, python, _uv = fresh_venv
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env()
    run([str(python), "-c", textwrap.dedent(SWEEP)], cwd=work, env=env)  # the default store path
    store = work / ".notebook_exp" / "store.duckdb"
    assert read_only(store, "SELECT count(*) FROM metrics WHERE key IN ('loss', 'acc')") == [(800_000,)]
    assert read_only(store, "SELECT status, count(*) FROM runs GROUP BY 1") == [("completed", 4)]
    assert read_only(store, "SELECT count(*), sum(count) FROM metric_summary WHERE key IN ('loss', 'acc')") == [(8, 800_000)]
    # the viewer and the CLI come with the wheel, not only with the checkout
    run([str(python), "-c", "import notebook_exp_viewer, notebook_exp.widgets.run_card"], cwd=work, env=env)
    # with the served template's script (package data)
    run([str(python), "-c", "import importlib.resources as r; "
         "assert (r.files('notebook_exp_viewer') / 'static' / 'tabulator_guard.js').is_file()"], cwd=work, env=env)
    help_text = run([str(venv / "bin" / "notebook-exp"), "view", "--help"], cwd=work, env=env).stdout
    assert "--basic-auth" in help_text


@pytest.mark.slow
def test_plugins_lists_every_builtin_in_a_venv_without_mlflow(fresh_venv, tmp_path):
    venv, python, _uv = fresh_venv
    probe = run([str(python), "-c", "import importlib.util as u; print(u.find_spec('mlflow') is None)"]).stdout
    assert probe.strip() == "True", "the fresh venv must not have mlflow"
    out = run([str(venv / "bin" / "notebook-exp"), "plugins"], cwd=tmp_path, env=clean_env()).stdout
    lines = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    for kind, names in {"sink": ["duckdb", "jsonl", "mlflow", "tensorboard", "wandb"],
                        "collector": ["environment", "git", "gpu", "source", "system"],
                        "processor": ["drop_nonfinite", "every", "filter", "rename", "scale"]}.items():
        for name in names:
            assert (kind, name) in lines, f"{kind} {name} not listed:\n{out}"
    assert lines[("sink", "duckdb")].endswith("  ok")
    for name in ("mlflow", "tensorboard", "wandb"):
        assert lines[("sink", name)].endswith(f"needs {name}: pip install 'notebook-exp[{name}]'"), out
    # and using it says the same, before any run starts
    proc = subprocess.run([str(python), "-c", "import notebook_exp as nx; nx.start_run(sinks=['mlflow'])"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "pip install 'notebook-exp[mlflow]'" in proc.stderr


@pytest.mark.slow
def test_a_third_party_plugin_package_is_discovered_and_used(fresh_venv, tmp_path, read_only):
    """tests/data/nx_thirdparty, a package with its own pyproject, installed like any other:
    its sink and processor are listed and used by name, its sink after the one it requires."""
    venv, python, uv = fresh_venv
    run([uv, "pip", "install", "-q", "-p", str(python), str(ROOT / "tests" / "data" / "nx_thirdparty")])
    out = run([str(venv / "bin" / "notebook-exp"), "plugins"], cwd=tmp_path, env=clean_env()).stdout
    (csv_line,) = [line for line in out.splitlines() if line.split()[:2] == ["sink", "csv"]]
    assert csv_line.split()[2:4] == ["0.3.1", "nx-thirdparty"] and csv_line.endswith("  ok")
    assert any(line.split()[:2] == ["processor", "clip"] for line in out.splitlines())
    script = textwrap.dedent("""
        import notebook_exp as nx
        with nx.start_run("third", sinks=[("csv", {"processors": [("clip", {"high": 5.0})]}), "duckdb"]) as run:
            for i in range(10):
                run.log(x=float(i), step=i)
        print(run.run_id)
    """)
    run_id = run([str(python), "-c", script], cwd=tmp_path, env=clean_env()).stdout.split()[-1]
    rows = (tmp_path / ".notebook_exp" / "csv" / f"{run_id}.csv").read_text().splitlines()
    assert rows == [f"x,{i},{min(float(i), 5.0)!r}" for i in range(10)]
    stored = read_only(tmp_path / ".notebook_exp" / "store.duckdb", "SELECT max(value) FROM metrics")
    assert stored == [(9.0,)]  # the processor changed what the csv sink got, not the store


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
