"""Dead letters: a record that can never be applied is copied, byte for byte (key, value
and headers), to `<topic>.DLT`, with headers saying why it failed and where it came from.

The consumer writes them, the operator's `dlt` command reads them back and replays the
original, the AsyncAPI document describes them: the header names live here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.messaging.kafka import Headers, Message

PREFIX = "dlt-"
ERROR = "dlt-error"
ORIGINAL_TOPIC = "dlt-original-topic"
ORIGINAL_PARTITION = "dlt-original-partition"
ORIGINAL_OFFSET = "dlt-original-offset"
ATTEMPTS = "dlt-attempts"
HEADERS = (ERROR, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ATTEMPTS)
MAX_ERROR_LENGTH = 1000


def error_line(error: str) -> str:
    """`error` on one line, at most MAX_ERROR_LENGTH characters."""
    return " ".join(error.split())[:MAX_ERROR_LENGTH]


def original_headers(headers: Sequence[tuple[str, bytes | None]]) -> Headers:
    """`headers` without any `dlt-*` header; a null value (Kafka allows it, the producer
    does not) becomes empty."""
    return [(name, value or b"") for name, value in headers if not name.startswith(PREFIX)]


def dead_letter_headers(message: Message, error: str, attempts: int) -> Headers:
    """The headers of `message`'s dead letter: its own, then why and where it failed.

    A record dead-lettered before (replayed, failed again) gets fresh `dlt-*` headers,
    not a second set."""
    return original_headers(message.headers) + [
        (ERROR, error_line(error).encode()),
        (ORIGINAL_TOPIC, message.topic.encode()),
        (ORIGINAL_PARTITION, str(message.partition).encode()),
        (ORIGINAL_OFFSET, str(message.offset).encode()),
        (ATTEMPTS, str(attempts).encode()),
    ]


def original_of(dead_letter: Message) -> Message:
    """The record as it stood in its original topic, before it was dead-lettered."""
    return Message(
        topic=dead_letter.header(ORIGINAL_TOPIC) or "",
        key=dead_letter.key,
        value=dead_letter.value,
        headers=original_headers(dead_letter.headers),
        partition=int(dead_letter.header(ORIGINAL_PARTITION) or -1),
        offset=int(dead_letter.header(ORIGINAL_OFFSET) or -1),
    )
