"""Which runs a query reads: the filter language (parsing, parameterised SQL) and ``RunFilter``."""

from __future__ import annotations

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError
from notebook_exp.store import queries
from notebook_exp.store.queries import (
    FilterError,
    FilterNames,
    RunFilter,
    compile_filter,
    read,
)
from notebook_exp.store.queries.filters import tokenize

NAMES = FilterNames(params=["lr", "bs", "opt", "a/b", "my param"], metrics=["loss", "val/loss", "acc"])


def kinds(text: str) -> list[str]:
    return [t.kind for t in tokenize(text)]


def test_tokenizer_kinds():
    assert kinds("lr <= 1e-3 and opt = 'adam'") == ["name", "op", "num", "kw", "name", "op", "str", "end"]
    assert kinds("`my param` != -2.5") == ["name", "op", "num", "end"]
    assert kinds("(a) , NOT") == ["lparen", "name", "rparen", "comma", "kw", "end"]
    assert [t.value for t in tokenize("'it''s' \"q\\\"x\"")[:2]] == ["it's", 'q"x']


@pytest.mark.parametrize(
    ("text", "sql", "args"),
    [
        ("lr < 0.01", "(TRY_CAST(json_extract_string(runs.params, ?) AS DOUBLE) < ?)", ["/lr", 0.01]),
        ("opt = 'adam'", "(json_extract_string(runs.params, ?) = ?)", ["/opt", "adam"]),
        ("0.5 >= loss", "(? >= (SELECT ms.last_value FROM metric_summary ms "
         "WHERE ms.run_id = runs.run_id AND ms.key = ?))", [0.5, "loss"]),
        ("`a/b` == 1", "(TRY_CAST(json_extract_string(runs.params, ?) AS DOUBLE) = ?)", ["/a~1b", 1.0]),
        ("status != 'failed'", "(runs.status <> ?)", ["failed"]),
    ],
)
def test_compiles_to_parameterised_sql(text, sql, args):
    assert compile_filter(text, NAMES) == (sql, args)


def test_precedence_and_not():
    sql, args = compile_filter("lr < 1 or bs > 2 and not opt = 'sgd'", NAMES)
    assert sql.startswith("((TRY_CAST") and " OR (" in sql and "AND (NOT coalesce(" in sql
    assert args == ["/lr", 1.0, "/bs", 2.0, "/opt", "sgd"]


def test_in_lists_and_aggregates():
    sql, args = compile_filter("opt not in ('adam', 'sgd') and min(val/loss) < 0.2", NAMES)
    assert "NOT IN (?, ?)" in sql and "ms.min_value" in sql
    assert args == ["/opt", "adam", "sgd", "val/loss", 0.2]
    sql, args = compile_filter("params.lr in (0.1, 0.01)", NAMES)
    assert "TRY_CAST" in sql and args == ["/lr", 0.1, 0.01]


def test_blank_is_no_filter():
    assert compile_filter("   ", NAMES) == ("", [])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("lr <", "expected a name or a value at position 5"),
        ("(lr < 1", "expected ')'"),
        ("lr 1", "expected a comparison"),
        ("1 < 2", "at least one name"),
        ("nope < 1", "unknown name 'nope'"),
        ("max(nope) > 1", "unknown metric 'nope'"),
        ("opt in (1, 'a')", "all be numbers or all be strings"),
        ("lr > true", "true/false can only be compared"),
        ("lr < 0.1'; DROP TABLE runs; --", "unterminated string"),
        ("name = ''; DROP TABLE runs; --", "unexpected ';' at position 10"),
        ("lr < 1 union select 1", "expected 'and', 'or' or the end"),
    ],
)
def test_bad_expressions_raise_with_position(text, fragment):
    with pytest.raises(FilterError) as info:
        compile_filter(text, NAMES)
    assert fragment in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_user_text_never_reaches_sql():
    payload = "x'); DROP TABLE runs; --"
    sql, args = compile_filter(f"opt = {payload!r} or `my param` = 'y'", NAMES)
    assert "DROP" not in sql and payload in args
    assert "my param" not in sql and "/my param" in args


def _ids(where: RunFilter) -> set[str]:
    clause, args = where.where()
    return {row[0] for row in read(lambda conn: conn.execute(f"SELECT run_id FROM runs {clause}", args).fetchall())}


def test_run_filter_selects_runs_by_every_field():
    ids = {}
    for name, experiment, tags, lr in [("a", "mnist", ["sweep", "best"], 0.1), ("bravo", "mnist", ["sweep"], 0.01),
                                       ("c", "cifar", [], 0.5)]:
        with nx.start_run(name, experiment=experiment, tags=tags, params={"lr": lr}) as run:
            run.log(loss=lr, step=0)
        ids[name] = run.run_id
    names = FilterNames(params=["lr"], metrics=["loss"])
    assert RunFilter().where() == ("", [])
    assert _ids(RunFilter()) == set(ids.values())
    assert _ids(RunFilter(experiments=["mnist"])) == {ids["a"], ids["bravo"]}
    assert _ids(RunFilter(statuses=[])) == set()  # an empty list selects none; None selects all
    assert _ids(RunFilter(statuses=["completed"], tags=["sweep", "best"])) == {ids["a"]}
    assert _ids(RunFilter(text="  BRAV ")) == {ids["bravo"]}
    assert _ids(RunFilter(run_ids=[ids["c"], "nope"])) == {ids["c"]}
    assert _ids(RunFilter(expression=compile_filter("loss < 0.2 and lr >= 0.1", names))) == {ids["a"]}
    clause, args = RunFilter(experiments=["x'; DROP TABLE runs; --"], text="DROP").where()
    assert "DROP" not in clause and args == [["x'; DROP TABLE runs; --"], "drop"]


def test_nested_params_filter_by_dotted_name():
    ids = {}
    for name, lr, opt in [("slow", 0.01, "adam"), ("fast", 0.1, "sgd")]:
        params = {"optim": {"lr": lr, "name": opt}, "optim.lr": 9.0, "model": {"layers": [8, 8]}}
        with nx.start_run(name, params=params) as run:
            run.log(loss=lr, step=0)
        ids[name] = run.run_id
    facets = read(queries.facets)
    names = FilterNames(params=facets["param_pointers"], metrics=facets["metrics"])
    assert _ids(RunFilter(expression=compile_filter("optim.lr < 0.05", names))) == {ids["slow"]}
    assert _ids(RunFilter(expression=compile_filter("params.optim.name = 'sgd'", names))) == {ids["fast"]}
    # a flat key holding a dot is still its own param when the store says so (by its JSON pointer)
    flat = FilterNames(params={"optim.lr": "/optim.lr"}, metrics=[])
    assert _ids(RunFilter(expression=compile_filter("optim.lr > 5", flat))) == set(ids.values())
    assert compile_filter("optim.lr < 1", FilterNames(params=["optim.lr"]))[1] == ["/optim/lr", 1.0]
    with pytest.raises(FilterError, match="unknown name 'optim.lrr'"):
        compile_filter("optim.lrr < 1", names)
