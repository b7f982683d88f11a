"""Sweeps: grid and random search over a base config, as one group of runs.

    nx.sweep(train, {"optim.lr": [1e-3, 1e-2], "model.layers": [[32, 32], [64, 64]]}, base=config)
    nx.sweep(train, {"optim.lr": loguniform(1e-5, 1e-1), "optim.name": ["adam", "sgd"]},
             n=20, method="random", seed=0, stop=nx.MedianStop("val/loss", grace=100))

Every run's params are worked out before anything is queued (``plan``): the
base config (a pydantic model, a dataclass, an OmegaConf config, a dict or
nothing) as plain nested params, then ``params`` and the sweep's point set on
it by dotted name, then validated by the base's type (``tracking.params.apply``):
a bad path or value is one ``ConfigError`` naming the path, and nothing is
queued. A grid runs every combination of its lists (a ``choice`` gives its
values); a random sweep draws ``n`` points with ``random.Random(seed)``, from
distributions (``notebook_exp.space``), lists (one of their values) and fixed
values, keys in sorted order, so the same seed gives the same params. Without a
seed one is drawn, and recorded.

The sweep is one group: every run's spec holds ``sweep`` (``id``, ``method``,
``size``, ``seed``, ``index``, ``stop``: the rule), which ``nx.runs()`` shows as
``sweep_id`` and the viewer groups by. ``stop=`` adds early stopping
(``scheduler.stopping``). ``sweep`` returns a ``Sweep``: the list of jobs, with
its id, ``progress()`` and ``best()``.
"""

from __future__ import annotations

import ast
import itertools
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigError
from ..models import RunStatus
from ..store.queries.detail import EARLY_STOPPED
from ..store.queries.paths import flatten
from ..tracking import params as configs
from .spec import ExperimentSpec, check_sinks, validate
from .stopping import StopMonitor, StopRule

__all__ = ["METHODS", "ConfigCall", "Point", "Sweep", "cell_config", "plan", "sweep"]

