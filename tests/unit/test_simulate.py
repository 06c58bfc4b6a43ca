"""The activity simulator: a consistent stream (a deletion only of what exists, a member
following again, unique ids), skewed as asked, and expected totals that agree with a
brute-force replay written differently."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from devtools.simulate import (
    ActivitySimulator,
    SimulatedEvent,
    Totals,
    cloudevent_headers,
    expected_totals,
)
from shared.messaging.pipeline import ACTIVITY_TOPICS

TOPIC = {topic.name: topic for topic in ACTIVITY_TOPICS}
PARTNERS = [str(uuid.UUID(int=n + 1, version=4)) for n in range(6)]


def brute_force(events: list[SimulatedEvent]) -> dict[str, Totals]:
    """Counters by looking, for each thing, at the last event that concerns it."""
    last: dict[tuple[str, str, str], str] = {}
    totals = {partner: Totals() for partner in PARTNERS}
    for event in events:
        value = event.value
        if event.topic.startswith("post-"):
            last[(event.key, "post", str(value["postId"]))] = event.topic
        elif event.topic.startswith("follow-"):
            last[(event.key, "follow", value["followerId"])] = event.topic
        elif event.topic == "coordinate-closed":
            totals[event.key].coordinate_count += 1
        else:
            totals[event.key].review_count += 1
            totals[event.key].star_sum += value["star"]
    for (partner, _, _), topic in last.items():
        if topic == "post-created":
            totals[partner].post_count += 1
        elif topic == "follow-created":
            totals[partner].follower_count += 1
    return totals


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("skew", [0.0, 1.2])
def test_expected_totals_agree_with_a_brute_force_replay(seed: int, skew: float) -> None:
    events = ActivitySimulator(PARTNERS, seed=seed, skew=skew).events(3000)
    expected = expected_totals(events, PARTNERS)
    assert expected == brute_force(events)
    # Something of every kind happened, deletions included.
    assert {event.topic for event in events} == set(TOPIC)
    assert sum(t.post_count for t in expected.values()) < sum(
        event.topic == "post-created" for event in events
    )


def test_the_stream_is_consistent_and_follows_the_contract() -> None:
    events = ActivitySimulator(PARTNERS, seed=7, followers=12).events(5000)
    live_posts: set[tuple[str, str]] = set()
    follows: set[tuple[str, str]] = set()
    refollowed = 0
    unfollowed: set[tuple[str, str]] = set()
    ids: Counter[tuple[str, str]] = Counter()
    for event in events:
        value = event.value
        TOPIC[event.topic].load(value)  # valid under the contract's schema
        assert value["partnerId"] == event.key
        if event.topic == "post-created":
            thing = (event.key, value["postId"])
            assert thing not in live_posts
            live_posts.add(thing)
            ids["post", value["postId"]] += 1
        elif event.topic == "post-deleted":
            live_posts.remove((event.key, value["postId"]))  # only a live post
        elif event.topic == "follow-created":
            pair = (event.key, value["followerId"])
            assert pair not in follows  # never a follow that exists
            refollowed += pair in unfollowed
            follows.add(pair)
        elif event.topic == "follow-deleted":
            pair = (event.key, value["followerId"])
            follows.remove(pair)  # only a current follow
            unfollowed.add(pair)
        elif event.topic == "coordinate-closed":
            assert isinstance(value["requestId"], int)
            ids["request", str(value["requestId"])] += 1
        else:
            assert 1 <= value["star"] <= 5
            ids["review", value["reviewId"]] += 1
    assert max(ids.values()) == 1  # posts, requests and reviews: unique ids
    assert len({event.ce_id for event in events}) == len(events)
    assert refollowed > 0  # members do follow again
    assert sum(event.topic == "post-deleted" for event in events) > 100


def test_skew_zero_is_uniform_and_a_higher_skew_favours_the_first_partners() -> None:
    def shares(skew: float) -> list[float]:
        counts = Counter(e.key for e in ActivitySimulator(PARTNERS, 5, skew).events(12000))
        return [counts[p] / 12000 for p in PARTNERS]

    uniform = shares(0.0)
    assert max(uniform) - min(uniform) < 0.03, uniform
    skewed = shares(1.5)
    assert skewed == sorted(skewed, reverse=True), skewed
    assert skewed[0] > 0.45 and skewed[-1] < 0.05, skewed


def test_a_seed_repeats_what_happens_and_a_run_id_the_ids() -> None:
    first = ActivitySimulator(PARTNERS, seed=3, run_id="a").events(200)
    assert ActivitySimulator(PARTNERS, seed=3, run_id="a").events(200) == first
    other_run = ActivitySimulator(PARTNERS, seed=3, run_id="b").events(200)
    assert [(e.topic, e.key) for e in other_run] == [(e.topic, e.key) for e in first]
    assert not {e.ce_id for e in first} & {e.ce_id for e in other_run}
    # Two runs against one pipeline share no counted id, so their totals add up.
    assert ActivitySimulator(PARTNERS).run_id != ActivitySimulator(PARTNERS).run_id


def test_partners_without_events_are_expected_at_zero_and_none_is_refused() -> None:
    assert expected_totals([], PARTNERS[:2]) == {PARTNERS[0]: Totals(), PARTNERS[1]: Totals()}
    with pytest.raises(ValueError):
        ActivitySimulator([])


def test_headers_are_the_outbox_relays() -> None:
    event = ActivitySimulator(PARTNERS, seed=1).next_event()
    headers = dict(cloudevent_headers(event))
    assert headers["ce_id"] == event.ce_id.encode()
    assert headers["ce_type"] == event.topic.encode()
    assert headers["ce_source"] == TOPIC[event.topic].producer.encode()
    assert set(headers) == {
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "content-type",
    }
