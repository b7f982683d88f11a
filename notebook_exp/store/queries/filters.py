"""Which runs to read: ``RunFilter``, and the runs filter language that users type.

    lr < 0.01 and loss < 0.2
    opt in ('adam', 'sgd') or not (bs >= 64)
    min(val/loss) <= 0.1 and status != 'failed'
    `my param` = 'x' and params.lr > 1e-4
    optim.lr < 0.05 and model.depth >= 4

Grammar (keywords are case-insensitive)::

    expr       := and_expr ('or' and_expr)*
    and_expr   := not_expr ('and' not_expr)*
    not_expr   := 'not' not_expr | '(' expr ')' | comparison
    comparison := operand OP operand | operand ['not'] 'in' '(' literal (',' literal)* ')'
    operand    := literal | name | ('last' | 'min' | 'max') '(' name ')'
    OP         := '<' | '<=' | '>' | '>=' | '=' | '==' | '!=' | '<>'

A name is a param (``params.lr`` or just ``lr``; a nested param by its dotted
name, ``optim.lr``), a metric (``metrics.loss`` or ``loss``: its last value;
``min(loss)``/``max(loss)`` its extremes) or a run field (``name``,
``experiment``, ``status``, ``run_id``, ``sweep_id``, ``duration``), looked up
in that order against the names the store actually holds. Names may contain
``. / -`` and can be quoted with backticks.

Nothing the user typed ever becomes SQL text: values and names travel as ``?``
parameters; the SQL is assembled only from fixed fragments (``fragments``).
``compile_filter`` turns an expression into a WHERE condition; ``RunFilter``
joins it with the viewer's other filters (experiments, statuses, tags, text)
and the callers' own (run ids, created since) into the WHERE clause of a runs
query (``table.runs_table``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ...exceptions import ConfigError
from .fragments import (
    DURATION,
    IN_LIST,
    PARAM_NUMBER,
    PARAM_TEXT,
    SUMMARY_COLUMNS,
    SWEEP_ID,
    summary_value,
)
from .paths import json_pointer

__all__ = ["ALL_RUNS", "FilterError", "FilterNames", "RunFilter", "compile_filter", "tokenize"]


class FilterError(ConfigError):
    """A filter expression that cannot be parsed or names something unknown."""


@dataclass(frozen=True)
class Token:
    kind: str  # num, str, name, op, kw, lparen, rparen, comma, end
    value: object
    pos: int
    text: str = ""


@dataclass
class FilterNames:
    """The names an expression may use (from the store), and the 'now' for durations.

    ``params`` maps each param's dotted name to its JSON pointer (``facets``
    gives it); a plain list of names means what the dots say (``optim.lr`` is
    ``lr`` inside ``optim``)."""

    params: Mapping[str, str] | Iterable[str] = ()
    metrics: Iterable[str] = ()
    now: object = None
    _params: dict = field(init=False, repr=False)
    _metrics: set = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            self._params = dict(self.params)
        else:
            self._params = {name: json_pointer(*name.split(".")) for name in self.params}
        self._metrics = set(self.metrics)


KEYWORDS = {"and", "or", "not", "in", "true", "false"}
RUN_FIELDS = {
    "name": "runs.name",
    "experiment": "runs.experiment",
    "status": "runs.status",
    "run_id": "runs.run_id",
    "sweep_id": SWEEP_ID,
}
OPERATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "=", "==": "=", "!=": "<>", "<>": "<>"}
DEFAULT_MAX_LENGTH = 2000  # characters of an expression

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
  | (?P<qname>`(?:[^`]|``)+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_./\-]*)
  | (?P<op><=|>=|!=|<>|==|<|>|=)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.VERBOSE,
)


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1].replace(quote * 2, quote)
    return re.sub(r"\\(.)", r"\1", body)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; raises ``FilterError`` at the first bad character."""
    if len(text) > DEFAULT_MAX_LENGTH:
        raise FilterError(f"filter is too long ({len(text)} characters, at most {DEFAULT_MAX_LENGTH})")
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            char = text[pos]
            hint = " (unterminated string?)" if char in "'\"`" else ""
            raise FilterError(f"unexpected {char!r} at position {pos + 1}{hint}")
        kind, raw = match.lastgroup, match.group()
        if kind == "num":
            tokens.append(Token("num", float(raw), pos, raw))
        elif kind == "str":
            tokens.append(Token("str", _unquote(raw), pos, raw))
        elif kind == "qname":
            tokens.append(Token("name", raw[1:-1].replace("``", "`"), pos, raw))
        elif kind == "name":
            low = raw.lower()
            tokens.append(Token("kw" if low in KEYWORDS else "name", low if low in KEYWORDS else raw, pos, raw))
        elif kind != "ws":
            tokens.append(Token(kind, raw, pos, raw))
        pos = match.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


