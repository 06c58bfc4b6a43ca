"""The production security path on the local Apache Kafka: docker-compose.sasl.yml's
SASL_SSL/SCRAM-SHA-512 broker, its users and its grants, run from the cached jars.

`SecureLocalKafkaCluster` is a `LocalKafkaCluster` configured as deploy/kafka/start-sasl.sh
configures the compose broker:

- TLS made by deploy/kafka/make-tls.sh itself (keytool: a private CA whose key is thrown
  away, a PKCS12 broker keystore), into the cluster's workdir, for 127.0.0.1 and localhost;
- clients and brokers on a SASL_SSL listener with SCRAM-SHA-512, the brokers as the
  broker's own user, `admin`, the only super user;
- the controller listener on loopback, SASL_PLAINTEXT with PLAIN as that same `admin`
  (SCRAM credentials live in the metadata log, which a controller cannot read before it
  runs; PLAIN's user is in its JAAS line instead);
- StandardAuthorizer with allow.everyone.if.no.acl.found=false: what is not granted is
  denied;
- one SCRAM user per principal of deploy/kafka/grants.txt, created when the storage is
  formatted (`kafka-storage format --add-scram`), with a random password kept in the
  workdir (credentials.json, 0600) so the cluster can be restarted;
- the grants of deploy/kafka/grants.txt as ACLs (`grant_all`, kafka-python's
  `create_acls`), and the pipeline's topics, both made as `admin` (`setup_pipeline`).

The table in deploy/kafka/grants.txt is the one place the principals and their grants
are written; `load_grants` reads it for the ACLs, the tests and the docs alike.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.kafka_cluster import REPO_ROOT, KafkaClusterError, LocalKafkaCluster, NodeLayout
from shared.config import child_environment
from shared.messaging.pipeline import ACTIVITY_TOPICS

GRANTS_FILE = REPO_ROOT / "deploy" / "kafka" / "grants.txt"
MAKE_TLS_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "make-tls.sh"
BROKER_USER = "admin"
MECHANISM = "SCRAM-SHA-512"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
RESOURCES = ("topic", "group")
OPERATIONS = ("Read", "Write", "Describe")
# Kafka's implications: an ACL allowing one of these also allows Describe.
IMPLIES_DESCRIBE = ("Read", "Write", "Delete", "Alter")

# Which principal each of the contract's processes logs in as (None: it has no Kafka
# user, because it never talks to Kafka), and the operator's, for `signup-pipeline`.
PROCESS_PRINCIPALS: Mapping[str, str | None] = {
    "auth-api": "auth-service",
    "auth-worker": "auth-service",
    "member-worker": "member-service",
    "member-api": None,
    "batch-worker": "batch-service",
    "batch-api": None,
}
OPERATOR = "operator"
# The principals of other teams' services, which produce the partners' activity topics
# (each its own topics, Write only): users of this broker, but no process of ours.
OUTSIDE_PRODUCERS: tuple[str, ...] = tuple(
    dict.fromkeys(topic.producer for topic in ACTIVITY_TOPICS)
)


@dataclass(frozen=True)
class Grant:
    """One line of deploy/kafka/grants.txt: `principal` may do `operations` on the
    `resource` (topic or group) called `name` (literally that name, no prefix)."""

    principal: str
    resource: str
    name: str
    operations: tuple[str, ...]


def load_grants(path: Path = GRANTS_FILE) -> tuple[Grant, ...]:
    """The grants table; KafkaClusterError for a line that is not a grant."""
    grants = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 4:
            raise KafkaClusterError(f"{path}:{number}: want PRINCIPAL RESOURCE NAME OPERATIONS")
        principal, resource, name, listed = fields
        operations = tuple(listed.split(","))
        if resource not in RESOURCES or not set(operations) <= set(OPERATIONS):
            raise KafkaClusterError(
                f"{path}:{number}: resource must be one of {RESOURCES}, operations of {OPERATIONS}"
            )
        grants.append(Grant(principal, resource, name, operations))
    return tuple(grants)


def principals(grants: Iterable[Grant]) -> list[str]:
    """Every principal of the table, in the order it first appears."""
    return list(dict.fromkeys(grant.principal for grant in grants))


def password_variable(principal: str) -> str:
    """The variable docker-compose.sasl.yml takes `principal`'s password from."""
    return f"KAFKA_{principal.upper().replace('-', '_')}_PASSWORD"


