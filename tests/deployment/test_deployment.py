"""docker-compose.yml and the Dockerfile run exactly the contract's processes, with
variables the code reads, and can be scaled; nginx alone publishes the APIs, every port
only on 127.0.0.1, and no password is written in the files. No Docker engine runs here:
the file is checked with Debian's docker-compose (`config`), by reading it, and its
nginx configuration with `nginx -t`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import proxy
from shared.config import ENVIRONMENT
from shared.http.web import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deployment
APP_SERVICES = {
    "auth-migrate": ["python", "-m", "auth_service", "migrate"],
    "member-migrate": ["python", "-m", "member_service", "migrate"],
    "batch-migrate": ["python", "-m", "batch_service", "migrate"],
    "auth-api": ["python", "-m", "auth_service", "api"],
    "auth-worker": ["python", "-m", "auth_service", "worker"],
    "member-worker": ["python", "-m", "member_service", "worker"],
    "member-api": ["python", "-m", "member_service", "api"],
    "batch-worker": ["python", "-m", "batch_service", "worker"],
    "batch-api": ["python", "-m", "batch_service", "api"],
}
LONG_RUNNING = [name for name in APP_SERVICES if not name.endswith("-migrate")]
ALLOWED_FLAGS = {"--host", "--port", "--workers", "--threads", "--health-host", "--health-port"}
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.sasl.yml"]
# What the operator must set; sentinels here, so the resolved file shows where each goes.
REQUIRED = {
    "AUTH_JWT_SECRET": "x" * 64,
    "POSTGRES_PASSWORD": "pg0123456789abcdef0123456789",
    "REDIS_PASSWORD": "rd0123456789abcdef0123456789",
}
API_PORTS = {"auth-api": 8001, "member-api": 8002, "batch-api": 8003}


def compose_env(**overrides: str) -> dict[str, str]:
    """This environment without any of REQUIRED, then REQUIRED and `overrides`."""
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    return base | REQUIRED | overrides


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: the file as Compose itself resolves it."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: apt-get install docker-compose"
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"],
        env=compose_env(),
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


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_requires_the_jwt_secret_and_the_store_passwords(missing: str) -> None:
    env = compose_env()
    del env[missing]
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert missing in result.stderr


# Where a password could be written: a URL's user:password@, a *PASSWORD*/*AUTH*/*SECRET*
# variable, redis-server's --requirepass.
URL_PASSWORD = re.compile(r"://[^/:@\s]*:([^@\s]*)@")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_AUTH$")


def _required_reference(value: str) -> bool:
    """Whether `value` is, whole, a required variable: ${NAME:?message}."""
    return re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value) is not None


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_no_password_is_written_in_the_compose_files(path: Path) -> None:
    text = path.read_text()
    for found in URL_PASSWORD.finditer(text):
        assert _required_reference(found.group(1)), found.group(0)
    raw = yaml.safe_load(text)
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            if SECRET_NAME.search(variable) and variable != "<<":
                assert _required_reference(str(value)), (name, variable, value)
        command = service.get("command") or []
        if "--requirepass" in command:
            assert _required_reference(command[command.index("--requirepass") + 1]), name


def test_every_published_port_is_on_loopback_and_only_nginx_publishes_the_apis(
    compose: dict[str, Any],
) -> None:
    published: dict[str, set[int]] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # the long syntax
                host_ip, host_port = port.get("host_ip"), int(port["published"])
            else:
                parts = str(port).split(":")  # [host_ip:]host_port:container_port
                host_ip = parts[0] if len(parts) == 3 else None
                host_port = int(parts[-2])
            assert host_ip == "127.0.0.1", (name, port)
            published.setdefault(name, set()).add(host_port)
    assert published == {"nginx": set(API_PORTS.values()), "prometheus": {9090}}, published


def test_redis_requires_the_password_the_auth_api_logs_in_with(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == REQUIRED["REDIS_PASSWORD"]
    # Its own health check logs in (redis-cli reads REDISCLI_AUTH).
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == REQUIRED["REDIS_PASSWORD"]
    url = services["auth-api"]["environment"]["AUTH_RATE_LIMIT_REDIS_URL"]
    assert url == f"redis://:{REQUIRED['REDIS_PASSWORD']}@redis:6379/0"


def test_the_databases_are_reached_with_the_required_password(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    for name in APP_SERVICES:
        service = name.split("-")[0]
        url = services[name]["environment"][f"{service.upper()}_DATABASE_URL"]
        assert url.startswith(f"postgresql+psycopg2://signup:{REQUIRED['POSTGRES_PASSWORD']}@")


def test_nginx_fronts_the_three_apis_and_the_auth_api_trusts_one_hop(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nginx = services["nginx"]
    env = nginx["environment"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    # Every placeholder of the template has its value here, and only those are replaced.
    assert proxy.placeholders() <= set(env)
    assert re.fullmatch(env["NGINX_ENVSUBST_FILTER"] + ".*", "PROXY_AUTH_UPSTREAM")
    assert not [
        name
        for name in env
        if re.match(env["NGINX_ENVSUBST_FILTER"], name) and name not in proxy.placeholders()
    ]
    assert any(
        str(volume).startswith(f"{proxy.TEMPLATE}:/etc/nginx/templates/nginx.conf.template")
        for volume in nginx["volumes"]
    )
    for name, port in API_PORTS.items():
        service = name.split("-")[0].upper()
        assert env[f"PROXY_{service}_UPSTREAM"] == f"{name}:{port}"
        assert env[f"PROXY_{service}_LISTEN"] == str(port)
        assert nginx["depends_on"][name]["condition"] == "service_healthy"
        command = services[name]["command"]
        assert command[command.index("--port") + 1] == str(port)
    assert services["auth-api"]["environment"]["TRUSTED_PROXY_HOPS"] == "1"


def test_the_nginx_configuration_passes_nginx_t(compose: dict[str, Any], tmp_path: Path) -> None:
    """The template as compose renders it, checked by nginx itself; the upstreams'
    Docker names stand in as 127.0.0.1 (nginx resolves them at start), the state under a
    temporary directory (nginx -t runs as whoever runs the tests)."""
    binary = proxy.nginx_binary()
    assert binary, "nginx is not installed: scripts/ensure-nginx.sh"
    env = compose["services"]["nginx"]["environment"]
    values = {name: str(env[name]) for name in proxy.placeholders()}
    for name in values:
        if name.endswith("_UPSTREAM"):
            values[name] = "127.0.0.1:" + values[name].rsplit(":", 1)[1]
    values["PROXY_STATE_DIR"] = str(tmp_path)
    config = proxy.prepare(tmp_path, values)
    proxy.check(binary, tmp_path, config)  # raises with nginx's words


def test_the_nginx_configuration_bounds_slow_clients_and_sets_the_client_address() -> None:
    """The settings issue 16 asks for, read from the template."""
    text = proxy.TEMPLATE.read_text()

    def setting(name: str) -> str:
        """Its value at the http level: the first time it is set (upstreams come later)."""
        found = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
        assert found, name
        return found[0].strip()

    assert setting("client_header_timeout") == "10s"
    assert setting("client_body_timeout") == "10s"
    assert setting("send_timeout") == "10s"
    assert setting("client_max_body_size") == f"{MAX_BODY_BYTES // 1024}k"
    assert setting("proxy_request_buffering") == "on"
    assert setting("server_tokens") == "off"
    assert int(setting("worker_connections")) >= 1024
    assert setting("keepalive_timeout") == "15s"
    assert int(setting("keepalive_requests")) <= 1000
    # Set to the address nginx saw, never appended to ($proxy_add_x_forwarded_for).
    assert setting("proxy_set_header X-Forwarded-For") == "$remote_addr"
    assert "proxy_add_x_forwarded_for" not in text


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
    for name in ("auth-worker", "member-worker", "batch-worker"):
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
