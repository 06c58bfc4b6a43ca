"""docker-compose.sasl.yml's security, run for real on the local Apache Kafka 4.4:
SASL_SSL with SCRAM-SHA-512, users made at format time, an authorizer that denies what is
not granted, and one principal per process with only the grants of
deploy/kafka/grants.txt (devtools/kafka_security.py).

Each principal is tried against each topic and group, both ways: what the table grants
works, what it does not is refused by the broker. The refusals the issue names are also
written out here, independently of the table, so that a grant added to the table by
mistake fails a test instead of passing two.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from devtools.kafka_security import (
    BROKER_USER,
    MAKE_TLS_SCRIPT,
    OPERATOR,
    OUTSIDE_PRODUCERS,
    PROCESS_PRINCIPALS,
    SecureLocalKafkaCluster,
    allows,
    load_grants,
    password_variable,
    principals,
)
from operations.dlt import list_dead_letters, replay
from operations.offsets import OffsetReader
from shared.config import kafka_security
from shared.messaging.deadletters import dead_letter_headers
from shared.messaging.kafka import (
    PRODUCER_DEFAULTS,
    Message,
    missing_topics,
    pipeline_topics,
    use_security,
)
from shared.messaging.pipeline import TOPICS
from tests.brokers import kafka_jars

pytestmark = [
    pytest.mark.integration,
    # pyproject.toml's exception for kafka-python 3.0 dropping a broker socket without
    # closing it (found by the GC at a moment that depends on timing), for its TLS sockets.
    pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
    ),
]

GRANTS = load_grants()
PRINCIPALS = principals(GRANTS)
TOPIC_NAMES = list(pipeline_topics())
GROUP_TOPICS = {topic.consumer_group: topic.name for topic in TOPICS}
START_SASL = MAKE_TLS_SCRIPT.with_name("start-sasl.sh")

# What the issue says each principal must NOT be able to do, written out rather than read
# from the table: (principal, resource, name, operation).
REFUSED = [
    ("member-service", "topic", "profile-insert", "Write"),
    ("auth-service", "topic", "profile-insert", "Read"),
    ("auth-service", "group", "member-service", "Read"),
    ("batch-service", "topic", "profile-insert", "Read"),
    ("batch-service", "topic", "profile-insert", "Write"),
    ("batch-service", "topic", "partner-created", "Write"),
    ("member-service", "topic", "partner-created", "Read"),
    ("member-service", "group", "batch-service", "Read"),
    ("operator", "group", "member-service", "Read"),
    ("operator", "topic", "profile-insert.DLT", "Write"),
    # Another team's producer writes its own topics, nothing else, and reads nothing.
    ("post-service", "topic", "follow-created", "Write"),
    ("post-service", "topic", "partner-created", "Write"),
    ("post-service", "topic", "post-created", "Read"),
    ("review-service", "group", "batch-service", "Read"),
    ("batch-service", "topic", "review-created", "Write"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureLocalKafkaCluster]:
    """One secured node with the pipeline's topics and grants; one record in every topic
    (a dead letter in each .DLT), written by the broker's own user."""
    jars = kafka_jars()
    kafka = SecureLocalKafkaCluster(1, tmp_path_factory.mktemp("sasl-kafka"), jars)
    kafka.start()
    try:
        kafka.setup_pipeline()
        producer = KafkaProducer(
            bootstrap_servers=kafka.bootstrap_list,
            **(PRODUCER_DEFAULTS | kafka.client_options()),
        )
        try:
            for topic in TOPICS:
                producer.send(topic.name, key=b"seed", value=b"{}").get(30)
                original = Message(topic.name, b"seed", b"{}", partition=0, offset=0)
                headers = dead_letter_headers(original, "seeded by the test", 3)
                producer.send(topic.dead_letter, key=b"seed", value=b"{}", headers=headers).get(30)
        finally:
            producer.close(5)
        yield kafka
    finally:
        kafka.stop()


# -- probes: each logs in as one user, does one thing, closes its clients ---------------


def write(kafka: SecureLocalKafkaCluster, user: str, topic: str) -> None:
    """One acknowledged record into `topic`, as the pipeline's producers send it
    (idempotent, acks=all)."""
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_list,
        **(PRODUCER_DEFAULTS | kafka.client_security(user) | {"max_block_ms": 5_000}),
    )
    try:
        producer.send(topic, key=b"probe", value=b"{}").get(10)
    finally:
        producer.close(5)


