"""The map of the house (docs/architecture.md) as a test: no import circle among orthrus modules, and no
module importing one from a layer above its own.

Layers, bottom to top: models < engines < quality < results < {bench, train, profile} < report <
the composition roots (orthrus/cli.py, orthrus/run_cli.py, run_bench.py). bench and report sit
side by side on results and never import each other; train and profile import nothing above results. Every import
counts, also those inside functions and under ``if TYPE_CHECKING:`` (a deferred import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orthrus"

# layer -> the layers its modules may import (each may import itself)
BASE = {"errors", "safe_yaml"}  # the one exception type every layer raises; the one YAML reader
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "safe_yaml": {"errors"},
    "models": BASE,
    "engines": BASE | {"models"},
    "quality": BASE | {"models", "engines"},  # identity and NLL against the AR view
    "results": BASE | {"models", "engines", "quality"},
    "train": BASE | {"models", "engines", "quality", "results"},
    "bench": BASE | {"models", "engines", "quality", "results", "train"},
    "profile": BASE | {"models", "engines", "quality", "results"},  # device latency profiles, projections
    "report": BASE | {"models", "engines", "quality", "results", "profile"},
    "root": {
        "errors",
        "safe_yaml",
        "models",
        "engines",
        "quality",
        "results",
        "train",
        "profile",
        "bench",
        "report",
        "root",
    },
}
ROOT_MODULES = {"orthrus", "orthrus.__main__", "orthrus.cli", "orthrus.run_cli", "run_bench"}


def module_files() -> dict[str, Path]:
    files = {"run_bench": ROOT / "run_bench.py"}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = file
    return files


def layer_of(module: str) -> str | None:
    if module in ROOT_MODULES:
        return "root"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def imports_of(module: str, file: Path, known: set[str]) -> set[str]:
    """The orthrus modules ``file`` imports anywhere in it (``from a import b`` is a.b when that is a module)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # import a.b.c of a name inside module a.b
                name = name.rpartition(".")[0]
            if name and name != module and (name == "orthrus" or name.startswith("orthrus.")):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, file, known) for module, file in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not unplaced, f"modules outside the map of docs/architecture.md (give them a layer here): {unplaced}"


def test_no_module_imports_one_from_a_layer_above_or_beside_it():
    graph = import_graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is not None and theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{module} ({mine}) -> {target} ({theirs})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_circles_and_deferred_imports(tmp_path):
    graph = {"orthrus.a": {"orthrus.b"}, "orthrus.b": {"orthrus.c"}, "orthrus.c": {"orthrus.a"}, "orthrus.d": set()}
    assert circles(graph) == [["orthrus.a", "orthrus.b", "orthrus.c"]]
    file = tmp_path / "m.py"
    file.write_text("def f():\n    from orthrus.report import render_run\n    import orthrus.bench.runner\n")
    known = {"orthrus.report", "orthrus.bench", "orthrus.bench.runner"}
    assert imports_of("orthrus.results.m", file, known) == {"orthrus.report", "orthrus.bench.runner"}


def private_reaches(file: Path, base: Path = ROOT) -> list[str]:
    """``obj._name`` where ``obj`` is not ``self`` or ``cls``: a reach into another object's private parts."""
    found = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{file.relative_to(base)}:{node.lineno}: .{node.attr}")
    return found


def test_the_harness_never_reaches_into_another_objects_private_parts():
    """Executors take the schedule's units, a measurer and the job's writer; none of them (nor any
    other module of the harness) calls a private method or reads a private attribute of another
    object, so each can change on its own."""
    wrong = [hit for file in sorted((PACKAGE / "bench").rglob("*.py")) for hit in private_reaches(file)]
    assert not wrong, "private parts of another object used:\n" + "\n".join(wrong)


def test_the_private_reach_checker_sees_a_reach(tmp_path):
    file = tmp_path / "probe.py"
    file.write_text("def f(runner):\n    self.x._ok = 1\n    self._ok()\n    runner._run_cell(1)\n")
    assert private_reaches(file, tmp_path) == ["probe.py:2: ._ok", "probe.py:4: ._run_cell"]
