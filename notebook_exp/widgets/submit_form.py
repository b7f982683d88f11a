"""A launcher form: controls for a function's params, a Run and a Sweep button.

    from notebook_exp.widgets.submit_form import launcher
    form = launcher(train, TrainParams, experiment="mnist")
    form            # displays the form; form.jobs collects what it submitted

``params`` is a pydantic model class (one control per field, chosen from its
annotation and bounds, checked by the model before anything is queued) or a
dict of defaults (one control per value, chosen from its type). Fields with a
few possible values (``Literal``, ``Enum``, ``bool``, a list of choices) have a
"sweep" toggle that swaps the single choice for a multi-select; "Sweep" then
queues one run per combination of the picked values.

Number fields have a "sample" toggle that swaps the value for a range (and,
for floats, a "log" box): "Sample" then queues a random sweep of ``n`` runs
(``seed`` makes it reproducible), drawing each sampled number from its range
(``uniform``, ``loguniform``, ``randint``) and each swept choice from its picked
values; every draw is checked by the model before anything is queued.
"""

from __future__ import annotations

import enum
import html
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
from pydantic import ValidationError

from ..exceptions import ConfigError
from ..space import choice, loguniform, randint, uniform

__all__ = ["LauncherForm", "launcher"]

SLIDER_STEPS = 100  # a bounded float slider moves in (high - low) / SLIDER_STEPS
SUPPORTED = "bool, int, float, str, Literal[...], an Enum, or (dict form) a list of choices"
_STYLE = {"description_width": "initial"}


@dataclass
class _Field:
    """One param on the form: its single-value control and, if it has a few possible
    values, the multi-select and toggle that sweep it."""

    name: str
    control: widgets.ValueWidget
    choices: list[tuple[str, Any]] | None = None
    multi: widgets.SelectMultiple | None = None
    toggle: widgets.ToggleButton | None = None
    kind: type | None = None  # int or float: a number that can be sampled
    low: widgets.ValueWidget | None = None  # the range it is sampled from ...
    high: widgets.ValueWidget | None = None
    log: widgets.Checkbox | None = None  # ... uniformly in log space (floats)
    sample_toggle: widgets.ToggleButton | None = None

    @property
    def sweeping(self) -> bool:
        return self.toggle is not None and self.toggle.value

    @property
    def sampling(self) -> bool:
        return self.sample_toggle is not None and self.sample_toggle.value

    def distribution(self):
        """What a random sweep draws this field from (its range, or its picked choices)."""
        if self.sampling:
            low, high = self.low.value, self.high.value
            if self.kind is int:
                return randint(int(low), int(high) + 1)  # the range shown includes its top
            return loguniform(low, high) if self.log.value else uniform(low, high)
        picked = [v.value if isinstance(v, enum.Enum) else v for v in self.multi.value]
        if not picked:
            raise ConfigError(f"pick at least one value of {self.name}")
        return choice(picked)


