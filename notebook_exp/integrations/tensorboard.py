"""``SummaryWriter`` capture: ``start_run(capture=["tensorboard"])``.

Code that logs with ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's
writer, when installed) logs into the run unchanged. While the run is live,
these calls made in the thread that started it become the run's records:

=========================================  ==============================================
writer call                                run record
=========================================  ==============================================
``add_scalar(tag, value, step)``           ``run.log(step=step, **{tag: value})``
``add_scalars(main, {tag: value}, step)``  ``run.log(step=step, **{f"{main}/{tag}": value})``
``add_histogram(tag, values, step)``       ``run.log_histogram(tag, values, step)``
``add_image(tag, img, step, dataformats)`` ``run.log_image(tag, <HWC uint8, as the writer draws it>, step)``
``add_text(tag, text, step)``              ``run.log_text(tag, text, step)``
``add_hparams(hparams, metrics, ...)``     ``run.log_params(hparams)`` and ``run.log(step=global_step, **metrics)``
=========================================  ==============================================

A step left out counts up per key, as with ``run.log``; ``walltime`` is not kept
(the run's records carry the time of the call). The writer still writes its own
event files, unless ``capture=[("tensorboard", {"write": False})]``: then the
calls above only reach the run (a writer still opens its empty event file when it
is created). Other writer methods (``add_figure``, ``add_graph``, ...) are not
captured and write as usual.

**One patch, routed per thread.** The writer classes' methods are replaced once,
while at least one run captures (a reference count under a lock), and restored,
the very same function objects, when the last capturing run ends, however it
ends. Each replaced method looks up the run capturing in the calling thread (the
thread that started it; the newest when runs nest) and calls the original
directly when there is none, so a run never sees another thread's calls. Inside
a captured call the writer's own nested calls (``add_hparams`` writes its metrics
with ``add_scalar``) are not captured again. A record the run refuses (a
non-numeric scalar) is warned about once per method and run, and the writer's
own call goes on; a cancelled run's ``RunCancelled`` is raised as from ``run.log``.

A scalar on a GPU: with ``write`` on, the writer itself reads it at the call (its
own device sync, as without capture); with ``write`` off, it reaches ``run.log``
as it is and is read at the run's next flush, off the training thread
(``tracking.values``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import operator
import threading
import warnings
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..exceptions import ConfigError, MissingDependency, RunInterrupted

__all__ = ["METHODS", "CaptureOptions", "WriterCapture", "capturing", "prepare_capture", "writer_classes"]

log = logging.getLogger("notebook_exp.integrations")

#: The writer methods that are captured.
METHODS = ("add_scalar", "add_scalars", "add_histogram", "add_image", "add_text", "add_hparams")
_ABSENT = object()


class CaptureOptions(BaseModel):
    """Options of ``capture=[("tensorboard", {...})]``."""

    model_config = ConfigDict(extra="forbid")

    write: bool = Field(True, description="Whether the writer still writes its own event files.")


def writer_classes() -> list[type]:
    """The writer classes to patch: torch's ``SummaryWriter``, and tensorboardX's when installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch without the tensorboard package
        raise MissingDependency("tensorboard", "tensorboard") from exc
    classes = [SummaryWriter]
    if importlib.util.find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter as WriterX

        classes.append(WriterX)
    return classes


def prepare_capture(options: dict[str, Any]) -> Callable:
    """The capture plugin's entry (``tracking.capture``): checks ``options`` and imports
    the writers now; returns ``start(run)``, which starts capturing into ``run`` for the
    calling thread and returns the handle whose ``stop()`` ends it."""
    try:
        checked = CaptureOptions.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "?"
        raise ConfigError(f"capture 'tensorboard': option {where!r}: {first['msg']}") from None
    classes = writer_classes()

    def start(run) -> WriterCapture:
        return WriterCapture(run, write=checked.write, classes=classes).start()

    return start


# -- the patch, shared by every capturing run --------------------------------------------
_lock = threading.Lock()
_count = 0
_saved: dict[tuple[type, str], Any] = {}  # (class, method) -> what the class's __dict__ held
_routes: dict[int, tuple[WriterCapture, ...]] = {}  # thread ident -> its captures, newest last (replaced whole)
_inside = threading.local()  # depth: 1 while a captured call runs its original in this thread


def capturing() -> WriterCapture | None:
    """The capture that takes this thread's calls, if any."""
    stack = _routes.get(threading.get_ident())
    if not stack or stack[-1].thread is not threading.current_thread():
        return None  # none, or left by a thread that ended without ending its run (its ident is reused)
    return stack[-1]


def _patch(classes: list[type]) -> None:
    for cls in classes:
        for name in METHODS:
            original = getattr(cls, name, None)
            if original is None or (cls, name) in _saved:
                continue
            _saved[(cls, name)] = cls.__dict__.get(name, _ABSENT)
            setattr(cls, name, _captured(name, original))