def visible(kafka: SecureLocalKafkaCluster, user: str, topic: str) -> bool:
    """Whether the broker describes `topic` to `user` (error 29 when it may not)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_list, **kafka.client_security(user))
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    code = int(described["error_code"])
    if code not in (0, TopicAuthorizationFailedError.errno):
        raise KafkaError(f"describing {topic}: error {code}")
    return code == 0


def read(kafka: SecureLocalKafkaCluster, user: str, topic: str) -> int:
    """How many records `user` fetches from `topic` (from the beginning, every
    partition); TopicAuthorizationFailedError when the broker refuses, including when it
    will not even say the topic exists."""
    if not visible(kafka, user, topic):
        raise TopicAuthorizationFailedError(topic)
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_list,
        enable_auto_commit=False,
        **kafka.client_security(user),
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fetched = consumer.poll(timeout_ms=300)
            if fetched:
                return sum(len(records) for records in fetched.values())
        return 0
    finally:
        consumer.close()


def join(
    kafka: SecureLocalKafkaCluster, user: str, group: str, topic: str | None = None
) -> set[TopicPartition]:
    """The partitions `user` is assigned after joining `group` on `topic` (by default the
    topic the pipeline's group consumes); GroupAuthorizationFailedError when the broker
    refuses it the group."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_list,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        **kafka.client_security(user),
    )
    try:
        consumer.subscribe([topic or GROUP_TOPICS[group]])
        deadline = time.monotonic() + 20
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=300)
        return set(consumer.assignment())
    finally:
        consumer.close(autocommit=False)


def attempt(probe: Callable[[], Any]) -> str:
    """`ok`, or the name of the authorization error the broker answered with."""
    try:
        probe()
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
        return type(exc).__name__
    return "ok"


@contextlib.contextmanager
def logged_in_as(kafka: SecureLocalKafkaCluster, user: str) -> Iterator[None]:
    """Every client of this process logs in as `user`, as KAFKA_SASL_* would make it."""
    use_security(kafka_security(kafka.environment(user)))
    try:
        yield
    finally:
        use_security(kafka_security({}))


# -- every principal against every topic and group: exactly the table ------------------


@pytest.mark.parametrize(("principal", "topic"), list(itertools.product(PRINCIPALS, TOPIC_NAMES)))
def test_a_principal_writes_a_topic_only_if_the_table_grants_it(
    cluster: SecureLocalKafkaCluster, principal: str, topic: str
) -> None:
    expected = "ok" if allows(GRANTS, principal, "topic", topic, "Write") else "refused"
    outcome = attempt(lambda: write(cluster, principal, topic))
    assert (outcome if outcome == "ok" else "refused") == expected, outcome
    if outcome != "ok":
        assert outcome == "TopicAuthorizationFailedError"


@pytest.mark.parametrize(("principal", "topic"), list(itertools.product(PRINCIPALS, TOPIC_NAMES)))
def test_a_principal_reads_a_topic_only_if_the_table_grants_it(
    cluster: SecureLocalKafkaCluster, principal: str, topic: str
) -> None:
    if allows(GRANTS, principal, "topic", topic, "Read"):
        assert read(cluster, principal, topic) >= 1
    else:
        with pytest.raises(TopicAuthorizationFailedError):
            read(cluster, principal, topic)


@pytest.mark.parametrize(("principal", "group"), list(itertools.product(PRINCIPALS, GROUP_TOPICS)))
def test_a_principal_joins_a_consumer_group_only_if_the_table_grants_it(
    cluster: SecureLocalKafkaCluster, principal: str, group: str
) -> None:
    if allows(GRANTS, principal, "group", group, "Read"):
        assert join(cluster, principal, group), f"{principal} was assigned nothing in {group}"
    else:
        with pytest.raises(GroupAuthorizationFailedError):
            join(cluster, principal, group)


@pytest.mark.parametrize(("principal", "resource", "name", "operation"), REFUSED)
def test_what_the_issue_forbids_is_refused_by_the_broker(
    cluster: SecureLocalKafkaCluster, principal: str, resource: str, name: str, operation: str
) -> None:
    assert not allows(GRANTS, principal, resource, name, operation), "the table grants it"
    probe: Callable[[], Any]
    if resource == "group":
        probe = lambda: join(cluster, principal, name)  # noqa: E731
        refusal = "GroupAuthorizationFailedError"
    elif operation == "Write":
        probe = lambda: write(cluster, principal, name)  # noqa: E731
        refusal = "TopicAuthorizationFailedError"
    else:
        probe = lambda: read(cluster, principal, name)  # noqa: E731
        refusal = "TopicAuthorizationFailedError"
    assert attempt(probe) == refusal