@dataclass(frozen=True)
class Ref:
    """A resolved name: how to read it as text and as a number."""

    text_sql: str
    num_sql: str
    args: tuple


class _Parser:
    def __init__(self, tokens: list[Token], names: FilterNames) -> None:
        self.tokens = tokens
        self.i = 0
        self.names = names

    # -- token helpers --------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _is(self, kind: str, value: object = None) -> bool:
        tok = self.tok
        return tok.kind == kind and (value is None or tok.value == value)

    def _expect(self, kind: str, what: str) -> Token:
        if not self._is(kind):
            self._fail(f"expected {what}")
        return self._advance()

    def _fail(self, message: str):
        tok = self.tok
        found = "the end" if tok.kind == "end" else repr(tok.text)
        raise FilterError(f"{message} at position {tok.pos + 1}, found {found}")

    # -- grammar --------------------------------------------------------------
    def parse(self) -> tuple[str, list]:
        sql, args = self._or()
        if not self._is("end"):
            self._fail("expected 'and', 'or' or the end")
        return sql, args

    def _or(self) -> tuple[str, list]:
        return self._chain(self._and, "or", "OR")

    def _and(self) -> tuple[str, list]:
        return self._chain(self._not, "and", "AND")

    def _chain(self, part, keyword: str, sql_op: str) -> tuple[str, list]:
        sql, args = part()
        while self._is("kw", keyword):
            self._advance()
            more_sql, more_args = part()
            sql, args = f"({sql} {sql_op} {more_sql})", args + more_args
        return sql, args

    def _not(self) -> tuple[str, list]:
        if self._is("kw", "not"):
            self._advance()
            sql, args = self._not()
            return f"(NOT coalesce({sql}, false))", args
        if self._is("lparen"):
            self._advance()
            sql, args = self._or()
            self._expect("rparen", "')'")
            return sql, args
        return self._comparison()

    def _comparison(self) -> tuple[str, list]:
        left = self._operand()
        if self._is("kw", "not") or self._is("kw", "in"):
            return self._membership(left)
        if not self._is("op"):
            self._fail("expected a comparison (<, <=, >, >=, =, !=, in)")
        op = OPERATORS[self._advance().value]
        right = self._operand()
        return _compare(left, op, right)

    def _membership(self, left) -> tuple[str, list]:
        negate = False
        if self._is("kw", "not"):
            self._advance()
            negate = True
        if not self._is("kw", "in"):
            self._fail("expected 'in'")
        self._advance()
        self._expect("lparen", "'(' after 'in'")
        values = [self._literal()]
        while self._is("comma"):
            self._advance()
            values.append(self._literal())
        self._expect("rparen", "')'")
        if not isinstance(left, Ref):
            raise FilterError("the left side of 'in' must be a name")
        kinds = {type(v) for v in values}
        if len(kinds) > 1:
            raise FilterError("the values of an 'in' list must all be numbers or all be strings")
        column = left.num_sql if kinds == {float} else left.text_sql
        if kinds == {bool}:
            values = ["true" if v else "false" for v in values]
        marks = ", ".join("?" for _ in values)
        sql = f"({column} {'NOT IN' if negate else 'IN'} ({marks}))"
        return sql, list(left.args) + list(values)

    def _literal(self):
        tok = self.tok
        if tok.kind in ("num", "str"):
            self._advance()
            return tok.value
        if tok.kind == "kw" and tok.value in ("true", "false"):
            self._advance()
            return tok.value == "true"
        self._fail("expected a number or a quoted string")

    def _operand(self):
        tok = self.tok
        if tok.kind in ("num", "str") or (tok.kind == "kw" and tok.value in ("true", "false")):
            return self._literal()
        if tok.kind != "name":
            self._fail("expected a name or a value")
        self._advance()
        if tok.value.lower() in SUMMARY_COLUMNS and self._is("lparen"):
            self._advance()
            inner = self._expect("name", "a metric name")
            self._expect("rparen", "')'")
            return self._metric(inner.value, tok.value.lower(), inner.pos)
        return self._resolve(tok.value, tok.pos)

    # -- names ----------------------------------------------------------------
    def _resolve(self, name: str, pos: int) -> Ref:
        names = self.names
        if name.startswith("params.") and name[7:] in names._params:
            return _param(names._params[name[7:]])
        if name.startswith("metrics.") and name[8:] in names._metrics:
            return self._metric(name[8:], "last", pos)
        if name in names._params:
            return _param(names._params[name])
        if name in names._metrics:
            return self._metric(name, "last", pos)
        if name in RUN_FIELDS:
            column = RUN_FIELDS[name]
            return Ref(column, f"TRY_CAST({column} AS DOUBLE)", ())
        if name == "duration":
            return Ref(f"CAST({DURATION} AS VARCHAR)", DURATION, (names.now,))
        raise FilterError(
            f"unknown name {name!r} at position {pos + 1} (not a param, a metric or a run field)"
        )

    def _metric(self, key: str, aggregate: str, pos: int) -> Ref:
        if key not in self.names._metrics:
            raise FilterError(f"unknown metric {key!r} at position {pos + 1}")
        sql = summary_value(aggregate)
        return Ref(f"CAST({sql} AS VARCHAR)", sql, (key,))


