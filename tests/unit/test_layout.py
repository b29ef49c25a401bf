"""The package layout docs/layout.md describes: imports point down, no cycles, no stray rooms.

Every import of a pykvm module counts, also the lazy ones inside functions: a cycle through
a function-level import is still a cycle a reader has to untangle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pykvm"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The pykvm modules `path` imports when it runs (an imported name that is a module
    counts as one); imports for type annotations only do not count."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pykvm"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pykvm"))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# (importer prefix, forbidden prefix, why)
RULES = [
    ("pykvm.vm", "pykvm.container", "the two halves never import each other"),
    ("pykvm.container", "pykvm.vm", "the two halves never import each other"),
    ("pykvm.vm", "pykvm.commands", "commands sit on top"),
    ("pykvm.container", "pykvm.commands", "commands sit on top"),
    ("pykvm.comparison", "pykvm.commands", "commands sit on top"),
    ("pykvm.vm", "pykvm.comparison", "compare sits above both halves"),
    ("pykvm.container", "pykvm.comparison", "compare sits above both halves"),
    ("pykvm.container.runtime", "pykvm.container.image", "the runtime knows no images"),
    ("pykvm.vm.kvm", "pykvm.vm.devices", "the KVM layer knows no devices"),
    ("pykvm.vm.kvm", "pykvm.vm.boot", "the KVM layer knows no loaders"),
    ("pykvm.vm.kvm", "pykvm.vm.machine", "the KVM layer knows no machine"),
    ("pykvm.vm.memory", "pykvm.vm.machine", "memory knows no machine"),
    ("pykvm.vm.boot", "pykvm.vm.machine", "loaders only load"),
    ("pykvm.vm.arch", "pykvm.vm.machine", "vCPU state knows no machine"),
    ("pykvm.vm.arch", "pykvm.vm.boot", "arch and boot both read layout.py, not each other"),
    ("pykvm.vm.devices", "pykvm.vm.machine", "devices see offsets, not the machine"),
    ("pykvm.vm.layout", "pykvm", "layout.py is the bottom: addresses only"),
]


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("importer, forbidden, why", RULES, ids=[f"{a}-/->{b}" for a, b, _ in RULES])
def test_imports_point_down(importer, forbidden, why):
    graph = import_graph()
    wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() if under(m, importer)
                   for t in targets if under(t, forbidden) and not under(t, importer)
                   and t != "pykvm.errors")
    assert wrong == [], f"{why}: {wrong}"


# The container runtime's process tree, parent first: launcher forks monitor forks init forks
# command; process.py is the plumbing they share.
PROCESS_TREE = ["launcher", "monitor", "init", "command", "process"]


def test_runtime_imports_follow_the_forks():
    graph = import_graph()
    modules = [f"pykvm.container.runtime.{name}" for name in PROCESS_TREE]
    wrong = sorted(f"{child} imports {parent}" for i, child in enumerate(modules)
                   for parent in modules[:i] if parent in graph[child])
    assert wrong == [], f"a process's module never imports the module of the process that forked it: {wrong}"


def test_the_map_in_docs_names_every_package():
    text = (ROOT / "docs" / "layout.md").read_text()
    tree = text.split("```")[1]
    packages = sorted({module_name(p.parent / "__init__.py")
                       for p in PACKAGE.rglob("__init__.py")} - {"pykvm"})
    missing = [p for p in packages
               if not re.search(rf"\b{re.escape(p.rpartition('.')[2])}/", tree)]
    assert missing == [], f"docs/layout.md does not show {missing}"
    stale = [name for name in set(re.findall(r"\b(\w+\.py)\b", tree)) if not list(PACKAGE.rglob(name))]
    assert stale == [], f"docs/layout.md names files that do not exist: {stale}"


def test_every_test_file_has_a_name_of_its_own():
    """The test folders are not packages, so pytest imports each test file by its bare name:
    two files called the same in two folders stop the whole run at collection."""
    by_name: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        by_name.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
