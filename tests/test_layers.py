"""Dependencies point down only: the real package, and a synthetic graph that breaks the rule."""

import subprocess
import sys

from notebook_exp import _layers
from notebook_exp._layers import check, cycles, imports, module_graph, project_roots

LAYERS = [("low", ("pkg.low",)), ("mid", ("pkg.mid",)), ("top", ("pkg",))]


def write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_graph({"pkg": root})


def test_the_package_has_no_upward_edge_and_no_cycle():
    graph = module_graph(project_roots())
    assert "notebook_exp.store.writer" in graph and "notebook_exp_viewer.app" in graph
    assert check(graph) == []
    assert cycles(graph) == []


def test_the_layer_graph_prints_with_zero_upward_edges():
    out = subprocess.run([sys.executable, "-m", "notebook_exp._layers"], capture_output=True, text=True, check=True)
    assert "base < inventory < store" in out.stdout
    assert ", 0 upward edges, 0 cycles" in out.stdout


def test_a_synthetic_graph_with_an_upward_import_fails(tmp_path):
    graph = write(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from ..mid import b  # a lazy import is an edge too\n",
        "mid/__init__.py": "",
        "mid/b.py": "from ..low import a\n",
        "main.py": "from .mid.b import x\nimport pkg.low.a\n",
    })
    assert graph["pkg.low.a"] == {"pkg.mid.b"}
    assert check(graph, LAYERS) == ["upward: pkg.low.a (low) imports pkg.mid.b (mid)"]


def test_a_downward_graph_passes_and_a_cycle_within_a_layer_is_reported(tmp_path):
    graph = write(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from . import b\n",
        "low/b.py": "import pkg.low.a\n",
        "mid/__init__.py": "",
        "mid/c.py": "from ..low.a import thing\n",
    })
    assert check(graph, LAYERS) == []
    assert cycles(graph, LAYERS) == ["cycle: pkg.low.a -> pkg.low.b -> pkg.low.a"]


def test_from_package_import_module_names_the_module_not_the_package():
    found = imports("from .. import _exit\nfrom ..store import get_store\n", "notebook_exp.tracking.run",
                    known={"notebook_exp", "notebook_exp._exit", "notebook_exp.store"})
    assert found == {"notebook_exp._exit", "notebook_exp.store"}
    assert _layers.layer_of("notebook_exp._exit") == 0
