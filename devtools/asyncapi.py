"""The AsyncAPI 3.0 document of the pipeline's topics, generated from `shared.messaging.pipeline`.

    python -m devtools.asyncapi > docs/asyncapi.yaml     (or --output docs/asyncapi.yaml)

The committed docs/asyncapi.yaml is this command's output; a test fails when they
differ, so change the code (the event schemas in shared/messaging/pipeline.py, or this module)
and regenerate, never the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apispec.ext.marshmallow import MarshmallowPlugin

from shared.http.apidocs import CANONICAL_UUID, new_spec, package_version, schema_name
from shared.messaging import deadletters
from shared.messaging.pipeline import ACTIVITY_TOPICS, MAX_ITEM_ID, TOPICS, ItemId, Topic

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
TRACEPARENT = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
DEAD_LETTER_PARTITIONS = 1  # as shared.messaging.kafka.pipeline_topics creates them
OPERATORS = "operators (`signup-pipeline dlt list|replay <topic>`)"

# One made-up event per topic, for the document's examples (and the README's).
EXAMPLE_MEMBER = "5f0c7f5e-8d0b-4a8e-9a53-2f4f1c2d9b71"
EXAMPLE_FOLLOWER = "9d3b7e21-64c8-4f0a-b5e2-81c4d6f0a937"
# The topics other teams' services produce (their own way: no outbox of ours).
OUTSIDE_PRODUCED = frozenset(topic.name for topic in ACTIVITY_TOPICS)
ITEM_ID = {
    "description": "The producing service's id for it: a string of 1 to 64 printable "
    "characters, or a non-negative integer (a Java `long`), kept as its decimal text "
    '(`7` and `"7"` are the same item).',
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^\S(?:.*\S)?$"},
        {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_ID},
    ],
}
# One trace follows the signup through its events (each event has its own span); the
# deletion is another request, so another trace.
EXAMPLE_TRACEPARENTS = {
    "profile-insert": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "partner-created": "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01",
    "profile-created": "00-4bf92f3577b34da6a3ce929d0e0e4736-5c1e2b7a9d3f4e60-01",
    "profile-rejected": "00-8e2d4c6a0b1f3e5d7c9a2b4d6f8e0a1c-9a4c2e6b8d0f1a3c-01",
    "profile-delete": "00-0af7651916cd43dd8448eb211c80319c-e457b5a2e4d86bd1-01",
    "partner-deleted": "00-0af7651916cd43dd8448eb211c80319c-3f9b6d1e5a7c2b84-01",
    # The partner's activity: each another team's request, each its own trace.
    "post-created": "00-2c7e9a1b3d5f4a6c8e0b2d4f6a8c0e1b-7a1c3e5b9d2f4a60-01",
    "post-deleted": "00-6f1a3c5e7b9d4f0a2c4e6b8d0f1a3c5e-1d3f5a7c9e2b4d68-01",
    "follow-created": "00-a4c6e8f0b2d4468ab9c1e3f5a7b9d1e3-5e7a9c1b3d5f7a92-01",
    "follow-deleted": "00-d8f0b2c4e6a8471bc3d5e7f9a1b3c5d7-9b1d3f5a7c9e1b34-01",
    "coordinate-closed": "00-1e3a5c7e9b0d42f6a8c0e2b4d6f8a0c2-3c5e7a9b1d3f5e76-01",
    "review-created": "00-5b7d9f1a3c5e4a7b9d1f3a5c7e9b1d3f-e2a4c6e8b0d2f4a1-01",
}
EXAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "profile-insert": {
        "uuid": EXAMPLE_MEMBER,
        "role": "PARTNER",
        "nickname": "minji",
        "favoriteStyles": [3, 1, 7],
    },
    "partner-created": {"partnerId": EXAMPLE_MEMBER},
    "profile-created": {"uuid": EXAMPLE_MEMBER},
    "profile-rejected": {"uuid": EXAMPLE_MEMBER, "reason": "nickname_taken"},
    "profile-delete": {"uuid": EXAMPLE_MEMBER},
    "partner-deleted": {"partnerId": EXAMPLE_MEMBER},
    "post-created": {"postId": "1024", "partnerId": EXAMPLE_MEMBER},
    "post-deleted": {"postId": "1024", "partnerId": EXAMPLE_MEMBER},
    "follow-created": {"followerId": EXAMPLE_FOLLOWER, "partnerId": EXAMPLE_MEMBER},
    "follow-deleted": {"followerId": EXAMPLE_FOLLOWER, "partnerId": EXAMPLE_MEMBER},
    "coordinate-closed": {"requestId": "req-20261203-0042", "partnerId": EXAMPLE_MEMBER},
    "review-created": {"reviewId": 88172, "partnerId": EXAMPLE_MEMBER, "star": 4},
}
EXAMPLE_EVENT_IDS = {
    "profile-insert": "b3e1a9c2-4f6d-4e8a-9c1b-7d2e5f8a0c34",
    "partner-created": "0d7f3b5a-2c4e-4f9a-8b6d-1e3c5a7f9b20",
    "profile-created": "6a2c8e4f-1b3d-4c5e-9f7a-2d4b6c8e0f13",
    "profile-rejected": "c9e7a5b3-8d1f-4a2c-b6e4-0f2d4a6c8e57",
    "profile-delete": "4e6a8c0e-2f4b-4d6f-8a0c-3b5d7f9a1c24",
    "partner-deleted": "7b9d1f3a-5c7e-4a9b-8d1f-6e8a0c2e4b35",
    "post-created": "e1c3a5b7-9d2f-4e6a-8c1b-3d5f7a9c2e48",
    "post-deleted": "2a4c6e8a-0b3d-4f5a-9c7e-1b3d5f7a9c61",
    "follow-created": "8f0b2d4f-6a1c-4e3b-a5d7-9f1b3d5e7a82",
    "follow-deleted": "3b5d7f9b-1c4e-4a6c-8e0a-2c4e6a8c0b93",
    "coordinate-closed": "c4e6a8c0-2d5f-4b7d-9f1b-3d5f7b9d1ea4",
    "review-created": "5d7f9b1d-3e6a-4c8e-a0c2-4e6a8c0e2fb5",
}
EXAMPLE_TIMES = {
    "profile-insert": "2026-11-21T22:15:03.123456Z",
    "partner-created": "2026-11-21T22:15:03.201934Z",
    "profile-created": "2026-11-21T22:15:03.201934Z",
    "profile-rejected": "2026-11-21T22:15:03.198211Z",
    "profile-delete": "2026-12-02T09:41:17.502118Z",
    "partner-deleted": "2026-12-02T09:41:17.588403Z",
    "post-created": "2026-11-22T10:02:45.310027Z",
    "post-deleted": "2026-11-25T18:30:12.004513Z",
    "follow-created": "2026-11-22T11:47:09.872260Z",
    "follow-deleted": "2026-11-28T07:15:33.419981Z",
    "coordinate-closed": "2026-11-24T16:05:58.663102Z",
    "review-created": "2026-11-24T16:40:21.095374Z",
}


def _camel(name: str) -> str:
    head, *rest = name.replace(".", "-").split("-")
    return head.lower() + "".join(part.title() for part in rest)


def _text(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


def example_headers(topic: Topic[Any]) -> dict[str, str]:
    """The headers a record of `topic` carries, with the example event's values."""
    return {
        "ce_specversion": "1.0",
        "ce_id": EXAMPLE_EVENT_IDS[topic.name],
        "ce_source": topic.producer,
        "ce_type": topic.name,
        "ce_time": EXAMPLE_TIMES[topic.name],
        "content-type": "application/json",
        "traceparent": EXAMPLE_TRACEPARENTS[topic.name],
    }


