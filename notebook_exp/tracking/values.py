"""Checking and converting what users log: metric values, keys, steps, params, images.

**Tensors.** ``as_value`` takes one-element tensors as well as numbers. A CPU
tensor (``requires_grad`` or not, 0-d or ``[1]``-shaped) is read at the call:
``.item()`` of a CPU tensor is a memory read (about 0.1 us). A tensor on any
other device (CUDA, MPS, XLA) is *not* read at the call: reading it would make
the training thread wait for every kernel queued before it (a device sync per
``run.log``, which stalls the GPU pipeline). ``as_value`` returns a detached
copy of it instead (``detach().clone()``: one queued copy kernel, no sync; the
copy keeps the value as of the call even if the tensor is later changed in
place, an accumulator ``total += loss``), the run keeps that copy in its buffer,
and the flusher thread converts the buffered copies at the next flush with
:func:`resolve` (one sync per device per flush, off the training thread). See
``docs/architecture.md`` §2.
"""

from __future__ import annotations

import decimal
import enum
import io
import math
import numbers
import operator
import warnings
from pathlib import PurePath
from typing import Any

from ..exceptions import ConfigError, InvalidMetric
from .params import to_plain

MAX_KEY_LENGTH = 250
STEP_LIMIT = 2**53  # steps are kept exactly (as float64) up to here


def as_value(key: str, value: Any) -> Any:
    """A metric value as a float, or, for a one-element tensor on a device other than
    the CPU, a detached copy of it to convert at flush (:func:`resolve`). ``InvalidMetric``
    (a TypeError) naming the key if it is neither."""
    numel = getattr(value, "numel", None)
    if numel is not None and hasattr(value, "is_cpu"):  # a torch tensor: metadata only, never its data
        return _tensor(key, value, numel())
    if isinstance(value, (str, bytes, bytearray)) or isinstance(value, complex):
        raise InvalidMetric(f"metric {key!r} must be a real number, got {type(value).__name__} {value!r:.80}")
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        try:
            return float(value)
        except (OverflowError, ValueError) as exc:
            raise InvalidMetric(f"metric {key!r} does not fit a float64: {value!r:.80}") from exc
    item = getattr(value, "item", None)  # numpy 0-d arrays, jax and other one-element arrays
    size = getattr(value, "size", None)
    if callable(size):
        size = size()
        size = math.prod(size) if isinstance(size, tuple) else size
    if callable(item) and size == 1:
        scalar = item()
        if isinstance(scalar, (numbers.Real, decimal.Decimal)) and not isinstance(scalar, complex):
            return float(scalar)
    raise InvalidMetric(f"metric {key!r} must be a real number, got {type(value).__name__} {value!r:.80}")


def _tensor(key: str, value: Any, elements: int) -> Any:
    if elements != 1 or value.is_complex():
        what = f"{elements} elements (shape {list(value.shape)})" if elements != 1 else f"dtype {value.dtype}"
        raise InvalidMetric(
            f"metric {key!r} must be a real number, got {type(value).__name__} of {what}; "
            "log one real element (t.mean(), t[0]) or each element under its own key"
        )
    if value.is_cpu:
        return float(value.item())
    return value.detach().clone()  # queued on the device like any kernel: no sync here


def resolve(values: list) -> list[float]:
    """Floats of deferred values (what :func:`as_value` kept of device tensors), in order.

    Called by the flusher, never on the training thread. Tensors are grouped by
    device, dtype and shape and read with one ``stack(...).tolist()`` per group;
    before reading a CUDA device it is synchronized once, so values written on a
    side stream are complete (and the copies, freed after, are no longer read by any
    stream). A group that cannot be read (a device error) becomes NaN, with a
    warning."""
    out = [math.nan] * len(values)
    groups: dict[tuple, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault((value.device, value.dtype, tuple(value.shape)), []).append(index)
    import torch

    synced = set()
    for (device, _dtype, _shape), indexes in groups.items():
        try:
            if device.type == "cuda" and device not in synced:
                torch.cuda.synchronize(device)
                synced.add(device)
            read = torch.stack([values[i] for i in indexes]).reshape(-1).tolist()
        except Exception as exc:  # noqa: BLE001 - a broken device must not lose the other points
            warnings.warn(f"metric values on {device} could not be read ({exc}); stored as NaN",
                          RuntimeWarning, stacklevel=2)
            continue
        for i, number in zip(indexes, read):
            out[i] = float(number)
    return out


def check_key(key: Any) -> None:
    """Reject keys the store cannot hold: not a string, empty, or over-long."""
    if not isinstance(key, str):
        raise InvalidMetric(f"metric keys are strings, got {type(key).__name__} {key!r:.80}")
    if not key or not key.strip():
        raise InvalidMetric("metric key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidMetric(f"metric key {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if any(ord(ch) < 32 for ch in key):
        raise InvalidMetric(f"metric key {key!r} contains control characters")


def as_step(step: Any) -> int:
    """A step as an int64; ``InvalidMetric`` otherwise."""
    if isinstance(step, bool):
        raise InvalidMetric(f"step must be an integer, got bool {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise InvalidMetric(f"step must be an integer, got {type(step).__name__} {step!r:.80}") from None
    if not -STEP_LIMIT <= value <= STEP_LIMIT:
        raise InvalidMetric(f"step {value} is beyond ±2**53, the largest step kept exactly")
    return value


def _plain(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, complex):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _plain(name, value.item())
    if isinstance(value, enum.Enum):
        return _plain(name, value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(f"{name}.{k}", v) for k, v in value.items()}
    raise ConfigError(
        f"param {name!r} must be JSON-like (number, string, bool, None, list, dict), "
        f"got {type(value).__name__}; pass str(value) to record it as text"
    )


def clean_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Params as plain JSON-able values; ``ConfigError`` naming the offending param. A config
    object (pydantic model, dataclass, OmegaConf config), at any depth, is taken as its
    fields (``tracking.params.to_plain``): stored nested, as given."""
    if params is None:
        return {}
    params = to_plain(params)
    if not isinstance(params, dict):
        raise ConfigError(f"params must be a dict, got {type(params).__name__}")
    out = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"param names are non-empty strings, got {key!r}")
        out[key] = _plain(key, value)
    return out


def clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    out = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise ConfigError(f"tags are non-empty strings, got {tag!r}")
        if tag not in out:
            out.append(tag)
    return out


def histogram(values: Any, bins: int) -> tuple[list[float], list[int]]:
    """Bin edges and counts of the finite values."""
    import numpy as np

    if hasattr(values, "detach"):  # torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    counts, edges = np.histogram(array, bins=bins)
    return edges.tolist(), counts.tolist()


def encode_png(image: Any) -> tuple[bytes, int, int]:
    """PNG bytes, width and height of a PIL image or an HxW / HxWx{1,3,4} array."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        pil = image
    else:
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ConfigError(f"an image is HxW, HxWx3 or HxWx4; got shape {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.number):
                raise ConfigError(f"image values must be numbers, got dtype {array.dtype}")
            scaled = np.nan_to_num(array.astype(np.float64))
            if scaled.size and scaled.max() <= 1.0:
                scaled = scaled * 255.0
            array = np.clip(scaled, 0, 255).astype(np.uint8)
        pil = Image.fromarray(array)
    out = io.BytesIO()
    pil.save(out, format="PNG")
    return out.getvalue(), pil.width, pil.height
