"""The import graph, computed from the source with ``ast``: layers point down, no cycles.

Every import counts, including those inside functions (kept there so ``ablate --help``
stays fast): a lazy import hides a cycle from Python, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("distill", "evaluation", "results", "orchestrator")
# Each package may import the ones listed (and itself), nothing above it.
ALLOWED = {
    "distill": set(),
    "evaluation": {"distill"},
    "results": {"distill"},
    "orchestrator": {"distill", "evaluation", "results"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (external imports dropped)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for imported in _imported_names(module, path):
            name = imported
            while name and name not in modules:  # `from a.b import c`: c may be a name
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def modules_on_cycles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that can reach themselves through their imports."""
    return sorted(m for m in graph if m in _reachable(graph, m))


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    # The helpers themselves, on a hand-made graph and a hand-made module.
    assert modules_on_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
    assert modules_on_cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from distill import loop\n    import evaluation.fid\n")
    assert {"distill", "distill.loop", "evaluation.fid"} <= _imported_names("orchestrator.m",
                                                                            source)


def test_no_module_cycles():
    assert modules_on_cycles(import_graph()) == []


def test_packages_import_only_the_layers_below_them():
    upward = sorted(f"{module} -> {target}"
                    for module, targets in import_graph().items() for target in targets
                    if target.split(".")[0] != module.split(".")[0]
                    and target.split(".")[0] not in ALLOWED[module.split(".")[0]])
    assert upward == []


def test_only_the_orchestrator_imports_ray():
    offenders = sorted(module for module, path in _modules().items()
                       if not module.startswith("orchestrator")
                       and any(name == "ray" or name.startswith("ray.")
                               for name in _imported_names(module, path)))
    assert offenders == []
