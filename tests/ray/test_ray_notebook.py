"""``%%experiment --executor ray`` in a real Jupyter kernel (nbclient): the kernel joins the
session's Ray as a second driver (``RAY_ADDRESS``), the cell runs on a Ray worker with the
notebook variable it uses, prints into its own card, and its metrics land in DuckDB."""

from __future__ import annotations

import json

import nbclient
import nbformat

CELL = """%%experiment raycell -e nbray --executor ray --gpus 1 -p lr=2 --wait
import os
for step in range(500):
    run.log(loss=lr * scale / (step + 1), step=step)
print(f"hello from ray on {run.device}, gpus {run.gpus}, pid {os.getpid()}")
lr * scale"""


def execute(cells: list[str], path, timeout: int = 240):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=True, store_widget_state=True,
        resources={"metadata": {"path": str(path)}},
    )
    client.execute()
    return nb


def cell_text(cell) -> str:
    return "".join(out.get("text", "") + json.dumps(out.get("data", {})) + out.get("evalue", "")
                   for out in cell.get("outputs", []))


def output_widgets(nb) -> list[str]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return ["".join(o.get("text", "") for o in model["state"].get("outputs", []))
            for model in state.values() if model["model_name"] == "OutputModel"]


def test_an_experiment_cell_runs_on_ray_and_prints_into_its_card(ray_cluster, monkeypatch, tmp_path, store_path,
                                                                    read_only):
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the cluster's token is ~/.ray/auth_token
    monkeypatch.setenv("NOTEBOOK_EXP_FAKE_GPUS", "2")
    nb = execute(
        [
            "%load_ext notebook_exp\nimport os\nscale = 3\nkernel_pid = os.getpid()",
            CELL,
            "import notebook_exp as nx\njob = nx.runs('nbray')\nprint(list(job.status), list(job.executor))",
            "print('an unrelated cell')",
        ],
        tmp_path,
    )
    setup, experiment, table, unrelated = nb.cells
    assert "<RunCard 'raycell'>" in cell_text(experiment), cell_text(experiment)
    assert "['completed'] ['ray']" in cell_text(table), cell_text(table)
    assert "an unrelated cell" in cell_text(unrelated)
    cards = [text for text in output_widgets(nb) if text]
    assert len(cards) == 1 and cards[0].startswith("hello from ray on cuda:0, gpus ["), cards
    for cell in nb.cells:
        assert "hello from ray" not in cell_text(cell)  # in the card, and nowhere else
    rows = read_only(store_path, "SELECT run_id, status, output FROM runs")
    assert [(status, output) for _id, status, output in rows] == [("completed", cards[0])]
    assert read_only(store_path, "SELECT count(*), max(step), min(value) FROM metrics WHERE key = 'loss'") == [
        (500, 499, 6 / 500)]
    placed = json.loads(read_only(store_path, "SELECT detail FROM events WHERE event = 'placed'")[0][0])
    assert f"pid {placed['pid']}" in cards[0]