def _event_id_description(topic: Topic[Any]) -> str:
    if topic.name in OUTSIDE_PRODUCED:
        return (
            "Unique per event and the same on every redelivery: the consumer applies an "
            "event once per `ce_id` (a uuid is a good choice). A record that comes without "
            "one is applied once per position, `<topic>:<partition>:<offset>`, so a copy "
            "the producer sends again is applied again."
        )
    return (
        "Unique per event and the same on every redelivery: consumers apply an event "
        "once per `ce_id`. The producer's outbox row id (a uuid); a replayed dead "
        "letter that came without one carries `<topic>:<partition>:<offset>`."
    )


def cloudevents_headers(topic: Topic[Any]) -> dict[str, Any]:
    """The headers every record of `topic` carries: the CloudEvents 1.0 Kafka binding
    (binary mode) and W3C trace context."""
    return {
        "type": "object",
        "description": "Kafka record headers; each value is UTF-8 text.",
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"],
        "properties": {
            "ce_specversion": _text("CloudEvents version.", const="1.0"),
            "ce_id": _text(_event_id_description(topic)),
            "ce_source": _text("The service that produced the event.", const=topic.producer),
            "ce_type": _text("The event type: the topic's name.", const=topic.name),
            "ce_time": _text(
                "When the event was recorded with the state it describes (RFC 3339, UTC).",
                format="date-time",
            ),
            "content-type": _text("The value's media type.", const="application/json"),
            "traceparent": _text(
                "W3C trace context of the work that produced the event, when there is one.",
                pattern=TRACEPARENT,
            ),
        },
    }


