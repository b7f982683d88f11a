"""``EnvironmentCollector``: the interpreter, the platform and the versions of key packages.

Stored in ``runs.info`` under ``environment``::

    {"python": "3.11.7", "implementation": "CPython", "executable": "/.../bin/python",
     "platform": "Linux-6.8.0-x86_64-with-glibc2.39", "machine": "x86_64",
     "packages": {"notebook-exp": "0.3.0", "numpy": "2.1.3", "torch": "2.5.1", ...}}

``packages`` holds those of ``PACKAGES`` (and of the ``packages`` option,
``NOTEBOOK_EXP_ENVIRONMENT_PACKAGES=foo,bar``) that are installed, with their
versions read from their metadata (``importlib.metadata``): nothing is imported.
Read once per process and list of packages, so it costs a run nothing after the
first; a package installed into a live kernel shows after a restart.
"""

from __future__ import annotations

import functools
import platform
import sys
from importlib import metadata
from typing import Any

from pydantic import Field

from .._plugins import PluginSettings
from .base import Collector, RunContext

__all__ = ["PACKAGES", "EnvironmentCollector", "EnvironmentSettings", "environment"]

#: Distributions whose versions are recorded when installed.
PACKAGES = (
    "notebook-exp", "numpy", "pandas", "polars", "duckdb", "pyarrow", "scipy", "scikit-learn",
    "torch", "torchvision", "lightning", "pytorch-lightning", "transformers", "accelerate", "datasets",
    "keras", "tensorflow", "jax", "jaxlib", "flax", "xgboost", "lightgbm",
    "mlflow", "tensorboard", "wandb", "ray",
)


class EnvironmentSettings(PluginSettings):
    """Settings of the ``environment`` collector."""

    packages: list[str] = Field(default_factory=list, description="Distributions to record besides PACKAGES.")


class EnvironmentCollector(Collector):
    """The Python version, platform and installed versions of key packages."""

    Settings = EnvironmentSettings
    capabilities = ("environment",)

    def collect(self, context: RunContext) -> dict[str, Any]:
        extra = tuple(self.options.packages)
        return {"environment": environment(extra)}


@functools.lru_cache(maxsize=8)
def environment(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """What this process runs on (see the module docstring); cached. Do not change the answer."""
    packages = {}
    for name in dict.fromkeys((*PACKAGES, *extra)):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - a broken distribution's metadata: left out
            continue
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
    }
