"""The packages' dependency direction: search -> spaces -> objectives, nothing back; objectives
never imports optuna or mlflow; only search.tracking talks to MLflow; no product module imports
the benchmarks."""

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
