"""The layers import only downward: release format ← serving runtime ← services; the trainer never imports a service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from funnel.paths import PROJECT_ROOT

SERVICES = ("gateway", "retrieval_service", "ranking_service")
# package (a directory under the project root) → top-level modules or funnel subpackages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "funnel/release": ("funnel.serving", "funnel.cli", "funnel.client", *SERVICES, "trainer", "bench"),
    "funnel/data": ("funnel.release", "funnel.serving", "funnel.cli", *SERVICES, "trainer", "bench"),
    "funnel/serving": ("funnel.cli", *SERVICES, "trainer", "bench"),
    "funnel/cli": (*SERVICES, "trainer", "bench"),
    "trainer": (*SERVICES, "funnel.serving", "funnel.cli", "bench"),
    "gateway": ("retrieval_service", "ranking_service", "trainer", "bench", "funnel.cli"),
    "retrieval_service": ("gateway", "ranking_service", "trainer", "bench", "funnel.cli"),
    "ranking_service": ("gateway", "retrieval_service", "trainer", "bench", "funnel.cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_the_layers_beneath_it(package: str) -> None:
    files = sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert files, f"expected Python files under {package}/"
    violations = [
        f"{path.relative_to(PROJECT_ROOT)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if any(module == banned or module.startswith(banned + ".") for banned in FORBIDDEN[package])
    ]
    assert violations == []
