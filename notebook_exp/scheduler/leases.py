"""Machine-wide GPU leases: lock files so two processes never use the same GPU slot.

Each GPU has :data:`SLOTS_PER_GPU` slots, each one lock file
``gpu<idx>.slot<k>.lock`` in a machine-wide directory, taken with
:class:`filelock.FileLock` without waiting. The OS frees the lock the moment
its holder dies, even by SIGKILL. A request for ``gpus=0.5`` takes 2 slots of
one GPU; ``gpus=1`` all slots of one GPU; ``gpus=3`` all slots of three GPUs.

Beside each held slot lies ``<lock>.holder``, JSON naming the run and pid, so
:meth:`LeaseManager.holders` can say who holds what across processes. A
sidecar only counts while its lock is really held and its pid is alive.

A request may be pinned to physical GPUs (``gpu_ids=[1, 3]``): it is then
leased from those only, and :meth:`LeaseManager.check` refuses ids the machine
does not have or that are reserved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from ..exceptions import ConfigError, GpuUnavailable
from ..inventory import GpuInfo, GpuInventory

__all__ = [
    "DEFAULT_LOCK_DIR_NAME",
    "SLOTS_PER_GPU",
    "Lease",
    "LeaseHolder",
    "LeaseManager",
    "default_lock_dir",
    "slots_for",
]

log = logging.getLogger("notebook_exp.scheduler")

SLOTS_PER_GPU = 4
DEFAULT_LOCK_DIR_NAME = "notebook_exp-locks"


def default_lock_dir() -> Path:
    """``<temp dir>/notebook_exp-locks``: the same folder for every process of the machine."""
    return Path(tempfile.gettempdir()) / DEFAULT_LOCK_DIR_NAME


def slots_for(gpus: float) -> tuple[int, int]:
    """``(whole_gpus, slots)`` a request takes: ``(n, 0)`` for n whole GPUs,
    ``(0, k)`` for k slots of one GPU, ``(0, 0)`` for none.

    Raises ConfigError unless ``gpus`` is 0, a whole number, or a multiple of
    ``1/SLOTS_PER_GPU`` below 1.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, numbers.Real) or not math.isfinite(gpus):
        raise ConfigError(f"gpus must be a finite number, not {gpus!r}")
    if gpus < 0:
        raise ConfigError(f"gpus must be >= 0, not {gpus}")
    if gpus >= 1:
        if gpus != int(gpus):
            raise ConfigError(f"gpus={gpus}: above 1, ask for a whole number of GPUs")
        return int(gpus), 0
    slots = gpus * SLOTS_PER_GPU
    if abs(slots - round(slots)) > 1e-9:
        step = 1 / SLOTS_PER_GPU
        raise ConfigError(f"gpus={gpus}: a fraction of a GPU must be a multiple of {step}")
    return 0, round(slots)


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds ``slots`` slots of one GPU. ``run_id`` and ``pid`` are ``None`` when the
    lock is held but its sidecar names a dead process (the new holder is about to
    write its own)."""

    run_id: str | None
    pid: int | None
    slots: int

    @property
    def fraction(self) -> float:
        """The share of the GPU held."""
        return self.slots / SLOTS_PER_GPU


class Lease:
    """GPUs held by one run until :meth:`release` (idempotent, from any thread of the
    acquiring process) or the process exits. Use as a context manager to release
    on exit. ``gpus`` are physical ids; ``fraction`` is the share of each."""

    def __init__(self, run_id: str, request: float, locks: dict[int, list[FileLock]]) -> None:
        self.run_id = run_id
        self.request = request
        self.gpus: tuple[int, ...] = tuple(sorted(locks))
        self._locks = locks
        self._mutex = threading.Lock()
        self._released = False

    @property
    def fraction(self) -> float:
        """Share of each leased GPU: 1.0 for whole GPUs, e.g. 0.5 for a half."""
        return 1.0 if self.request >= 1 else self.request

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the GPUs back: sidecars removed first, then the locks. Idempotent."""
        with self._mutex:
            if self._released:
                return
            self._released = True
            _release_locks([lock for locks in self._locks.values() for lock in locks])

    def lock_fds(self) -> list[int]:
        """Descriptors of the held lock files (empty once released). A child started
        with ``pass_fds=lease.lock_fds()`` shares the locks: they stay held while
        either process keeps them open, and :meth:`release` frees them for both."""
        with self._mutex:
            if self._released:
                return []
            fds = (lock._context.lock_file_fd for held in self._locks.values() for lock in held)
            return [fd for fd in fds if fd is not None]

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self.run_id} gpus={list(self.gpus)} fraction={self.fraction} {state}>"


