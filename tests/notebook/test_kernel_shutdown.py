"""A real kernel (nbclient) shut down while runs are live keeps every point they logged."""

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow

CELLS = [
    "import notebook_exp as nx",
    # a run never ended, with points only in memory (the flush interval is a minute)
    "run = nx.start_run('left-open')\nfor i in range(20_000):\n    run.log(x=float(i), step=i)",
    # a background run still logging when the kernel goes
    "import time\n"
    "def train(run):\n"
    "    for i in range(10**9):\n"
    "        run.log(y=float(i), step=i)\n"
    "        if i % 1000 == 999:\n"
    "            time.sleep(0.01)\n"
    "job = nx.submit(train, name='background')\n"
    "while job.status.value != 'running':\n"
    "    time.sleep(0.05)\n"
    "time.sleep(0.5)",
]


def test_a_kernel_shut_down_with_live_runs_keeps_every_point(tmp_path, store_path, settings_env, read_only):
    settings_env(FLUSH_INTERVAL="60", TELEMETRY_INTERVAL="0", CAPTURE_GIT="false")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # ends with a graceful shutdown of the kernel, runs still live
    rows = {name: (status, run_id) for name, status, run_id in
            read_only(store_path, "SELECT name, status, run_id FROM runs")}
    assert rows["left-open"][0] == "completed"
    assert read_only(store_path, "SELECT count(*), count(DISTINCT step), max(step) FROM metrics WHERE key = 'x'") \
        == [(20_000, 20_000, 19_999)]
    status, run_id = rows["background"]
    assert status == "cancelled"  # the scheduler stops first: a run cut short says so
    (n, distinct, top), = read_only(
        store_path, "SELECT count(*), count(DISTINCT step), max(step) FROM metrics WHERE key = 'y'")
    assert n == distinct == top + 1 > 1000  # every step it logged, from 0, none twice
    (logged,), = read_only(store_path, "SELECT last_step FROM metric_summary WHERE run_id = ? AND key = 'y'",
                           [run_id])
    assert logged == top
