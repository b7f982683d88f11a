"""%%experiment in a real Jupyter kernel (nbclient), checked against the DuckDB file."""

import json

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow


def execute(cells: list[str], path, timeout: int = 180):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=True, store_widget_state=True,
        resources={"metadata": {"path": str(path)}},
    )
    client.execute()
    return nb


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(json.dumps(out.get("data", {})))
        parts.append(out.get("evalue", ""))
    return "".join(parts)


def output_widgets(nb) -> list[str]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [
        "".join(o.get("text", "") for o in model["state"].get("outputs", []))
        for model in state.values() if model["model_name"] == "OutputModel"
    ]


SWEEP = """%%experiment sweep -e nbtest --grid lr=0.1,0.01 --grid bs=8,16
lr = 0.5  # a default: the grid overrides it
for step in run.track(range(200)):
    run.log(loss=lr / (step + 1), step=step)
print(f"hello from {run.name} lr={lr} bs={bs}")
lr * bs"""


def test_a_grid_cell_runs_in_the_background_and_prints_into_its_cards(tmp_path, store_path, read_only):
    nb = execute(
        [
            "%load_ext notebook_exp\nimport notebook_exp as nx",
            SWEEP,
            "%experiment_wait",
            "table = nx.runs('nbtest')\nprint(sorted(zip(table['params.lr'], table['params.bs'], table.status)))",
            "print('an unrelated cell')",
        ],
        tmp_path,
    )
    sweep, wait, table, unrelated = nb.cells[1:]
    assert "<SweepView 'sweep': 4 runs>" in cell_text(sweep)
    assert "4 runs: 4 completed" in cell_text(wait)
    assert "[(0.01, 8, 'completed'), (0.01, 16, 'completed'), (0.1, 8, 'completed'), (0.1, 16, 'completed')]" in cell_text(table)
    rows = read_only(store_path, "SELECT name, status, params FROM runs ORDER BY name")
    assert [(name, status) for name, status, _ in rows] == [
        ("sweep lr=0.01 bs=16", "completed"), ("sweep lr=0.01 bs=8", "completed"),
        ("sweep lr=0.1 bs=16", "completed"), ("sweep lr=0.1 bs=8", "completed"),
    ]
    assert {json.dumps(json.loads(p), sort_keys=True) for _n, _s, p in rows} == {
        json.dumps({"bs": bs, "lr": lr}, sort_keys=True) for lr in (0.1, 0.01) for bs in (8, 16)
    }
    assert read_only(store_path, "SELECT count(*), count(DISTINCT run_id) FROM metrics WHERE key = 'loss'") == [(800, 4)]
    outputs = [text for text in output_widgets(nb) if text]
    assert sorted(outputs) == sorted(
        f"hello from sweep lr={lr} bs={bs} lr={lr} bs={bs}\n" for lr in (0.1, 0.01) for bs in (8, 16)
    )  # one run's output in each card, and nowhere else:
    for cell in nb.cells:
        assert "hello from" not in cell_text(cell)
    assert "an unrelated cell" in cell_text(unrelated)


BAD = [
    ("%%experiment --nope\nx = 1", "unrecognized arguments: --nope"),
    ("%%experiment -p lr\nx = 1", "-p takes KEY=VALUE"),
    ("%%experiment --gpus -1\nx = 1", "gpus"),
    ("%%experiment --executor nope\nx = 1", "unknown executor 'nope'"),
    ("%%experiment\n", "empty"),
    ("%%experiment\n   \n", "empty"),
    ("%%experiment --grid lr=\nx = 1", "KEY=VALUE"),
    ("%%experiment\nx = = 1", "does not compile"),
]


def test_bad_input_is_one_usage_error_line_and_queues_nothing(tmp_path, store_path, read_only):
    nb = execute(["%load_ext notebook_exp"] + [source for source, _ in BAD], tmp_path)
    for cell, (_source, message) in zip(nb.cells[1:], BAD):
        outputs = cell["outputs"]
        assert len(outputs) == 1, outputs
        text = outputs[0].get("text", "")
        assert text.startswith("UsageError: ") and text.strip().count("\n") == 0, text
        assert message in text, text
    assert not store_path.exists() or read_only(store_path, "SELECT count(*) FROM runs") == [(0,)]


def test_wait_process_executor_and_notebook_variables(tmp_path, store_path, read_only):
    nb = execute(
        [
            "%load_ext notebook_exp\nscale = 3",
            "%%experiment proc --executor process -p lr=2 --wait\nimport os\nprint('pid', os.getpid())\nrun.log(score=lr * scale)",
            "%%experiment thread -p lr=5 --wait\nrun.log(score=lr * scale)",
            "%experiment_cancel --all",
            "%experiment_gpus",
        ],
        tmp_path,
    )
    scores = read_only(store_path, "SELECT r.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE m.key = 'score' ORDER BY r.name")
    assert scores == [("proc", 6.0), ("thread", 15.0)]
    assert read_only(store_path, "SELECT executor, status FROM runs ORDER BY name") == [
        ("process", "completed"), ("thread", "completed"),
    ]
    assert "cancelled 0 runs" in cell_text(nb.cells[3])
    assert "no GPUs" in cell_text(nb.cells[4])
    assert any(text.startswith("pid ") for text in output_widgets(nb))
