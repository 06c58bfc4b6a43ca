"""Kafka client security settings come from the environment, are checked at start, and
reach every client the pipeline makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, kafka_security
from shared.messaging.kafka import client_security


def test_no_setting_means_plaintext_and_adds_nothing() -> None:
    assert client_security(kafka_security({})) == {}


def test_sasl_ssl_with_scram_and_a_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = client_security(
        kafka_security(
            {
                "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                "KAFKA_SASL_USERNAME": "member-service",
                "KAFKA_SASL_PASSWORD": "s3cret-s3cret",
                "KAFKA_SSL_CAFILE": str(ca),
            }
        )
    )
    assert settings == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "member-service",
        "sasl_plain_password": "s3cret-s3cret",
        "ssl_cafile": str(ca),
    }


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM='GSSAPI' is not one of",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "would send the password in clear",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nope.pem"}, "not a readable"),
        ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SECURITY_PROTOCOL is not SSL"),
    ],
)
def test_a_wrong_security_setting_is_a_clear_config_error(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        client_security(kafka_security(env))


def test_a_client_made_before_any_entry_point_spoke_still_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No client may connect in PLAINTEXT only because nobody called use_security."""
    from shared.messaging import kafka

    monkeypatch.setattr(kafka, "_security", [None])
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "member-service")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-s3cret")

    assert kafka.process_client_security()["security_protocol"] == "SASL_SSL"
