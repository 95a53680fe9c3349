"""The package's layering, checked from its source: imports go downward only, there is no import
cycle, and nothing outside rnnkit/backends/ knows a backend by name or by its private names.

Layers, lowest first (a module may import its own rank or lower):
    0 cells, validation, data, _version, noise   1 sequence   2 backends   3 ops, stream   4 layers, cell_modules
    5 registry, convert, export, diagnostics   6 train, bench   7 experiments, view, export_cli   8 cli, __main__, the package
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

import rnnkit
from rnnkit import backends

ROOT = Path(rnnkit.__file__).parent
RANKS = [("rnnkit.cells", 0), ("rnnkit.validation", 0), ("rnnkit.data", 0), ("rnnkit._version", 0), ("rnnkit.noise", 0),
         ("rnnkit.sequence", 1), ("rnnkit.backends", 2), ("rnnkit.ops", 3), ("rnnkit.stream", 3),
         ("rnnkit.layers", 4), ("rnnkit.cell_modules", 4), ("rnnkit.registry", 5), ("rnnkit.convert", 5), ("rnnkit.export", 5),
         ("rnnkit.diagnostics", 5),
         ("rnnkit.train", 6), ("rnnkit.bench", 6), ("rnnkit.bench_cuda", 6), ("rnnkit.bench_command", 6), ("rnnkit.experiments", 7), ("rnnkit.view", 7), ("rnnkit.export_cli", 7), ("rnnkit.cli", 8),
         ("rnnkit.__main__", 8)]


def _module_name(path: Path) -> str:
    parts = ("rnnkit",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def rank(module: str) -> int:
    best = max((prefix for prefix, _ in RANKS if module == prefix or module.startswith(prefix + ".")),
               key=len, default=None)
    return dict(RANKS)[best] if best else 8                   # the package itself is the top


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> Set[str]:
    """The rnnkit modules a module imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for alias in node.names:                           # `from . import x` may name a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != module}


GRAPH: Dict[str, Set[str]] = {m: imports(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward(module):
    upward = sorted(m for m in GRAPH[module] if rank(m) > rank(module))
    assert not upward, f"{module} (rank {rank(module)}) imports from above: {upward}"


def test_no_import_cycle():
    state: Dict[str, int] = {}                                 # 1 on the stack, 2 done

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if n.startswith(m + ".") or m.startswith(n + "."):  # a package and its own modules
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def _names_backend(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Name, ast.Attribute)) and "backend" in getattr(n, "id", getattr(n, "attr", ""))
               for n in ast.walk(node))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if rank(m) != 2))
def test_no_backend_known_by_name_outside_backends(module):
    """No comparison of a backend to one of the backend names, no private name of a backend."""
    names = set(backends.BACKENDS) - {"auto"}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Compare) and _names_backend(node):
            consts = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
            assert not consts & names, f"{module}:{node.lineno} branches on a backend's name"
        if isinstance(node, ast.ImportFrom) and _absolute(module, node).startswith("rnnkit.backends"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{module}:{node.lineno} imports private names of the backends: {private}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain = ast.unparse(node)
            assert "backends." not in chain, f"{module}:{node.lineno} reads a backend's private name: {chain}"
