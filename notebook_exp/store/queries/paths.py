"""Nested params as dotted names: how the read path shows ``{"optim": {"lr": 0.1}}``.

A run's params are stored as given, nested JSON (``runs.params``). Everywhere
people look at them they are flat: one name per leaf, its segments joined by
dots (``optim.lr``), lists kept as values (``model.layers`` is ``[64, 64]``).
An empty object is a value too. The store's own structure decides each name's
JSON pointer, so a top-level key that itself holds a dot (``"optim.lr"`` logged
flat) still reads right.

``flatten`` is for values already loaded (pandas, the viewer's compare page);
``param_paths`` reads DuckDB's ``json_group_structure`` of the runs' params:
every leaf's dotted name, its JSON pointer and whether it is a number.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NUMERIC_JSON", "flatten", "json_pointer", "param_paths"]

#: The kinds ``json_group_structure`` gives numbers.
NUMERIC_JSON = frozenset({"UBIGINT", "BIGINT", "DOUBLE", "HUGEINT", "UHUGEINT"})


def json_pointer(*segments: str) -> str:
    """The JSON pointer (RFC 6901) of the value at ``segments`` (one per level)."""
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in segments)


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}, "layers": [64]}`` -> ``{"optim.lr": 0.1, "layers": [64]}``.

    Lists and empty dicts stay values; anything that is not a dict is returned
    under ``prefix`` (or as ``{}`` without one)."""
    if not isinstance(params, dict):
        return {prefix: params} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def param_paths(structure: str | dict | None) -> list[tuple[str, str, bool]]:
    """``(dotted name, JSON pointer, is numeric)`` of every leaf of a
    ``json_group_structure`` result, sorted by name. Lists, and keys whose kind
    differs between runs (``JSON``), are text leaves."""
    try:
        shape = json.loads(structure) if isinstance(structure, str) else (structure or {})
    except ValueError:
        return []
    if not isinstance(shape, dict):
        return []
    found: list[tuple[str, str, bool]] = []
    _walk(shape, (), found)
    return sorted(found)


def _walk(shape: dict, segments: tuple[str, ...], found: list) -> None:
    for key, kind in shape.items():
        path = (*segments, key)
        if isinstance(kind, dict) and kind:
            _walk(kind, path, found)
        else:
            numeric = isinstance(kind, str) and kind in NUMERIC_JSON
            found.append((".".join(path), json_pointer(*path), numeric))
