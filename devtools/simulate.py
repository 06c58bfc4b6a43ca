"""A realistic stream of partners' activity, as the other teams' services would send it,
and what the batch service must end up with once it has applied it.

`ActivitySimulator(partners, seed, skew)` yields `SimulatedEvent`s: posts created and
sometimes deleted again, members following and unfollowing partners (a deletion only of
a follow that exists, and a member may follow again later), coordination requests
closed and reviews of 1 to 5 stars, each with a unique id and a unique `ce_id`. Which
partner acts is Zipf-like: the partner at rank r (in the order given) is chosen with
weight 1 / r**skew, so skew 0 is uniform and skew 1 makes the first partner about as
busy as the next few together.

`expected_totals(events, partners)` is what the batch service's summaries must say after
applying those events (and nothing else): a replay written from the contract alone,
independent of the batch service's code, so that comparing the two tests it.

`produce(...)` sends the events through the project's producer, with the CloudEvents
headers the outbox relay writes, at a given rate (`signup-pipeline simulate`, the demo,
the benchmark and the tests use it).
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from shared.messaging.kafka import Headers, make_producer
from shared.messaging.outbox import encode_event, rfc3339
from shared.messaging.pipeline import (
    ACTIVITY_TOPICS,
    COORDINATE_CLOSED,
    FOLLOW_CREATED,
    FOLLOW_DELETED,
    POST_CREATED,
    POST_DELETED,
    REVIEW_CREATED,
)

# How often each kind of event is drawn (a deletion with nothing to delete becomes the
# matching creation instead).
DEFAULT_MIX: Mapping[str, float] = {
    POST_CREATED.name: 0.25,
    POST_DELETED.name: 0.07,
    FOLLOW_CREATED.name: 0.30,
    FOLLOW_DELETED.name: 0.10,
    COORDINATE_CLOSED.name: 0.14,
    REVIEW_CREATED.name: 0.14,
}

# Stars as reviews tend to give them: mostly good, some very bad.
STAR_WEIGHTS = (0.08, 0.07, 0.15, 0.30, 0.40)

_PRODUCER_OF = {topic.name: topic.producer for topic in ACTIVITY_TOPICS}


@dataclass(frozen=True)
class SimulatedEvent:
    """One record to send: its topic, its key (the partner id), its JSON value, its ce_id."""

    topic: str
    key: str
    value: dict[str, Any]
    ce_id: str


@dataclass
class Totals:
    """A partner's counters, as partner_summaries holds them."""

    post_count: int = 0
    follower_count: int = 0
    coordinate_count: int = 0
    review_count: int = 0
    star_sum: int = 0

    FIELDS = ("post_count", "follower_count", "coordinate_count", "review_count", "star_sum")

    @property
    def average_star(self) -> float:
        return self.star_sum / self.review_count if self.review_count else 0.0

    @property
    def score(self) -> float:
        """The ranking's score: followers x 0.4 + coordinates x 0.3 + average star x 0.3."""
        return self.follower_count * 0.4 + self.coordinate_count * 0.3 + self.average_star * 0.3

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}


def zipf_weights(count: int, skew: float) -> list[float]:
    """Cumulative weights of ranks 1..count, weight 1 / rank**skew (skew 0: uniform)."""
    if skew < 0:
        raise ValueError("skew must be 0 or more")
    return list(itertools.accumulate(1 / (rank**skew) for rank in range(1, count + 1)))


@dataclass
class _Partner:
    posts: list[str] = field(default_factory=list)  # live posts
    followers: list[str] = field(default_factory=list)  # current followers
    following: set[str] = field(default_factory=set)


