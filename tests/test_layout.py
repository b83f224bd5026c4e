"""The package layout keeps its one-way rule: imports go pipeline -> stages -> core,
never upward, and no two modules import each other at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import metalsm

SRC = Path(metalsm.__file__).parent

#: Layers from the bottom: a module may import its own layer and the ones below.
LAYERS = [
    {"errors", "config", "datasets", "atomic", "progress", "_lazy", "__init__"},
    {"raster", "scale"},
    {"terrain", "stack", "inputs", "samples", "analysis", "blocks", "models", "evaluation",
     "mapping", "report"},
    {"pipeline"},
    {"experiments"},
    {"cli"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top.removesuffix(".py") in names)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported metalsm module, at import time?) of one file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` run only for type checkers
        if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            top_level.update(id(n) for n in node.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metalsm"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            submodules = [n for n in names if _exists(n)]
            # `from package import _module` imports the module, not a name of the package
            targets = submodules if len(submodules) == len(names) else [node.module, *submodules]
            found += [(target, id(node) in top_level) for target in targets]
    return found


def _exists(module: str) -> bool:
    path = SRC.parent / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_imports_never_go_up_a_layer():
    upward = [f"{module} imports {target}"
              for module, targets in _graph().items() if module != "metalsm"
              for target, _ in targets if target != "metalsm"
              and _layer(target) > _layer(module)]
    assert upward == []


def test_no_import_cycle_between_modules():
    graph = {m: sorted({t for t, at_import in ts if at_import and t != m})
             for m, ts in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, []):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
