"""docker-compose.sasl.yml: SASL_SSL with SCRAM-SHA-512 between the pipeline and Kafka.

No Docker engine and no Apache Kafka run here, so this checks what can be checked
without them, each against the real thing where there is one:

- the merged compose file, as Debian's docker-compose resolves it;
- the settings it gives every process, through the code that reads them;
- the TLS files deploy/kafka/make-tls.sh makes (real keytool), loaded by a JSSE server
  as a broker loads them and dialled by a client built by kafka-python's own code;
- the broker configuration and the setup calls the scripts make, with the Kafka
  command-line tools replaced by a recorder (the scripts' own logic runs unchanged);
- shellcheck on every script.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.net.transport import KafkaSSLTransport

from devtools.kafka_security import (
    OUTSIDE_PRODUCERS,
    PROCESS_PRINCIPALS,
    acl_bindings,
    load_grants,
    password_variable,
    principals,
)
from shared.config import ENVIRONMENT, kafka_security
from shared.messaging.kafka import client_security, pipeline_topics
from shared.messaging.pipeline import TOPICS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deployment
SCRIPTS = ROOT / "deploy" / "kafka"
LONG_RUNNING = [
    "auth-api",
    "auth-worker",
    "member-worker",
    "member-api",
    "batch-worker",
    "batch-api",
]
ADMIN_PASSWORD = "a" * 12 + "0123456789abcdef"
GRANTS = load_grants()
# One password per principal of deploy/kafka/grants.txt, each different.
PASSWORDS = {
    principal: f"{index}" * 12 + "fedcba9876543210"
    for index, principal in enumerate(principals(GRANTS), 1)
}
PASSWORD_VARIABLES = {"KAFKA_ADMIN_PASSWORD": ADMIN_PASSWORD} | {
    password_variable(principal): password for principal, password in PASSWORDS.items()
}
# The base file's own (docker-compose.yml requires them; test_deployment.py checks them).
STORE_PASSWORDS = {"POSTGRES_PASSWORD": "p" * 24, "REDIS_PASSWORD": "r" * 24}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target: (source, read-only) of a service's volumes, in either compose syntax."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            found[target] = (source, mode == ["ro"])
    return found


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: apt-get install docker-compose"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "AUTH_JWT")) and k not in STORE_PASSWORDS
    } | STORE_PASSWORDS
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", "-f", "docker-compose.sasl.yml", "config"],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = compose_config(AUTH_JWT_SECRET="x" * 64, **PASSWORD_VARIABLES)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The broker's and the applications' directories, as the kafka-tls job leaves them."""
    assert shutil.which("keytool"), "keytool is not installed: apt-get install default-jre-headless"
    root = tmp_path_factory.mktemp("tls")
    run_script("make-tls.sh", str(root / "broker"), str(root / "ca"))
    return {"broker": root / "broker", "ca": root / "ca"}


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


# -- the merged compose file --------------------------------------------------------------