def dead_letter_headers(topic: Topic[Any]) -> dict[str, Any]:
    """The headers of a `<topic>.DLT` record: the original's, then why and where it failed."""
    # The original headers are kept as they came, and a record can be dead-lettered
    # precisely because they were wrong: here they are described, never required.
    original = cloudevents_headers(topic)["properties"]
    kept = {
        name: _text(f"As on the original record. {schema['description']}")
        for name, schema in original.items()
    }
    return {
        "type": "object",
        "description": "Kafka record headers; each value is UTF-8 text.",
        "required": list(deadletters.HEADERS),
        "properties": {
            **kept,
            deadletters.ERROR: _text(
                "Why the consumer gave up, on one line.", maxLength=deadletters.MAX_ERROR_LENGTH
            ),
            deadletters.ORIGINAL_TOPIC: _text(
                "The topic the record was read from.", const=topic.name
            ),
            deadletters.ORIGINAL_PARTITION: _text("Its partition there.", pattern="^[0-9]+$"),
            deadletters.ORIGINAL_OFFSET: _text("Its offset there.", pattern="^[0-9]+$"),
            deadletters.ATTEMPTS: _text("How many times it was tried.", pattern="^[1-9][0-9]*$"),
        },
    }


def _key(topic: Topic[Any]) -> dict[str, Any]:
    who = "partner" if topic.name in OUTSIDE_PRODUCED else "member"
    return {
        "key": _text(
            f"The {topic.key}: every event about one {who} lands on one partition, in order.",
            format="uuid",
            pattern=CANONICAL_UUID,
        ),
        "bindingVersion": KAFKA_BINDING_VERSION,
    }


def _dead_letter_key(topic: Topic[Any]) -> dict[str, Any]:
    return {
        "key": _text(f"The original record's key, byte for byte (meant to be the {topic.key})."),
        "bindingVersion": KAFKA_BINDING_VERSION,
    }


def _message(topic: Topic[Any]) -> dict[str, Any]:
    payload = schema_name(topic.schema)
    return {
        "name": topic.name,
        "title": f"{topic.name} event",
        "summary": str(topic.schema.__doc__),
        "contentType": "application/json",
        "headers": cloudevents_headers(topic),
        "payload": {"$ref": f"#/components/schemas/{payload}"},
        "bindings": {"kafka": _key(topic)},
        "examples": [
            {
                "name": _camel(topic.name),
                "summary": f"Kafka key: {EXAMPLE_MEMBER}",
                "headers": example_headers(topic),
                "payload": EXAMPLE_PAYLOADS[topic.name],
            }
        ],
    }


def _dead_letter_message(topic: Topic[Any]) -> dict[str, Any]:
    return {
        "name": topic.dead_letter,
        "title": f"{topic.name} dead letter",
        "summary": f"A {topic.name} record its consumer gave up on, kept for operators.",
        "description": f"Key and value are the original record's, byte for byte. The value "
        f"is meant to be a `{topic.name}` event, but need not be one (or JSON at all): "
        f"failing to be one is a reason to be here.",
        "contentType": "application/json",
        "headers": dead_letter_headers(topic),
        "payload": {"description": f"The original `{topic.name}` value, byte for byte."},
        "bindings": {"kafka": _dead_letter_key(topic)},
    }