METHODS = ("grid", "random")


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its full params (plain, validated) and the values it varies."""

    params: dict[str, Any]
    varied: dict[str, Any]


def _is_distribution(value: Any) -> bool:
    return callable(getattr(value, "sample", None)) and not isinstance(value, (dict, list, tuple, str))


def _grid_values(key: str, value: Any) -> list:
    if _is_distribution(value):
        values = getattr(value, "grid_values", None)
        if values is None:
            raise ConfigError(f"{key}: {value!r} is drawn at random; pass method='random' and n=... to sample it")
        return list(values())
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    values = list(value)
    if not values:
        raise ConfigError(f"{key}: every grid entry needs at least one value")
    return values


def _draw(key: str, value: Any, rng: random.Random) -> Any:
    if _is_distribution(value):
        return value.sample(rng)
    if isinstance(value, (list, tuple, range)):
        if not value:
            raise ConfigError(f"{key}: a list to pick from needs at least one value")
        return list(value)[rng.randrange(len(value))]
    return value


def _grid(space) -> list[dict[str, Any]]:
    if space is None:
        return [{}]
    if isinstance(space, dict):
        entries = flatten(space)
        values = [_grid_values(key, value) for key, value in entries.items()]
        return [dict(zip(entries, combo)) for combo in itertools.product(*values)]
    points = list(space)
    if not all(isinstance(point, dict) for point in points):
        raise ConfigError("a sweep takes a dict of value lists or a list of param dicts")
    return [flatten(point) for point in points]


def _random(space, n: Any, seed: int) -> list[dict[str, Any]]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"a random sweep needs n, the number of runs (a positive integer), got {n!r}")
    if not isinstance(space, dict):
        raise ConfigError("a random sweep takes a dict of distributions, lists to pick from and fixed values")
    entries = flatten(space)
    rng = random.Random(seed)
    return [{key: _draw(key, entries[key], rng) for key in sorted(entries)} for _ in range(n)]


def plan(space=None, params: dict[str, Any] | None = None, *, base: Any = None, method: str = "grid",
         n: int | None = None, seed: int | None = None) -> tuple[list[Point], int | None]:
    """Every point of a sweep, validated, and the seed it was drawn with (None for a grid).

    Nothing is submitted; ``ConfigError`` naming the dotted path for a bad path or value."""
    if method not in METHODS:
        raise ConfigError(f"method is 'grid' or 'random', not {method!r}")
    if method == "grid" and n is not None:
        raise ConfigError("n= is the number of random samples: pass method='random' with it")
    if method == "random" and seed is None:
        seed = random.SystemRandom().randrange(2**32)
    draws = _grid(space) if method == "grid" else _random(space, n, seed)
    fixed = flatten(configs.to_plain(params or {}))
    points = []
    for varied in draws:
        try:
            points.append(Point(configs.apply(base, {**fixed, **varied}), varied))
        except ConfigError as exc:
            raise ConfigError(f"{_label(varied, method) or 'the params'}: {exc}") from None
    return points, seed


def _label(varied: dict[str, Any], method: str) -> str:
    def shown(value):
        return f"{value:.4g}" if method == "random" and isinstance(value, float) else value

    return " ".join(f"{k}={shown(v)}" for k, v in varied.items())


class Sweep(list):
    """The jobs of one sweep (a list of ``Job``), with what holds them together:
    ``id`` (each run's ``sweep_id``), ``method``, ``seed``, ``rule`` (the stop rule)
    and ``decisions`` (the runs it stopped, ``stopping.Decision``)."""

    def __init__(self, jobs, sweep_id: str, method: str, seed: int | None, monitor: StopMonitor | None) -> None:
        super().__init__(jobs)
        self.id = sweep_id
        self.method = method
        self.seed = seed
        self.monitor = monitor

    @property
    def rule(self) -> StopRule | None:
        return self.monitor.rule if self.monitor is not None else None

    @property
    def decisions(self) -> list:
        return list(self.monitor.decisions) if self.monitor is not None else []

    def progress(self) -> dict[str, int]:
        """How many runs are queued, started (so far), running, stopped early, completed,
        failed and cancelled (otherwise)."""
        statuses = [(job.status, job.error or "") for job in self]
        early = sum(status == RunStatus.CANCELLED and error.startswith(EARLY_STOPPED) for status, error in statuses)
        count = {status: sum(s == status for s, _e in statuses) for status in RunStatus}
        return {
            "runs": len(self), "queued": count[RunStatus.QUEUED], "started": sum(j.started_at is not None for j in self),
            "running": count[RunStatus.RUNNING], "stopped_early": early, "completed": count[RunStatus.COMPLETED],
            "failed": count[RunStatus.FAILED], "cancelled": count[RunStatus.CANCELLED] - early,
        }

    def best(self, metric: str | None = None, mode: str | None = None):
        """``(job, value)`` of the run with the best ``metric`` so far (default: the stop
        rule's), by its min (``mode="min"``, the rule's) or max; None if none logged it."""
        from ..store import queries

        metric = metric or (self.rule.metric if self.rule else None)
        if metric is None:
            raise ConfigError("best() needs the metric to judge by (this sweep has no stop rule)")
        mode = mode or (self.rule.mode if self.rule else queries.best_goal(metric))
        if not self:
            return None
        store = self[0]._scheduler.store  # the store the sweep's runs are in
        _runs, summary = queries.read(lambda conn: queries.compare_rows(conn, [job.run_id for job in self]), store=store)
        rows = summary[summary["key"] == metric].dropna(subset=[f"{mode}_value"])
        if not len(rows):
            return None
        row = rows.loc[rows[f"{mode}_value"].idxmin() if mode == "min" else rows[f"{mode}_value"].idxmax()]
        return next(job for job in self if job.run_id == row["run_id"]), float(row[f"{mode}_value"])

    def __repr__(self) -> str:
        done = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in self.progress().items() if n and name != "runs")
        return f"<Sweep {self.id} ({self.method}): {len(self)} runs{': ' + done if done else ''}>"


def _spec_of(sweep_info: dict[str, Any], **fields: Any) -> ExperimentSpec:
    """A validated spec carrying the sweep's description (``ExperimentSpec.sweep``)."""
    if "sweep" in ExperimentSpec.model_fields:
        return validate(**fields, sweep=sweep_info)
    spec = validate(**fields)  # until ExperimentSpec has the field: a subclass that has it
    return _SweepSpec.model_construct(**dict(spec), sweep=sweep_info)


class _SweepSpec(ExperimentSpec):
    sweep: dict[str, Any] | None = None


def sweep(fn: Callable[..., Any], space=None, params: dict[str, Any] | None = None, *, base: Any = None,
          method: str = "grid", n: int | None = None, seed: int | None = None, stop: StopRule | None = None,
          **options: Any) -> Sweep:
    """Submit one run per point of ``space`` over ``base`` and ``params``; returns the ``Sweep``.

    ``space``: for a grid, a dict of value lists (every combination runs) or a
    list of param dicts; for ``method="random"``, a dict of distributions
    (``notebook_exp.space``), lists (one value is picked) and fixed values, of
    which ``n`` points are drawn with ``seed``. Keys are dotted names
    (``"optim.lr"``) that set nested params of ``base`` (a pydantic model, a
    dataclass, an OmegaConf config or a dict; a typed base validates every
    point). ``stop`` (``MedianStop``, ``ASHA``) stops runs that are clearly
    worse. ``options`` are ``submit``'s (``name`` is prefixed to each run's
    varied values). Every point is validated before any is queued; each run
    gets its own sinks, so ``sinks=`` takes names, classes or factories.
    """
    if options.get("resume"):
        raise ConfigError("resume= continues one run: use nx.submit, not a sweep")
    points, seed = plan(space, params, base=base, method=method, n=n, seed=seed)
    check_sinks(options.get("sinks"), runs=len(points), retries=options.get("retries", 0))
    from .core import get_scheduler

    scheduler = get_scheduler()
    monitor = None
    if stop is not None:
        monitor = StopMonitor(stop, scheduler)
        if options.get("executor", "thread") != "thread":
            raise ConfigError("stop= judges runs by their metrics in this kernel: it needs executor='thread'")
        sinks = options.get("sinks")
        options["sinks"] = [*(scheduler.settings.sinks if sinks is None else sinks), monitor.sink]
    sweep_id = uuid.uuid4().hex[:12]
    info = {"id": sweep_id, "method": method, "size": len(points), "seed": seed,
            "stop": monitor.rule.describe() if monitor else None}
    prefix = options.pop("name", None)
    specs = []
    for index, point in enumerate(points):
        label = _label(point.varied, method)
        name = f"{prefix} {label}" if prefix and label else (prefix or label or None)
        specs.append(_spec_of({**info, "index": index}, fn=fn, params=point.params, name=name, **options))
    return Sweep([scheduler.submit(spec) for spec in specs], sweep_id, method, seed, monitor)


class ConfigCall:
    """``fn(run, **{name: config})``: calls ``fn`` with the run's params rebuilt as one
    config object of ``like``'s type (``%%experiment --config NAME``)."""

    def __init__(self, fn: Callable[..., Any], name: str, like: Any) -> None:
        self.fn = fn
        self.name = name
        self.like = like
        self.__name__ = self.__qualname__ = getattr(fn, "__name__", "config_call")

    def __call__(self, run, **params: Any) -> Any:
        return self.fn(run, **{self.name: configs.build(self.like, params)})


def cell_config(name: str, source: str, namespace: dict[str, Any]) -> Any:
    """The base config of ``%%experiment --config NAME``: the cell's last top-level
    ``NAME = ...``, evaluated in the notebook's namespace, else the notebook's ``NAME``."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"the cell does not compile: {exc.msg} (line {exc.lineno})") from None
    found = None
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = node.value
    if found is not None:
        try:
            code = compile(ast.Expression(found), "<experiment cell>", "eval")
            return eval(code, dict(namespace))  # noqa: S307 - the user's own cell, as the run would
        except Exception as exc:  # noqa: BLE001 - whatever it raised: one line naming the option
            raise ConfigError(f"--config {name}: evaluating `{name} = ...` from the cell failed: {exc!r}") from None
    if name in namespace:
        return namespace[name]
    raise ConfigError(f"--config {name}: the cell has no top-level `{name} = ...` and the notebook has no "
                      f"variable {name!r}")
