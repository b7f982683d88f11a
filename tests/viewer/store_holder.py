"""A second process holding a store file with a plain ``duckdb.connect``, as a user's
notebook or script can: while it holds it, no other process can open the file at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOLD = (
    "import duckdb, sys\n"
    "con = duckdb.connect(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "sys.stdin.readline()\n"
    "con.close()\n"
    "print('released', flush=True)\n"
)


class StoreHolder:
    """``with StoreHolder(path) as holder:`` holds the file until ``holder.release()`` or the block ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> StoreHolder:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(self.path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if line.strip() != "held":
            self.proc.kill()
            raise RuntimeError(f"the holder could not open {self.path}: {line!r}")
        return self

    def release(self) -> None:
        """Close the holder's connection and wait for its process to end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(30)

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
