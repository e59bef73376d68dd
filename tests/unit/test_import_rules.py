"""The import rules of the tree, read from every module's imports (ast, nothing imported): the pure core reaches
no I/O library and no runtime, a runtime never imports another runtime, and no two modules import each other
in a circle (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agents", "geoiot", "replay", "web", "ingest")

CORE = "agents.core"
IO_LIBRARIES = ("kafka", "aiokafka", "faust", "mode", "elasticsearch", "elastic_transport", "pyspark", "aiohttp")
# Each runtime, by the module prefixes it owns (agents.app is the worker's Faust entry point).
RUNTIMES = {
    "worker": ("agents.worker", "agents.app"),
    "spark": ("agents.spark",),
    "replay": ("replay",),
    "web": ("web",),
    "ingest": ("ingest",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imported(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, as absolute names (``from a import b`` gives ``a.b`` when that is a module,
    else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & MODULES.keys()
            out.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in ``source`` itself
                out.add(source)
    return out


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def internal(target: str) -> str | None:
    """The project module an import names (a package's name stands for its __init__), None outside the project."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def runtime_of(name: str) -> str | None:
    return next((r for r, prefixes in RUNTIMES.items() if within(name, prefixes)), None)


def reach(start: str) -> dict[str, list[str]]:
    """Every import reachable from ``start`` through project modules, each with one path that leads to it."""
    paths: dict[str, list[str]] = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in sorted(GRAPH.get(current, ())):
            step = internal(target) or target
            if step not in paths:
                paths[step] = paths[current] + [step]
                if step in GRAPH:
                    todo.append(step)
    return paths


def test_the_rules_see_the_tree() -> None:
    """The parser finds the modules and the imports the rules are about (so the rules below cannot pass empty)."""
    assert {"agents.core.pipeline", "agents.worker.stream", "agents.spark.job", "agents.store.sink"} <= MODULES.keys()
    assert "aiokafka" in GRAPH["agents.worker.stream"]
    assert "agents.core.pipeline" in GRAPH["agents.worker.stream"]
    assert "agents.core.codec" in GRAPH["agents.core.pipeline"]  # from agents.core import codec
    assert "agents.store.sink" in reach("agents.spark.job")  # an import inside a function counts


@pytest.mark.parametrize("name", sorted(n for n in MODULES if within(n, (CORE,))))
def test_the_core_reaches_no_io_library_and_no_runtime(name: str) -> None:
    for target, path in reach(name).items():
        top = target.split(".")[0]
        assert top not in IO_LIBRARIES, f"{' -> '.join(path)}: the core reaches {top}"
        assert runtime_of(target) is None, f"{' -> '.join(path)}: the core reaches the {runtime_of(target)} runtime"
        assert not within(target, ("agents.store", "agents.webhook")), f"{' -> '.join(path)}: the core does I/O"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if runtime_of(n)))
def test_a_runtime_imports_no_other_runtime(name: str) -> None:
    own = runtime_of(name)
    for target in GRAPH[name]:
        other = runtime_of(internal(target) or "")
        assert other in (None, own), f"{name} (the {own} runtime) imports {target} (the {other} runtime)"


def cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, each as the modules around it."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
    return found


def test_no_import_cycle() -> None:
    edges = {name: sorted({m for t in targets if (m := internal(t)) and m != name}) for name, targets in GRAPH.items()}
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_rules_would_see_a_cycle_and_a_runtime_import(tmp_path: Path) -> None:
    """A relative import into another runtime and an import inside a function are read; a circle is found."""
    module = tmp_path / "x.py"
    module.write_text("import aiokafka as k\nfrom ..worker import stream\ndef f():\n    import pyspark\n")
    names = imported("agents.core.x", module)
    assert {"aiokafka", "pyspark", "agents.worker.stream"} <= names
    assert runtime_of("agents.worker.stream") == "worker"
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]
    assert cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_test_modules_have_unique_names_across_tiers() -> None:
    """pytest imports test modules by basename (rootdir-relative packages are not used here), so a name used in two
    tiers stops the whole run's collection; the tiers also run apart (make unit), where it would go unnoticed."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes


def test_every_shipped_package_is_listed_in_pyproject() -> None:
    """setuptools installs only the packages pyproject.toml names: a new subpackage left out imports in the
    checkout (editable install) and fails in the wheel and the image."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {name.split(".")[0] for name in listed}
    inits = [init for root in roots for init in (ROOT / root).rglob("__init__.py") if "bundled" not in init.parts]
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in inits}
    assert found <= listed, sorted(found - listed)