def _unpatch() -> None:
    for (cls, name), held in list(_saved.items()):
        if held is _ABSENT:
            delattr(cls, name)
        else:
            setattr(cls, name, held)
    _saved.clear()


def _captured(name: str, original: Callable) -> Callable:
    signature = inspect.signature(original)
    handler = _HANDLERS[name]

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        capture = capturing() if _routes else None
        if capture is None or getattr(_inside, "depth", 0):
            return original(self, *args, **kwargs)
        result = None
        if capture.write:
            _inside.depth = 1
            try:
                result = original(self, *args, **kwargs)
            finally:
                _inside.depth = 0
        bound = signature.bind(self, *args, **kwargs)  # a wrong call raises as the writer's would
        bound.apply_defaults()
        capture.record(name, handler, bound.arguments)
        return result

    method.__notebook_exp_original__ = original
    return method


# -- one run's capture --------------------------------------------------------------------
class WriterCapture:
    """One run capturing the writers' calls of one thread (``start()`` ... ``stop()``)."""

    def __init__(self, run, *, write: bool = True, classes: list[type] | None = None) -> None:
        self.run = run
        self.write = write
        self.classes = classes if classes is not None else writer_classes()
        self.thread = threading.current_thread()  # the thread whose calls it takes
        self.active = False
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<WriterCapture run={self.run.run_id} thread={self.thread.name} write={self.write}>"

    def start(self) -> WriterCapture:
        global _count
        with _lock:
            if _count == 0:
                _patch(self.classes)
            _count += 1
            ident = self.thread.ident
            _routes[ident] = (*_routes.get(ident, ()), self)
            self.active = True
        return self

    def stop(self) -> None:
        """Stop routing this thread's calls here; the last capture restores the writers (idempotent)."""
        global _count
        with _lock:
            if not self.active:
                return
            self.active = False
            ident = self.thread.ident
            rest = tuple(c for c in _routes.get(ident, ()) if c is not self)
            if rest:
                _routes[ident] = rest
            else:
                _routes.pop(ident, None)
            _count -= 1
            if _count == 0:
                _unpatch()

    def record(self, method: str, handler: Callable, arguments: dict[str, Any]) -> None:
        """Hand one captured call to the run; what the run refuses is warned about once per method."""
        run = self.run
        if run.status.terminal:
            return
        try:
            handler(run, arguments)
        except RunInterrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's training goes on; the writer has its copy
            if method not in self._warned:
                self._warned.add(method)
                warnings.warn(f"run {run.run_id}: a captured SummaryWriter.{method} call was not recorded: {exc}",
                              RuntimeWarning, stacklevel=4)
            log.debug("captured %s not recorded", method, exc_info=True)


# -- what each captured call records -------------------------------------------------------
def _step(value: Any) -> int | None:
    """A writer's ``global_step`` as a run step (``None``: count up)."""
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        number = float(value.item() if hasattr(value, "item") else value)
        if not number.is_integer():
            raise ConfigError(f"global_step {value!r} is not a whole number") from None
        return int(number)


def _on_add_scalar(run, a: dict) -> None:
    run.log(_step(a["global_step"]), **{a["tag"]: a["scalar_value"]})


def _on_add_scalars(run, a: dict) -> None:
    main = a["main_tag"]
    run.log(_step(a["global_step"]), **{f"{main}/{tag}": value for tag, value in a["tag_scalar_dict"].items()})


def _on_add_histogram(run, a: dict) -> None:
    bins = a.get("bins")
    run.log_histogram(a["tag"], a["values"], step=_step(a["global_step"]),
                      bins=bins if isinstance(bins, int) and not isinstance(bins, bool) else 64)


def _on_add_image(run, a: dict) -> None:
    run.log_image(a["tag"], _hwc(a["img_tensor"], a.get("dataformats") or "CHW"), step=_step(a["global_step"]))


def _on_add_text(run, a: dict) -> None:
    run.log_text(a["tag"], a["text_string"], step=_step(a["global_step"]))


def _on_add_hparams(run, a: dict) -> None:
    run.log_params(dict(a["hparam_dict"]))
    metrics = dict(a["metric_dict"] or {})
    if metrics:
        run.log(_step(a.get("global_step")), **metrics)


_HANDLERS: dict[str, Callable[[Any, dict], None]] = {
    "add_scalar": _on_add_scalar,
    "add_scalars": _on_add_scalars,
    "add_histogram": _on_add_histogram,
    "add_image": _on_add_image,
    "add_text": _on_add_text,
    "add_hparams": _on_add_hparams,
}


def _hwc(image: Any, dataformats: str):
    """An image as the writer draws it: HWC (a batch as its grid), uint8, floats times 255."""
    import numpy as np
    from torch.utils.tensorboard._utils import convert_to_HWC

    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = convert_to_HWC(np.asarray(image), dataformats)
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) * 255).clip(0, 255).astype(np.uint8)
    return array