def test_what_no_grant_names_is_denied_too(cluster: SecureLocalKafkaCluster) -> None:
    """allow.everyone.if.no.acl.found=false: a group or topic no ACL names is nobody's,
    so a principal can neither consume in a group of its own choosing nor make topics."""
    with pytest.raises(GroupAuthorizationFailedError):
        join(cluster, "member-service", "a-group-nobody-granted", "profile-insert")
    admin = KafkaAdminClient(
        bootstrap_servers=cluster.bootstrap_list, **cluster.client_security("operator")
    )
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic("a-topic-nobody-granted", 1, 1)])
    finally:
        admin.close()
    admin = cluster.admin()
    try:
        assert "a-topic-nobody-granted" not in admin.list_topics()
    finally:
        admin.close()


def test_a_principal_sees_only_the_topics_it_was_granted(
    cluster: SecureLocalKafkaCluster,
) -> None:
    """With ACLs the broker lists a client only the topics it may describe: each
    process's start-up check therefore asks for its own topics only (shared.runtime)."""
    for principal in PRINCIPALS:
        granted = {g.name for g in GRANTS if g.principal == principal and g.resource == "topic"}
        with logged_in_as(cluster, principal):
            missing = missing_topics(cluster.bootstrap_list, names=TOPIC_NAMES)
        assert set(TOPIC_NAMES) - set(missing) == granted, principal


# -- authentication and encryption ------------------------------------------------------


def bootstraps(kafka: SecureLocalKafkaCluster, port: int | None = None, **security: Any) -> bool:
    """Whether a client with `security` gets the list of topics from the broker."""
    servers = [f"127.0.0.1:{port}"] if port else kafka.bootstrap_list
    try:
        consumer = KafkaConsumer(bootstrap_servers=servers, bootstrap_timeout_ms=3_000, **security)
    except KafkaError:
        return False
    try:
        consumer.topics()
        return True
    except KafkaError:
        return False
    finally:
        consumer.close()


def test_a_wrong_password_is_refused(cluster: SecureLocalKafkaCluster) -> None:
    assert bootstraps(cluster, **cluster.client_security("member-service"))
    log = cluster.layout[0].log
    before = len(log.read_bytes())
    wrong = cluster.client_security("member-service", password="not-the-password-0123")
    assert not bootstraps(cluster, **wrong)
    # The broker's word for it, logged during this attempt (the client may see only the
    # socket the broker closed right after its answer, so its own log is no witness).
    during = log.read_bytes()[before:].decode(errors="replace")
    assert "Failed authentication" in during, during[-2000:]


def test_an_unknown_user_is_refused(cluster: SecureLocalKafkaCluster) -> None:
    assert not bootstraps(cluster, **cluster.client_security("intruder", password="x" * 32))


def test_a_client_without_tls_is_refused(cluster: SecureLocalKafkaCluster) -> None:
    """Plain PLAINTEXT, and SASL with the right password but without TLS: the listener
    speaks TLS only (the broker logs an SSL handshake failure)."""
    assert not bootstraps(cluster)
    sasl_without_tls = cluster.client_security("member-service")
    sasl_without_tls["security_protocol"] = "SASL_PLAINTEXT"
    del sasl_without_tls["ssl_cafile"]
    assert not bootstraps(cluster, **sasl_without_tls)
    assert "SSL handshake failed" in cluster.layout[0].log.read_text()


def test_a_client_that_does_not_trust_the_ca_does_not_connect(
    cluster: SecureLocalKafkaCluster,
) -> None:
    untrusting = cluster.client_security("member-service")
    del untrusting["ssl_cafile"]
    assert not bootstraps(cluster, **untrusting)


def test_the_controller_listener_takes_no_anonymous_client(
    cluster: SecureLocalKafkaCluster,
) -> None:
    """The controller's port (loopback) wants SASL PLAIN as the broker's user: without
    it nobody, not even ANONYMOUS, gets in (ANONYMOUS is no super user here)."""
    assert not bootstraps(cluster, port=cluster.layout[0].controller_port)


