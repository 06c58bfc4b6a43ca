"""Each topic's schema builds that topic's event type, and writes back the JSON it read."""

from __future__ import annotations

from typing import Any

import pytest

from shared.messaging.pipeline import (
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