@pytest.mark.parametrize("missing", sorted(PASSWORD_VARIABLES))
def test_the_override_refuses_to_start_without_any_of_the_passwords(missing: str) -> None:
    env = {"AUTH_JWT_SECRET": "x" * 64} | PASSWORD_VARIABLES
    del env[missing]
    result = compose_config(**env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_each_process_logs_in_over_sasl_ssl_as_its_own_principal(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    for name in LONG_RUNNING:
        service = compose["services"][name]
        env = service["environment"]
        assert set(env) <= set(ENVIRONMENT), name
        principal = PROCESS_PRINCIPALS[name]
        volumes = mounts(service)
        assert "kafka-tls" not in {source for source, _ in volumes.values()}, name
        if principal is None:
            # A read API never talks to Kafka: no user, no password, no CA.
            assert not {k for k in env if k.startswith(("KAFKA_S", "KAFKA_SASL"))}, name
            assert "kafka-ca" not in {source for source, _ in volumes.values()}, name
            continue
        cafile = env["KAFKA_SSL_CAFILE"]
        mount = next(m for target, m in volumes.items() if cafile.startswith(target + "/"))
        assert mount == ("kafka-ca", True), name
        # The code that every producer and consumer goes through accepts these settings.
        local_ca = tmp_path / "ca.pem"
        local_ca.write_text("placeholder")
        settings = client_security(kafka_security(env | {"KAFKA_SSL_CAFILE": str(local_ca)}))
        assert settings == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": principal,
            "sasl_plain_password": PASSWORDS[principal],
            "ssl_cafile": str(local_ca),
        }, name


def test_the_operator_service_logs_in_as_the_operator_and_is_not_started_by_up(
    compose: dict[str, Any],
) -> None:
    operator = compose["services"]["operator"]
    assert operator["profiles"] == ["operator"]
    assert operator["entrypoint"] == ["signup-pipeline"]
    env = operator["environment"]
    assert set(env) <= set(ENVIRONMENT)
    assert env["KAFKA_SASL_USERNAME"] == "operator"
    assert env["KAFKA_SASL_PASSWORD"] == PASSWORDS["operator"]
    assert mounts(operator)[env["KAFKA_SSL_CAFILE"].rsplit("/", 1)[0]] == ("kafka-ca", True)
    # Its database URLs log in with the password the base file requires, none of its own.
    for service in ("auth", "member", "batch"):
        url = env[f"{service.upper()}_DATABASE_URL"]
        assert url.startswith(
            f"postgresql+psycopg2://signup:{STORE_PASSWORDS['POSTGRES_PASSWORD']}@"
        )


def test_the_broker_key_is_mounted_only_where_it_is_needed(compose: dict[str, Any]) -> None:
    holders = {
        name
        for name, service in compose["services"].items()
        for source, _ in mounts(service).values()
        if source == "kafka-tls"
    }
    assert holders == {"kafka-tls", "kafka"}


def test_the_broker_waits_for_its_certificate_and_the_setup_job_logs_in_as_admin(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["depends_on"]["kafka-tls"]["condition"] == "service_completed_successfully"
    assert kafka["entrypoint"][-1] == "/deploy/kafka/start-sasl.sh"
    assert "--command-config" in " ".join(kafka["healthcheck"]["test"])
    topics = services["kafka-topics"]["environment"]
    assert topics["KAFKA_ADMIN_PASSWORD"] == ADMIN_PASSWORD
    assert set(PASSWORD_VARIABLES) <= set(services["kafka"]["environment"])
    assert ADMIN_PASSWORD not in str([services[name] for name in [*LONG_RUNNING, "operator"]])


# -- TLS files: made by keytool, loaded as Kafka loads them, dialled as kafka-python dials -


@pytest.fixture(scope="module")
def jsse_server(tls: dict[str, Path]) -> Iterator[int]:
    java = shutil.which("java")
    assert java, "java is not installed: apt-get install default-jre-headless"
    command = [
        java,
        str(Path(__file__).with_name("JsseTlsServer.java")),
        str(tls["broker"] / "broker.p12"),
        str(tls["broker"] / "keystore-password"),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            line = process.stdout.readline()
            if not line.strip().isdigit():
                process.kill()
                pytest.fail(f"the JSSE server did not start: {line}{process.stderr.read()}")
            yield int(line)
        finally:
            process.kill()


def kafka_python_context(cafile: Path | None) -> ssl.SSLContext:
    """The SSL context kafka-python builds from the settings client_security gives."""
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL"}
    if cafile:
        env["KAFKA_SSL_CAFILE"] = str(cafile)
    config = KafkaSSLTransport.DEFAULT_CONFIG | client_security(kafka_security(env))
    context: ssl.SSLContext = KafkaSSLTransport._build_ssl_context(config)
    return context


def handshake(port: int, context: ssl.SSLContext, hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls_socket,
    ):
        return tls_socket.recv(16)


@pytest.mark.parametrize("hostname", ["kafka", "localhost"])
def test_a_client_trusting_the_ca_file_completes_the_handshake_with_the_broker_key(
    jsse_server: int, tls: dict[str, Path], hostname: str
) -> None:
    assert handshake(jsse_server, kafka_python_context(tls["ca"] / "ca.pem"), hostname) == b"ok\n"


def test_the_certificate_is_refused_for_another_name(
    jsse_server: int, tls: dict[str, Path]
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(jsse_server, kafka_python_context(tls["ca"] / "ca.pem"), "kafka.evil.example")


def test_without_the_ca_file_the_broker_is_not_trusted(jsse_server: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(jsse_server, kafka_python_context(None), "kafka")


def test_the_broker_files_are_private_and_the_ca_key_is_not_kept(tls: dict[str, Path]) -> None:
    broker, ca = tls["broker"], tls["ca"]
    assert sorted(p.name for p in broker.iterdir()) == ["broker.p12", "ca.pem", "keystore-password"]
    assert sorted(p.name for p in ca.iterdir()) == ["ca.pem"]
    for secret in ("broker.p12", "keystore-password"):
        assert stat.S_IMODE((broker / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((ca / "ca.pem").stat().st_mode) == 0o644
    assert len((broker / "keystore-password").read_text()) >= 32
    listing = subprocess.run(
        ["keytool", "-list", "-keystore", str(broker / "broker.p12"), "-storetype", "PKCS12"],
        input=(broker / "keystore-password").read_text() + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "contains 1 entry" in listing and "PrivateKeyEntry" in listing


def test_a_second_run_keeps_the_keystore(tls: dict[str, Path]) -> None:
    before = (tls["broker"] / "broker.p12").read_bytes()
    result = run_script("make-tls.sh", str(tls["broker"]), str(tls["ca"]))
    assert "keeping" in result.stdout
    assert (tls["broker"] / "broker.p12").read_bytes() == before


# -- the broker's configuration and the setup job's calls ---------------------------------

RECORDER = """#!{python}
import json, os, sys
args = sys.argv[1:]
files = {{}}
for i, arg in enumerate(args):
    if arg == "--command-config" or arg == "--config" or arg.endswith(".properties"):
        path = args[i + 1] if arg.startswith("--") else arg
        files[path] = open(path).read()
call = {{"tool": os.path.basename(sys.argv[0]), "args": args, "files": files}}
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps(call) + "\\n")
if args == ["random-uuid"]:
    print("cluster-id-from-kafka-storage")
"""


@pytest.fixture
def kafka_home(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "kafka" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("kafka-storage.sh", "kafka-server-start.sh", "kafka-topics.sh", "kafka-acls.sh"):
        path = bin_dir / tool
        path.write_text(RECORDER.format(python=sys.executable))
        path.chmod(0o755)
    return bin_dir.parent


def calls(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def start_env(tls: dict[str, Path], kafka_home: Path, tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    return {
        "KAFKA_HOME": str(kafka_home),
        "KAFKA_TLS_DIR": str(tls["broker"]),
        "KAFKA_DATA_DIR": str(data),
        "KAFKA_CONFIG_DIR": str(tmp_path / "config"),
        "RECORD": str(tmp_path / "record.jsonl"),
    } | PASSWORD_VARIABLES


def test_the_broker_listens_on_the_network_only_with_sasl_ssl_and_denies_by_default(
    start_env: dict[str, str], tls: dict[str, Path]
) -> None:
    run_script("start-sasl.sh", env=start_env)
    started = [c for c in calls(Path(start_env["RECORD"])) if c["tool"] == "kafka-server-start.sh"]
    assert len(started) == 1
    config = properties(next(iter(started[0]["files"].values())))

    protocols = dict(p.split(":") for p in config["listener.security.protocol.map"].split(","))
    listeners = dict(item.split("://") for item in config["listeners"].split(","))
    for name, address in listeners.items():
        if name == config["controller.listener.names"]:
            assert address.startswith("localhost:"), "the controller must not be reachable"
        else:
            assert protocols[name] == "SASL_SSL", name
    assert config["advertised.listeners"] == "SASL_SSL://kafka:9092"
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["ssl.keystore.location"] == str(tls["broker"] / "broker.p12")
    assert config["ssl.keystore.password"] == (tls["broker"] / "keystore-password").read_text()
    assert config["authorizer.class.name"].endswith("StandardAuthorizer")
    assert config["allow.everyone.if.no.acl.found"] == "false"
    # The controller's port takes SASL PLAIN as admin: ANONYMOUS is nobody special.
    assert protocols[config["controller.listener.names"]] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert config["super.users"] == "User:admin"


def test_first_start_formats_the_storage_with_every_scram_user_and_later_starts_do_not(
    start_env: dict[str, str],
) -> None:
    record = Path(start_env["RECORD"])
    run_script("start-sasl.sh", env=start_env)
    formats = [
        c["args"]
        for c in calls(record)
        if c["tool"] == "kafka-storage.sh" and c["args"][0] == "format"
    ]
    assert len(formats) == 1
    scram = [formats[0][i + 1] for i, arg in enumerate(formats[0]) if arg == "--add-scram"]
    assert scram == [f"SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}]"] + [
        f"SCRAM-SHA-512=[name={principal},password={password}]"
        for principal, password in PASSWORDS.items()
    ]
    assert formats[0][formats[0].index("--cluster-id") + 1] == "cluster-id-from-kafka-storage"

    (Path(start_env["KAFKA_DATA_DIR"]) / "meta.properties").write_text("formatted\n")
    record.unlink()
    run_script("start-sasl.sh", env=start_env)
    assert [c["tool"] for c in calls(record)] == ["kafka-server-start.sh"]


def test_a_storage_formatted_without_scram_users_is_refused_with_what_to_do(
    start_env: dict[str, str],
) -> None:
    (Path(start_env["KAFKA_DATA_DIR"]) / "meta.properties").write_text("formatted\n")
    result = run_script("start-sasl.sh", env=start_env, check=False)
    assert result.returncode == 2
    assert "without SCRAM users" in result.stderr and "down -v" in result.stderr
    assert calls(Path(start_env["RECORD"])) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA_MEMBER_SERVICE_PASSWORD", "short"),
        ("KAFKA_OPERATOR_PASSWORD", 'has"quote-and-more-characters'),
        ("KAFKA_ADMIN_PASSWORD", "has,comma]and-more-characters"),
        ("KAFKA_ADMIN_PASSWORD", ""),
    ],
)
def test_a_password_that_would_break_the_jaas_line_or_is_short_is_refused(
    start_env: dict[str, str], variable: str, value: str
) -> None:
    result = run_script("start-sasl.sh", env=start_env | {variable: value}, check=False)
    assert result.returncode == 2
    assert variable in result.stderr
    assert calls(Path(start_env["RECORD"])) == []


def test_the_health_check_logs_in_as_admin_trusting_the_ca(
    start_env: dict[str, str], tls: dict[str, Path]
) -> None:
    run_script("start-sasl.sh", env=start_env)
    client_file = Path(start_env["KAFKA_CONFIG_DIR"]) / "admin-client.properties"
    client = properties(client_file.read_text())
    assert client["security.protocol"] == "SASL_SSL"
    assert client["sasl.mechanism"] == "SCRAM-SHA-512"
    assert f'username="admin" password="{ADMIN_PASSWORD}";' in client["sasl.jaas.config"]
    assert client["ssl.truststore.location"] == str(tls["broker"] / "ca.pem")
    assert stat.S_IMODE(client_file.stat().st_mode) == 0o600


def test_the_topic_job_creates_the_pipelines_topics_with_their_partition_counts(
    kafka_home: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.jsonl"
    run_script("create-topics.sh", env={"KAFKA_HOME": str(kafka_home), "RECORD": str(record)})
    made = {}
    for call in calls(record):
        assert call["tool"] == "kafka-topics.sh"  # no ACLs without SASL
        args = call["args"]
        assert "--command-config" not in args
        made[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    assert made == pipeline_topics()


def test_with_sasl_the_topic_job_grants_each_principal_exactly_the_table(
    kafka_home: Path, tls: dict[str, Path], tmp_path: Path
) -> None:
    record = tmp_path / "record.jsonl"
    env = {
        "KAFKA_HOME": str(kafka_home),
        "RECORD": str(record),
        "KAFKA_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "KAFKA_SSL_CAFILE": str(tls["ca"] / "ca.pem"),
    }
    run_script("create-topics.sh", env=env)
    recorded = calls(record)
    for call in recorded:
        login = properties(call["files"][call["args"][call["args"].index("--command-config") + 1]])
        assert login["security.protocol"] == "SASL_SSL", call
    assert sum(c["tool"] == "kafka-topics.sh" for c in recorded) == len(pipeline_topics())

    granted: set[tuple[str, str, str, str]] = set()
    for call in (c["args"] for c in recorded if c["tool"] == "kafka-acls.sh"):
        principal = call[call.index("--allow-principal") + 1]
        operations = {call[i + 1] for i, arg in enumerate(call) if arg == "--operation"}
        resources = [
            (arg[2:], call[i + 1]) for i, arg in enumerate(call) if arg in ("--topic", "--group")
        ]
        assert "--cluster" not in call, "no cluster-wide grant (IdempotentWrite comes with Write)"
        granted |= {(principal, kind, name, op) for kind, name in resources for op in operations}
    # What devtools/kafka_security.py grants on the local Apache Kafka, from the same table.
    expected = {
        (
            acl.principal,
            acl.resource_pattern.resource_type.name.lower(),
            acl.resource_pattern.resource_name,
            acl.operation.name.capitalize(),
        )
        for acl in acl_bindings(GRANTS)
    }
    assert granted == expected
    assert ("User:member-service", "topic", "profile-insert", "Write") not in granted


def test_the_table_grants_each_service_what_the_topics_say_it_does_and_no_more() -> None:
    # Each service's principal is named as its topics' producer and consumer group are.
    expected: set[tuple[str, str, str, str]] = set()
    for topic in TOPICS:
        expected |= {
            (topic.producer, "topic", topic.name, "Write"),
            (topic.consumer_group, "topic", topic.name, "Read"),
            (topic.consumer_group, "group", topic.consumer_group, "Read"),
            (topic.consumer_group, "topic", topic.dead_letter, "Write"),
            ("operator", "topic", topic.name, "Read"),
            ("operator", "topic", topic.name, "Write"),
            ("operator", "topic", topic.dead_letter, "Read"),
            ("operator", "group", topic.consumer_group, "Describe"),
        }
    table = {
        (grant.principal, grant.resource, grant.name, operation)
        for grant in GRANTS
        for operation in grant.operations
    }

    assert table == expected
    assert {principal for principal, *_ in table} == {
        "auth-service",
        "member-service",
        "batch-service",
        "operator",
        # Other teams' services, producers of the partners' activity: write only.
        "post-service",
        "follow-service",
        "coordinate-service",
        "review-service",
    }
    for producer in OUTSIDE_PRODUCERS:
        assert {(kind, op) for who, kind, _, op in table if who == producer} == {
            ("topic", "Write")
        }, producer


def test_the_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: apt-get install shellcheck"
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    assert len(scripts) == 4
    result = subprocess.run(
        [shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
