"""Connecting to Ray, and what the driver and its Ray workers agree on.

:func:`connect` finds the Ray that ``executor="ray"`` uses, in this order: the
one this process already joined with ``ray.init(...)``; the ``ray_address``
setting (``NOTEBOOK_EXP_RAY_ADDRESS``, else Ray's own ``RAY_ADDRESS``); else,
when ``ray_start_local`` allows it, a Ray started here, which it says it did
(one warning naming what it declared). Ray is imported here and nowhere at
import time: without it the first ``executor="ray"`` raises
``MissingDependency`` with the install line.

Both sides of a run use the rest: :func:`machine_id` says whether a worker runs
on the driver's machine (then it shares the driver's lock folder and GPU
settings, see ``_ray_worker``); :func:`physical_gpu_ids` turns the GPU ids Ray
hands a worker (``ray.get_gpu_ids()``: ints, or the strings of the raylet's
``CUDA_VISIBLE_DEVICES``, numbers or UUIDs; measured) into physical ids as
``nvidia-smi`` shows them; :class:`Placement` is where a run landed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError, GpuUnavailable, MissingDependency

__all__ = [
    "Cluster",
    "Placement",
    "check_resources",
    "connect",
    "import_ray",
    "machine_id",
    "physical_gpu_ids",
]

log = logging.getLogger("notebook_exp.scheduler")

_lock = threading.Lock()
_started: dict[str, Any] = {}  # what a local Ray started by this process declared, by Ray job id


def import_ray():
    """The ``ray`` module, or ``MissingDependency`` with the install line."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """The Ray this process is connected to."""

    #: The cluster's GCS address (``host:port``), or the Ray Client address (``ray://...``).
    address: str
    #: Whether notebook_exp started it (a local Ray, stopped when this process exits).
    started_here: bool
    #: Whether this process is a Ray Client (``ray://``): not a node of the cluster.
    client: bool
    #: The Ray node of this process (None for a Ray Client).
    node_id: str | None
    #: What notebook_exp said when it started a local Ray (None otherwise).
    message: str | None = None


def connect(settings) -> Cluster:
    """Join the Ray ``executor="ray"`` runs on (see the module docstring). Raises
    ``MissingDependency`` without ray, ``ConfigError`` when there is no cluster to use and
    ``ray_start_local`` is off, or when connecting fails (naming the address)."""
    ray = import_ray()
    with _lock:
        if not ray.is_initialized():
            if settings.ray_address:
                try:
                    ray.init(address=settings.ray_address)
                except Exception as exc:  # noqa: BLE001 - translated at this one boundary
                    raise ConfigError(
                        f"executor='ray' could not connect to the Ray cluster at {settings.ray_address!r} "
                        f"(the ray_address setting or RAY_ADDRESS): {type(exc).__name__}: {exc}{_auth_hint(exc)}"
                    ) from exc
            elif settings.ray_start_local:
                _start_local(ray, settings)
            else:
                raise ConfigError(
                    "executor='ray' has no Ray cluster to use: this process has not called ray.init(), "
                    "neither NOTEBOOK_EXP_RAY_ADDRESS nor RAY_ADDRESS names a cluster, and "
                    "ray_start_local is off (NOTEBOOK_EXP_RAY_START_LOCAL=true lets it start one here)"
                )
        return _describe(ray)


def _auth_hint(exc: BaseException) -> str:
    """What to do when the cluster refused this process's (missing) token."""
    chain, seen = [], exc
    while seen is not None:
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    if not any("AuthToken" in text or "AuthenticationError" in text for text in chain):
        return ""
    return ("; the cluster uses token authentication (on by default since Ray 2.59): start this process with "
            "RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head node prints it)")


def _start_local(ray, settings) -> None:
    options: dict[str, Any] = {"address": "local", "include_dashboard": False}
    if settings.ray_local_cpus is not None:
        options["num_cpus"] = settings.ray_local_cpus
    if settings.fake_gpus is not None:
        options["num_gpus"] = settings.fake_gpus
    try:
        ray.init(**options)
    except Exception as exc:  # noqa: BLE001 - translated at this one boundary
        raise ConfigError(f"executor='ray' could not start a local Ray: {type(exc).__name__}: {exc}") from exc
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    message = (
        f"notebook_exp started a local Ray for executor='ray' ({resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs"
        f"{' (the fake_gpus setting)' if settings.fake_gpus is not None else ''}, no dashboard): no cluster was "
        "connected or named (ray.init, NOTEBOOK_EXP_RAY_ADDRESS, RAY_ADDRESS). It stops when this process exits; "
        "NOTEBOOK_EXP_RAY_START_LOCAL=false refuses instead."
    )
    _started[ray.get_runtime_context().get_job_id()] = message
    log.warning("%s", message)


