"""The package's import graph keeps the layout of ARCHITECTURE.md (read with ``ast``, not run).

Every ``import`` and ``from ... import`` in ``bids_spheres/`` counts, wherever it is: at the
top of a module, inside a function, or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bids_spheres"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the bids_spheres module imported (a submodule when one is named)
    names: tuple[str, ...]  # the names taken from it ("from X import a, b"), () for "import X"
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _imports() -> Iterator[Import]:
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "bids_spheres":
                        yield Import(module, alias.name, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importing module's package
                    package = module if _is_package(module) else module.rpartition(".")[0]
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                if source.split(".")[0] != "bids_spheres":
                    continue
                plain = [a.name for a in node.names if f"{source}.{a.name}" not in MODULES]
                if plain:
                    yield Import(module, source, tuple(plain), node.lineno)
                for alias in node.names:
                    if f"{source}.{alias.name}" in MODULES:
                        yield Import(module, f"{source}.{alias.name}", (), node.lineno)


IMPORTS = list(_imports())


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _cycles(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    """A guard for the tests below: the walk finds the modules and their imports."""
    assert {"bids_spheres.app.run", "bids_spheres.masker.estimator"} <= set(MODULES)
    targets = {(i.module, i.target) for i in IMPORTS}
    assert ("bids_spheres.app.workflow", "bids_spheres.app.execution") in targets
    assert ("bids_spheres.app.run", "bids_spheres.masker.geometry") in targets
    # function-local imports count
    assert ("bids_spheres.app.cli", "bids_spheres.app.workflow") in targets


def test_no_import_cycle_among_app_modules() -> None:
    app = {m for m in MODULES if _in(m, "bids_spheres.app")}
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.module in app and i.target in app and i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    assert _cycles(app, edges) == []


def test_masker_never_imports_the_app() -> None:
    wrong = [
        f"{i.module} line {i.line}: {i.target}"
        for i in IMPORTS
        if _in(i.module, "bids_spheres.masker") and _in(i.target, "bids_spheres.app")
    ]
    assert wrong == []


def test_app_uses_only_the_masker_public_api() -> None:
    wrong = []
    for i in IMPORTS:
        if not (_in(i.module, "bids_spheres.app") and _in(i.target, "bids_spheres.masker")):
            continue
        private_module = any(_private(part) for part in i.target.split("."))
        private_names = [n for n in i.names if _private(n)]
        if private_module or private_names:
            wrong.append(f"{i.module} line {i.line}: {i.target} {private_names or ''}")
    assert wrong == []


def test_app_reads_no_private_attribute_of_a_masker_module() -> None:
    """``reading._describe(...)`` is as private as ``from ...reading import _describe``."""
    wrong = []
    for module, path in MODULES.items():
        if not _in(module, "bids_spheres.app"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _in(node.module or "", "bids_spheres.masker"):
                aliases |= {
                    a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES
                }
            elif isinstance(node, ast.Import):
                aliases |= {
                    a.asname for a in node.names if a.asname and _in(a.name, "bids_spheres.masker")
                }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                wrong.append(f"{module} line {node.lineno}: {node.value.id}.{node.attr}")
    assert wrong == []


def test_config_does_not_import_discovery() -> None:
    assert not [
        i
        for i in IMPORTS
        if i.module == "bids_spheres.app.config" and i.target == "bids_spheres.app.discovery"
    ]


def test_demo_does_not_import_cli() -> None:
    """demo.py builds the example dataset; cli.demo_main runs the app on it."""
    assert not [
        i
        for i in IMPORTS
        if i.module == "bids_spheres.app.demo"
        and i.target in ("bids_spheres.app.cli", "bids_spheres.app.workflow")
    ]


def test_orchestration_is_imported_only_from_above() -> None:
    """cli -> workflow -> execution -> run: no module imports the one that calls it."""
    callers = {
        "bids_spheres.app.cli": {"bids_spheres.__main__"},
        "bids_spheres.app.workflow": {"bids_spheres.app.cli"},
        "bids_spheres.app.execution": {"bids_spheres.app.workflow"},
        # preflight checks, before any run, what the run's own steps would refuse
        "bids_spheres.app.run": {
            "bids_spheres.app.workflow",
            "bids_spheres.app.execution",
            "bids_spheres.app.preflight",
        },
        "bids_spheres.app.preflight": {"bids_spheres.app.workflow"},
    }
    wrong = [
        f"{i.module} line {i.line} imports {i.target}"
        for i in IMPORTS
        if i.target in callers and i.module not in callers[i.target]
    ]
    assert wrong == []


def test_report_does_not_import_the_group_level() -> None:
    assert not [
        i
        for i in IMPORTS
        if _in(i.module, "bids_spheres.app.report") and i.target == "bids_spheres.app.group"
    ]
