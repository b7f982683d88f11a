"""GPU inventory and telemetry: which GPUs this kernel may lease, and how they are doing.

A :class:`GpuInventory` reads its GPUs through a :class:`GpuBackend`: the real
:class:`NvmlBackend` (NVML through ``pynvml``, imported lazily and initialised
once per process) or the shipped :class:`FakeGpuBackend` (N virtual GPUs whose
readings tests set). :meth:`GpuInventory.detect` picks one from settings
values passed in as arguments; this module never reads the environment.

Indices are *physical* ids as ``nvidia-smi`` shows them (NVML order). Every
``pynvml.NVMLError`` is translated into :class:`~notebook_exp.exceptions.GpuUnavailable`
in one place, :func:`_nvml_call`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .exceptions import ConfigError, GpuUnavailable

__all__ = [
    "DEFAULT_FAKE_MEMORY",
    "FakeGpuBackend",
    "GpuBackend",
    "GpuIdentity",
    "GpuInfo",
    "GpuInventory",
    "NvmlBackend",
]

log = logging.getLogger("notebook_exp.scheduler")

DEFAULT_FAKE_MEMORY = 16 * 1024**3
FAKE_GPUS_HINT = "set NOTEBOOK_EXP_FAKE_GPUS=N to declare virtual GPUs"


@dataclass(frozen=True)
class GpuIdentity:
    """What does not change about a GPU while the process lives."""

    index: int
    uuid: str
    name: str
    memory_total: int


@dataclass(frozen=True)
class GpuInfo:
    """One GPU's readings at one moment.

    ``memory_*`` are bytes, ``utilization`` percent (0-100), ``temperature``
    degrees C and ``power`` watts; a reading the device does not report is
    ``None``. ``holders`` are the run ids leasing (part of) the GPU, filled in
    by :meth:`notebook_exp.scheduler.leases.LeaseManager.snapshot`.
    """

    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int
    utilization: float | None
    temperature: float | None
    power: float | None = None
    reserved: bool = False
    holders: tuple[str, ...] = ()

    @property
    def memory_free(self) -> int:
        """Bytes not in use."""
        return max(self.memory_total - self.memory_used, 0)

    @property
    def holder(self) -> str | None:
        """The holding run ids joined by ``", "``, or ``None`` when the GPU is free."""
        return ", ".join(self.holders) or None


class GpuBackend:
    """Where an inventory's readings come from.

    Contract: :meth:`identities` lists every GPU of the machine in physical
    order and is called once, by the inventory's constructor; :meth:`read`
    gives one GPU's current readings and may be called from any thread.
    Both raise :class:`GpuUnavailable` (and nothing else) when the GPUs
    cannot be read. :meth:`visible_devices_value` says how a child process's
    ``CUDA_VISIBLE_DEVICES`` names the given GPUs.
    """

    fake = False

    def identities(self) -> list[GpuIdentity]:
        raise NotImplementedError

    def read(self, identity: GpuIdentity) -> GpuInfo:
        raise NotImplementedError

    def visible_devices_value(self, identities: Sequence[GpuIdentity]) -> str:
        return ",".join(str(i.index) for i in identities)


class FakeGpuBackend(GpuBackend):
    """``count`` virtual GPUs ("Virtual GPU 0", ...) with readings tests can set.

    Each starts idle: nothing used, 0 % utilisation, 35 C, 60 W. :meth:`set`
    changes a reading; it is thread-safe, like :meth:`read`.
    """

    fake = True

    def __init__(
        self, count: int, *, memory_total: int = DEFAULT_FAKE_MEMORY, name: str = "Virtual GPU"
    ) -> None:
        if count < 0:
            raise ConfigError(f"a fake GPU count must be >= 0, not {count}")
        self._ids = [
            GpuIdentity(i, _fake_uuid(i), f"{name} {i}", memory_total) for i in range(count)
        ]
        self._readings = {
            i: {"memory_used": 0, "utilization": 0.0, "temperature": 35.0, "power": 60.0}
            for i in range(count)
        }
        self._lock = threading.Lock()

    def identities(self) -> list[GpuIdentity]:
        return list(self._ids)

    def read(self, identity: GpuIdentity) -> GpuInfo:
        with self._lock:
            values = dict(self._readings[identity.index])
        return GpuInfo(
            identity.index, identity.uuid, identity.name, identity.memory_total, **values
        )

    def set(
        self,
        index: int,
        *,
        memory_used: int | None = None,
        utilization: float | None = None,
        temperature: float | None = None,
        power: float | None = None,
    ) -> None:
        """Change GPU ``index``'s readings; arguments left ``None`` keep their value."""
        if index not in self._readings:
            raise ConfigError(f"no fake GPU {index}; there are {len(self._ids)}")
        if memory_used is not None and not 0 <= memory_used <= self._ids[index].memory_total:
            raise ConfigError(
                f"memory_used {memory_used} outside 0..{self._ids[index].memory_total}"
            )
        new = {"memory_used": memory_used, "utilization": utilization}
        new.update(temperature=temperature, power=power)
        with self._lock:
            self._readings[index].update({k: v for k, v in new.items() if v is not None})


