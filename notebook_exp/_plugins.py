"""The plugin door: four kinds of plugin, discovered through entry points.

=============  ============================  =========================================
kind           entry-point group             what a plugin of it is
=============  ============================  =========================================
``sink``       ``notebook_exp.sinks``        where a run's data goes (``sinks.Sink``)
``collector``  ``notebook_exp.collectors``   what is recorded about a run (``collectors.Collector``)
``processor``  ``notebook_exp.processors``   a transform of the metric stream (``processors.Processor``)
``framework``  ``notebook_exp.frameworks``   an integration with a training framework
=============  ============================  =========================================

Built-ins register through the same door, in this package's own
``pyproject.toml``, exactly as a third party would::

    [project.entry-points."notebook_exp.sinks"]
    mysink = "my_package.sinks:MySink"

A plugin is a class deriving from :class:`Plugin`. Its class attributes are its
metadata (:class:`PluginInfo`): ``requires`` (other plugins, by
``"kind:name"`` or plain name, that must start before it), ``capabilities``,
``libraries`` (modules it imports lazily, so listing it never imports them) and
``extra`` (the ``pip install 'notebook-exp[extra]'`` that provides them), and
``Settings``, a :class:`PluginSettings` model of its own settings.

A plugin's settings come, highest first, from the options a run passes
(``sinks=[("tensorboard", {"include": ["train/*"]})]``), the environment
(``NOTEBOOK_EXP_<PLUGIN>_<FIELD>``; lists comma-separated), and the
``[plugins.<name>]`` table of ``notebook_exp.toml`` (the file
``NOTEBOOK_EXP_CONFIG`` names, else ``./notebook_exp.toml``). A bad value is one
``ConfigError`` that names the plugin and the field.

``notebook-exp plugins`` and ``nx.plugins()`` list every installed plugin with
its kind, version and whether it loads (:func:`installed`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .exceptions import ConfigError, MissingDependency

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "GROUPS",
    "KINDS",
    "Plugin",
    "PluginInfo",
    "PluginSettings",
    "entry_point",
    "info",
    "installed",
    "load",
    "names",
    "plugins",
    "reset",
    "settings_for",
    "start_order",
]

Kind = Literal["sink", "collector", "processor", "framework"]
#: The entry-point group of each kind.
GROUPS: dict[str, str] = {
    "sink": "notebook_exp.sinks",
    "collector": "notebook_exp.collectors",
    "processor": "notebook_exp.processors",
    "framework": "notebook_exp.frameworks",
}
KINDS: tuple[str, ...] = tuple(GROUPS)
ENV_PREFIX = "NOTEBOOK_EXP_"
CONFIG_FILE = Path("notebook_exp.toml")


class PluginSettings(BaseModel):
    """Base of every plugin's settings model. Unknown fields are refused, and a
    list field also takes a comma-separated string (from the environment)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _split_lists(cls, value: Any, info) -> Any:
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, str) and field is not None and _is_list(field.annotation):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def _is_list(annotation: Any) -> bool:
    text = getattr(annotation, "__origin__", annotation)
    if text in (list, tuple):
        return True
    return any(_is_list(arg) for arg in getattr(annotation, "__args__", ()) if arg is not type(None))


class Plugin:
    """Base of plugin classes: the class attributes are the plugin's metadata."""

    #: The entry-point name (the registry fills it in for registered plugins).
    name: ClassVar[str] = ""
    #: Plugins that must start before this one: ``"kind:name"``, or a name of the same kind.
    requires: ClassVar[tuple[str, ...]] = ()
    #: What it can do, free-form words (``"metrics"``, ``"images"``, ``"hparams"``, ...).
    capabilities: ClassVar[tuple[str, ...]] = ()
    #: Modules it needs that may not be installed; imported lazily by the plugin.
    libraries: ClassVar[tuple[str, ...]] = ()
    #: The notebook-exp extra that installs ``libraries``.
    extra: ClassVar[str | None] = None
    #: Its settings model.
    Settings: ClassVar[type[PluginSettings]] = PluginSettings

    @classmethod
    def missing_libraries(cls) -> list[str]:
        """Which of ``libraries`` cannot be imported here."""
        return [lib for lib in cls.libraries if importlib.util.find_spec(lib) is None]

    @classmethod
    def check_libraries(cls) -> None:
        """``MissingDependency`` (with the install line) if a library is missing."""
        missing = cls.missing_libraries()
        if missing:
            if cls.extra:
                raise MissingDependency(", ".join(missing), cls.extra)
            exc = MissingDependency(", ".join(missing), "")
            exc.args = (f"{', '.join(missing)} is not installed; install it with: pip install {' '.join(missing)}",)
            raise exc


