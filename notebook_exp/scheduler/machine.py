"""The machine's queue and GPUs, from any process: ``queue()`` (``nx.queue``) and ``machine_gpus()``.

Puts together the two things every scheduler of the machine shares: the store
(queued and running runs, read through ``store.queries.queue``) and the lease
files of the lock folder (which GPU each run holds, read by ``LeaseManager``).
Neither needs a scheduler in this process, and none is started. What the
objects hold is documented in ``notebook_exp.store.queries.queue``
(``MachineQueue``, ``QueueEntry``, ``GpuState``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..config import Settings, get_settings
from ..exceptions import GpuUnavailable
from ..store.queries.queue import GpuState, MachineQueue, QueueEntry, gpu_states
from .leases import LeaseManager, default_lock_dir

__all__ = ["machine_gpus", "queue"]

_inventories: dict[tuple, object] = {}
_lock = threading.Lock()


def _inventory(settings: Settings):
    """The GPUs to show: this process's scheduler's when one runs (virtual GPUs a test or
    demo set readings on included), else every GPU of the machine (``CUDA_VISIBLE_DEVICES``
    is not applied: the board is the machine's), detected once per process."""
    from ..inventory import GpuInventory
    from .core import running_scheduler

    scheduler = running_scheduler()
    if scheduler is not None and scheduler._inventory is not None:
        return scheduler._inventory
    key = (settings.fake_gpus, tuple(settings.reserved_gpus))
    with _lock:
        if key not in _inventories:
            _inventories[key] = GpuInventory.detect(settings.fake_gpus, None, settings.reserved_gpus)
        return _inventories[key]


def _readings(inventory) -> list:
    """Each visible GPU's readings; one that cannot be read now has ``None`` for them."""
    from ..inventory import GpuInfo

    out = []
    for index in inventory.visible():
        try:
            out.append(inventory.info(index))
        except GpuUnavailable:
            ident = inventory.identity(index)
            out.append(GpuInfo(index, ident.uuid, ident.name, ident.memory_total, None, None, None, None,
                               reserved=index in inventory.reserved))
    return out


def queue(settings: Settings | None = None, *, gpus: bool = True, inventory=None) -> MachineQueue:
    """Every queued and running run of every scheduler using this store, with the GPUs
    each holds (from the machine-wide leases), and (``gpus``) every GPU of the machine
    with its readings and holders. An empty queue while there is no store yet.
    ``inventory`` (a ``GpuInventory``) overrides which GPUs are read."""
    from ..store import get_store
    from ..store.queries import access
    from ..store.queries.queue import queue_entries

    settings = settings or get_settings()
    inventory = inventory or _inventory(settings)
    leases = LeaseManager(inventory, settings.lock_dir)
    holders = leases.holders()
    store = get_store(settings.store_path, settings=settings)
    entries: list[QueueEntry] = []
    if store.path.exists():
        entries = access.read(lambda conn: queue_entries(conn, held=leases.held(holders)), store=store)
    boards = gpu_states(_readings(inventory), holders, entries) if gpus else []
    lock_dir = Path(settings.lock_dir) if settings.lock_dir is not None else default_lock_dir()
    return MachineQueue(tuple(entries), tuple(boards), str(store.path), str(lock_dir))


def machine_gpus(settings: Settings | None = None, *, inventory=None) -> list[GpuState]:
    """Every GPU of the machine: readings (NVML or virtual), whether reserved, and who
    holds it now, with the holding runs' names when the store has them."""
    return list(queue(settings, inventory=inventory).gpus)
