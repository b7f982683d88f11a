"""Fixtures of the store tests: a second process holding the store file, a small disk."""

import subprocess
import sys
import textwrap

import pytest

HOLDER = """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
    con.close()
"""


@pytest.fixture
def hold():
    """``hold(path, mode, seconds)``: a process that opens the store with plain duckdb
    (``"rw"`` or ``"ro"``) and keeps it open; returns once it holds the file. Killed
    after the test if still alive."""
    procs = []

    def start(path, mode: str, seconds: float) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path), mode, str(seconds)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted for the test (CI runs as root), unmounted after it."""
    from notebook_exp.testing import shutdown

    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    yield mount
    shutdown()  # stores on the disk close before it goes
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def fill():
    """``fill(folder)``: write a ballast file into ``folder`` until its disk is full;
    returns the ballast's path (remove it and the space returns)."""
    return fill_disk


def fill_disk(folder):
    path = folder / "ballast"
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return path
