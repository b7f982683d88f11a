"""Distributions for random search: ``nx.sweep(fn, space, n=20, method="random", seed=0)``.

    from notebook_exp.space import choice, loguniform, randint, uniform
    space = {"optim.lr": loguniform(1e-5, 1e-1), "optim.name": choice(["adam", "sgd"]),
             "model.depth": randint(2, 8), "dropout": uniform(0.0, 0.5)}

Each draws with the ``random.Random`` the sweep seeds, so the same seed gives
the same params. Supports: ``uniform(low, high)`` a float in [low, high];
``loguniform(low, high)`` a float whose log is uniform (0 < low < high);
``choice(values)`` one of the values, equally likely (in a grid sweep, every
one of them); ``randint(low, high)`` an integer in [low, high) (``high``
excluded, as ``range``). A distribution is any object with ``sample(rng)``
(and ``describe()``, a JSON-able dict), so a sweep takes one of your own.

``parse`` reads the ``%%experiment --sample`` form: ``optim.lr=loguniform(1e-5,1e-1)``.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigError

__all__ = ["Choice", "Distribution", "LogUniform", "RandInt", "Uniform", "choice", "loguniform", "parse",
           "randint", "uniform"]


class Distribution:
    """Base of the distributions: ``sample(rng)`` draws one value; ``describe()`` says what it is."""

    kind = ""

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(repr(v) for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.kind}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return value


class Uniform(Distribution):
    """A float in [low, high], every value equally likely."""

    kind = "uniform"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = _number("low", low), _number("high", high)
        if not self.low < self.high:
            raise ConfigError(f"uniform(low, high) needs low < high, got {low!r}, {high!r}")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


class LogUniform(Distribution):
    """A float in [low, high] whose logarithm is uniform: each decade equally likely."""

    kind = "loguniform"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = _number("low", low), _number("high", high)
        if not 0 < self.low < self.high:
            raise ConfigError(f"loguniform(low, high) needs 0 < low < high, got {low!r}, {high!r}")

    def sample(self, rng: random.Random) -> float:
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return min(max(value, self.low), self.high)  # exp(log(x)) may round past the ends


class Choice(Distribution):
    """One of ``values``, each equally likely; a grid sweep takes every one."""

    kind = "choice"

    def __init__(self, values: Sequence[Any]) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(f"choice takes a list of values, got {values!r}")
        if not values:
            raise ConfigError("choice needs at least one value")
        self.values = list(values)

    def sample(self, rng: random.Random) -> Any:
        return self.values[rng.randrange(len(self.values))]

    def grid_values(self) -> list[Any]:
        """The values a grid sweep runs, each once."""
        return list(self.values)


class RandInt(Distribution):
    """An integer in [low, high): ``high`` is excluded, as in ``range``."""

    kind = "randint"

    def __init__(self, low: int, high: int) -> None:
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (low, high)):
            raise ConfigError(f"randint(low, high) takes integers, got {low!r}, {high!r}")
        if not low < high:
            raise ConfigError(f"randint(low, high) needs low < high (high is excluded), got {low!r}, {high!r}")
        self.low, self.high = low, high

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.low, self.high)


def uniform(low: float, high: float) -> Uniform:
    """A float in [low, high], uniformly."""
    return Uniform(low, high)


def loguniform(low: float, high: float) -> LogUniform:
    """A float in [low, high] (0 < low), uniform in log space: for learning rates, weight decays."""
    return LogUniform(low, high)


def choice(values: Sequence[Any]) -> Choice:
    """One of ``values``, equally likely (a grid sweep runs each)."""
    return Choice(values)


def randint(low: int, high: int) -> RandInt:
    """An integer in [low, high) (high excluded)."""
    return RandInt(low, high)


_MAKERS = {"uniform": uniform, "loguniform": loguniform, "choice": choice, "randint": randint}


def parse(text: str, flag: str = "--sample") -> tuple[str, Distribution]:
    """``"optim.lr=loguniform(1e-5,1e-1)"`` -> ``("optim.lr", loguniform(1e-05, 0.1))``.

    The value is a call of ``uniform``, ``loguniform``, ``choice`` or ``randint``
    with literal arguments; ``choice(a, b)`` means ``choice([a, b])``.
    ``ConfigError`` saying what is wrong otherwise."""
    key, sep, expr = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"{flag} takes KEY=DISTRIBUTION with KEY a (dotted) name, got {text!r}")
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in _MAKERS \
            or node.keywords:
        raise ConfigError(f"{flag} {key}: {expr.strip()!r} is not one of "
                          f"{', '.join(f'{name}(...)' for name in _MAKERS)}")
    try:
        args = [ast.literal_eval(arg) for arg in node.args]
    except ValueError:
        raise ConfigError(f"{flag} {key}: the arguments of {node.func.id} must be literals, got {expr.strip()!r}") \
            from None
    if node.func.id == "choice" and (len(args) != 1 or not isinstance(args[0], (list, tuple))):
        args = [list(args)]
    if node.func.id != "choice" and len(args) != 2:
        raise ConfigError(f"{flag} {key}: {node.func.id} takes two arguments (low, high), got {len(args)}")
    try:
        return key, _MAKERS[node.func.id](*args)
    except ConfigError as exc:
        raise ConfigError(f"{flag} {key}: {exc}") from None
