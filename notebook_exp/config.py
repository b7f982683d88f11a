"""Settings: the one place that reads the environment.

Every field can be set with an environment variable ``NOTEBOOK_EXP_<FIELD>``
(``NOTEBOOK_EXP_STORE``, ``NOTEBOOK_EXP_SINKS=duckdb,jsonl``, ...) or in a TOML
file: the file named by ``NOTEBOOK_EXP_CONFIG``, else ``./notebook_exp.toml``
when present. The environment wins over the file. Components never read the
environment themselves: they receive a ``Settings`` (or a plugin's own settings
from :func:`plugin_settings`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DEFAULT_STORE", "Settings", "get_settings", "plugin_settings", "reset_settings"]

ENV_PREFIX = "NOTEBOOK_EXP_"
DEFAULT_STORE = Path(".notebook_exp") / "store.duckdb"
DEFAULT_CONFIG_FILE = Path("notebook_exp.toml")


def _split_names(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """notebook_exp settings; see the module docstring for where they come from."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    store: Path = Field(
        DEFAULT_STORE,
        description="Path of the DuckDB store file; relative paths are taken from the working directory.",
    )
    flush_interval: float = Field(
        0.5, gt=0, le=60, description="Seconds between flushes of a run's metric buffer to the sinks."
    )
    flush_rows: int = Field(
        50_000, ge=1, description="A run's buffer is flushed early once it holds this many points."
    )
    idle_flush_rows: int = Field(
        20_000,
        ge=0,
        description=(
            "A run's buffer is also flushed as soon as it holds this many points while the store's writer "
            "is idle (nothing queued, no commit in progress, for twice its last commit and at least 50 ms), "
            "so little is left to commit at run.end(); "
            "under load the writer is busy and batches grow towards flush_rows. 0 turns this off. (2,000 cost a 100k-step loop 2.6x the writer CPU for no shorter run.end(): docs/architecture.md section 2.)"
        ),
    )
    gil_switch_interval: float = Field(
        0.001,
        ge=0,
        le=0.1,
        description=(
            "GIL switch interval (seconds) this process uses while it works in DuckDB, so a busy training "
            "thread does not stretch the store's commits (sys.setswitchinterval; restored after). 0 leaves "
            "the interpreter's interval alone. Measured with benchmarks/bench_loop.py --switch."
        ),
    )
    sinks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["duckdb"],
        description="Names (entry points of group notebook_exp.sinks) of the sinks every run uses.",
    )
    processors: Annotated[list[Any], NoDecode] = Field(
        default_factory=list,
        description=(
            "Processors (entry points of group notebook_exp.processors) applied, in order, to the "
            "metrics every sink except duckdb receives, before each sink's own (its processors setting). "
            "Names, or in notebook_exp.toml tables: processors = [{name = \"every\", steps = 10}]."
        ),
    )
    collectors: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description=(
            "Names (entry points of group notebook_exp.collectors) of the collectors every run uses; "
            "None: every installed one."
        ),
    )
    sink_queue_rows: int = Field(
        1_000_000,
        ge=1,
        description=(
            "Points a slow sink may have pending before newer batches are dropped for it "
            "(counted and reported at run end). The duckdb sink never drops."
        ),
    )
    sink_retries: int = Field(
        3, ge=0, description="Times a failing sink call is retried (with backoff) before the sink is disabled."
    )
    lock_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a reader waits for a store held by another process before raising StoreLocked.",
    )
    spill_dir: Path | None = Field(
        None,
        description=(
            "Folder for spills: writes kept on disk while the store cannot be written (a full disk), "
            "ingested by the next writer (default: <store file>.spill beside the store, else the temp dir)."
        ),
    )
    outage_points: int = Field(
        5_000_000,
        ge=1,
        description=(
            "Metric points held in memory while the store cannot be written before they are spilled; "
            "past it, with no spill possible either, points are dropped and counted (runs.dropped)."
        ),
    )
    auto_compact: bool = Field(
        True,
        description=(
            "Compact a fragmented store automatically: once this process's store writer has had nothing to write "
            "for 30 s, a detached lowest-priority process compacts the store when nobody wrote it for 10 s, "
            "`notebook-exp compact --check` says it would help and no run is queued or running; it gives up as "
            "soon as anyone writes (false: only `notebook-exp compact` compacts)."
        ),
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Runs this process's scheduler runs at once (default: the CPU count, at least 2)."
    )
    cancel_grace: float = Field(
        5.0, ge=0, description="Seconds a cancelled or timed-out run gets to stop before it is killed."
    )
    reserved_gpus: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Physical GPU ids the scheduler never leases (e.g. NOTEBOOK_EXP_RESERVED_GPUS=0)."
    )
    fake_gpus: int | None = Field(
        None, ge=0, description="Declare this many virtual GPUs instead of asking NVML (tests, demos, CI)."
    )
    lock_dir: Path | None = Field(
        None, description="Machine-wide directory for GPU lease lock files (default: a folder in the temp dir)."
    )
    telemetry_interval: float = Field(
        5.0,
        ge=0,
        description=(
            "Seconds between samples of system (sys/*: CPU, memory) and GPU (gpu/<id>/*) telemetry "
            "logged to every running run (at least 0.1); 0 turns telemetry off."
        ),
    )
    capture_git: bool = Field(
        True, description="Record the git commit, branch and dirty state of the working directory with each run."
    )
    capture_tensorboard: bool = Field(
        False,
        description=(
            "Capture the torch.utils.tensorboard SummaryWriter calls (add_scalar, add_histogram, add_image, "
            "add_text, add_hparams, ...) each run's thread makes into the run, for runs started without "
            "capture=; the writer still writes its own event files."
        ),
    )
    ray_address: str | None = Field(
        None,
        # the environment is read case-insensitively: "ray_address" is also Ray's own RAY_ADDRESS
        validation_alias=AliasChoices("NOTEBOOK_EXP_RAY_ADDRESS", "ray_address"),
        description=(
            "Ray cluster executor='ray' connects to when this process has not called ray.init itself: "
            "'ray://<head>:10001' (Ray Client, from outside the cluster), '<head>:6379' or 'auto' (a kernel "
            "on a node of the cluster). Read from NOTEBOOK_EXP_RAY_ADDRESS, else Ray's own RAY_ADDRESS. "
            "Unset: a local Ray is started if ray_start_local allows it."
        ),
    )
    ray_start_local: bool = Field(
        True,
        description=(
            "Let executor='ray' start a Ray on this machine (and say so) when no cluster is connected or "
            "named; false: such a submit raises ConfigError instead."
        ),
    )
    ray_local_cpus: int | None = Field(
        None,
        ge=1,
        description=(
            "CPUs a local Ray started by notebook_exp declares (default: the machine's). Its GPUs are the "
            "fake_gpus setting when set (virtual GPUs become Ray GPUs), else those Ray detects."
        ),
    )

    @field_validator("processors", mode="before")
    @classmethod
    def _parse_processors(cls, value: Any) -> Any:
        return _split_names(value)

    @field_validator("telemetry_interval")
    @classmethod
    def _check_interval(cls, value: float) -> float:
        if 0 < value < 0.1:
            raise ValueError("must be 0 (off) or at least 0.1 seconds")
        return value

    @field_validator("sinks", "reserved_gpus", "collectors", mode="before")
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return _split_names(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get(ENV_PREFIX + "CONFIG") or (
            DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
        )
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    @property
    def store_path(self) -> Path:
        """The store file as an absolute path."""
        return self.store.expanduser().absolute()


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment and config file."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings so the next ``get_settings()`` reads them again."""
    get_settings.cache_clear()


def plugin_settings(plugin: str, model: type[BaseSettings]) -> BaseSettings:
    """A plugin's own settings, from ``NOTEBOOK_EXP_<PLUGIN>_<FIELD>`` variables."""
    prefix = f"{ENV_PREFIX}{plugin.upper()}_"
    return model(_env_prefix=prefix)
