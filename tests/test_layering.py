"""The packages' dependency direction: search -> spaces -> objectives, nothing back; objectives
never imports optuna or mlflow; only search.tracking talks to MLflow; no product module imports
the benchmarks. Inside search/, the parts import one way (core <- storage <- tracking <- study
<- {execution, review} <- commands <- bench), and no module of the product is in an import
cycle. Imports are read from the AST, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions included), as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending(package: str, forbidden: tuple[str, ...], *, skip: str | None = None) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        if skip is not None and (REPO / skip) in path.parents:
            continue
        for name in sorted(_imports(path)):
            if name in forbidden or name.startswith(tuple(f"{f}." for f in forbidden)):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("objectives", ("optuna", "mlflow", "search", "spaces")),
    ("spaces", ("mlflow", "search")),
])
def test_a_package_never_imports_the_layers_above_it(package: str,
                                                     forbidden: tuple[str, ...]) -> None:
    assert _offending(package, forbidden) == []


def test_no_product_module_imports_the_benchmarks() -> None:
    found = [line for package in ("objectives", "spaces", "search")
             for line in _offending(package, ("search.bench",), skip="search/bench")]
    assert found == []


def test_only_the_tracking_package_talks_to_mlflow() -> None:
    found = [line for line in _offending("search", ("mlflow",), skip="search/tracking")
             if not line.startswith("search/bench/")]  # a benchmark reads what it measured
    assert found == []


# search/'s parts, bottom up: a part may import its own modules and those of lower ranks only.
# execution and review share a rank: neither imports the other. A command is a module of
# search/ itself (search.run, search.report, ...).
RANKS = {"core": 0, "storage": 1, "tracking": 2, "study": 3, "execution": 4, "review": 4,
         "commands": 5, "bench": 6}
PRODUCT = ("search", "spaces", "objectives")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(path): path for package in PRODUCT
            for path in sorted((REPO / package).rglob("*.py"))}


def _part(module: str) -> str | None:
    """The part of search/ a module of it belongs to (None: not in search/)."""
    parts = module.split(".")
    if parts[0] != "search" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in RANKS and parts[1] != "commands" else "commands"


def _product_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules a file imports (`from search.study import grid`: search.study.grid)."""
    return {name for name in _imports(path) if name in modules and name != _module(path)}


def test_search_s_parts_import_downwards_only() -> None:
    modules = _modules()
    found = []
    for module, path in modules.items():
        part = _part(module)
        if part is None:
            continue
        for name in sorted(_product_imports(path, modules)):
            other = _part(name)
            if other is None or other == part:
                continue
            if RANKS[other] >= RANKS[part]:
                found.append(f"{module} ({part}) imports {name} ({other})")
    assert found == []


def test_the_parts_are_the_layout() -> None:
    """Every folder of search/ is a known part, and every module directly in search/ is a command
    with a parser and a main: the layering test above would not see a part it does not know."""
    folders = {p.name for p in (REPO / "search").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANKS) - {"commands"}
    for path in sorted((REPO / "search").glob("*.py")):
        if path.name == "__init__.py":
            continue
        defined = {node.name for node in ast.parse(path.read_text()).body
                   if isinstance(node, ast.FunctionDef)}
        assert {"build_parser", "main"} <= defined, f"{path.name} is not a command"


def test_nothing_imports_a_command_but_the_benchmarks() -> None:
    modules = _modules()
    found = [f"{module} imports {name}" for module, path in modules.items()
             if _part(module) != "bench"
             for name in sorted(_product_imports(path, modules)) if _part(name) == "commands"]
    assert found == []


def test_no_product_module_imports_the_tests() -> None:
    found = [f"{module} imports {name}" for module, path in _modules().items()
             for name in sorted(_imports(path)) if name == "tests" or name.startswith("tests.")]
    assert found == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules along it, or None (an iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_product_s_modules() -> None:
    modules = _modules()
    graph = {module: _product_imports(path, modules) for module, path in modules.items()}
    assert _cycle(graph) is None
