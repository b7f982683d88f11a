"""Configs as params: pydantic models, dataclasses, OmegaConf and nested dicts.

A run's params are stored as given, nested JSON. ``to_plain`` turns a config
object into that form (``clean_params`` then checks the leaves): a pydantic
model by ``model_dump(mode="json")``, a dataclass field by field, an OmegaConf
``DictConfig`` by ``OmegaConf.to_container(resolve=True)``, at any depth.
pydantic and omegaconf are never imported here: a value can only be one of
theirs if its library was imported already.

Everywhere people look, params are flat with dotted names (``flatten``, from
the store's read path); ``unflatten`` goes back. ``apply`` sets dotted
overrides (``{"optim.lr": 1e-3}``) on a base config and validates the result
with the base's own type, so a pydantic model's bounds hold before anything is
queued; ``restore`` rebuilds a config object from stored params (the round
trip of ``run.params``), ``build`` one like a given config. Every problem is one ``ConfigError`` naming the
dotted path.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError
from ..store.queries.paths import flatten

__all__ = ["apply", "build", "flatten", "is_config", "restore", "set_path", "to_plain", "unflatten"]


def _pydantic_model(value: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


def _omegaconf():
    """The omegaconf module if it was imported (a value can only be its config then)."""
    return sys.modules.get("omegaconf")


def _omega_config(value: Any) -> bool:
    omegaconf = _omegaconf()
    return omegaconf is not None and isinstance(value, (omegaconf.DictConfig, omegaconf.ListConfig))


def _dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def is_config(value: Any) -> bool:
    """Whether ``value`` is a typed config: a pydantic model, a dataclass or an OmegaConf config."""
    return _pydantic_model(value) or _dataclass(value) or _omega_config(value)


def to_plain(value: Any) -> Any:
    """``value`` with every config object in it turned into dicts and lists, at any depth.

    Leaves are left as they are (``tracking.values.clean_params`` checks them); a
    tuple becomes a list, any other ``Mapping`` a dict."""
    if _pydantic_model(value):
        return to_plain(value.model_dump(mode="json"))
    if _dataclass(value):
        return {field.name: to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if _omega_config(value):
        return to_plain(_omegaconf().OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.1, "seed": 1}`` -> ``{"optim": {"lr": 0.1}, "seed": 1}``."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        set_path(out, name, value)
    return out


def _segments(path: str) -> list[str]:
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or any(not part.strip() for part in parts):
        raise ConfigError(f"param {path!r} is not a dotted name (like optim.lr)")
    return parts


def set_path(plain: dict[str, Any], path: str, value: Any, strict: bool = False) -> None:
    """Set ``path`` (``"optim.lr"``) to ``value`` in the nested dict ``plain``, in place.

    Missing groups are created, unless ``strict`` (a typed config's shape is fixed):
    then every segment must exist. ``ConfigError`` names the path otherwise."""
    parts = _segments(path)
    node = plain
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if part not in node:
            if strict:
                raise ConfigError(f"unknown param {path!r}: there is no {here!r}{_known(node, parts[:depth])}")
            node[part] = {}
        elif not isinstance(node[part], dict):
            kind = "a list (set it whole, as a list)" if isinstance(node[part], list) else \
                f"a {type(node[part]).__name__}, not a group of params"
            raise ConfigError(f"cannot set {path!r}: {here!r} is {kind}")
        node = node[part]
    if strict and parts[-1] not in node:
        raise ConfigError(f"unknown param {path!r}{_known(node, parts[:-1])}")
    node[parts[-1]] = value


def _known(node: dict, prefix: list[str]) -> str:
    names = sorted(".".join([*prefix, str(key)]) for key in node)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f" (it has {shown})" if names else ""


def apply(base: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain params of ``base`` (a config object, a dict or None) with ``overrides``
    set by dotted name, validated by the base's type; ``ConfigError`` naming the path.

    A typed base (pydantic, dataclass, OmegaConf) has a fixed shape: an override
    must name one of its params, and the result must pass its validation (a
    pydantic model's returns coerced values). A dict base takes new names too."""
    if isinstance(base, type):
        base = _default_instance(base)
    plain = to_plain(base) if base is not None else {}
    if not isinstance(plain, dict):
        raise ConfigError(f"a base config is a dict or a config object, got {type(base).__name__}")
    plain = copy.deepcopy(plain)
    strict = is_config(base)
    for path, value in (overrides or {}).items():
        set_path(plain, path, to_plain(value), strict=strict)
    if strict:
        plain = to_plain(build(base, plain))
    return plain


def _default_instance(cls: type) -> Any:
    """A config class given as base: its defaults."""
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - pydantic's, a dataclass's TypeError: one message
        raise ConfigError(f"base config {cls.__name__} has no defaults for every field; pass an instance: {exc}") \
            from None


def build(like: Any, plain: dict[str, Any]) -> Any:
    """``plain`` params as a config object of ``like``'s type, validated by it: a pydantic
    model or a dataclass (``restore``), an OmegaConf config (``like`` merged with
    ``plain``); a dict or None gives ``plain`` back. ``ConfigError`` names the path."""
    if _omega_config(like):
        omegaconf = _omegaconf()
        try:
            return omegaconf.OmegaConf.merge(like, plain)
        except omegaconf.errors.OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or "config"
            raise ConfigError(f"invalid config: {key}: {getattr(exc, 'msg', exc)}") from None
    if like is None or isinstance(like, dict):
        return plain
    return restore(like if isinstance(like, type) else type(like), plain)


def restore(cls: type, plain: Any) -> Any:
    """A ``cls`` (pydantic model, dataclass) made from stored params, at any depth:
    ``restore(TrainConfig, run.params) == config``. Other types get ``plain`` back."""
    if isinstance(cls, type) and hasattr(cls, "model_validate") and hasattr(cls, "model_fields"):
        from pydantic import ValidationError

        try:
            return cls.model_validate(plain)
        except ValidationError as exc:
            raise ConfigError(f"invalid config ({cls.__name__}): {_problems(exc)}") from None
    if dataclasses.is_dataclass(cls) and isinstance(cls, type) and isinstance(plain, dict):
        return _dataclass_from(cls, plain)
    return plain


def _problems(exc) -> str:
    """pydantic's errors as ``dotted.path: message (got value)``, joined."""
    out = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "config"
        given = f" (got {error['input']!r:.60})" if "input" in error and not isinstance(error["input"], dict) else ""
        out.append(f"{path}: {error['msg'].removeprefix('Value error, ')}{given}")
    return "; ".join(out)


def _dataclass_from(cls: type, plain: dict[str, Any], prefix: str = "") -> Any:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: take the values as they are
        hints = {}
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(plain) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown param {where!r}: {cls.__name__} has no field {unknown[0]!r}")
    values = {name: _typed(hints.get(name), value, f"{prefix}.{name}" if prefix else name)
              for name, value in plain.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config ({cls.__name__}{' at ' + prefix if prefix else ''}): {exc}") from None


def _typed(hint: Any, value: Any, path: str) -> Any:
    """``value`` rebuilt as ``hint`` says where that is a config type (or a tuple, a list of them)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args and len(args) == 2:  # Optional[X]
        return None if value is None else _typed(next(a for a in args if a is not type(None)), value, path)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, dict):
        return _dataclass_from(hint, value, path)
    if isinstance(hint, type) and hasattr(hint, "model_validate") and isinstance(value, dict):
        return restore(hint, value)
    if origin in (tuple, list) and isinstance(value, list):
        inner = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        items = [_typed(inner, item, f"{path}.{i}") for i, item in enumerate(value)] if inner else value
        return tuple(items) if origin is tuple else list(items)
    return value
