"""GPU pinning: ``gpu_ids=[1, 3]`` restricts a run to those physical GPUs.

The ids are physical, as ``nvidia-smi`` and ``run.gpus`` show them. A pinned
run leases ``gpus`` of its ``gpu_ids`` (``gpus=0``, the default, takes all of
them; ``gpus=1`` any one; ``gpus=0.5`` half of one), so it waits while they are
held, even with other GPUs free. What this module checks is the shape of the
value (``clean_gpu_ids``, the validator of ``ExperimentSpec.gpu_ids``); whether
the machine has those GPUs and none is reserved is checked at submit, against
the inventory (``LeaseManager.check_pinned``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["clean_gpu_ids"]


def clean_gpu_ids(value: Any) -> list[int] | None:
    """``[1, 3]`` from ``[3, 1]``, ``(1, 3)``, ``"1,3"``, ``"1 3"`` or ``1``; ``None`` stays
    ``None`` (any GPU). Raises ``ValueError`` for an empty list, a negative id, or
    anything that is not a whole number."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.replace(",", " ").split()
        try:
            ids = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"gpu_ids takes physical GPU ids like 1,3, not {value!r}") from None
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        ids = [int(value)]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        ids = [_whole(item, value) for item in value]
    else:
        raise ValueError(f"gpu_ids takes a list of physical GPU ids, not {value!r}")
    if not ids:
        raise ValueError("gpu_ids is empty: leave it out to let the run use any GPU")
    negative = [i for i in ids if i < 0]
    if negative:
        raise ValueError(f"gpu_ids are physical GPU ids (0 and up), not {negative[0]}")
    return sorted(set(ids))


def _whole(item: Any, value: Any) -> int:
    if isinstance(item, bool) or not isinstance(item, numbers.Integral):
        if isinstance(item, str) and item.strip().lstrip("+").isdigit():
            return int(item)
        raise ValueError(f"gpu_ids takes whole GPU ids, not {item!r} (in {value!r})")
    return int(item)