def _param(pointer: str) -> Ref:
    return Ref(PARAM_TEXT, PARAM_NUMBER, (pointer,))


def _compare(left, op: str, right) -> tuple[str, list]:
    left_is_ref, right_is_ref = isinstance(left, Ref), isinstance(right, Ref)
    if not left_is_ref and not right_is_ref:
        raise FilterError("a comparison needs at least one name (compare a name with a value)")
    if left_is_ref and right_is_ref:
        return f"({left.num_sql} {op} {right.num_sql})", list(left.args) + list(right.args)
    ref, value = (left, right) if left_is_ref else (right, left)
    if isinstance(value, bool):
        if op not in ("=", "<>"):
            raise FilterError("true/false can only be compared with = or !=")
        column, value = ref.text_sql, "true" if value else "false"
    elif isinstance(value, float):
        column = ref.num_sql
    else:
        column = ref.text_sql
    if left_is_ref:
        return f"({column} {op} ?)", list(ref.args) + [value]
    return f"(? {op} {column})", [value] + list(ref.args)


def compile_filter(text: str, names: FilterNames) -> tuple[str, list]:
    """SQL for a WHERE clause over ``runs`` and its ``?`` arguments; ``("", [])`` for blank text.

    Raises ``FilterError`` (a ``ConfigError``, so a ``ValueError``) with a
    one-line message saying where the expression went wrong.
    """
    if not text or not text.strip():
        return "", []
    return _Parser(tokenize(text), names).parse()


#: What the free-text filter searches: name, experiment, id, tags and params, lower-cased.
TEXT_FIELDS = ("lower(concat_ws(' ', runs.name, runs.experiment, runs.run_id, "
               "array_to_string(runs.tags, ' '), CAST(runs.params AS VARCHAR)))")


@dataclass(frozen=True)
class RunFilter:
    """Which runs a runs query reads; the defaults select every run.

    ``experiments``, ``statuses``: runs in one of these (an empty list selects
    none); ``tags``: runs carrying all of these; ``text``: a case-insensitive
    substring of a run's name, experiment, id, tags or params; ``expression``:
    a compiled filter expression (``compile_filter``); ``run_ids``: only these
    runs; ``sweeps``: runs of these sweeps (``sweep_id``); ``since``: runs created
    at or after it (UTC).
    """

    experiments: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    sweeps: Sequence[str] | None = None
    tags: Sequence[str] | None = None
    text: str = ""
    expression: tuple[str, list] = ("", [])
    run_ids: Sequence[str] | None = None
    since: datetime | None = None

    def where(self) -> tuple[str, list]:
        """``"WHERE ..."`` (or ``""``) and its arguments, for a query over ``runs``."""
        clauses, args = [], []
        for column, values in (("runs.experiment", self.experiments), ("runs.status", self.statuses),
                               ("runs.run_id", self.run_ids), (SWEEP_ID, self.sweeps)):
            if values is not None:
                clauses.append(f"{column} IN {IN_LIST}")
                args.append(list(values))
        if self.tags is not None:
            clauses.append("list_has_all(coalesce(runs.tags, []), ?::VARCHAR[])")
            args.append(list(self.tags))
        text = self.text.strip().lower()
        if text:
            clauses.append(f"contains({TEXT_FIELDS}, ?)")
            args.append(text)
        if self.since is not None:
            clauses.append("runs.created_at >= ?::TIMESTAMP")
            args.append(self.since)
        sql, expression_args = self.expression
        if sql:
            clauses.append(sql)
            args.extend(expression_args)
        return ("WHERE " + " AND ".join(f"({c})" for c in clauses)) if clauses else "", args


ALL_RUNS = RunFilter()
