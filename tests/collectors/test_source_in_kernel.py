"""What the source and environment collectors record from a real Jupyter kernel (nbclient)."""

import json
import os
import platform

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow

CELL = """run.log(loss=0.5)
print("from the cell")
41 + 1"""

FUNCTION = '''def fit(run, lr=0.1):
    """Defined in a cell."""
    run.log(loss=lr)
    return lr'''


def test_a_kernel_records_the_cell_the_function_and_the_notebook(tmp_path, store_path, read_only):
    notebook = str(tmp_path / "experiments" / "train.ipynb")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in [
        "%load_ext notebook_exp\nimport notebook_exp as nx\nprint(__session__)",
        "%%experiment from-cell -e kernel --wait\n" + CELL,
        FUNCTION,
        "job = nx.submit(fit, {'lr': 0.25}, name='from-function', experiment='kernel')\nprint(job.result(timeout=60))",
        # without __session__ and the variable, the kernel's connection file still tells
        "import os\nfrom notebook_exp.collectors.source import notebook_path\ndel __session__\n"
        "del os.environ['JPY_SESSION_NAME']\nprint(repr(notebook_path()))",
    ]]
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # started as jupyter-server starts a notebook's kernel: start_kernel(env=...) with JPY_SESSION_NAME,
    # which jupyter-client also writes into the connection file
    client.execute(env={**os.environ, "JPY_SESSION_NAME": notebook})
    assert notebook in nb.cells[0].outputs[0]["text"]  # ipykernel made it __session__
    assert "0.25" in nb.cells[3].outputs[0]["text"], nb.cells[3].outputs
    assert nb.cells[4].outputs[0]["text"].strip() == repr(notebook), nb.cells[4].outputs
    rows = read_only(store_path, "SELECT name, status, source, info FROM runs WHERE experiment = 'kernel' ORDER BY name")
    assert [(name, status) for name, status, _s, _i in rows] == [
        ("from-cell", "completed"), ("from-function", "completed")]
    (_n, _s, cell_source, cell_info), (_n2, _s2, function_source, function_info) = rows
    assert cell_source == CELL + "\n"  # the cell as IPython hands it to the magic
    assert function_source == FUNCTION + "\n"
    for info in (json.loads(cell_info), json.loads(function_info)):
        assert info["notebook"] == notebook
        assert info["environment"]["python"] == platform.python_version()
