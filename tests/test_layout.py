"""The package's layers (DESIGN.md): no import circle, and no layer imports one above it.

Imports are read from the source (module level and inside functions alike),
so the test sees the imports that run lazily too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skcrnn"

#: Layers, top to bottom: a module may import its own layer and those below.
#: A module matches the longest prefix listed (a package name covers its
#: modules). Every module must match one, so that a new module is placed.
LAYERS = [
    ["skcrnn", "skcrnn.__main__"],                         # public names (lazy)
    ["skcrnn._cli"],                                       # the commands
    ["skcrnn.metrics", "skcrnn.model_selection"],          # around the models
    ["skcrnn._counts", "skcrnn._mf", "skcrnn._hmm", "skcrnn._rnn",
     "skcrnn._attention", "skcrnn._torch.launch"],         # the models
    ["skcrnn._torch"],                                     # the torch layer
    ["skcrnn._base"],                                      # the sklearn contract
    ["skcrnn._encoding", "skcrnn._events", "skcrnn._persistence",
     "skcrnn._migrations", "skcrnn._files", "skcrnn._sparse", "skcrnn._version",
     "skcrnn.datasets"],                                   # data, files, helpers
]

#: Models that must not know each other, nor the torch layer the others.
SIBLINGS = ["skcrnn._rnn", "skcrnn._attention", "skcrnn._counts", "skcrnn._mf",
            "skcrnn._hmm"]


def modules():
    """Dotted name -> path of every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name, path, known):
    """The package's modules that module ``name`` imports (anywhere in it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (base + ("." + node.module if node.module else "")
                      if node.level else node.module)
            submodules = [f"{target}.{alias.name}" for alias in node.names
                          if f"{target}.{alias.name}" in known]
            # "from pkg import submodule" imports the submodule; anything
            # else taken from a module is an import of that module
            found.update(submodules)
            if len(submodules) < len(node.names) and target in known:
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    found.discard(name)
    return found


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def prefix_of(name, prefixes):
    """The longest of ``prefixes`` that covers ``name`` (the package covers only itself)."""
    matches = [p for p in prefixes
               if name == p or (p != "skcrnn" and name.startswith(p + "."))]
    return max(matches, key=len) if matches else None


def layer_of(name):
    prefix = prefix_of(name, [p for layer in LAYERS for p in layer])
    for index, layer in enumerate(LAYERS):
        if prefix in layer:
            return index
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in modules() if layer_of(name) is None)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_a_layer_above_it():
    placed = {name for name in modules() if layer_of(name) is not None}
    upward = sorted((name, target) for name, targets in graph().items()
                    for target in targets & placed
                    if name in placed and layer_of(target) < layer_of(name))
    assert not upward, f"imports of a higher layer: {upward}"


def test_models_do_not_import_each_other():
    crossing = []
    for name, targets in graph().items():
        own = prefix_of(name, SIBLINGS)
        crossing += [(name, target) for target in targets
                     if own and prefix_of(target, SIBLINGS) not in (None, own)]
    assert not crossing, crossing


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert cycles(edges) == expected


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "estimator.py"
    source.write_text("from .cluster import Cluster\n"
                      "def f():\n    from ..events import Sequences\n"
                      "from .. import persistence\n")
    known = {"pkg.sub.cluster", "pkg.events", "pkg.persistence", "pkg",
             "pkg.sub"}
    assert imports_of("pkg.sub.estimator", source, known) == {
        "pkg.sub.cluster", "pkg.events", "pkg.persistence"}