def _describe(ray) -> Cluster:
    context = ray.get_runtime_context()
    client = bool(ray.util.client.ray.is_connected())
    try:
        address = context.gcs_address or ""
    except Exception:  # noqa: BLE001 - a Ray Client has no GCS address of its own
        address = ""
    message = _started.get(context.get_job_id())
    return Cluster(address=address, started_here=message is not None, client=client,
                   node_id=None if client else context.get_node_id(), message=message)


def check_resources(ray, need: dict[str, float], wait: bool) -> None:
    """Refuse, before anything is queued, a run no node of the cluster could ever hold:
    ``GpuUnavailable`` when GPUs are short, ``ConfigError`` for other resources. With
    ``wait`` (``wait_for_gpus``: an autoscaler may add nodes) it is queued anyway."""
    need = {key: value for key, value in need.items() if value}
    if wait or not need:
        return
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(all(node.get(key, 0) >= value for key, value in need.items()) for node in nodes):
        return
    largest = max(nodes, key=lambda node: tuple(node.get(key, 0) for key in need), default={})
    has = ", ".join(f"{_label(key)} {largest.get(key, 0):g}" for key in need) or "nothing"
    asked = ", ".join(f"{_label(key)} {value:g}" for key, value in need.items())
    message = (f"no node of the Ray cluster can hold this run ({asked}); the best has {has} "
               f"({len(nodes)} live node(s)); pass wait_for_gpus=True to queue it for an autoscaler")
    short = [key for key in need if all(node.get(key, 0) < need[key] for node in nodes)]
    raise (GpuUnavailable if "GPU" in short else ConfigError)(message)


def _label(key: str) -> str:
    return {"CPU": "CPUs", "GPU": "GPUs", "memory": "memory bytes"}.get(key, key)


def machine_id() -> str:
    """This machine, as the driver and a worker compare it: the host name and the boot id
    (two containers of one host with the same name share a kernel, hence its GPUs)."""
    boot = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}"


def physical_gpu_ids(ray_ids: Iterable[Any], identities: Sequence[Any]) -> tuple[list[int], list[str]]:
    """``(physical ids, ids that name no GPU here)`` of the GPU ids Ray assigned a worker.

    Ray gives ints (``[0]``) when the raylet started without ``CUDA_VISIBLE_DEVICES``
    and that variable's entries as strings otherwise (``["2"]``, or UUIDs
    ``["GPU-5f3c..."]``). Numbers are physical indices (NVML order, as the inventory
    and ``nvidia-smi``); a UUID, or a unique prefix of one, is looked up among
    ``identities`` (the machine's ``GpuIdentity`` list). Duplicates are dropped, the
    order kept (it is the order of the worker's ``cuda:<n>`` devices)."""
    known = {identity.index for identity in identities}
    physical: list[int] = []
    unknown: list[str] = []
    for raw in ray_ids:
        text = str(raw).strip()
        index: int | None = None
        if text.lstrip("+").isdigit():
            index = int(text)
            if known and index not in known:
                index = None
        elif text.upper().startswith("GPU-"):
            matches = [i.index for i in identities if i.uuid.lower().startswith(text.lower())]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            unknown.append(text)
        elif index not in physical:
            physical.append(index)
    return physical, unknown


@dataclass(frozen=True)
class Placement:
    """Where a run's attempt landed: its Ray node and worker process, and its GPUs."""

    node_id: str
    node_ip: str
    hostname: str
    pid: int
    #: Physical ids (as ``nvidia-smi`` on that node shows them).
    gpus: tuple[int, ...] = ()
    #: The ids as Ray gave them (``ray.get_gpu_ids()``), for the record.
    ray_gpu_ids: tuple[str, ...] = ()
    #: Whether the node is the driver's machine (it then leased its GPUs there).
    local: bool = False
    #: The worker's interpreter, platform and key packages (the environment collector's).
    environment: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """``host (ip)``, as the run card shows the node."""
        return f"{self.hostname} ({self.node_ip})"

    def describe(self) -> dict[str, Any]:
        """JSON-able, for the run's ``placed`` event."""
        return {
            "node_id": self.node_id, "node_ip": self.node_ip, "hostname": self.hostname, "pid": self.pid,
            "gpus": list(self.gpus), "ray_gpu_ids": list(self.ray_gpu_ids), "local": self.local,
            "environment": self.environment,
        }

    def __str__(self) -> str:
        gpus = f", GPU {', '.join(map(str, self.gpus))}" if self.gpus else ""
        return f"{self.label}, pid {self.pid}{gpus}"


def current_placement(gpus: Sequence[int], ray_gpu_ids: Sequence[Any], local: bool, environment: dict) -> Placement:
    """This Ray worker's placement (called on the worker)."""
    ray = import_ray()
    return Placement(
        node_id=ray.get_runtime_context().get_node_id(), node_ip=ray.util.get_node_ip_address(),
        hostname=socket.gethostname(), pid=os.getpid(), gpus=tuple(gpus),
        ray_gpu_ids=tuple(str(i) for i in ray_gpu_ids), local=local, environment=environment,
    )
