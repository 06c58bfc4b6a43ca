"""The Kafka security settings reach the client that talks to a real broker."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaError

from shared.config import kafka_security
from shared.messaging.kafka import missing_topics, pipeline_topics, use_security

pytestmark = pytest.mark.integration


def test_the_settings_reach_the_client_that_talks_to_the_broker(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled broker speaks PLAINTEXT only: a client told to use SASL cannot talk to
    it, which shows the setting was applied (and without it the same call works)."""
    answered = missing_topics(kafka_bootstrap.split(","), timeout_ms=5000)  # talks PLAINTEXT fine
    assert set(answered) <= set(pipeline_topics())
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "member-service")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-s3cret")
    use_security(kafka_security())  # as a process's entry point does, from shared.config
    try:
        with pytest.raises(KafkaError):
            missing_topics(kafka_bootstrap.split(","), timeout_ms=3000)
    finally:
        use_security(kafka_security({}))