class PluginInfo(BaseModel):
    """One installed plugin, as ``notebook-exp plugins`` lists it."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    version: str = ""
    requires: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    description: str = ""
    target: str = ""  # the entry point's value, module:attribute
    distribution: str = ""
    loads: bool = True
    problem: str | None = None  # why it does not load
    install: str | None = None  # what fixes that, when a pip install does


@functools.cache
def _entry_points(kind: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[kind]):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins, as for imports
    return found


def reset() -> None:
    """Forget what was discovered (after installing a plugin into a live process)."""
    _entry_points.cache_clear()
    _load.cache_clear()
    _file_tables.cache_clear()


def _check_kind(kind: str) -> None:
    if kind not in GROUPS:
        raise ConfigError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")


def names(kind: str) -> list[str]:
    """The names of the installed plugins of ``kind``."""
    _check_kind(kind)
    return sorted(_entry_points(kind))


def entry_point(kind: str, name: str) -> EntryPoint:
    """The entry point of plugin ``name`` of ``kind``; ``ConfigError`` if none."""
    _check_kind(kind)
    eps = _entry_points(kind)
    if name not in eps:
        raise ConfigError(f"unknown {kind} {name!r}; installed: {', '.join(sorted(eps)) or 'none'}")
    return eps[name]


@functools.cache
def _load(kind: str, name: str):
    ep = entry_point(kind, name)
    try:
        obj = ep.load()
    except ModuleNotFoundError as exc:
        raise MissingPluginLibrary(kind, name, ep, exc.name or str(exc)) from exc
    if isinstance(obj, type) and issubclass(obj, Plugin):
        if not obj.name:
            obj.name = name
    return obj


class MissingPluginLibrary(MissingDependency):
    """A plugin's module imports a library that is not installed."""

    def __init__(self, kind: str, name: str, ep: EntryPoint, module: str) -> None:
        self.kind, self.plugin, self.module = kind, name, module
        ImportError.__init__(
            self, f"{kind} plugin {name!r} ({ep.value}) needs {module!r}, which is not installed: pip install {module}"
        )
        self.package, self.extra = module, ""


def load(kind: str, name: str, base: type | None = None):
    """The object plugin ``name`` of ``kind`` registers (a class, normally).

    ``ConfigError`` if it is not installed; ``MissingDependency`` (with the
    install line) if a library it needs is missing; ``ConfigError`` if it loads
    but is not a subclass of ``base``. Any other failure of its module is raised
    as ``ConfigError`` naming the plugin."""
    try:
        obj = _load(kind, name)
    except (ConfigError, MissingDependency):
        raise
    except Exception as exc:
        raise ConfigError(f"{kind} plugin {name!r} ({entry_point(kind, name).value}) failed to load: {exc!r}") from exc
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(
            f"{kind} plugin {name!r} ({entry_point(kind, name).value}) is not a {base.__module__}.{base.__qualname__}"
        )
    if isinstance(obj, type) and issubclass(obj, Plugin):
        obj.check_libraries()
    return obj


def info(kind: str, name: str) -> PluginInfo:
    """What is known of plugin ``name`` of ``kind``, without failing: a plugin that
    does not load has ``loads=False`` and says why."""
    ep = entry_point(kind, name)
    dist = getattr(ep, "dist", None)
    base = {
        "name": name,
        "kind": kind,
        "target": ep.value,
        "distribution": dist.metadata["Name"] if dist is not None else "",
        "version": dist.version if dist is not None else "",
    }
    try:
        obj = _load(kind, name)
    except MissingPluginLibrary as exc:
        return PluginInfo(**base, loads=False, problem=f"needs {exc.module!r}", install=f"pip install {exc.module}")
    except Exception as exc:  # noqa: BLE001 - listing must show a broken plugin, not fail
        return PluginInfo(**base, loads=False, problem=f"failed to load: {exc!r}")
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    fields = {"description": doc[0] if doc else ""}
    if isinstance(obj, type) and issubclass(obj, Plugin):
        fields.update(requires=tuple(obj.requires), capabilities=tuple(obj.capabilities))
        plugin_version = getattr(obj, "version", None)
        if isinstance(plugin_version, str) and plugin_version:
            base["version"] = plugin_version
        missing = obj.missing_libraries()
        if missing:
            extra = obj.extra
            install = f"pip install 'notebook-exp[{extra}]'" if extra else "pip install " + " ".join(missing)
            return PluginInfo(**base, **fields, loads=False, problem=f"needs {', '.join(missing)}", install=install)
    return PluginInfo(**base, **fields)


