"""Child process for test_leases: lease GPUs, say which on stdout, hold them until stdin closes.

Usage: python _lease_child.py LOCK_DIR FAKE_GPUS RUN_ID GPUS [START_AT] [share]

Prints one JSON line ``{"gpus": [...] or null, "pid": ..., "sharer": ...}``.
With START_AT (a ``time.time()`` value, ``-`` for none) it waits until then
before trying, so siblings race. With ``share`` it starts a grandchild that
inherits the lease's lock files (``pass_fds=lease.lock_fds()``) and sleeps;
``sharer`` is its pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from notebook_exp.inventory import GpuInventory
from notebook_exp.scheduler.leases import LeaseManager


def main() -> None:
    lock_dir, fake_gpus, run_id, gpus = sys.argv[1:5]
    start_at = sys.argv[5] if len(sys.argv) > 5 else "-"
    inventory = GpuInventory.detect(fake_gpus=int(fake_gpus), cuda_visible_devices=None)
    manager = LeaseManager(inventory, lock_dir)
    if start_at != "-":
        time.sleep(max(float(start_at) - time.time(), 0))
    lease = manager.try_acquire(run_id, float(gpus))
    sharer = None
    if lease is not None and sys.argv[6:] == ["share"]:
        code = "import time; time.sleep(60)"
        sharer = subprocess.Popen([sys.executable, "-c", code], pass_fds=lease.lock_fds()).pid
    found = None if lease is None else list(lease.gpus)
    print(json.dumps({"gpus": found, "pid": os.getpid(), "sharer": sharer}), flush=True)
    sys.stdin.read()  # hold until the parent closes stdin (or kills us)
    if lease is not None:
        lease.release()


if __name__ == "__main__":
    main()
