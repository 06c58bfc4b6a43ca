"""Each topic's schema builds that topic's event type, and writes back the JSON it read."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from shared.messaging.pipeline import (
    ACTIVITY_TOPICS,
    REVIEW_CREATED,
    TOPICS,
    PartnerCreated,
    ProfileInsert,
    ReviewCreated,
    Topic,
)

MEMBER = "5f0c7f5e-8d0b-4a8e-9a53-2f4f1c2d9b71"
FOLLOWER = "9d3b7e21-64c8-4f0a-b5e2-81c4d6f0a937"
EXAMPLES: dict[str, dict[str, Any]] = {
    "profile-insert": {
        "uuid": MEMBER,
        "role": "PARTNER",
        "nickname": "minji-shop",
        "favoriteStyles": [1, 4, 7],
    },
    "partner-created": {"partnerId": MEMBER},
    "profile-created": {"uuid": MEMBER},
    "profile-rejected": {"uuid": MEMBER, "reason": "nickname_taken"},
    "profile-delete": {"uuid": MEMBER},
    "partner-deleted": {"partnerId": MEMBER},
    "post-created": {"postId": "1024", "partnerId": MEMBER},
    "post-deleted": {"postId": "1024", "partnerId": MEMBER},
    "follow-created": {"followerId": FOLLOWER, "partnerId": MEMBER},
    "follow-deleted": {"followerId": FOLLOWER, "partnerId": MEMBER},
    "coordinate-closed": {"requestId": "req-20261203-0042", "partnerId": MEMBER},
    "review-created": {"reviewId": "88172", "partnerId": MEMBER, "star": 4},
}


def test_every_topic_has_an_example() -> None:
    assert set(EXAMPLES) == {topic.name for topic in TOPICS}


@pytest.mark.parametrize("topic", TOPICS, ids=lambda topic: topic.name)
def test_a_topic_loads_its_own_event_type_and_dumps_the_same_json(topic: Topic[Any]) -> None:
    event = topic.load(EXAMPLES[topic.name])

    assert type(event) is topic.event
    assert topic.dump(event) == EXAMPLES[topic.name]


def test_events_read_as_attributes() -> None:
    insert = TOPICS[0].load(EXAMPLES["profile-insert"])
    created = TOPICS[1].load(EXAMPLES["partner-created"])

    assert insert == ProfileInsert(MEMBER, "PARTNER", "minji-shop", [1, 4, 7])
    assert created == PartnerCreated(partner_id=MEMBER)


def test_an_integer_item_id_is_kept_as_its_decimal_text() -> None:
    """Another team's ids may be numbers (a Java long): `88172` and `"88172"` are one
    review, so a copy sent either way is the same thing counted."""
    as_number = REVIEW_CREATED.load({"reviewId": 88172, "partnerId": MEMBER, "star": 4})

    assert as_number == REVIEW_CREATED.load(EXAMPLES["review-created"])
    assert as_number == ReviewCreated(review_id="88172", partner_id=MEMBER, star=4)


# --- the activity topics' quick checks agree with their schemas -------------------------

_UUID = "6f1c1a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
_ids = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=2**63 - 2, max_value=2**63 + 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
    st.sampled_from(["", " x", "x ", "x\n", "7", "a" * 64, "a" * 65, "\x00", "\u2028", _UUID]),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
_uuids = st.one_of(
    st.uuids().map(str),
    st.sampled_from(
        [_UUID.upper(), _UUID.replace("-", ""), f"{{{_UUID}}}", f"urn:uuid:{_UUID}", _UUID + "\n"]
    ),
    _ids,
)
_stars = st.one_of(st.integers(min_value=-1, max_value=7), st.booleans(), st.floats(), st.text())


_VALID = {
    "partnerId": _UUID,
    "postId": 7,
    "followerId": "9d3b7e21-64c8-4f0a-b5e2-81c4d6f0a937",
    "requestId": "r-1",
    "reviewId": "v-1",
    "star": 4,
}
_TRICKY = st.one_of(
    _uuids,
    _stars,
    st.sampled_from([1, 5, 0, 6, True, 1.0, "4", 2**63 - 1, 2**63, -1, "a" * 64, "a" * 65]),
)


@pytest.mark.parametrize("topic", ACTIVITY_TOPICS, ids=lambda t: t.name)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_quick_check_answers_what_the_schema_answers(topic: Topic[Any], data: Any) -> None:
    """For a valid document with one field replaced by a tricky value, or taken away,
    and maybe a field of another topic: the quick check builds the schema's very event,
    or vouches for nothing (None) and leaves it to the schema; it never passes what the
    schema refuses."""
    document = dict(_VALID)
    field = data.draw(st.sampled_from(sorted(_VALID)), label="field")
    if data.draw(st.booleans(), label="take it away"):
        del document[field]
    else:
        document[field] = data.draw(_TRICKY, label="value")
    if data.draw(st.booleans(), label="a second change"):
        other = data.draw(st.sampled_from(sorted(_VALID)), label="second field")
        document[other] = data.draw(_TRICKY, label="second value")
    assert topic.quick is not None
    quick = topic.quick(document)
    try:
        event = _schema_load(topic, document)
    except ValidationError:
        assert quick is None, (document, quick)
    else:
        assert quick is None or quick == event, (document, quick, event)


@pytest.mark.parametrize("topic", ACTIVITY_TOPICS, ids=lambda t: t.name)
def test_a_quick_check_vouches_for_the_contracts_own_examples(topic: Topic[Any]) -> None:
    """The quick path is taken for ordinary events (else it would save nothing)."""
    assert topic.quick is not None
    document = {"partnerId": _UUID, "postId": 7, "followerId": _UUID, "requestId": "r-1"}
    document |= {"reviewId": "v-1", "star": 4}
    assert topic.quick(document) == _schema_load(topic, document)


def _schema_load(topic: Topic[Any], document: dict[str, Any]) -> Any:
    """The schema's own verdict, without the quick path."""
    return topic.schema().load(document)