class ActivitySimulator:
    """An endless, consistent stream of activity for `partners` (see the module's text).

    `seed` fixes what happens (which partner, which kind, which star, who follows whom);
    `run_id` fixes the ids (posts, requests, reviews, followers, ce_ids). By default the
    ids are new at every run, so two runs against one pipeline never share an id; give
    the same `run_id` to get the very same records again.
    """

    def __init__(
        self,
        partners: Sequence[str],
        seed: int | None = None,
        skew: float = 1.0,
        *,
        run_id: str | None = None,
        mix: Mapping[str, float] | None = None,
        followers: int | None = None,
    ) -> None:
        if not partners:
            raise ValueError("no partners to simulate activity for")
        self.partners = list(partners)
        self.skew = skew
        self._rng = random.Random(seed)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._ids = random.Random(f"{self.run_id}")  # ids only; what happens is self._rng
        self._cumulative = zipf_weights(len(self.partners), skew)
        mix = dict(mix or DEFAULT_MIX)
        unknown = set(mix) - set(_PRODUCER_OF)
        if unknown:
            raise ValueError(f"not activity topics: {sorted(unknown)}")
        self._kinds = list(mix)
        self._kind_weights = list(itertools.accumulate(mix.values()))
        # Members who follow partners: a population a few times the partners' number,
        # so that the same member follows several partners and follows again later.
        size = followers if followers is not None else 20 + 5 * len(self.partners)
        self._members = [self._uuid() for _ in range(max(size, 1))]
        self._state = {partner: _Partner() for partner in self.partners}
        self._counter = itertools.count(1)
        # Integer request ids (the contract allows them) from a base of this run's own.
        self._request_base = self._ids.randrange(10**12, 10**15)
        self.sent = 0

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _partner(self) -> str:
        draw = self._rng.random() * self._cumulative[-1]
        return self.partners[min(bisect.bisect(self._cumulative, draw), len(self.partners) - 1)]

    def _kind(self) -> str:
        draw = self._rng.random() * self._kind_weights[-1]
        return self._kinds[min(bisect.bisect(self._kind_weights, draw), len(self._kinds) - 1)]

    def next_event(self) -> SimulatedEvent:
        """The next event of the stream."""
        partner = self._partner()
        state = self._state[partner]
        kind = self._kind()
        n = next(self._counter)
        value: dict[str, Any]
        if kind == POST_DELETED.name and not state.posts:
            kind = POST_CREATED.name
        if kind == FOLLOW_DELETED.name and not state.followers:
            kind = FOLLOW_CREATED.name
        if kind == FOLLOW_CREATED.name and len(state.following) >= len(self._members):
            kind = FOLLOW_DELETED.name  # every member follows this partner already
        if kind == POST_CREATED.name:
            post = f"post-{self.run_id}-{n}"
            state.posts.append(post)
            value = {"postId": post, "partnerId": partner}
        elif kind == POST_DELETED.name:
            post = _take(state.posts, self._rng)
            value = {"postId": post, "partnerId": partner}
        elif kind == FOLLOW_CREATED.name:
            follower = self._rng.choice(self._members)
            while follower in state.following:
                follower = self._rng.choice(self._members)
            state.following.add(follower)
            state.followers.append(follower)
            value = {"followerId": follower, "partnerId": partner}
        elif kind == FOLLOW_DELETED.name:
            follower = _take(state.followers, self._rng)
            state.following.discard(follower)
            value = {"followerId": follower, "partnerId": partner}
        elif kind == COORDINATE_CLOSED.name:
            value = {"requestId": self._request_base + n, "partnerId": partner}
        else:
            star = self._rng.choices((1, 2, 3, 4, 5), STAR_WEIGHTS)[0]
            value = {"reviewId": f"review-{self.run_id}-{n}", "partnerId": partner, "star": star}
        self.sent += 1
        return SimulatedEvent(kind, partner, value, self._uuid())

    def events(self, count: int) -> list[SimulatedEvent]:
        """The next `count` events."""
        return [self.next_event() for _ in range(count)]

    def __iter__(self) -> Iterator[SimulatedEvent]:
        while True:
            yield self.next_event()


def _take(items: list[str], rng: random.Random) -> str:
    """Remove and return a random element (swap with the last: O(1))."""
    index = rng.randrange(len(items))
    items[index], items[-1] = items[-1], items[index]
    return items.pop()


class Replay:
    """Each partner's counters after the events added so far, in the order added: posts
    created and not deleted, current followers, closed requests, reviews and their stars.

    Written from the contract, for the simulator's stream, which is consistent (a
    deletion only of what exists, every id unique): a set per partner and kind."""

    def __init__(self, partners: Iterable[str] = ()) -> None:
        self._posts: dict[str, set[str]] = {}
        self._follows: dict[str, set[str]] = {}
        self._totals = {partner: Totals() for partner in partners}

    def add(self, event: SimulatedEvent) -> None:
        partner = event.key
        total = self._totals.setdefault(partner, Totals())
        value = event.value
        if event.topic == POST_CREATED.name:
            self._posts.setdefault(partner, set()).add(str(value["postId"]))
        elif event.topic == POST_DELETED.name:
            self._posts.setdefault(partner, set()).discard(str(value["postId"]))
        elif event.topic == FOLLOW_CREATED.name:
            self._follows.setdefault(partner, set()).add(value["followerId"])
        elif event.topic == FOLLOW_DELETED.name:
            self._follows.setdefault(partner, set()).discard(value["followerId"])
        elif event.topic == COORDINATE_CLOSED.name:
            total.coordinate_count += 1
        elif event.topic == REVIEW_CREATED.name:
            total.review_count += 1
            total.star_sum += int(value["star"])
        else:
            raise ValueError(f"not an activity topic: {event.topic}")

    def totals(self) -> dict[str, Totals]:
        """Each partner's counters (a copy)."""
        answer = {}
        for partner, total in self._totals.items():
            answer[partner] = Totals(
                post_count=len(self._posts.get(partner, ())),
                follower_count=len(self._follows.get(partner, ())),
                coordinate_count=total.coordinate_count,
                review_count=total.review_count,
                star_sum=total.star_sum,
            )
        return answer


