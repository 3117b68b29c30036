"""The import graph: layers that only import downwards, no cycles, and a core that never imports a scenario.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import cannot hide
an arrow. The layers, bottom up, are in ``LAYERS``; docs/design.md draws them.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> layer; a package may import only packages of lower layers (and itself)
LAYERS = {
    "store": 0,
    "pipeline.engine": 1, "pipeline.objectives": 1,
    "pipeline.data": 2, "pipeline.models": 2,
    "pipeline.scenario": 3,
    "pipeline.config": 4,
    "pipeline.student": 5,
    "pipeline.infer_teacher": 6, "pipeline.train_student": 6, "pipeline.pretrain": 6,
    "pipeline.scenarios.few_shot": 7, "pipeline.scenarios.sel_cl": 7,
    "pipeline.scenarios": 8,
    "pipeline.experiments": 9,
    "cli": 10,
}
CORE = [p for p, layer in LAYERS.items() if layer <= 6]


def _modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for top in ("pipeline", "store"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    assert not _imports_any(found.pop("pipeline")), "pipeline/__init__.py imports nothing (it has no layer)"
    return found


def _imports_any(path: Path) -> bool:
    return any(isinstance(n, (ast.Import, ast.ImportFrom)) and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
               for n in ast.walk(ast.parse(path.read_text())))


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere in it (``from a import b`` counts ``a.b`` when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES}


def _package(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if not any(m == p or m.startswith(p + ".") for p in LAYERS)] == []


def test_imports_only_go_down_the_layers() -> None:
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if _package(m) != _package(t) and LAYERS[_package(t)] >= LAYERS[_package(m)])
    assert wrong == []


def test_the_core_imports_no_scenario() -> None:
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _package(m) in CORE
                   for t in targets if t.startswith("pipeline.scenarios"))
    assert wrong == []


def test_the_store_needs_neither_the_pipeline_nor_torch() -> None:
    for module, path in MODULES.items():
        if module.startswith("store"):
            text = path.read_text()
            assert "import torch" not in text and "from torch" not in text, module
            assert not any(t.startswith(("pipeline", "cli")) for t in GRAPH[module]), module


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    # a package's __init__ that re-exports its own modules is not a cycle of the design
    real = [c for c in cycles if not all(_package(m) == _package(c[0]) and
                                         any(MODULES[m].name == "__init__.py" for m in c) for m in c)]
    assert real == []


def test_layers_match_the_packages_on_disk() -> None:
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "pipeline").rglob("__init__.py")}
    top = {p for p in packages if p.count(".") == 1 or p.startswith("pipeline.scenarios.")}
    assert top <= set(LAYERS), sorted(top - set(LAYERS))