# -- choosing controls ---------------------------------------------------------
def _bounds(metadata: list) -> dict[str, Any]:
    """``ge``/``gt``/``le``/``lt`` found in a pydantic field's constraint metadata."""
    found: dict[str, Any] = {}
    for item in metadata:
        for attr in ("ge", "gt", "le", "lt"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
    return found


def _number_control(kind: type, name: str, default: Any, bounds: dict[str, Any]) -> widgets.ValueWidget:
    """A slider between two bounds (exclusive ones nudged one step in), else a text box."""
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if low is None or high is None:
        box = widgets.IntText if kind is int else widgets.FloatText
        return box(value=default if default is not None else 0, description=name, style=_STYLE)
    if kind is int:
        low, high = int(low) + ("gt" in bounds), int(high) - ("lt" in bounds)
        step = 1
    else:
        step = (float(high) - float(low)) / SLIDER_STEPS
        low = float(low) + (step if "gt" in bounds else 0.0)
        high = float(high) - (step if "lt" in bounds else 0.0)
    value = low if default is None else min(max(default, low), high)
    slider = widgets.IntSlider if kind is int else widgets.FloatSlider
    options = {} if kind is int else {"readout_format": ".4g"}
    return slider(value=value, min=low, max=high, step=step, description=name, style=_STYLE, **options)


def _choice_list(annotation: Any) -> list[tuple[str, Any]] | None:
    """``(label, value)`` pairs of a Literal, an Enum or bool; None for other types."""
    if typing.get_origin(annotation) is typing.Literal:
        return [(str(v), v) for v in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [(str(member.value), member) for member in annotation]
    if annotation is bool:
        return [("False", False), ("True", True)]
    return None


def _unwrap_optional(annotation: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _control(name: str, annotation: Any, default: Any, bounds: dict[str, Any]) -> _Field:
    """The field for a param of type ``annotation`` (``ConfigError`` if no control fits)."""
    choices = _choice_list(annotation)
    if annotation is bool:
        control = widgets.Checkbox(value=bool(default), description=name, indent=False)
    elif choices is not None:
        values = [v for _label, v in choices]
        value = default if default in values else values[0]
        control = widgets.Dropdown(options=choices, value=value, description=name, style=_STYLE)
    elif annotation in (int, float):
        return _Field(name, _number_control(annotation, name, default, bounds), kind=annotation)
    elif annotation is str:
        control = widgets.Text(value="" if default is None else default, description=name, style=_STYLE)
    else:
        label = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
        raise ConfigError(f"param {name!r} ({label}) has no form control; supported: {SUPPORTED}")
    return _Field(name, control, choices)


def _model_fields(model: type) -> list[_Field]:
    """One field per pydantic model field, with its description as tooltip."""
    from pydantic_core import PydanticUndefined

    fields = []
    for name, info in model.model_fields.items():
        default = None if info.default is PydanticUndefined else info.default
        field = _control(name, _unwrap_optional(info.annotation), default, _bounds(info.metadata))
        if info.description:
            field.control.tooltip = info.description
        fields.append(field)
    return fields


def _dict_fields(defaults: dict[str, Any]) -> list[_Field]:
    """One field per default: its type picks the control, a list or tuple is a choice."""
    fields = []
    for name, value in defaults.items():
        if isinstance(value, (list, tuple)):
            if not value:
                raise ConfigError(f"param {name!r} offers no choices (an empty list)")
            choices = [(str(v), v) for v in value]
            control = widgets.Dropdown(options=choices, value=value[0], description=name, style=_STYLE)
            fields.append(_Field(name, control, choices))
        else:
            fields.append(_control(name, type(value), value, {}))
    return fields


def _is_model(params: Any) -> bool:
    return isinstance(params, type) and hasattr(params, "model_validate") and hasattr(params, "model_fields")


def _check_options(options: dict[str, Any]) -> None:
    from ..scheduler.api import submit

    allowed = [p for p in inspect.signature(submit).parameters if p not in ("fn", "params")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown submit option(s) {', '.join(unknown)}; choose from {', '.join(allowed)}")


def _error_message(exc: Exception) -> str:
    """What went wrong, one line: pydantic's errors as ``field: message; ...``."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}"
                             for e in exc.errors())
        return f"invalid params: {problems}"
    return f"{type(exc).__name__}: {exc}"


# -- the form --------------------------------------------------------------------
class LauncherForm(widgets.VBox):
    """Controls for ``fn``'s params and buttons that queue it with ``nx.submit``/``nx.sweep``.

    ``controls`` maps each param to its single-value widget; ``sweep_toggles`` and
    ``multi`` hold the toggle and multi-select of params with a few possible
    values. "Run" queues one run with the shown values; with a param switched to
    sweep mode, "Sweep" queues one run per combination of the picked values
    (the others fixed). Values are checked by the pydantic model first, if one
    was given; problems show in ``error`` and nothing is queued. Every job
    queued lands in ``jobs``; ``status`` lists them.
    """

    def __init__(self, fn: Callable[..., Any], params: Any, **submit_options: Any) -> None:
        if not callable(fn):
            raise ConfigError(f"the run function must be callable, got {type(fn).__name__}")
        _check_options(submit_options)
        self.fn = fn
        self.model = params if _is_model(params) else None
        if self.model is None and not isinstance(params, dict):
            raise ConfigError(f"params must be a pydantic model class or a dict of defaults, got {params!r}")
        self.submit_options = dict(submit_options)
        self.jobs: list = []
        self._fields = _model_fields(self.model) if self.model is not None else _dict_fields(params)
        self.controls = {f.name: f.control for f in self._fields}
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.sweep_button = widgets.Button(description="Sweep", icon="th", disabled=True,
                                           tooltip="switch a param to sweep mode and pick its values")
        self.sample_button = widgets.Button(description="Sample", icon="random", disabled=True,
                                            tooltip="switch a number to sample mode: a random sweep of n runs")
        self.n = widgets.BoundedIntText(value=10, min=1, max=10_000, description="n", style=_STYLE)
        self.seed = widgets.Text(value="", description="seed", placeholder="random", style=_STYLE)
        self.error = widgets.HTML("")
        self.status = widgets.HTML("")
        self.run_button.on_click(self._on_run)
        self.sweep_button.on_click(self._on_sweep)
        self.sample_button.on_click(self._on_sample)
        rows = [self._row(field) for field in self._fields]
        buttons = widgets.HBox([self.run_button, self.sweep_button, self.sample_button, self.n, self.seed])
        super().__init__([*rows, buttons, self.error, self.status])

    @property
    def sweep_toggles(self) -> dict[str, widgets.ToggleButton]:
        return {f.name: f.toggle for f in self._fields if f.toggle is not None}

    @property
    def multi(self) -> dict[str, widgets.SelectMultiple]:
        return {f.name: f.multi for f in self._fields if f.multi is not None}

    @property
    def sample_toggles(self) -> dict[str, widgets.ToggleButton]:
        return {f.name: f.sample_toggle for f in self._fields if f.sample_toggle is not None}

    @property
    def ranges(self) -> dict[str, tuple[widgets.ValueWidget, widgets.ValueWidget, widgets.Checkbox | None]]:
        """``(low, high, log)`` controls of each number that can be sampled."""
        return {f.name: (f.low, f.high, f.log) for f in self._fields if f.sample_toggle is not None}

    @property
    def space(self) -> dict[str, Any]:
        """What "Sample" would draw from: each sampled number's range, each swept choice's values."""
        return {f.name: f.distribution() for f in self._fields if f.sampling or f.sweeping}

    @property
    def values(self) -> dict[str, Any]:
        """The single value every control shows now (what "Run" would submit, unchecked)."""
        return {name: control.value for name, control in self.controls.items()}

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The values picked for each param in sweep mode (what "Sweep" would vary)."""
        return {f.name: list(f.multi.value) for f in self._fields if f.sweeping}

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"<LauncherForm {name}: {', '.join(self.controls)}>"

    # -- layout ------------------------------------------------------------------
    def _row(self, field: _Field) -> widgets.Widget:
        """The control alone, or with a "sweep" toggle swapping it for a multi-select
        (a few choices) or a "sample" toggle swapping it for a range (a number)."""
        if field.kind is not None:
            return self._number_row(field)
        if field.choices is None:
            return field.control
        field.multi = widgets.SelectMultiple(
            options=field.choices, value=(field.control.value,), description=field.name,
            rows=min(len(field.choices), 5), style=_STYLE,
        )
        field.toggle = widgets.ToggleButton(description="sweep", value=False, icon="th",
                                            tooltip=f"pick several values of {field.name} to sweep")
        row = widgets.HBox([field.control, field.toggle])

        def _on_toggle(change: dict) -> None:
            if change["new"]:  # start the pick from the value shown
                field.multi.value = (field.control.value,)
            row.children = [field.multi if change["new"] else field.control, field.toggle]
            self._on_mode_change()

        field.toggle.observe(_on_toggle, names="value")
        return row

    def _number_row(self, field: _Field) -> widgets.Widget:
        control = field.control
        box = widgets.IntText if field.kind is int else widgets.FloatText
        low = getattr(control, "min", None)
        high = getattr(control, "max", None)
        if low is None:  # unbounded: a decade either side of the value to start from
            value = control.value
            low, high = (value, value * 2 or 10) if field.kind is int else \
                ((value / 10, value * 10) if value > 0 else (0.0, 1.0))
        field.low = box(value=low, description=f"{field.name} from", style=_STYLE)
        field.high = box(value=high, description="to", style=_STYLE)
        field.log = widgets.Checkbox(value=False, description="log", indent=False) if field.kind is float else None
        field.sample_toggle = widgets.ToggleButton(description="sample", value=False, icon="random",
                                                   tooltip=f"draw {field.name} at random from a range")
        sampler = [field.low, field.high, *([field.log] if field.log is not None else [])]
        row = widgets.HBox([control, field.sample_toggle])

        def _on_toggle(change: dict) -> None:
            row.children = [*(sampler if change["new"] else [control]), field.sample_toggle]
            self._on_mode_change()

        field.sample_toggle.observe(_on_toggle, names="value")
        return row

    def _on_mode_change(self) -> None:
        sweeping = any(f.sweeping for f in self._fields)
        sampling = any(f.sampling for f in self._fields)
        self.sweep_button.disabled = not sweeping or sampling
        self.sample_button.disabled = not (sweeping or sampling)
        self.run_button.disabled = sweeping or sampling

    # -- submitting --------------------------------------------------------------
    def _checked(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` as the model validates them (raises its ValidationError)."""
        if self.model is None:
            return values
        return self.model.model_validate(values).model_dump()

    def _on_run(self, _button: widgets.Button | None = None) -> None:
        from ..scheduler.api import submit

        self._attempt(lambda: [submit(self.fn, self._checked(self.values), **self.submit_options)])

    def _on_sweep(self, _button: widgets.Button | None = None) -> None:
        self._attempt(self._sweep)

    def _on_sample(self, _button: widgets.Button | None = None) -> None:
        self._attempt(self._sample)

    def _base(self) -> tuple[Any, dict[str, Any]]:
        """``(base, params)`` of a sweep: the model holding the shown values, or those values."""
        if self.model is None:
            return None, self.values
        return self.model.model_validate(self.values), {}

    def _sweep(self) -> list:
        """Check every combination, then queue them all as one sweep."""
        from ..scheduler import sweeps

        grid = self.grid
        if not grid:
            raise ConfigError("switch a param to sweep mode first")
        empty = [name for name, picked in grid.items() if not picked]
        if empty:
            raise ConfigError(f"pick at least one value of {', '.join(empty)}")
        plain = {k: [v.value if isinstance(v, enum.Enum) else v for v in picked] for k, picked in grid.items()}
        base, params = self._base()
        return sweeps.sweep(self.fn, plain, params, base=base, **self.submit_options)

    def _sample(self) -> list:
        """Draw ``n`` points (checked by the model), then queue them all as one random sweep."""
        from ..scheduler import sweeps

        space = self.space
        if not space:
            raise ConfigError("switch a number to sample mode (or a param to sweep mode) first")
        seed = self.seed.value.strip()
        if seed and not seed.lstrip("-").isdigit():
            raise ConfigError(f"seed is a whole number or empty (a random one), not {seed!r}")
        base, params = self._base()
        return sweeps.sweep(self.fn, space, params, base=base, method="random", n=self.n.value,
                            seed=int(seed) if seed else None, **self.submit_options)

    def _attempt(self, action: Callable[[], list]) -> None:
        """Run a submission; show what it queued, or why it queued nothing."""
        try:
            jobs = action()
        except Exception as exc:  # a button callback's errors would vanish into the log console
            self.error.value = f'<span style="color:#d62728">{html.escape(_error_message(exc))}</span>'
            return
        self.error.value = ""
        self.jobs.extend(jobs)
        self._show_jobs()

    def _show_jobs(self) -> None:
        items = "".join(f"<li>{html.escape(job.name)} <code>{html.escape(job.run_id)}</code></li>"
                        for job in self.jobs)
        self.status.value = f"<b>submitted {len(self.jobs)}</b><ul>{items}</ul>"


def launcher(fn: Callable[..., Any], params: Any, **submit_options: Any) -> LauncherForm:
    """A ``LauncherForm`` for ``fn``: display it, pick values, press Run or Sweep.

    ``params`` is a pydantic model class or a dict of defaults; ``submit_options``
    (``experiment``, ``gpus``, ``priority``, ``executor``, ...) go to every
    ``nx.submit`` call the form makes.
    """
    return LauncherForm(fn, params, **submit_options)
