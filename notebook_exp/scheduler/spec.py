"""``ExperimentSpec``: one submission, validated before anything is queued."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..exceptions import ConfigError, SinkError
from ..tracking.values import clean_params, clean_tags
from .pinning import clean_gpu_ids

__all__ = ["EXECUTORS", "RAY_OWNED_OPTIONS", "ExperimentSpec", "check_signature", "check_sinks", "parse_memory"]

EXECUTORS = ("thread", "process", "ray")
#: Ray task options a submission sets itself, and the spec field that says what they get.
RAY_OWNED_OPTIONS = {
    "num_cpus": "cpus", "num_gpus": "gpus", "memory": "memory", "max_retries": "retries",
    "retry_exceptions": "retries", "num_returns": "nothing: a run returns one value", "name": "name",
}
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``8_000_000_000``, ``"8GB"`` or ``"7.5GiB"``."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as an amount of memory (e.g. 8GB, 7.5GiB, 8000000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class ExperimentSpec(BaseModel):
    """What to run and how: the validated form of a ``submit`` call."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    fn: Callable[..., Any] = Field(description="Called as fn(run, **params).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for fn, stored with the run.")
    name: str | None = Field(None, description="Run name (default: experiment-<id>).")
    experiment: str | None = Field(None, description="Experiment the run belongs to (default: 'default').")
    gpus: float = Field(0, ge=0, description="GPUs to lease: a count, or 0.5/0.25 to share one GPU.")
    gpu_memory: int | None = Field(None, gt=0, description="Admit only GPUs with at least this many bytes free.")
    gpu_ids: list[int] | None = Field(None, description="Physical GPU ids the run may lease (default: any; gpus=0: all).")
    priority: int = Field(5, ge=0, le=10, description="0-10, higher runs first; FIFO within a priority.")
    retries: int = Field(0, ge=0, le=100, description="Attempts after the first when the run raises.")
    retry_backoff: float = Field(1.0, ge=0, description="Seconds before the first retry; doubles each time (with jitter).")
    timeout: float | None = Field(None, gt=0, description="Seconds an attempt may run before it is stopped.")
    executor: Literal["thread", "process", "ray"] = Field("thread", description="Where the run executes.")
    tags: list[str] = Field(default_factory=list, description="Labels stored with the run.")
    after: list[str] = Field(default_factory=list, description="Run ids that must complete before this starts.")
    wait_for_gpus: bool = Field(False, description="Queue even if the machine has fewer GPUs than asked for.")
    sinks: list[Any] | None = Field(
        None, description="Sink names, Sink classes, factories or instances (default: the sinks setting)."
    )
    source: str | None = Field(None, description="Source code that produced the run (a cell, a function).")
    sweep: dict[str, Any] | None = Field(
        None, description="The sweep the run belongs to (id, method, size, seed, index, stop rule); nx.sweep sets it."
    )
    capture: list[Any] | None = Field(
        None, description="Framework calls to capture into the run, e.g. ['tensorboard'] (default: the "
                          "capture_tensorboard setting)."
    )
    resume: str | None = Field(
        None, description="Id of a stored run to continue: steps go on after its last ones, params merge."
    )
    cpus: float = Field(
        1, ge=0, description="CPUs the run reserves on its Ray node (executor='ray'; thread and process runs ignore it)."
    )
    memory: int | None = Field(
        None, gt=0, description="Memory the run reserves on its Ray node, bytes or '8GB' (executor='ray'; others ignore it)."
    )
    ray_options: dict[str, Any] | None = Field(
        None, description="More options of the run's Ray task, as ray.remote(...).options() takes them: resources, "
                          "accelerator_type, runtime_env, scheduling_strategy, label_selector (executor='ray')."
    )

    _gpu_ids = field_validator("gpu_ids", mode="before")(clean_gpu_ids)

    @field_validator("executor", mode="before")
    @classmethod
    def _known_executor(cls, value: Any) -> Any:
        if value not in EXECUTORS:
            raise ValueError(f"unknown executor {value!r}; choose one of {', '.join(EXECUTORS)}")
        return value

    @field_validator("gpu_memory", "memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        return parse_memory(value)

    @field_validator("ray_options", mode="before")
    @classmethod
    def _ray_options(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"takes a dict of Ray task options, not {value!r}")
        owned = sorted(key for key in value if key in RAY_OWNED_OPTIONS)
        if owned:
            instead = ", ".join(f"{key} (use {RAY_OWNED_OPTIONS[key]})" for key in owned)
            raise ValueError(f"cannot set {instead}: notebook_exp sets them from the submission")
        return dict(value)

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("more than one GPU must be a whole number")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        return clean_params(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return clean_tags(value)

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, value: Any) -> Any:
        if value is None:
            return []
        items = [value] if isinstance(value, str) or hasattr(value, "run_id") else list(value)
        return [item.run_id if hasattr(item, "run_id") else item for item in items]

    @model_validator(mode="after")
    def _signature(self) -> ExperimentSpec:
        check_signature(self.fn, self.params)
        if self.resume and self.retries:
            raise ValueError("resume cannot be combined with retries: a retry clears the run's data, "
                             "the resumed run's earlier points with it")
        return self

    def describe(self) -> dict[str, Any]:
        """The JSON-able part of the spec (stored with the run)."""
        described = self.model_dump(exclude={"fn", "sinks", "source", "params", "ray_options"})
        if self.ray_options is not None:  # a scheduling strategy is an object: stored as its repr
            described["ray_options"] = {key: _jsonable(value) for key, value in self.ray_options.items()}
        return described


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def check_signature(fn: Callable, params: dict[str, Any]) -> None:
    """Raise ``ConfigError`` unless ``fn(run, **params)`` is a valid call."""
    if not callable(fn):
        raise ConfigError(f"the run function must be callable, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and the like: nothing to check
    try:
        signature.bind(object(), **params)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ConfigError(
            f"{name}{signature} cannot be called as {name}(run, {', '.join(f'{k}=...' for k in params)}): {exc}"
        ) from None


def check_sinks(sinks: list | None, runs: int = 1, retries: int = 0) -> None:
    """Raise ``SinkError`` unless each entry of ``sinks`` is a registered name, a
    ``Sink`` class, a factory (a callable taking no arguments) or a ``Sink`` instance,
    and no instance would serve more than one run: a sink sees ``start_run`` to
    ``close`` once, so an instance is refused for ``runs > 1`` (a sweep) and for
    ``retries > 0`` (each attempt starts the run again)."""
    from ..sinks import registry

    for sink in sinks or ():
        kind = registry.kind(sink)
        registry.check(sink)  # an unknown name, a missing library, a bad option: before anything is queued
        if kind == "factory":
            _check_factory(sink)
        elif kind == "instance" and (runs > 1 or retries > 0):
            shared = f"the {runs} runs of a sweep" if runs > 1 else f"the {retries + 1} attempts of retries={retries}"
            cls = type(sink).__qualname__
            raise SinkError(
                f"one sink instance ({cls}) would be shared by {shared}, but a sink serves one run "
                f"from start_run to close; pass the class or a factory instead, e.g. "
                f"sinks=[{cls}] or sinks=[lambda: {cls}(...)]"
            )


def _check_factory(factory: Callable) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # builtins and the like: nothing to check
    try:
        signature.bind()
    except TypeError as exc:
        name = getattr(factory, "__qualname__", repr(factory))
        raise SinkError(f"a sink factory is called with no arguments; {name}{signature} cannot be: {exc}") from None


def validate(**kwargs: Any) -> ExperimentSpec:
    """An ``ExperimentSpec``, with pydantic's errors turned into one ``ConfigError``."""
    from pydantic import ValidationError

    try:
        return ExperimentSpec(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid submission: {problems}") from None
