"""Ray is an optional extra: without it ``executor="ray"`` says how to install it, nothing
imports it before a Ray run is asked for, and with it but no cluster to use the submit is
refused when starting a local one is not allowed. Fresh interpreters: no Ray is started."""

from __future__ import annotations

import json

NO_RAY = """
import sys
sys.modules["ray"] = None  # `import ray` now raises ImportError, as without the extra
import notebook_exp as nx
try:
    nx.submit(lambda run: None, executor="ray")
except nx.MissingDependency as exc:
    print("MISSING:", exc)
print("RUNS:", len(nx.runs()))
"""


def test_without_ray_the_ray_executor_gives_the_install_line(run_python, store_path):
    out = run_python(NO_RAY).stdout
    assert "MISSING: ray is not installed; install it with: pip install 'notebook-exp[ray]'" in out
    assert "RUNS: 0" in out


LIGHT = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
import notebook_exp as nx
InteractiveShell.instance().run_line_magic("load_ext", "notebook_exp")
from notebook_exp.scheduler import _ray_cluster, _ray_inbox, _ray_worker
from notebook_exp.scheduler.executors import ray as ray_executor
from notebook_exp.scheduler.spec import validate
validate(fn=lambda run: None, executor="ray", gpus=0.5, cpus=2, memory="1GB", ray_options={"resources": {"a": 1}})
print(json.dumps(sorted(m for m in ("ray", "duckdb") if m in sys.modules)))
"""


def test_nothing_imports_ray_before_a_ray_run_is_asked_for(run_python):
    assert json.loads(run_python(LIGHT).stdout.strip().splitlines()[-1]) == []


NO_CLUSTER = """
import os
os.environ["NOTEBOOK_EXP_RAY_START_LOCAL"] = "false"
for name in ("RAY_ADDRESS", "NOTEBOOK_EXP_RAY_ADDRESS"):
    os.environ.pop(name, None)
import notebook_exp as nx
try:
    nx.submit(lambda run: None, executor="ray")
except nx.ConfigError as exc:
    print("REFUSED:", exc)
import ray
print("INITIALIZED:", ray.is_initialized(), "RUNS:", len(nx.runs()))
"""


def test_with_no_cluster_and_no_local_start_allowed_the_submit_is_refused(run_python, store_path):
    out = run_python(NO_CLUSTER).stdout
    assert "REFUSED: executor='ray' has no Ray cluster to use" in out and "NOTEBOOK_EXP_RAY_START_LOCAL=true" in out
    assert "INITIALIZED: False RUNS: 0" in out