def _channel(address: str, message: str, partitions: int, description: str) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {"kafka": {"partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _operation(
    action: str, channel: str, message: str, who: str, summary: str, group: str | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "tags": [{"name": who}],
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }
    if group is not None:
        operation["bindings"] = {
            "kafka": {
                "groupId": {"type": "string", "const": group},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }
    return operation


def _item_id(converter: Any, field: Any, **kwargs: Any) -> dict[str, Any]:
    """An ItemId's JSON Schema: a string or a non-negative integer (apispec knows nothing
    of a custom field, and would leave it as `{}`: anything)."""
    return dict(ITEM_ID) if isinstance(field, ItemId) else {}


def payload_schemas(topics: Sequence[Topic[Any]] = TOPICS) -> dict[str, Any]:
    """Each topic's event schema as JSON Schema, converted from its marshmallow schema."""
    # OpenAPI 3.1's schema dialect is plain JSON Schema (no `nullable`), which is what
    # an AsyncAPI Schema Object and a JSON Schema validator expect.
    spec = new_spec("events", "", openapi_version="3.1.0")
    [plugin] = spec.plugins
    assert isinstance(plugin, MarshmallowPlugin) and plugin.converter is not None
    plugin.converter.add_attribute_function(_item_id)  # type: ignore[no-untyped-call]
    for topic in topics:
        spec.components.schema(schema_name(topic.schema), schema=topic.schema)
    schemas: dict[str, Any] = spec.to_dict()["components"]["schemas"]
    for topic in topics:
        schemas[schema_name(topic.schema)]["description"] = (
            f"The value of a `{topic.name}` record: UTF-8 JSON, camelCase. Consumers ignore "
            "fields they do not know."
        )
    return schemas


def asyncapi_document(topics: Sequence[Topic[Any]] = TOPICS) -> dict[str, Any]:
    """The AsyncAPI document of `topics`, their dead-letter topics, and who is at each end."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in topics:
        name, dlt = _camel(topic.name), _camel(topic.dead_letter)
        messages[name] = _message(topic)
        messages[dlt] = _dead_letter_message(topic)
        outside = topic.name in OUTSIDE_PRODUCED
        channels[name] = _channel(
            topic.name,
            name,
            topic.partitions,
            f"Produced by {topic.producer}"
            + (" (another team's service)" if outside else " (through its outbox)")
            + f", consumed by consumer group {topic.consumer_group}; keyed by {topic.key}.",
        )
        channels[dlt] = _channel(
            topic.dead_letter,
            dlt,
            DEAD_LETTER_PARTITIONS,
            f"Records of {topic.name} that {topic.consumer_group} can never apply; "
            f"read by {OPERATORS}.",
        )
        verb = name[0].upper() + name[1:]
        operations[f"send{verb}"] = _operation(
            "send",
            name,
            name,
            topic.producer,
            (
                f"{topic.producer} publishes a {topic.name} event once the change it "
                "describes is committed, at least once, each event under one `ce_id`."
            )
            if outside
            else f"{topic.producer} publishes a {topic.name} event once the transaction "
            "that recorded it committed (transactional outbox; at least once).",
        )
        operations[f"receive{verb}"] = _operation(
            "receive",
            name,
            name,
            topic.consumer_group,
            f"{topic.consumer_group} applies each event once (inbox), committing offsets "
            "only after its transaction committed.",
            group=topic.consumer_group,
        )
        operations[f"send{verb}Dlt"] = _operation(
            "send",
            dlt,
            dlt,
            topic.consumer_group,
            f"{topic.consumer_group} parks a record it can never apply.",
        )
        operations[f"receive{verb}Dlt"] = _operation(
            "receive",
            dlt,
            dlt,
            "operators",
            f"{OPERATORS} list dead letters and replay them to {topic.name}.",
        )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Signup pipeline events",
            "version": package_version(),
            "description": "The Kafka topics between auth-service, member-service and "
            "batch-service, and those on which other teams' services (post-service, "
            "follow-service, coordinate-service, review-service) tell batch-service what "
            "partners do. Values are the event JSON only; metadata travels in headers "
            "(CloudEvents 1.0 Kafka binding, binary mode). Delivery is at least once; "
            "consumers deduplicate by `ce_id`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The brokers in KAFKA_BOOTSTRAP_SERVERS (localhost:9092 "
                "unless set).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": payload_schemas(topics), "messages": messages},
    }


def render_yaml(document: dict[str, Any]) -> str:
    """`document` as YAML, keys in the order they were built, headed by how to regenerate it."""
    import yaml  # a dev dependency: only this command writes YAML

    class Dumper(yaml.SafeDumper):  # type: ignore[misc]
        # Shared sub-dicts would become &id001 anchors; tools read plain YAML more easily.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)
    return (
        "# Generated by `python -m devtools.asyncapi > docs/asyncapi.yaml`\n"
        "# from shared/messaging/pipeline.py; do not edit by hand.\n" + str(body)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write the AsyncAPI document to stdout or `--output`."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.asyncapi", description="Write the pipeline's AsyncAPI document."
    )
    parser.add_argument("--output", type=Path, help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render_yaml(asyncapi_document())
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