def _gpu_list(ids: list[int]) -> str:
    return f"GPU {ids[0]} is" if len(ids) == 1 else f"GPUs {ids} are"


def _sidecar(lock: FileLock) -> Path:
    return Path(lock.lock_file + ".holder")


def _release_locks(locks: list[FileLock]) -> None:
    for lock in locks:
        with contextlib.suppress(OSError):
            _sidecar(lock).unlink(missing_ok=True)
        lock.release()


def _write_sidecar(lock: FileLock, run_id: str, request: float) -> None:
    """Record the holder next to a held lock, atomically (temp file + rename)."""
    path = _sidecar(lock)
    payload = {"run_id": run_id, "pid": os.getpid(), "gpus": request, "since": time.time()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not record the holder of %s: %s", lock.lock_file, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _read_sidecar(path: Path, alive: dict[int, bool] | None = None) -> tuple[str | None, int | None]:
    """``(run_id, pid)`` from a sidecar whose pid is alive, else ``(None, None)``;
    ``alive`` keeps the answers of one reading (a whole GPU's slots share a pid)."""
    try:
        data = json.loads(path.read_text())
        run_id, pid = str(data["run_id"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if alive is None:
        return (run_id, pid) if _pid_alive(pid) else (None, None)
    if pid not in alive:
        alive[pid] = _pid_alive(pid)
    return (run_id, pid) if alive[pid] else (None, None)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _make_lock_dir(path: Path, *, shared: bool) -> None:
    """Create the lock folder; the default one is made writable by every user (sticky,
    like /tmp) so that users of one machine share it."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    if shared:
        with contextlib.suppress(OSError):
            path.chmod(0o1777)


class LeaseManager:
    """Hands out :class:`Lease` objects for the GPUs of ``inventory``.

    Lock files live in ``lock_dir`` (default :func:`default_lock_dir`); every
    manager on the machine using the same folder respects the others' leases.
    Methods are thread-safe. A lease's locks belong to this process: do not
    fork with leases held and expect the child to own them.
    """

    def __init__(self, inventory: GpuInventory, lock_dir: Path | str | None = None) -> None:
        self.inventory = inventory
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        _make_lock_dir(self.lock_dir, shared=lock_dir is None)
        self._mutex = threading.Lock()
        self._leases: list[Lease] = []

    # -- requests -----------------------------------------------------------------

    def check(self, gpus: float, gpu_memory: int | None = None, gpu_ids: Sequence[int] | None = None) -> None:
        """Raise GpuUnavailable if the request can never be met on this machine (or
        ConfigError if it is malformed); return quietly if it could be met some day.
        With ``gpu_ids`` only those physical GPUs count (see :meth:`check_pinned`)."""
        whole, slots = slots_for(gpus)
        if gpu_ids is not None:
            self.check_pinned(gpu_ids, gpus)
        if whole == slots == 0:
            return
        devices = self._pinned(self.inventory.devices(), gpu_ids)
        need = max(whole, 1)
        if need > len(devices):
            raise GpuUnavailable(self._too_few_message(gpus, devices))
        if gpu_memory is not None:
            big = [i for i in devices if self.inventory.identity(i).memory_total >= gpu_memory]
            if need > len(big):
                raise GpuUnavailable(
                    f"gpus={gpus} with gpu_memory={gpu_memory} bytes: only {len(big)} of the "
                    f"{len(devices)} leasable GPUs have that much memory"
                )

    def check_pinned(self, gpu_ids: Sequence[int], gpus: float = 0) -> None:
        """Raise GpuUnavailable unless every id of ``gpu_ids`` is a GPU of this machine
        (visible to this process) that is not reserved, and there are enough of them
        for ``gpus``; ConfigError for a malformed request."""
        ids = sorted(gpu_ids)
        visible = self.inventory.visible()
        absent = [i for i in ids if i not in visible]
        if absent:
            reason = self.inventory.unavailable_reason
            have = f"its GPUs are {visible}" if visible else f"it has none{': ' + reason if reason else ''}"
            raise GpuUnavailable(f"gpu_ids={ids}: {_gpu_list(absent)} not on this machine ({have})")
        reserved = [i for i in ids if i in self.inventory.reserved]
        if reserved:
            raise GpuUnavailable(
                f"gpu_ids={ids}: {_gpu_list(reserved)} reserved (the reserved_gpus setting) and never leased; "
                f"the leasable GPUs are {self.inventory.devices()}"
            )
        whole, _slots = slots_for(gpus)
        if whole > len(ids):
            raise ConfigError(f"gpus={gpus:g} with gpu_ids={ids}: a run pinned to {len(ids)} GPU(s) cannot "
                              f"lease {whole}; pin more GPUs or ask for fewer")

    @staticmethod
    def _pinned(devices: list[int], gpu_ids: Sequence[int] | None) -> list[int]:
        return devices if gpu_ids is None else [i for i in devices if i in set(gpu_ids)]

    def _too_few_message(self, gpus: float, devices: list[int]) -> str:
        reason = self.inventory.unavailable_reason
        if not devices and reason:
            return f"gpus={gpus} asked for, but this machine has no GPU to lease: {reason}"
        reserved = sorted(self.inventory.reserved & set(self.inventory.visible()))
        extra = f" (GPUs {reserved} are reserved)" if reserved else ""
        return f"gpus={gpus} asked for, but this machine has {len(devices)} leasable GPU(s){extra}"

    def try_acquire(self, run_id: str, gpus: float, gpu_memory: int | None = None,
                    gpu_ids: Sequence[int] | None = None) -> Lease | None:
        """Lease ``gpus`` for ``run_id`` now, or return ``None`` if they are busy.

        Never waits. GPUs go lowest id first; a fraction goes to the GPU with the
        fewest free slots that fit it (best fit), so whole GPUs stay free.
        ``gpu_memory`` (bytes) admits only GPUs with that much free memory now;
        ``gpu_ids`` only those physical GPUs. ``gpus=0`` gives an empty lease.
        Raises as :meth:`check` does for a request that can never be met.
        """
        self.check(gpus, gpu_memory, gpu_ids)
        whole, slots = slots_for(gpus)
        with self._mutex:
            if whole == slots == 0:
                locks: dict[int, list[FileLock]] | None = {}
            elif whole:
                locks = self._take_whole(whole, self._candidates(gpu_memory, gpu_ids))
            else:
                locks = self._take_slots(slots, self._candidates(gpu_memory, gpu_ids))
            if locks is None:
                return None
            for held in locks.values():
                for lock in held:
                    _write_sidecar(lock, run_id, gpus)
            lease = Lease(run_id, gpus, locks)
            self._leases = [x for x in self._leases if not x.released] + [lease]
        log.debug("leased %s", lease)
        return lease

    def _candidates(self, gpu_memory: int | None, gpu_ids: Sequence[int] | None = None) -> list[int]:
        devices = self._pinned(self.inventory.devices(), gpu_ids)
        if gpu_memory is None:
            return devices
        return [i for i in devices if self.inventory.free_memory(i) >= gpu_memory]

    def _take_whole(self, count: int, candidates: list[int]) -> dict[int, list[FileLock]] | None:
        """All slots of ``count`` GPUs, lowest ids first."""
        taken: dict[int, list[FileLock]] = {}
        for index in candidates:
            if len(taken) == count:
                break
            held = self._lock_slots(index, self._slot_order(index)[0], SLOTS_PER_GPU)
            if held is not None:
                taken[index] = held
        if len(taken) == count:
            return taken
        _release_locks([lock for held in taken.values() for lock in held])
        return None

    def _take_slots(self, count: int, candidates: list[int]) -> dict[int, list[FileLock]] | None:
        """``count`` slots of one GPU, best fit: the GPU with the fewest free slots that
        still fit first (then lowest id); GPUs that look too full are tried last."""
        orders = {i: self._slot_order(i) for i in candidates}
        fits = {i: orders[i][1] >= count for i in candidates}
        by_fit = sorted(candidates, key=lambda i: (not fits[i], orders[i][1], i))
        for index in by_fit:
            held = self._lock_slots(index, orders[index][0], count)
            if held is not None:
                return {index: held}
        return None

    def _slot_order(self, index: int) -> tuple[list[int], int]:
        """GPU ``index``'s slots, those with a live holder on record first, and how many
        have none. Records are hints (a failed try costs nothing and touches no one);
        trying apparently held slots first keeps us from holding free ones in vain."""
        free = [s for s in range(SLOTS_PER_GPU) if not self._recorded_holder(index, s)]
        return [s for s in range(SLOTS_PER_GPU) if s not in free] + free, len(free)

    def _recorded_holder(self, index: int, slot: int) -> bool:
        return _read_sidecar(self._sidecar_path(index, slot))[1] is not None

    def _lock_slots(self, index: int, slots: list[int], count: int) -> list[FileLock] | None:
        """Take ``count`` of the given slots of GPU ``index``, or none of them."""
        held: list[FileLock] = []
        for tried, slot in enumerate(slots):
            if len(held) + len(slots) - tried < count:
                break  # cannot reach count any more: do not hold locks for nothing
            lock = self._try_lock(index, slot)
            if lock is not None:
                held.append(lock)
                if len(held) == count:
                    return held
        _release_locks(held)
        return None

    def _lock_path(self, index: int, slot: int) -> Path:
        return self.lock_dir / f"gpu{index}.slot{slot}.lock"

    def _sidecar_path(self, index: int, slot: int) -> Path:
        return self.lock_dir / f"gpu{index}.slot{slot}.lock.holder"

    def _try_lock(self, index: int, slot: int) -> FileLock | None:
        """One non-blocking attempt; the lock may be released from any thread."""
        path = self._lock_path(index, slot)
        lock = FileLock(path, timeout=0, mode=0o666, thread_local=False, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            return None
        return lock

    # -- reporting ----------------------------------------------------------------

    def holders(self) -> dict[int, list[LeaseHolder]]:
        """Who holds each visible GPU, across processes: ``{index: [LeaseHolder, ...]}``
        (GPUs nobody holds are absent). Removes sidecars left by dead holders."""
        out: dict[int, list[LeaseHolder]] = {}
        alive: dict[int, bool] = {}
        for index in self.inventory.visible():
            counts: dict[tuple[str | None, int | None], int] = {}
            for slot in range(SLOTS_PER_GPU):
                who = self._slot_holder(index, slot, alive)
                if who is not None:
                    counts[who] = counts.get(who, 0) + 1
            if counts:
                out[index] = [LeaseHolder(r, p, n) for (r, p), n in counts.items()]
        return out

    def _slot_holder(self, index: int, slot: int, alive: dict[int, bool] | None = None,
                     ) -> tuple[str | None, int | None] | None:
        """The holder of a slot that has a sidecar, or ``None`` if it is free.

        A slot without a sidecar counts as free, so reporting never takes the locks
        of idle slots (which would make a concurrent acquirer fail for nothing).
        """
        sidecar = self._sidecar_path(index, slot)
        if not sidecar.exists():
            return None
        probe = self._try_lock(index, slot)
        if probe is None:
            return _read_sidecar(sidecar, alive)
        # Free: the sidecar was stale. Removing it is safe while we hold the lock.
        _release_locks([probe])
        return None

    def held(self, holders: dict[int, list[LeaseHolder]] | None = None) -> dict[str, tuple[int, ...]]:
        """Run id -> the physical GPUs its leases hold, across processes (from
        :meth:`holders`, read now unless given)."""
        out: dict[str, set[int]] = {}
        for index, found in (self.holders() if holders is None else holders).items():
            for holder in found:
                if holder.run_id is not None:
                    out.setdefault(holder.run_id, set()).add(index)
        return {run_id: tuple(sorted(gpus)) for run_id, gpus in out.items()}

    def snapshot(self) -> list[GpuInfo]:
        """The inventory's :meth:`~GpuInventory.snapshot` with ``holders`` filled in."""
        holders = self.holders()
        return [
            replace(info, holders=tuple(h.run_id or "?" for h in holders.get(info.index, ())))
            for info in self.inventory.snapshot()
        ]

    def leases(self) -> list[Lease]:
        """Leases this manager handed out that are not released yet."""
        with self._mutex:
            return [x for x in self._leases if not x.released]

    def release_all(self) -> None:
        """Release every lease this manager handed out (e.g. at scheduler stop)."""
        for lease in self.leases():
            lease.release()
