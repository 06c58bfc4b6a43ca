"""docs/asyncapi.yaml: what the code generates, valid AsyncAPI 3.0.0, and true of the
records the pipeline really produces."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, FormatChecker, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from devtools.asyncapi import asyncapi_document, main, render_yaml
from shared.messaging.kafka import Message
from shared.messaging.pipeline import TOPICS
from shared.messaging.processor import Outcome
from tests.processing import process_one
from tests.unit.pipeline_harness import InMemoryPipeline, signup_body

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "specs" / "asyncapi-3.0.0.json"
CLOUDEVENTS_HEADERS = {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"}
DLT_HEADERS = {
    "dlt-error",
    "dlt-original-topic",
    "dlt-original-partition",
    "dlt-original-offset",
    "dlt-attempts",
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The committed document, parsed."""
    parsed: dict[str, Any] = yaml.safe_load(COMMITTED.read_text(encoding="utf-8"))
    return parsed


@pytest.fixture(scope="module")
def asyncapi_validator() -> Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (draft-07, refs into its `definitions`)."""
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[InMemoryPipeline]:
    """The whole pipeline in this process: real handlers, outbox relays, a fake broker."""
    harness = InMemoryPipeline(tmp_path)
    yield harness
    harness.close()


def problems(validator: Draft7Validator, instance: Any) -> list[str]:
    """Every way `instance` fails, each with where."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def message_of(document: dict[str, Any], address: str) -> str:
    """A JSON pointer to the one message of the channel at `address`."""
    [(name, channel)] = [
        (name, c) for name, c in document["channels"].items() if c["address"] == address
    ]
    [message] = channel["messages"].values()
    ref: str = message["$ref"]
    return ref


def part_validator(document: dict[str, Any], where: str) -> Draft7Validator:
    """A validator for the schema at `where` in the document, its `$ref`s resolved there.
    An AsyncAPI Schema Object is a superset of JSON Schema draft-07."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(document, default_specification=DRAFT7)
    )
    return Draft7Validator(
        {"$ref": f"urn:asyncapi{where}"}, registry=registry, format_checker=FormatChecker()
    )


def assert_record_matches(document: dict[str, Any], record: Message) -> None:
    """Value, headers and key of `record` validate against its channel's message."""
    message = message_of(document, record.topic)
    headers = {name: (value or b"").decode("utf-8") for name, value in record.headers}
    payload = json.loads(record.value)
    key = (record.key or b"").decode("utf-8")

    assert not problems(part_validator(document, f"{message}/payload"), payload)
    assert not problems(part_validator(document, f"{message}/headers"), headers)
    assert not problems(part_validator(document, f"{message}/bindings/kafka/key"), key)


