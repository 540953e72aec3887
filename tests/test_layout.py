"""The package's layout: imports run one way (cli -> commands -> report/plan ->
prune/export/measure -> graph -> io -> runtime), with no cycles; the pruning loop never loads
ONNX, and the CSR runtime never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compressor"
# A module may import modules of its own layer (without cycles) or of lower layers.
LAYERS = {"cli": 6, "api": 6, "commands": 5, "report": 4, "plan": 4, "prune": 3, "export": 3,
          "measure": 3, "graph": 2, "io": 1, "runtime": 0, "errors": 0}
FORBIDDEN = {  # sub-package -> what it must never import, compressor's or third-party
    "prune": {"export", "measure", "runtime", "report", "commands", "cli", "onnx",
              "onnxruntime", "scipy", "click"},
    "runtime": {"torch", "click", "io", "graph", "prune", "export", "measure", "report",
                "commands", "cli", "errors"},
    "graph": {"onnx", "onnxruntime", "click"},
    "api": {"click", "cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from . import formats`
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules or not m.startswith("compressor")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "compressor" and len(parts) > 1 else None


def test_there_is_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph or target == module or state.get(target) == 2:
                continue
            assert state.get(target) != 1, "import cycle: " + " -> ".join(path + [target])
            visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_run_one_way_between_layers():
    wrong = []
    for module, targets in _graph().items():
        here = _part(module)
        for target in targets:
            there = _part(target)
            if here in LAYERS and there in LAYERS and LAYERS[there] > LAYERS[here]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_sub_packages_never_import_what_they_must_not(part):
    wrong = []
    for module, targets in _graph().items():
        if _part(module) != part:
            continue
        for target in targets:
            name = _part(target) if target.startswith("compressor.") else target.split(".")[0]
            if name in FORBIDDEN[part]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_only_the_cli_imports_click():
    users = {m for m, targets in _graph().items() if "click" in targets}
    assert users and all(_part(m) == "cli" for m in users), users


def _loaded_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=PACKAGE.parent)
    return set(done.stdout.split())


def test_the_pruning_loop_loads_no_onnx_at_run_time():
    loaded = _loaded_after("import compressor.prune.cycles, compressor.prune.select, "
                           "compressor.prune.compensate, compressor.prune.sparsify, "
                           "compressor.graph.trace, compressor.graph.count")
    assert "compressor.prune.cycles" in loaded
    assert not {"onnx", "onnxruntime", "onnxscript", "scipy"} & loaded


def test_the_runtime_runs_without_torch():
    loaded = _loaded_after("from compressor.runtime import SparseModel")
    assert "compressor.runtime.model" in loaded and "onnxruntime" in loaded
    assert "torch" not in loaded
