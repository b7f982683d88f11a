"""The filter language: parsing, parameterised SQL, and what it selects in a real store."""

from __future__ import annotations

import pytest
from notebook_exp_viewer.filters import FilterError, FilterNames, compile_filter, tokenize

from notebook_exp.exceptions import ConfigError

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


def test_filters_select_the_right_runs(state, sample):
    _path, ids = sample
    by_id = {v: k for k, v in ids.items()}

    def names(expression: str) -> set[str]:
        frame = state.list_runs(expression=expression)
        return {by_id.get(r, r) for r in frame["run_id"]}

    assert names("lr < 0.05") == {"lr-0.01", "lr-0.001"}
    assert names("lr < 0.05 and bs >= 64") == {"lr-0.001"}
    assert names("opt = 'adam' and not lr = 0.1") == {"lr-0.01", "lr-0.001"}
    assert names("status = 'failed'") == {"exploding", "xss"}
    assert names("loss < 0.1") == {"lr-0.1", "lr-0.01"}
    assert names("max(loss) >= 1 and min(loss) < 0.8") == {"lr-0.1", "lr-0.01", "lr-0.001"}
    assert names("lr in (0.1, 5)") == {"lr-0.1", "exploding"}
    assert names("name = 'x''; DROP TABLE runs; --'") == set()
    assert len(state.list_runs()) == len(ids)
