"""Framework integrations: existing training code logs into notebook_exp unchanged.

Each integration is a plugin of the ``notebook_exp.frameworks`` entry-point
group. The classes below are their light descriptors (metadata only, nothing of
the framework is imported); the integrations themselves live in one module per
framework, imported only when used:

* ``notebook_exp.integrations.lightning.NotebookExpLogger``
* ``notebook_exp.integrations.transformers.NotebookExpCallback``
* ``notebook_exp.integrations.keras.NotebookExpCallback``
* ``tensorboard``: ``start_run(capture=["tensorboard"])`` captures ``SummaryWriter`` calls
"""

from __future__ import annotations

from typing import ClassVar

from .._plugins import Plugin

__all__ = ["Framework", "Keras", "Lightning", "TensorBoardCapture", "Transformers"]


class Framework(Plugin):
    """Base of framework integration plugins: ``module`` is where the integration lives."""

    module: ClassVar[str] = ""


class Lightning(Framework):
    """Lightning: NotebookExpLogger, a lightning.pytorch Logger."""

    libraries = ("lightning",)
    extra = "lightning"
    module = "notebook_exp.integrations.lightning"
    capabilities = ("metrics", "hparams", "checkpoints", "resume", "ddp")


class Transformers(Framework):
    """Hugging Face transformers: NotebookExpCallback, a TrainerCallback."""

    libraries = ("transformers",)
    extra = "transformers"
    module = "notebook_exp.integrations.transformers"
    capabilities = ("metrics", "hparams", "resume")


class Keras(Framework):
    """Keras 3: NotebookExpCallback, a keras.callbacks.Callback."""

    libraries = ("keras",)
    extra = "keras"
    module = "notebook_exp.integrations.keras"
    capabilities = ("metrics", "hparams")


class TensorBoardCapture(Framework):
    """Captures torch.utils.tensorboard SummaryWriter calls made inside a run."""

    libraries = ("torch",)
    extra = "tensorboard"
    module = "notebook_exp.integrations.tensorboard"
    capabilities = ("metrics", "histograms", "images", "text", "hparams")
