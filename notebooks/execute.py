"""Execute the example notebooks in place and save them with their outputs and widget state.

    .venv/bin/python notebooks/execute.py                 # every notebook here
    .venv/bin/python notebooks/execute.py 01_quickstart.ipynb

nbval (``pytest --nbval notebooks/``) compares a fresh run with these saved outputs,
so run this after changing a notebook (or what it shows) and review the diff.

The kernels cache Python bytecode (``PYTHONPYCACHEPREFIX``, default
``<tmp>/notebook_exp-pycache``, the folder tests/test_notebooks.py uses too), even
where ``PYTHONDONTWRITEBYTECODE`` is set: a local Ray (07) starts a few Python
processes, and without a cache each compiles ray again.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
TIMEOUT = 120  # seconds per cell
PYCACHE = os.path.join(tempfile.gettempdir(), "notebook_exp-pycache")


def execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    """Run ``path`` top to bottom in a fresh python3 kernel; returns the notebook and the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT, kernel_name="python3", store_widget_state=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - started


def main(names: list[str]) -> int:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the kernels inherit this environment
    os.environ.setdefault("PYTHONPYCACHEPREFIX", PYCACHE)
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        nb, seconds = execute(path)
        nbformat.write(nb, path)
        print(f"{path.name}: {seconds:.1f} s, {path.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
