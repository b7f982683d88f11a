"""Child process for test_leases: lease GPUs, say which on stdout, hold them until stdin closes.

Usage: python _lease_child.py LOCK_DIR FAKE_GPUS RUN_ID GPUS [START_AT]

Prints one JSON line ``{"gpus": [...] or null, "pid": ...}``. With START_AT (a
``time.time()`` value) it waits until then before trying, so siblings race.
"""

from __future__ import annotations

import json
import os
import sys
import time

from notebook_exp.scheduler.gpus import GpuInventory
from notebook_exp.scheduler.leases import LeaseManager


def main() -> None:
    lock_dir, fake_gpus, run_id, gpus = sys.argv[1:5]
    inventory = GpuInventory.detect(fake_gpus=int(fake_gpus), cuda_visible_devices=None)
    manager = LeaseManager(inventory, lock_dir)
    if len(sys.argv) > 5:
        time.sleep(max(float(sys.argv[5]) - time.time(), 0))
    lease = manager.try_acquire(run_id, float(gpus))
    print(json.dumps({"gpus": None if lease is None else list(lease.gpus), "pid": os.getpid()}))
    sys.stdout.flush()
    sys.stdin.read()  # hold until the parent closes stdin (or kills us)
    if lease is not None:
        lease.release()


if __name__ == "__main__":
    main()
