"""docker-compose.yml and the Dockerfile run exactly the contract's processes, with
variables the code reads, and can be scaled. No Docker engine runs here: the file is
checked with Debian's docker-compose (`config`) and by reading it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deployment
APP_SERVICES = {
    "auth-migrate": ["python", "-m", "auth_service", "migrate"],
    "member-migrate": ["python", "-m", "member_service", "migrate"],
    "batch-migrate": ["python", "-m", "batch_service", "migrate"],
    "auth-api": ["python", "-m", "auth_service", "api"],
    "member-worker": ["python", "-m", "member_service", "worker"],
    "member-api": ["python", "-m", "member_service", "api"],
    "batch-worker": ["python", "-m", "batch_service", "worker"],
    "batch-api": ["python", "-m", "batch_service", "api"],
}
LONG_RUNNING = [name for name in APP_SERVICES if not name.endswith("-migrate")]
ALLOWED_FLAGS = {"--host", "--port", "--workers", "--threads", "--health-host", "--health-port"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: the file as Compose itself resolves it."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: apt-get install docker-compose"
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"],
        env=dict(os.environ, AUTH_JWT_SECRET="x" * 64),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_file_is_valid_and_runs_every_contract_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(APP_SERVICES) <= set(services)
    for name, prefix in APP_SERVICES.items():
        command = services[name]["command"]
        assert command[: len(prefix)] == prefix, name
        flags = {arg for arg in command[len(prefix) :] if arg.startswith("--")}
        assert flags <= ALLOWED_FLAGS, (name, flags)


def test_compose_requires_the_jwt_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUTH_JWT_SECRET"}
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AUTH_JWT_SECRET" in result.stderr


def test_every_variable_compose_sets_on_the_app_is_one_the_code_reads(
    compose: dict[str, Any],
) -> None:
    for name in APP_SERVICES:
        variables = set((compose["services"][name].get("environment") or {}).keys())
        assert variables <= set(ENVIRONMENT), (name, variables - set(ENVIRONMENT))


def test_each_process_gets_only_its_own_services_database(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = name.split("-")[0]
        urls = {v for v in compose["services"][name]["environment"] if v.endswith("_DATABASE_URL")}
        assert urls == {f"{service.upper()}_DATABASE_URL"}, name


def test_the_code_reads_no_variable_missing_from_the_declared_list() -> None:
    # Reads only: `env.get("X")`, `environ["X"]` not followed by an assignment.
    literal = re.compile(
        r"""(?:environ|env)(?:\.get\(\s*["']([A-Z][A-Z0-9_]+)["']"""
        r"""|\[["']([A-Z][A-Z0-9_]+)["']\](?!\s*=[^=]))"""
    )
    read: set[str] = set()
    for package in ("shared", "auth_service", "member_service", "batch_service"):
        for path in (ROOT / package).rglob("*.py"):
            read |= {a or b for a, b in literal.findall(path.read_text())}
    read |= {f"{s.upper()}_DATABASE_URL" for s in ("auth", "member", "batch")}  # built names
    assert read <= set(ENVIRONMENT)
    assert "AUTH_JWT_SECRET" in read and "KAFKA_BOOTSTRAP_SERVERS" in read


def test_workers_can_be_scaled_no_fixed_names_or_host_ports(compose: dict[str, Any]) -> None:
    for name in ("member-worker", "batch-worker"):
        service = compose["services"][name]
        assert "container_name" not in service
        assert "ports" not in service


def test_long_running_processes_have_health_checks_restart_policies_and_ordering(
    compose: dict[str, Any],
) -> None:
    for name in LONG_RUNNING:
        service = compose["services"][name]
        assert "/health/ready" in " ".join(service["healthcheck"]["test"]), name
        assert service["restart"] == "unless-stopped", name
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        if name == "auth-api":  # its rate limits count in Redis
            assert conditions.pop("redis") == "service_healthy"
        assert conditions == {
            "auth-migrate": "service_completed_successfully",
            "member-migrate": "service_completed_successfully",
            "batch-migrate": "service_completed_successfully",
            "kafka-topics": "service_completed_successfully",
        }, name
    for infra in ("postgres", "kafka"):
        assert compose["services"][infra]["healthcheck"]["test"], infra


def test_kafka_is_apache_kafka_in_kraft_mode_and_a_job_creates_the_topics(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # The job runs deploy/kafka/create-topics.sh, whose topic list
    # tests/deployment/test_kafka_sasl_deployment.py checks against shared/messaging/pipeline.py.
    topics = compose["services"]["kafka-topics"]
    assert topics["entrypoint"] == ["/bin/bash", "/deploy/kafka/create-topics.sh"]
    assert any(
        str(volume).startswith(f"{ROOT / 'deploy' / 'kafka'}:/deploy/kafka")
        for volume in topics["volumes"]
    )


def test_postgres_init_script_creates_one_database_per_service() -> None:
    sql = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for service in ("auth", "member", "batch"):
        assert f"CREATE DATABASE {service};" in sql


def test_dockerfile_is_slim_non_root_with_a_cached_dependency_layer() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert re.match(r"FROM python:3\.\d+-slim$", lines[0])
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] != "USER root"
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY shared"))
    install_deps = next(i for i, line in enumerate(lines) if "pip install -r" in line)
    assert install_deps < copy_code


def test_prometheus_scrapes_every_process_of_the_pipeline(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert any("deploy/prometheus.yml" in str(volume) for volume in prometheus["volumes"])
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
    expected = set()
    for name in LONG_RUNNING:
        service = compose["services"][name]
        if name.endswith("-worker"):
            expected.add(f"{name}:{service['environment']['WORKER_HEALTH_PORT']}")
        else:
            expected.add(f"{name}:{service['command'][service['command'].index('--port') + 1]}")
    assert targets == expected
