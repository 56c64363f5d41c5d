"""Dependencies among the package's modules point one way: no import cycles, no private imports.

The graph is read from the source (every ``import``, module-level or inside a function), so a
cycle hidden behind a function-local import counts too. ``mlff_jax.kernels`` is the top-level
``kernels/`` folder (see ``mlff_jax/kernels/__init__.py``).
"""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWED_CYCLES: list[set[str]] = []  # none: every dependency points one way


def _module_files() -> dict[str, pathlib.Path]:
    files = {}
    for base, package in ((ROOT / "mlff_jax", "mlff_jax"), (ROOT / "kernels", "mlff_jax.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if package == "mlff_jax" and parts[0] == "kernels":
                continue  # the checkout shim; its modules are those of kernels/
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports}. ``from a import b`` counts as importing the
    module ``a.b`` when that is a module, else the package ``a`` (whose ``__init__`` defines b)."""
    files = _module_files()
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node)
                names = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            else:
                continue
            targets.update(n for n in names if n in files and n != module)
        graph[module] = targets
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_graph_reader_sees_function_local_imports():
    graph = import_graph()
    assert "mlff_jax.kernels.message_passing.pallas_common" in graph["mlff_jax.kernels.message_passing.pallas"]  # relative
    assert "mlff_jax.kernels.message_passing.model" in graph["mlff_jax.implementation"]  # inside a function
    assert "mlff_jax.model" in graph["mlff_jax"]
    assert "mlff_jax.calculator" in graph["mlff_jax"]  # imported inside __getattr__


def test_package_modules_import_each_other_without_cycles():
    cycles = [c for c in _cycles(import_graph()) if c not in ALLOWED_CYCLES]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_a_private_name_of_another_module():
    files = _module_files()
    offenders = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mlff_jax"):
                offenders += [f"{module}: from {node.module} import {a.name}" for a in node.names if _private(a.name) and f"{node.module}.{a.name}" not in files]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                offenders += [f"{module}: from {'.' * node.level}{node.module or ''} import {a.name}" for a in node.names
                              if _private(a.name) and f"{_resolve(module, path.name == '__init__.py', node)}.{a.name}" not in files]
    assert not offenders, offenders


# Left out: triton (GPU-only extra), train (heavy optional dependencies, tens of seconds), __main__ (runs a CLI).
@pytest.mark.parametrize("module", sorted(m for m in _module_files() if "triton" not in m and not m.startswith("mlff_jax.train") and not m.endswith("__main__")))
def test_every_module_imports(module):
    importlib.import_module(module)