def installed(kinds: Iterable[str] = KINDS) -> list[PluginInfo]:
    """Every installed plugin of ``kinds``, by kind then name (see :func:`info`)."""
    return [info(kind, name) for kind in kinds for name in names(kind)]


# -- settings ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _file_tables(path: str, mtime: float) -> dict[str, dict]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    tables = data.get("plugins", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: [plugins] must be a table of tables, one per plugin")
    return tables


def _file_table(name: str) -> tuple[dict, str | None]:
    path = os.environ.get(ENV_PREFIX + "CONFIG") or (str(CONFIG_FILE) if CONFIG_FILE.is_file() else None)
    if not path:
        return {}, None
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    table = _file_tables(path, mtime).get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [plugins.{name}] must be a table")
    return table, path


def env_name(plugin: str, field: str) -> str:
    """The environment variable of one plugin setting: ``NOTEBOOK_EXP_<PLUGIN>_<FIELD>``."""
    return f"{ENV_PREFIX}{plugin}_{field}".upper().replace("-", "_")


def settings_for(plugin: str, model: type[PluginSettings], options: dict[str, Any] | None = None) -> PluginSettings:
    """Plugin ``plugin``'s settings: ``options``, else the environment, else its
    ``[plugins.<plugin>]`` table, else the model's defaults (see the module
    docstring). ``ConfigError`` naming the plugin, the field and where the bad
    value came from."""
    table, path = _file_table(plugin)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in table.items():
        values[key] = value
        origin[key] = f"[plugins.{plugin}] in {path}"
    for field in model.model_fields:
        var = env_name(plugin, field)
        if var in os.environ:
            values[field] = os.environ[var]
            origin[field] = var
    for key, value in (options or {}).items():
        values[key] = value
        origin[key] = "the run's options"
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "?"
        where = origin.get(str(first["loc"][0]) if first["loc"] else "", "its defaults")
        problem = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"plugin {plugin!r}: setting {field!r} (from {where}): {problem}") from None


# -- start order -----------------------------------------------------------------


def start_order(plugins: list[tuple[str, str, tuple[str, ...]]]) -> list[tuple[str, str]]:
    """``(kind, name)`` of ``plugins`` (``(kind, name, requires)`` each) so that
    every plugin comes after those it requires; ties keep the given order.
    ``ConfigError`` for a requirement that is not among them, or a cycle."""
    nodes = [(kind, name) for kind, name, _ in plugins]
    present = set(nodes)
    needs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for kind, name, requires in plugins:
        deps = []
        for req in requires:
            dep_kind, _, dep_name = req.rpartition(":")
            dep = (dep_kind or kind, dep_name)
            if dep not in present:
                raise ConfigError(
                    f"{kind} plugin {name!r} requires {dep[0]} plugin {dep[1]!r}, which is "
                    + ("not installed" if dep[1] not in _entry_points(dep[0]) else "not enabled")
                )
            deps.append(dep)
        needs[(kind, name)] = deps
    order: list[tuple[str, str]] = []
    state: dict[tuple[str, str], int] = {}  # 1: on the current path, 2: placed

    def visit(node, path):
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = path[path.index(node):] + [node]
            raise ConfigError("plugin requirements form a cycle: " + " -> ".join(f"{k}:{n}" for k, n in cycle))
        state[node] = 1
        for dep in needs[node]:
            visit(dep, [*path, node])
        state[node] = 2
        order.append(node)

    for node in nodes:
        visit(node, [])
    return order


# -- the table ---------------------------------------------------------------------

#: The columns of :func:`plugins` (and of ``notebook-exp plugins``).
TABLE_COLUMNS = ("kind", "name", "version", "loads", "problem", "install", "requires", "capabilities",
                 "description", "distribution", "target")


def plugins(kind: str | None = None):
    """Every installed plugin as a pandas DataFrame, one row each (``nx.plugins()``):
    kind, name, version, whether it loads, and if not why and the install line that
    fixes it, with what it requires and can do. ``kind`` keeps one kind."""
    import pandas as pd

    kinds = KINDS if kind is None else (kind,)
    for k in kinds:
        _check_kind(k)
    rows = [
        {**found.model_dump(), "requires": ", ".join(found.requires), "capabilities": ", ".join(found.capabilities)}
        for found in installed(kinds)
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
