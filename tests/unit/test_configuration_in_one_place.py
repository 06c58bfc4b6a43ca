"""Every environment variable is read in shared/config.py; every other module receives
values. Read from the source (its syntax tree), so a new `os.environ.get` anywhere fails
here before it is reviewed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "shared",
    "auth_service",
    "member_service",
    "batch_service",
    "operations",
    "devtools",
    "bench",
)
CONFIG = ROOT / "shared" / "config.py"

# Setting a variable for a library that is configured only through the environment is
# not a read: prometheus-client's multiprocess directory (see shared/telemetry/metrics.py).
ALLOWED_WRITES = {("shared/telemetry/metrics.py", "PROMETHEUS_MULTIPROC_DIR")}


def environment_reads(path: Path, relative: str | None = None) -> list[str]:
    """`file:line: code` for each place `path` touches os.environ or os.getenv, other
    than an allowed assignment."""
    tree = ast.parse(path.read_text(), str(path))
    relative = relative or path.relative_to(ROOT).as_posix()
    allowed_targets: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and _is_environ(target.value)
                    and (relative, _constant(target.slice)) in ALLOWED_WRITES
                ):
                    allowed_targets.add(id(target.value))
    found = []
    for node in ast.walk(tree):
        touches = (
            _is_environ(node)
            or (_on_os(node) and node.attr in ("getenv", "getenvb"))  # type: ignore[attr-defined]
            or (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and any(alias.name in ("environ", "environb", "getenv") for alias in node.names)
            )
        )
        if touches and id(node) not in allowed_targets:
            found.append(f"{relative}:{getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    return found


def _on_os(node: ast.AST) -> bool:
    """`os.<something>` (a WSGI `request.environ` is not the process's)."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _is_environ(node: ast.AST) -> bool:
    return _on_os(node) and node.attr in ("environ", "environb")  # type: ignore[attr-defined]


def _constant(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):  # a module constant such as MULTIPROC_VARIABLE
        return {"MULTIPROC_VARIABLE": "PROMETHEUS_MULTIPROC_DIR"}.get(node.id)
    return None


def test_no_module_but_shared_config_reads_the_environment() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == CONFIG:
                continue
            found += environment_reads(path)
    assert found == [], "read the environment in shared/config.py instead:\n" + "\n".join(found)


def test_the_check_sees_each_way_of_reading(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom os import environ\nrequest.environ.get('wsgi.input')\n"
        "a = os.environ.get('X')\nb = os.getenv('Y')\nc = dict(os.environ)\n"
        "os.environ['OTHER'] = 'x'\nos.environ['PROMETHEUS_MULTIPROC_DIR'] = 'd'\n"
    )
    # The import, three reads and the write of OTHER; the allowed write is not one.
    assert len(environment_reads(sample, "shared/telemetry/metrics.py")) == 5


def test_config_reads_it() -> None:
    assert environment_reads(CONFIG)


def test_kafka_bootstrap_servers_is_parsed_in_one_function() -> None:
    holders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and any(
                    isinstance(inner, ast.Constant) and inner.value == "KAFKA_BOOTSTRAP_SERVERS"
                    for inner in ast.walk(node)
                ):
                    holders.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert "shared/config.py:bootstrap_servers" in holders
    readers = [h for h in holders if h.startswith("shared/config.py")]
    assert readers == ["shared/config.py:bootstrap_servers"], holders