def _fake_uuid(index: int) -> str:
    """A stable, random-looking UUID like NVML's (``GPU-xxxxxxxx-...``)."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_OID, f'notebook_exp.fake_gpu.{index}')}"


def _nvml_call(fn_name: str, *args: Any, optional: bool = False) -> Any:
    """Call ``pynvml.<fn_name>(*args)``: the one place NVML errors become GpuUnavailable.

    With ``optional=True`` a reading the device does not support gives ``None``.
    """
    try:
        import pynvml
    except ImportError as exc:  # a hard dependency, but say so plainly if it is gone
        raise GpuUnavailable(
            f"NVML is not available: cannot import pynvml ({exc}); {FAKE_GPUS_HINT}"
        ) from exc
    try:
        return getattr(pynvml, fn_name)(*args)
    except pynvml.NVMLError as exc:
        if optional and isinstance(exc, pynvml.NVMLError_NotSupported):
            return None
        if fn_name == "nvmlInit":
            msg = f"NVML is not available (no NVIDIA driver?): {exc}; {FAKE_GPUS_HINT}"
        else:
            msg = f"NVML call {fn_name} failed: {exc}"
        raise GpuUnavailable(msg) from exc


_nvml_lock = threading.Lock()
_nvml_ready = False


def _ensure_nvml() -> None:
    """Initialise NVML once per process (thread-safe); raises GpuUnavailable."""
    global _nvml_ready
    with _nvml_lock:
        if not _nvml_ready:
            _nvml_call("nvmlInit")
            _nvml_ready = True


class NvmlBackend(GpuBackend):
    """The machine's NVIDIA GPUs, read through NVML. Construction raises GpuUnavailable
    (with a hint about ``NOTEBOOK_EXP_FAKE_GPUS``) when NVML cannot be initialised."""

    def __init__(self) -> None:
        _ensure_nvml()
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = _nvml_call("nvmlDeviceGetHandleByIndex", index)
        return self._handles[index]

    def identities(self) -> list[GpuIdentity]:
        out = []
        for index in range(_nvml_call("nvmlDeviceGetCount")):
            handle = self._handle(index)
            memory = _nvml_call("nvmlDeviceGetMemoryInfo", handle)
            gpu_uuid = _text(_nvml_call("nvmlDeviceGetUUID", handle))
            name = _text(_nvml_call("nvmlDeviceGetName", handle))
            out.append(GpuIdentity(index, gpu_uuid, name, int(memory.total)))
        return out

    def read(self, identity: GpuIdentity) -> GpuInfo:
        handle = self._handle(identity.index)
        memory = _nvml_call("nvmlDeviceGetMemoryInfo", handle)
        rates = _nvml_call("nvmlDeviceGetUtilizationRates", handle, optional=True)
        temperature = _nvml_call("nvmlDeviceGetTemperature", handle, 0, optional=True)  # 0: GPU die
        milliwatts = _nvml_call("nvmlDeviceGetPowerUsage", handle, optional=True)
        return GpuInfo(
            identity.index,
            identity.uuid,
            identity.name,
            int(memory.total),
            int(memory.used),
            None if rates is None else float(rates.gpu),
            None if temperature is None else float(temperature),
            None if milliwatts is None else milliwatts / 1000.0,
        )

    def visible_devices_value(self, identities: Sequence[GpuIdentity]) -> str:
        # UUIDs: CUDA numbers devices fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID,
        # so an integer could name a different GPU than NVML's index.
        return ",".join(i.uuid for i in identities)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_visible(value: str | None, ids: Sequence[GpuIdentity]) -> list[GpuIdentity]:
    """The GPUs ``CUDA_VISIBLE_DEVICES=value`` shows, in its order, read as CUDA does.

    ``None`` shows all; ``""`` none. Entries are physical indices or (prefixes
    of) GPU UUIDs; as in CUDA, the first entry naming no GPU ends the list.
    """
    if value is None:
        return list(ids)
    by_index = {i.index: i for i in ids}
    out: list[GpuIdentity] = []
    for entry in (part.strip() for part in value.split(",")):
        found = _match_entry(entry, by_index, ids)
        if found is None:
            if entry:
                log.warning(
                    "CUDA_VISIBLE_DEVICES entry %r names no GPU; ignoring it and the rest", entry
                )
            break
        if found not in out:
            out.append(found)
    return out


def _match_entry(
    entry: str, by_index: dict[int, GpuIdentity], ids: Sequence[GpuIdentity]
) -> GpuIdentity | None:
    if entry.lstrip("+").isdigit():
        return by_index.get(int(entry))
    if entry.upper().startswith("GPU-"):
        matches = [i for i in ids if i.uuid.lower().startswith(entry.lower())]
        return matches[0] if len(matches) == 1 else None
    return None


class GpuInventory:
    """The GPUs this process may lease and their telemetry.

    ``cuda_visible_devices`` (the variable's value, or ``None`` when unset)
    limits the GPUs to those it names; ``reserved`` physical ids are never
    leased but still appear in :meth:`snapshot`. ``unavailable_reason``
    explains an empty inventory (e.g. no NVIDIA driver); lease managers quote it.
    """

    def __init__(
        self,
        backend: GpuBackend,
        *,
        cuda_visible_devices: str | None = None,
        reserved: Iterable[int] = (),
        unavailable_reason: str | None = None,
    ) -> None:
        self.backend = backend
        self.unavailable_reason = unavailable_reason
        self.reserved = frozenset(int(r) for r in reserved)
        if any(r < 0 for r in self.reserved):
            raise ConfigError(f"reserved GPU ids must be >= 0, not {sorted(self.reserved)}")
        self._visible = _parse_visible(cuda_visible_devices, backend.identities())
        self._ordinals = {ident.index: pos for pos, ident in enumerate(self._visible)}
        self._by_index = {ident.index: ident for ident in self._visible}

    @classmethod
    def detect(
        cls,
        fake_gpus: int | None,
        cuda_visible_devices: str | None,
        reserved: Iterable[int] = (),
    ) -> GpuInventory:
        """Build the inventory settings ask for: ``fake_gpus`` virtual GPUs when it is
        not ``None``, else the NVML GPUs. Never raises for a machine without NVIDIA
        GPUs: it then has no devices and ``unavailable_reason`` says why."""
        kwargs: dict[str, Any] = {
            "cuda_visible_devices": cuda_visible_devices,
            "reserved": reserved,
        }
        if fake_gpus is not None:
            return cls(FakeGpuBackend(fake_gpus), **kwargs)
        try:
            return cls(NvmlBackend(), **kwargs)
        except GpuUnavailable as exc:
            log.info("no GPUs: %s", exc)
            return cls(FakeGpuBackend(0), unavailable_reason=str(exc), **kwargs)

    @property
    def is_fake(self) -> bool:
        """Whether the GPUs are virtual (FakeGpuBackend)."""
        return self.backend.fake

    def visible(self) -> list[int]:
        """Physical ids of every visible GPU, reserved ones included, ascending."""
        return sorted(self._by_index)

    def devices(self) -> list[int]:
        """Physical ids of the GPUs that may be leased, ascending."""
        return [i for i in self.visible() if i not in self.reserved]

    def identity(self, index: int) -> GpuIdentity:
        """Static facts of visible GPU ``index``; ConfigError for an unknown id."""
        try:
            return self._by_index[index]
        except KeyError:
            raise ConfigError(
                f"GPU {index} is not visible here (visible: {self.visible()})"
            ) from None

    def info(self, index: int) -> GpuInfo:
        """Current readings of visible GPU ``index``; GpuUnavailable if it cannot be read."""
        info = self.backend.read(self.identity(index))
        return _with_reserved(info, index in self.reserved)

    def snapshot(self) -> list[GpuInfo]:
        """Current readings of every visible GPU (reserved ones flagged), by physical id."""
        return [self.info(i) for i in self.visible()]

    def free_memory(self, index: int) -> int:
        """Bytes of GPU ``index``'s memory not in use right now."""
        return self.info(index).memory_free

    def cuda_ordinal(self, index: int) -> int:
        """The ``cuda:<n>`` number of physical GPU ``index`` inside *this* process:
        its position in ``CUDA_VISIBLE_DEVICES``, or the index itself when unset."""
        self.identity(index)
        return self._ordinals[index]

    def visible_devices_value(self, indices: Sequence[int]) -> str:
        """``CUDA_VISIBLE_DEVICES`` for a child process that must see exactly ``indices``
        (UUIDs for NVML GPUs, physical indices for fake ones)."""
        return self.backend.visible_devices_value([self.identity(i) for i in indices])


def _with_reserved(info: GpuInfo, reserved: bool) -> GpuInfo:
    return info if info.reserved == reserved else replace(info, reserved=reserved)
