"""The shared machinery of the integrations (notebook_exp/integrations/_runs.py): which run
they log into, and what ends a training the framework never reported the end of."""

import pytest

import notebook_exp as nx
from notebook_exp.integrations._runs import (
    RunScope,
    jsonable,
    numeric,
    training_ended,
    training_started,
)

OPEN_TRAINING = """
from notebook_exp.integrations._runs import RunScope, training_started
scope = RunScope(name="left-open")
run = scope.get()
training_started(run)
run.log(loss=1.0, step=0)
"""


def test_scope_uses_the_current_run_and_never_ends_it(run_rows):
    with nx.start_run("outer") as outer:
        scope = RunScope(name="own")
        assert scope.get() is outer and not scope.owned
        scope.end("failed")
        assert outer.status.value == "running"
    own = scope.get()  # the current run ended: now a run of its own
    assert own is not outer and scope.owned and own.name == "own"
    scope.end()
    again = scope.get()  # a later use continues the same run id
    assert again.run_id == own.run_id and again is not own
    again.end()
    scope.new()
    assert scope.get().run_id != own.run_id


def test_numeric_and_jsonable():
    import numpy as np

    assert numeric({"a": 1, "b": np.float32(0.5), "s": "x", "n": None, "l": [1], "step": 3}, "p/") == {
        "p/a": 1.0, "p/b": 0.5}
    assert jsonable({"t": (1, 2), "x": np.int64(3), "f": float("nan"), "o": object}) == {
        "t": [1, 2], "x": 3, "f": "nan", "o": str(object)}


def test_an_ended_training_is_not_failed_at_exit(run_rows):
    scope = RunScope()
    run = scope.get()
    training_started(run)
    training_ended(run)
    scope.end()
    assert run_rows()[run.run_id][2] == "completed"


def test_a_training_left_open_ends_failed_at_exit(run_python, tmp_path, read_only):
    store = tmp_path / "child.duckdb"
    run_python(OPEN_TRAINING, env={"NOTEBOOK_EXP_STORE": str(store), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"})
    ((name, status, error),) = read_only(store, "SELECT name, status, error FROM runs")
    assert (name, status) == ("left-open", "failed")  # end_live_runs alone would say completed
    assert "training did not finish" in error and "interpreter exited first" in error


@pytest.mark.parametrize("cell, status, error", [
    ("raise ValueError('boom in a cell')", "failed", "ValueError: boom in a cell"),
    ("try:\n    raise ValueError('caught')\nexcept ValueError:\n    pass", "failed", "cell that ran it ended"),
    ("raise KeyboardInterrupt", "cancelled", None),
])
def test_the_ipython_cell_that_left_a_training_open_ends_it(run_python, tmp_path, read_only, cell, status, error):
    store = tmp_path / "child.duckdb"
    code = f"""
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_cell({OPEN_TRAINING + cell!r})  # the training starts and raises in one cell
print("STATUS", shell.user_ns["run"].status.value)
"""
    child = run_python(code, env={"NOTEBOOK_EXP_STORE": str(store), "NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"})
    assert f"STATUS {status}" in child.stdout  # ended by the cell, before the exit
    ((stored, stored_error),) = read_only(store, "SELECT status, error FROM runs")
    assert stored == status
    if error:
        assert error in stored_error
