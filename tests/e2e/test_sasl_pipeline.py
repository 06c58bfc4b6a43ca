"""The production security path end to end: the contract's six processes on a local
Apache Kafka secured as docker-compose.sasl.yml secures its broker (SASL_SSL,
SCRAM-SHA-512, deny by default; devtools/kafka_security.py), each process logging in as
its own principal with only the grants of deploy/kafka/grants.txt, the read APIs with no
Kafka settings at all, and the operator's `signup-pipeline status` as the operator.

Outside dev mode, as in production: the processes create no topics (the cluster's setup
did, as compose's kafka-topics job does) and the auth API needs its own JWT key.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.http_client import request, wait_for_status
from devtools.kafka_security import OPERATOR, PROCESS_PRINCIPALS, SecureLocalKafkaCluster
from devtools.stack import Stack
from shared.messaging.pipeline import TOPICS
from tests.brokers import kafka_jars
from tests.e2e.conftest import running_stack
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]
KAFKA_SECURITY_VARIABLES = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureLocalKafkaCluster]:
    """One secured Apache Kafka node with the pipeline's topics and grants."""
    jars = kafka_jars()
    kafka = SecureLocalKafkaCluster(1, tmp_path_factory.mktemp("sasl-kafka"), jars)
    kafka.start()
    try:
        kafka.setup_pipeline()
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Any,
    cluster: SecureLocalKafkaCluster,
) -> Iterator[Stack]:
    yield from running_stack(
        tmp_path_factory,
        postgres,
        cluster.bootstrap_servers,
        "sasl",
        process_env=cluster.process_environments(),
        extra_env={"SIGNUP_PIPELINE_DEV": "0", "AUTH_JWT_SECRET": secrets.token_hex(32)},
    )


def signup_pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def sign_up(stack: Stack, role: str) -> str:
    status, body = request("POST", f"{stack.url('auth')}/auth/signup", signup_body(role=role))
    assert status == 201, body
    return str(body["uuid"])


def test_each_process_runs_as_its_own_principal_and_the_read_apis_have_no_kafka_user(
    stack: Stack,
) -> None:
    for name, principal in PROCESS_PRINCIPALS.items():
        env = stack.processes[name].env
        given = {variable for variable in KAFKA_SECURITY_VARIABLES if variable in env}
        if principal is None:
            assert given == set(), name
        else:
            assert given == set(KAFKA_SECURITY_VARIABLES), name
            assert env["KAFKA_SASL_USERNAME"] == principal
            assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert stack.processes[name].running(), name


def test_a_user_and_a_partner_reach_the_member_and_batch_services(stack: Stack) -> None:
    user_id = sign_up(stack, "USER")
    partner_id = sign_up(stack, "PARTNER")
    _, member = wait_for_status(f"{stack.url('member')}/members/{user_id}", timeout=60)
    assert member["role"] == "USER"
    _, partner = wait_for_status(f"{stack.url('member')}/members/{partner_id}", timeout=60)
    assert partner["role"] == "PARTNER"
    _, summary = wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary", timeout=60)
    assert summary["partnerId"] == partner_id


def test_the_operator_sees_the_drained_pipeline_with_status(
    stack: Stack, cluster: SecureLocalKafkaCluster
) -> None:
    partner_id = sign_up(stack, "PARTNER")
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary", timeout=60)
    operator = stack.env() | cluster.environment(OPERATOR)

    def drained() -> dict[str, Any] | None:
        shown = signup_pipeline(operator, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        document: dict[str, Any] = json.loads(shown.stdout)
        lags = [topic["total"] for topic in document["lag"].values()]
        return document if lags == [0] * len(TOPICS) else None

    document = wait_until(drained, 30, "signup-pipeline status as the operator shows no lag")
    assert document is not None
    assert document["unavailable"] == {}
    assert set(document["dead_letters"]) == {topic.dead_letter for topic in TOPICS}
    assert set(document["dead_letters"].values()) == {0}
    listed = signup_pipeline(operator, "dlt", "list", "profile-insert")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("0 dead-lettered record(s) in profile-insert.DLT")


def test_without_the_operator_login_status_cannot_read_kafka(stack: Stack) -> None:
    """The same command with no Kafka user (PLAINTEXT against the SASL_SSL listener):
    the databases are read, Kafka's figures are unavailable."""
    shown = signup_pipeline(stack.env(), "status", "--json")
    document: dict[str, Any] = json.loads(shown.stdout)
    assert set(document["unavailable"]) == {"kafka"}, document["unavailable"]
