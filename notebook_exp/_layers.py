"""The package's layers, and the check that its imports point down only.

``python -m notebook_exp._layers`` prints the layer graph (which layer imports
which, and how often) and every edge that breaks the rule; it exits 1 if any
does. ``tests/test_layers.py`` runs the same check on every test run. See
``docs/architecture.md`` ("Layers") for what each layer owns.

Every import counts, including those inside functions (lazy imports are still
dependencies). A module may import modules of its own layer or of any layer
below; an import of a higher layer is an *upward* edge. Modules of one layer
must not import each other in a cycle either (``cycles``).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

__all__ = ["LAYERS", "check", "cycles", "imports", "layer_of", "main", "module_graph"]

#: Bottom first. Each entry: the layer's name and the module prefixes it holds
#: (the longest matching prefix wins).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("notebook_exp._exit", "notebook_exp._threads", "notebook_exp._arrow", "notebook_exp._style",
              "notebook_exp.exceptions", "notebook_exp.config", "notebook_exp.models", "notebook_exp._layers",
              "notebook_exp._plugins")),
    ("inventory", ("notebook_exp.inventory",)),
    ("store", ("notebook_exp.store",)),
    ("processors", ("notebook_exp.processors",)),
    ("sinks", ("notebook_exp.sinks",)),
    ("collectors", ("notebook_exp.collectors",)),
    ("tracking", ("notebook_exp.tracking",)),
    ("scheduler", ("notebook_exp.scheduler",)),
    ("integrations", ("notebook_exp.integrations",)),
    ("viewer", ("notebook_exp_viewer",)),
    # the front door, magics, widgets, cli, the testing fakes: everything else of the package
    ("notebook", ("notebook_exp",)),
]


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index of ``module``'s layer (None: not this project's module)."""
    best, best_len = None, -1
    for index, (_name, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def imports(source: str, module: str, is_package: bool = False, known: set[str] | None = None) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, at any depth, with
    relative imports resolved. ``from x import y`` counts ``x.y`` when that is a
    module of ``known``, else ``x`` (with ``known=None``, both)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if known is None:
                    found.update((target, candidate))
                else:
                    found.add(candidate if candidate in known else target)
    return found


def module_graph(roots: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every ``.py`` file under each root
    (``{"notebook_exp": Path(...), "notebook_exp_viewer": Path(...)}``)."""
    graph: dict[str, set[str]] = {}
    known: set[str] = set()
    sources: dict[str, tuple[str, bool]] = {}
    for name, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [name, *rel.parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            module = ".".join(parts)
            known.add(module)
            sources[module] = (path.read_text(encoding="utf-8"), is_package)
    for module, (source, is_package) in sources.items():
        graph[module] = {target for target in imports(source, module, is_package, known) if target in known}
        graph[module].discard(module)
    return graph


def check(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """The edges that point up a layer, as readable lines."""
    problems = []
    for module, targets in sorted(graph.items()):
        low = layer_of(module, layers)
        for target in sorted(targets):
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                problems.append(f"upward: {module} ({layers[low][0]}) imports {target} ({layers[high][0]})")
    return problems


def cycles(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Import cycles between modules of the same layer, one line each (imports of a
    package's own ``__init__`` by its modules are not counted)."""
    found, state = [], {}

    def inside(module: str, target: str) -> bool:
        return layer_of(module, layers) == layer_of(target, layers) and not module.startswith(target + ".")

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if not inside(module, target):
                continue
            if state.get(target) == 1:
                loop = path[path.index(target):] + [target] if target in path else [module, target]
                found.append("cycle: " + " -> ".join(loop))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def layer_edges(graph: dict[str, set[str]], layers=LAYERS) -> Counter:
    """How many module imports go from each layer to each other layer."""
    counts: Counter = Counter()
    for module, targets in graph.items():
        low = layer_of(module, layers)
        for target in targets:
            high = layer_of(target, layers)
            if low is not None and high is not None and low != high:
                counts[(layers[low][0], layers[high][0])] += 1
    return counts


def project_roots() -> dict[str, Path]:
    """This checkout's (or installation's) two packages."""
    here = Path(__file__).resolve().parent
    roots = {"notebook_exp": here}
    import importlib.util

    spec = importlib.util.find_spec("notebook_exp_viewer")
    if spec is not None and spec.origin:
        roots["notebook_exp_viewer"] = Path(spec.origin).parent
    return roots


def main(argv: list[str] | None = None) -> int:
    graph = module_graph(project_roots())
    order = [name for name, _prefixes in LAYERS]
    print("layers, bottom first: " + " < ".join(order))
    counts = layer_edges(graph)
    for low in order:
        targets = [f"{high} ({counts[(low, high)]})" for high in order if counts[(low, high)]]
        print(f"  {low:<11} imports {', '.join(targets) if targets else 'nothing of the package'}")
    problems = check(graph) + cycles(graph)
    upward = sum(1 for p in problems if p.startswith("upward"))
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} imports, {upward} upward edges, "
          f"{len(problems) - upward} cycles")
    for problem in problems:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
