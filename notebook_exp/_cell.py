"""A ``%%experiment`` cell as a function ``fn(run, **params)``.

Rules (also in ``%%experiment?``): inside the cell ``run`` is the Run and every
param is a variable. A top-level assignment to a param's name in the cell
(``lr = 1e-3``) is a default that the param overrides: the assignment is
skipped when the param is given. The value of a last bare expression is the
run's result (``job.result()``). Thread runs see the notebook's variables as
they are when the run starts (a copy: the cell's assignments stay in the run);
process runs get copies of the variables the cell uses, shipped with cloudpickle.
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

from .exceptions import ConfigError

__all__ = ["CellFunction", "compile_cell", "referenced_names"]

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_ih", "_oh", "_dh", "_i", "_ii", "_iii"}


def _strip_param_defaults(tree: ast.Module, params: frozenset[str]) -> None:
    body = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else None
        if targets and all(isinstance(t, ast.Name) and t.id in params for t in targets):
            continue  # `lr = 1e-3` is a default; the param wins
        body.append(node)
    tree.body = body


def compile_cell(source: str, params=frozenset(), filename: str = "<experiment cell>"):
    """Code objects for the cell's body and its last expression (or None)."""
    try:
        tree = ast.parse(source, filename, "exec")
    except SyntaxError as exc:
        raise ConfigError(f"the cell does not compile: {exc.msg} (line {exc.lineno})") from None
    _strip_param_defaults(tree, frozenset(params))
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


def referenced_names(source: str) -> set[str]:
    """Every name the cell reads (for shipping notebook variables to a process run)."""
    tree = ast.parse(source)
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} - _IPYTHON_NAMES


class CellFunction:
    """Runs the cell's code with ``run`` and the params as variables."""

    def __init__(self, source: str, params, namespace: dict | None = None, captured: dict | None = None,
                 label: str = "<experiment cell>") -> None:
        self.source = source
        self.param_names = frozenset(params)
        self.label = label
        self.captured = dict(captured or {})
        self._namespace = namespace  # the live notebook namespace (thread runs); never pickled
        self.__name__ = self.__qualname__ = "experiment_cell"
        compile_cell(source, self.param_names, label)  # syntax errors now, not in the run

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_namespace"] = None
        return state

    def __call__(self, run, **params):
        body, last = compile_cell(self.source, self.param_names, self.label)
        namespace = dict(self._namespace) if self._namespace is not None else dict(self.captured)
        namespace.setdefault("__builtins__", builtins)
        namespace.update(params)
        namespace["run"] = run
        exec(body, namespace)  # noqa: S102 - running the user's own cell is the point
        return eval(last, namespace) if last is not None else None  # noqa: S307

    def __repr__(self) -> str:
        first = self.source.strip().splitlines()[0] if self.source.strip() else ""
        return f"<experiment cell: {first[:60]!r}>"
