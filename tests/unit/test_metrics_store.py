"""shared/telemetry/metrics.py chooses prometheus-client's value store at run time by
setting `values.ValueClass` (the library only chooses it at import, from the
environment). This checks that against the pinned version: the names it sets exist,
and the behaviour it relies on holds (each in a fresh process: the store is chosen once
per process)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from prometheus_client import values

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_installed_prometheus_client_is_the_pinned_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [d for d in project["dependencies"] if d.startswith("prometheus-client")]
    assert pin == f"prometheus-client=={importlib.metadata.version('prometheus-client')}"


def test_the_library_names_the_patch_sets_are_there() -> None:
    assert callable(values.get_value_class)
    assert values.MutexValue._multiprocess is False
    assert hasattr(values, "ValueClass")


def test_a_multiprocess_directory_chosen_after_import_sums_forked_processes(
    tmp_path: Path,
) -> None:
    out = run(
        f"""
        import os
        from shared.telemetry import metrics as m
        m.use_multiprocess_directory({str(tmp_path)!r})
        m.metrics().events_applied.labels("t").inc()
        pid = os.fork()
        if pid == 0:
            m.metrics().events_applied.labels("t").inc(2)
            os._exit(0)
        os.waitpid(pid, 0)
        m.forget_process(pid)
        print(m.exposition()[0].decode())
        """
    )
    assert re.search(r'^signup_events_applied_total\{topic="t"\} 3\.0$', out, re.M), out
    assert any(name.startswith("counter_") for name in os.listdir(tmp_path))


def test_process_memory_ignores_a_directory_in_the_environment(tmp_path: Path) -> None:
    out = run(
        """
        from shared.telemetry import metrics as m
        m.use_process_memory()
        m.metrics().events_applied.labels("t").inc()
        print(m.multiprocess_enabled())
        print(m.exposition()[0].decode())
        """,
        {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    assert out.startswith("False\n")
    assert re.search(r'^signup_events_applied_total\{topic="t"\} 1\.0$', out, re.M), out
    assert os.listdir(tmp_path) == []