def all_refs(node: Any) -> Iterator[str]:
    """Every `$ref` in `node`, however deep."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local `$ref` points at; KeyError when it points at nothing."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- the file ---------------------------------------------------------------------------


def test_committed_document_is_what_the_code_generates() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_yaml(asyncapi_document()), (
        "docs/asyncapi.yaml is stale: run `python -m devtools.asyncapi > docs/asyncapi.yaml`"
    )


def test_command_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "asyncapi.yaml"

    assert main(["--output", str(output)]) == 0
    assert main([]) == 0

    assert output.read_text(encoding="utf-8") == capsys.readouterr().out
    assert output.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")


def test_document_is_valid_asyncapi_3(
    document: dict[str, Any], asyncapi_validator: Draft7Validator
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert not problems(asyncapi_validator, document)


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda d: d.pop("info"), id="no info"),
        pytest.param(
            lambda d: d["operations"]["sendProfileInsert"].update(action="publish"),
            id="AsyncAPI 2 action",
        ),
        pytest.param(
            lambda d: d["channels"]["profileInsert"]["bindings"]["kafka"].update(partitions=0),
            id="kafka binding with no partitions",
        ),
        pytest.param(
            lambda d: d["components"]["messages"]["profileInsert"]["bindings"]["kafka"].update(
                key=42
            ),
            id="message key not a schema",
        ),
        pytest.param(
            lambda d: d["components"]["messages"]["partnerCreated"]["headers"].update(type=7),
            id="headers not a schema",
        ),
    ],
)
def test_broken_documents_fail_validation(
    document: dict[str, Any], asyncapi_validator: Draft7Validator, break_it: Any
) -> None:
    broken = copy.deepcopy(document)
    break_it(broken)

    with pytest.raises(ValidationError):
        asyncapi_validator.validate(broken)


def test_every_ref_points_at_something(document: dict[str, Any]) -> None:
    for ref in all_refs(document):
        resolve(document, ref)


def test_each_operation_sends_or_receives_its_own_channels_messages(
    document: dict[str, Any],
) -> None:
    # AsyncAPI 3 requires this, but its JSON Schema cannot check it.
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name


def test_every_topic_has_its_producer_consumer_group_and_dead_letters(
    document: dict[str, Any],
) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    operations = document["operations"].values()
    for topic in TOPICS:
        assert {topic.name, topic.dead_letter} <= addresses
        on_topic = [
            o
            for o in operations
            if resolve(document, o["channel"]["$ref"])["address"] == topic.name
        ]
        [sender] = [o for o in on_topic if o["action"] == "send"]
        [receiver] = [o for o in on_topic if o["action"] == "receive"]
        assert sender["tags"] == [{"name": topic.producer}]
        assert receiver["bindings"]["kafka"]["groupId"]["const"] == topic.consumer_group


def test_headers_are_the_contracts(document: dict[str, Any]) -> None:
    for topic in TOPICS:
        event = resolve(document, message_of(document, topic.name))["headers"]
        dead = resolve(document, message_of(document, topic.dead_letter))["headers"]

        assert CLOUDEVENTS_HEADERS | {"content-type"} == set(event["required"])
        assert "traceparent" in event["properties"]
        assert set(dead["required"]) == DLT_HEADERS


# --- the document against the records the pipeline really produces ---------------------


def test_real_records_validate_against_their_channels_messages(
    document: dict[str, Any], pipeline: InMemoryPipeline
) -> None:
    for role in ("USER", "PARTNER"):
        response = pipeline.client.post("/auth/signup", json=signup_body(role=role))
        assert response.status_code == 201
    pipeline.run()

    records = [r for topic in TOPICS for r in pipeline.broker.topics[topic.name]]
    # Every record of every topic, whatever answers the member service sends back.
    signup_flow = [r.topic for r in records if r.topic in ("profile-insert", "partner-created")]
    assert signup_flow == ["profile-insert"] * 2 + ["partner-created"]
    for record in records:
        assert {name for name, _ in record.headers} >= CLOUDEVENTS_HEADERS
        assert_record_matches(document, record)


def test_real_dead_letter_validates_against_its_channels_message(
    document: dict[str, Any], pipeline: InMemoryPipeline
) -> None:
    pipeline.client.post("/auth/signup", json=signup_body())
    pipeline.auth_relay.publish_pending()
    [event] = pipeline.broker.topics["profile-insert"]
    poison = Message(event.topic, event.key, b"not json", event.headers, partition=0, offset=1)

    assert process_one(pipeline.member, poison) == Outcome.DEAD_LETTERED

    [dead] = pipeline.broker.topics["profile-insert.DLT"]
    message = message_of(document, "profile-insert.DLT")
    headers = {name: (value or b"").decode("utf-8") for name, value in dead.headers}
    assert not problems(part_validator(document, f"{message}/headers"), headers)
    key = (dead.key or b"").decode("utf-8")
    assert not problems(part_validator(document, f"{message}/bindings/kafka/key"), key)


def test_payload_schema_rejects_what_the_consumer_rejects(document: dict[str, Any]) -> None:
    schema = part_validator(document, f"{message_of(document, 'profile-insert')}/payload")
    good = {
        "uuid": "5f0c7f5e-8d0b-4a8e-9a53-2f4f1c2d9b71",
        "role": "USER",
        "nickname": "minji",
        "favoriteStyles": [3, 1],
    }

    assert schema.is_valid(good)
    for bad in (
        {**good, "uuid": good["uuid"].upper()},
        {**good, "role": "ADMIN"},
        {**good, "favoriteStyles": [1, 1]},
        {**good, "favoriteStyles": [0]},
        {k: v for k, v in good.items() if k != "nickname"},
    ):
        assert not schema.is_valid(bad), bad


def test_examples_validate_against_their_messages(document: dict[str, Any]) -> None:
    for topic in TOPICS:
        message = message_of(document, topic.name)
        [example] = resolve(document, message)["examples"]

        assert not problems(part_validator(document, f"{message}/payload"), example["payload"])
        assert not problems(part_validator(document, f"{message}/headers"), example["headers"])


@pytest.mark.parametrize("topic", ["post-created", "coordinate-closed", "review-created"])
def test_an_item_ids_schema_takes_what_the_consumer_takes(
    document: dict[str, Any], topic: str
) -> None:
    """Another team's id: a string of 1 to 64 printable characters or a non-negative
    integer (a Java long); the document and the consumer's schema agree on each."""
    [event] = [t for t in TOPICS if t.name == topic]
    schema = part_validator(document, f"{message_of(document, topic)}/payload")
    example = resolve(document, message_of(document, topic))["examples"][0]["payload"]
    [id_field] = [name for name in example if name.endswith("Id") and name != "partnerId"]
    taken = ["7", "req-2026-0042", "x" * 64, 0, 7, 2**63 - 1]
    refused = ["", "x" * 65, " padded", "two\nlines", -1, 2**63, True, 1.5, None, ["7"]]

    for value in taken + refused:
        payload = {**example, id_field: value}
        consumer_takes = not event.schema().validate(payload)
        assert schema.is_valid(payload) == consumer_takes == (value in taken), value