def allows(
    grants: Iterable[Grant], principal: str, resource: str, name: str, operation: str
) -> bool:
    """Whether the table lets `principal` do `operation` on `resource` `name` (with
    Kafka's implication of Describe by Read and Write)."""
    for grant in grants:
        if (grant.principal, grant.resource, grant.name) != (principal, resource, name):
            continue
        if operation in grant.operations:
            return True
        if operation == "Describe" and set(grant.operations) & set(IMPLIES_DESCRIBE):
            return True
    return False


def acl_bindings(grants: Iterable[Grant]) -> list[Any]:
    """The grants as kafka-python ACLs: allow, from any host, on the literal name."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    return [
        ACL(
            principal=f"User:{grant.principal}",
            host="*",
            operation=ACLOperation[operation.upper()],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[grant.resource.upper()], grant.name, ACLResourcePatternType.LITERAL
            ),
        )
        for grant in grants
        for operation in grant.operations
    ]


def scram_argument(user: str, password: str) -> str:
    """`kafka-storage format --add-scram`'s value for one user."""
    return f"{MECHANISM}=[name={user},password={password}]"


class SecureLocalKafkaCluster(LocalKafkaCluster):
    """A LocalKafkaCluster secured as docker-compose.sasl.yml secures its broker (see the
    module docstring). One node is enough for the security path; more work as well."""

    def __init__(
        self,
        nodes: int = 1,
        workdir: Path | None = None,
        jars_dir: Path | None = None,
        java: str = "java",
        grants: Sequence[Grant] | None = None,
    ) -> None:
        super().__init__(nodes, workdir, jars_dir, java)
        self.grants = tuple(grants if grants is not None else load_grants())
        self.users = [BROKER_USER, *principals(self.grants)]
        self.tls_dir = self.workdir / "tls" / "broker"
        self.ca_dir = self.workdir / "tls" / "ca"
        self.passwords = self._load_or_make_passwords()

    # -- secrets ----------------------------------------------------------------------

    def _load_or_make_passwords(self) -> dict[str, str]:
        """A random password per user, kept beside cluster.json for restarts."""
        path = self.workdir / "credentials.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
        wanted = {user: known.get(user) or secrets.token_hex(24) for user in self.users}
        if wanted != known:
            path.touch(mode=0o600)
            path.write_text(json.dumps(wanted, indent=2) + "\n")
        return wanted

    @property
    def cafile(self) -> Path:
        """The CA certificate clients trust (what KAFKA_SSL_CAFILE names)."""
        return self.ca_dir / "ca.pem"

    def make_tls(self) -> None:
        """The broker's keystore and the CA certificate, by deploy/kafka/make-tls.sh (the
        compose file's kafka-tls job); kept when already made."""
        result = subprocess.run(
            ["bash", str(MAKE_TLS_SCRIPT), str(self.tls_dir), str(self.ca_dir)],
            env=child_environment() | {"KAFKA_TLS_NAMES": "dns:localhost,ip:127.0.0.1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaClusterError(f"make-tls.sh failed: {result.stderr.strip()[-2000:]}")

    # -- the hooks of LocalKafkaCluster -----------------------------------------------

    def properties(self, node: NodeLayout) -> dict[str, str]:
        """The base node's settings, with deploy/kafka/start-sasl.sh's security."""
        admin = self.passwords[BROKER_USER]
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{admin}";'
        )
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{admin}" user_{BROKER_USER}="{admin}";'
        )
        keystore_password = (self.tls_dir / "keystore-password").read_text().strip()
        return super().properties(node) | {
            "listeners": (
                f"SASL_SSL://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram_login,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_login,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.tls_dir / "broker.p12"),
            "ssl.keystore.password": keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls_dir / "ca.pem"),
            "ssl.client.auth": "none",
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "super.users": f"User:{BROKER_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_arguments(self, node: NodeLayout) -> list[str]:
        """Every user, the broker's own first, as SCRAM-SHA-512 credentials."""
        arguments = []
        for user in self.users:
            arguments += ["--add-scram", scram_argument(user, self.passwords[user])]
        return arguments

    def client_options(self) -> dict[str, Any]:
        """The broker's own user, for this cluster's admin clients."""
        return self.client_security(BROKER_USER)

    def start(self, timeout: float = 90.0) -> SecureLocalKafkaCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.make_tls()
        super().start(timeout)
        return self

    def __enter__(self) -> SecureLocalKafkaCluster:
        return self.start()

    # -- clients ----------------------------------------------------------------------

    def client_security(self, user: str, password: str | None = None) -> dict[str, Any]:
        """kafka-python options to log in as `user` (with its password, or `password`)."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": password if password is not None else self.passwords[user],
            "ssl_cafile": str(self.cafile),
        }

    def environment(self, principal: str | None) -> dict[str, str]:
        """The variables a process logging in as `principal` gets (none for None)."""
        if principal is None:
            return {}
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD": self.passwords[principal],
            "KAFKA_SSL_CAFILE": str(self.cafile),
        }

    def process_environments(self) -> dict[str, dict[str, str]]:
        """Each contract process's own Kafka variables (see PROCESS_PRINCIPALS), for
        devtools.stack.Stack(process_env=...)."""
        return {name: self.environment(user) for name, user in PROCESS_PRINCIPALS.items()}

    def admin(self, **options: Any) -> Any:
        """A kafka-python admin client logged in as the broker's own user."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_list,
            request_timeout_ms=15_000,
            bootstrap_timeout_ms=15_000,
            **(self.client_options() | options),
        )

    # -- what compose's kafka-topics job does -----------------------------------------

    def grant_all(self, timeout: float = 30.0) -> None:
        """Create the ACLs of the grants table (creating one that exists changes nothing).
        KafkaClusterError naming any the broker refused."""
        from kafka.admin import (
            ACLFilter,
            ACLOperation,
            ACLPermissionType,
            ACLResourcePatternType,
            ResourcePatternFilter,
            ResourceType,
        )

        bindings = acl_bindings(self.grants)
        everything = ACLFilter(
            None,
            None,
            ACLOperation.ANY,
            ACLPermissionType.ANY,
            ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        admin = self.admin()
        try:
            result = admin.create_acls(bindings)
            if result["failed"] or len(result["succeeded"]) != len(bindings):
                raise KafkaClusterError(f"the broker refused ACLs: {result['failed']}")
            # The controller commits them; each broker applies them from the metadata log
            # a moment later. Until every one shows, a client could still be refused.
            deadline = time.monotonic() + timeout
            while set(bindings) - set(admin.describe_acls(everything)[0]):
                if time.monotonic() > deadline:
                    raise KafkaClusterError(f"the ACLs did not show within {timeout}s")
                time.sleep(0.1)
        finally:
            admin.close()

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        """Create the topics named in `partitions` (name: count) that do not exist, with
        the cluster's default replication factor."""
        from kafka.admin import NewTopic

        admin = self.admin()
        try:
            existing = set(admin.list_topics())
            wanted = [
                NewTopic(name, count, -1)
                for name, count in partitions.items()
                if name not in existing
            ]
            if wanted:
                admin.create_topics(wanted)
        finally:
            admin.close()

    def setup_pipeline(self) -> None:
        """The pipeline's topics and the grants, as compose's kafka-topics job makes them."""
        from shared.messaging.kafka import pipeline_topics

        self.create_topics(pipeline_topics())
        self.grant_all()


__all__ = [
    "BROKER_USER",
    "GRANTS_FILE",
    "OPERATOR",
    "OUTSIDE_PRODUCERS",
    "PROCESS_PRINCIPALS",
    "Grant",
    "SecureLocalKafkaCluster",
    "acl_bindings",
    "allows",
    "load_grants",
    "password_variable",
    "principals",
]
