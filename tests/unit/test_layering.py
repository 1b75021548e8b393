"""The service apart from its tools: no service module imports the developer tools or an entry point.

The service is every module under ``gateway/`` except the tools (``gateway.tools``) and the entry points at the
edge (the CLI and the installed command's first step, the WSGI module gunicorn loads, the Lambda handler). Imports
are read with ``ast``, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
TOOLS = "gateway.tools"
ENTRY_POINTS = ("gateway.console", "gateway.cli", "gateway.phi.cli", "gateway.wsgi", "gateway.lambda_handler")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from gateway import tools`` counts as ``gateway.tools``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module_name(path).split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def service_modules() -> list[Path]:
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if not within(module_name(path), TOOLS) and module_name(path) not in ENTRY_POINTS
    )


def test_the_service_is_most_of_the_package() -> None:
    names = {module_name(path) for path in service_modules()}
    assert {"gateway.app", "gateway.fastpath", "gateway.auth", "gateway.config", "gateway.phi.s3event"} <= names
    assert not any(within(name, TOOLS) for name in names)


@pytest.mark.parametrize("path", service_modules(), ids=lambda path: module_name(path))
def test_no_service_module_imports_the_tools_or_an_entry_point(path: Path) -> None:
    wrong = sorted(
        name
        for name in imports(path)
        if within(name, TOOLS) or any(within(name, entry) for entry in ENTRY_POINTS)
    )
    assert wrong == [], f"{module_name(path)} imports {wrong}"


def test_the_tools_and_entry_points_exist() -> None:
    for name in (TOOLS, *ENTRY_POINTS):
        relative = Path(*name.split("."))
        assert (PACKAGE.parent / relative).with_suffix(".py").exists() or (PACKAGE.parent / relative).is_dir()