# -- the operator -----------------------------------------------------------------------


def test_the_operator_reads_lag_and_dead_letters_and_replays(
    cluster: SecureLocalKafkaCluster,
) -> None:
    """What `signup-pipeline status`, `dlt list` and `dlt replay` do, as the operator:
    offsets of both groups (without joining them), each .DLT, a replay into the
    original topic."""
    names = [*TOPIC_NAMES]
    with logged_in_as(cluster, OPERATOR), OffsetReader(cluster.bootstrap_list, 15) as reader:
        ranges = reader.log_ranges(names)
        assert set(ranges) == set(names)
        for topic in TOPICS:
            lag = reader.lag(topic.consumer_group, ranges[topic.name], topic.name)
            assert sum(p.lag for p in lag) >= 1, topic.name
    before = read(cluster, OPERATOR, "profile-insert")
    with logged_in_as(cluster, OPERATOR):
        listed = list_dead_letters(cluster.bootstrap_list, "profile-insert")
        letters = [letter for letter in listed if letter.error == "seeded by the test"]
        assert len(letters) == 1, listed
        assert replay(cluster.bootstrap_list, letters) == letters
    assert read(cluster, OPERATOR, "profile-insert") == before + 1


def test_only_the_operator_may_list_and_replay_dead_letters(
    cluster: SecureLocalKafkaCluster,
) -> None:
    with logged_in_as(cluster, OPERATOR):
        letters = list_dead_letters(cluster.bootstrap_list, "partner-created")
    assert letters
    # The broker does not even tell member-service the topic exists: it sees no letters.
    with logged_in_as(cluster, "member-service"):
        assert list_dead_letters(cluster.bootstrap_list, "partner-created") == []
    with logged_in_as(cluster, "batch-service"), pytest.raises(TopicAuthorizationFailedError):
        replay(cluster.bootstrap_list, letters)


# -- the same broker as docker-compose.sasl.yml's ------------------------------------------

RECORDER = """#!{python}
import os, sys
args = sys.argv[1:]
if args and args[0] == "random-uuid":
    print("cluster-id")
elif os.path.basename(sys.argv[0]) == "kafka-server-start.sh":
    with open(os.environ["RECORD"], "w") as out:
        out.write(open(args[0]).read())
"""
# The settings that make the security; addresses, paths and passwords differ by design.
SECURITY_KEYS = (
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "controller.listener.names",
    "sasl.enabled.mechanisms",
    "sasl.mechanism.inter.broker.protocol",
    "sasl.mechanism.controller.protocol",
    "listener.name.controller.sasl.enabled.mechanisms",
    "ssl.keystore.type",
    "ssl.truststore.type",
    "ssl.client.auth",
    "ssl.endpoint.identification.algorithm",
    "ssl.enabled.protocols",
    "authorizer.class.name",
    "super.users",
    "allow.everyone.if.no.acl.found",
)


def read_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


def test_the_local_broker_is_configured_as_the_compose_broker(
    cluster: SecureLocalKafkaCluster, tmp_path: Path
) -> None:
    """deploy/kafka/start-sasl.sh run with the Kafka tools replaced by a recorder: the
    security settings it writes are the local node's, and it adds the same users."""
    bin_dir = tmp_path / "kafka" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        (bin_dir / tool).write_text(RECORDER.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "data").mkdir()
    passwords = {password_variable(user): cluster.passwords[user] for user in cluster.users}
    result = subprocess.run(
        ["bash", str(START_SASL)],
        env={
            "PATH": os.environ["PATH"],
            "KAFKA_HOME": str(tmp_path / "kafka"),
            "KAFKA_TLS_DIR": str(cluster.tls_dir),
            "KAFKA_DATA_DIR": str(tmp_path / "data"),
            "KAFKA_CONFIG_DIR": str(tmp_path / "config"),
            "RECORD": str(tmp_path / "server.properties"),
            **passwords,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    compose = read_properties((tmp_path / "server.properties").read_text())
    local = cluster.properties(cluster.layout[0])
    assert {k: compose.get(k) for k in SECURITY_KEYS} == {k: local.get(k) for k in SECURITY_KEYS}
    assert local["super.users"] == f"User:{BROKER_USER}"
    ours = set(PROCESS_PRINCIPALS.values()) - {None} | {OPERATOR}
    assert ours | set(OUTSIDE_PRODUCERS) == set(PRINCIPALS)
