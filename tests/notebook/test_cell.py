"""Parsing magic arguments and running cells as functions."""

import pytest
from IPython.core.error import UsageError

import notebook_exp as nx
from notebook_exp._cell import CellFunction, referenced_names
from notebook_exp.exceptions import ConfigError
from notebook_exp.magics import parse_assignment, parse_grid


def test_grid_values_are_literals_split_at_top_level():
    assert parse_grid("lr=1e-3,1e-4") == ("lr", [0.001, 0.0001])
    assert parse_grid("layers=[64,64],[128]") == ("layers", [[64, 64], [128]])
    assert parse_grid("opt=adam,'s,gd'") == ("opt", ["adam", "s,gd"])
    assert parse_grid("flag=True,False") == ("flag", [True, False])


@pytest.mark.parametrize("text", ["lr", "=1", "1x=2", "lr="])
def test_malformed_assignments(text):
    with pytest.raises(UsageError):
        parse_assignment(text)


def test_empty_grid_value_is_refused():
    with pytest.raises(UsageError, match="empty value"):
        parse_grid("lr=0.1,,0.2")


def test_params_override_the_cells_defaults_and_the_last_expression_is_the_result():
    fn = CellFunction("lr = 1e-3\nbs: int = 4\nscale = 10\nlr * bs * scale", ["lr", "bs"], namespace={})
    assert fn(None, lr=0.5, bs=2) == 10.0
    no_params = CellFunction("lr = 1e-3\nlr", [], namespace={})
    assert no_params(None) == 1e-3


def test_the_notebook_namespace_is_read_not_written():
    notebook = {"data": [1, 2, 3]}
    fn = CellFunction("total = sum(data)\ndata = None\ntotal", [], namespace=notebook)
    assert fn(None) == 6
    assert notebook == {"data": [1, 2, 3]}


def test_syntax_errors_are_found_when_the_cell_is_submitted():
    with pytest.raises(ConfigError, match="does not compile.*line 2"):
        CellFunction("x = 1\nx = = 2", [])


def test_referenced_names_leave_ipython_out():
    assert referenced_names("y = model(data)\nOut\nget_ipython()") == {"y", "model", "data"}


def test_a_cell_function_runs_in_a_process(store_path):
    fn = CellFunction("offset + lr", ["lr"], captured={"offset": 100})
    job = nx.submit(fn, {"lr": 0.5}, executor="process")
    assert job.result(timeout=60) == 100.5