def expected_totals(
    events: Iterable[SimulatedEvent], partners: Iterable[str] = ()
) -> dict[str, Totals]:
    """Each partner's counters once `events` are applied (and nothing else), as the batch
    service's summaries must say them; every partner of `partners` is in the answer, with
    zeros if it had no event. A pure function of its arguments (see Replay)."""
    replay = Replay(partners)
    for event in events:
        replay.add(event)
    return replay.totals()


def cloudevent_headers(event: SimulatedEvent, now: dt.datetime | None = None) -> Headers:
    """The headers the outbox relay writes (shared.messaging.outbox.cloudevent_headers)."""
    moment = now or dt.datetime.now(dt.UTC)
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event.ce_id.encode()),
        ("ce_source", _PRODUCER_OF.get(event.topic, "simulate").encode()),
        ("ce_type", event.topic.encode()),
        ("ce_time", rfc3339(moment).encode()),
        ("content-type", b"application/json"),
    ]


@dataclass
class Produced:
    """What `produce` sent, every event acknowledged by the broker: how many, in how long,
    each partner's expected counters from them alone, and (if kept) the events in order."""

    count: int
    seconds: float
    totals: dict[str, Totals]
    events: list[SimulatedEvent]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


class ProduceError(RuntimeError):
    """The broker did not acknowledge some events."""


def produce(
    bootstrap_servers: Sequence[str],
    events: Iterable[SimulatedEvent],
    *,
    rate: float = 0.0,
    count: int | None = None,
    seconds: float | None = None,
    topic_names: Mapping[str, str] | None = None,
    partners: Iterable[str] = (),
    keep_events: bool = True,
    progress: TextIO | None = None,
    stop: Callable[[], bool] | None = None,
) -> Produced:
    """Send `events` (at most `count` of them, for at most `seconds`, until `stop()`) at
    `rate` events per second (0: as fast as the producer takes them), each to its topic
    (or the name `topic_names` gives it), keyed by partner, with CloudEvents headers;
    wait until the broker acknowledged every one. An event is taken from `events` only
    when it is to be sent, so a simulator can go on where a previous call stopped.
    `progress`: a stream for a line a second (sent, rate). Raises ProduceError if a send
    failed."""
    producer = make_producer(bootstrap_servers)
    names = dict(topic_names or {})
    replay = Replay(partners)
    kept: list[SimulatedEvent] = []
    failures: list[BaseException] = []
    stream = iter(events)
    sent = 0
    started = time.monotonic()
    shown = started
    rewrite = progress is not None and progress.isatty()
    try:
        while True:
            now = time.monotonic()
            if count is not None and sent >= count:
                break
            if seconds is not None and now - started >= seconds:
                break
            if stop is not None and stop():
                break
            event = next(stream, None)
            if event is None:
                break
            if rate > 0:
                due = started + sent / rate
                if due > now:
                    time.sleep(due - now)
            future = producer.send(
                names.get(event.topic, event.topic),
                value=encode_event(event.value).encode(),
                key=event.key.encode(),
                headers=cloudevent_headers(event),
            )
            future.add_errback(failures.append)
            replay.add(event)
            if keep_events:
                kept.append(event)
            sent += 1
            if progress is not None and now - shown >= 1.0:
                shown = now
                line = f"sent {sent:,} events ({sent / (now - started):,.0f}/s)"
                progress.write(f"\r{line}   " if rewrite else f"{line}\n")
                progress.flush()
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    took = time.monotonic() - started
    if progress is not None:
        line = f"sent {sent:,} events in {took:.1f} s ({sent / max(took, 1e-9):,.0f}/s)"
        progress.write(f"\r{line}   \n" if rewrite else f"{line}\n")
        progress.flush()
    if failures:
        raise ProduceError(f"{len(failures)} of {sent} events not acknowledged: {failures[0]}")
    return Produced(sent, took, replay.totals(), kept)


__all__ = [
    "DEFAULT_MIX",
    "ActivitySimulator",
    "ProduceError",
    "Produced",
    "Replay",
    "SimulatedEvent",
    "Totals",
    "cloudevent_headers",
    "expected_totals",
    "produce",
    "zipf_weights",
]
