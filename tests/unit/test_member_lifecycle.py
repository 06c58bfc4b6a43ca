"""A member's life in the member and batch services (issue 17): nicknames unique among
members whatever their case or width, the saga's answer (profile-created or
profile-rejected), deletion that leaves nothing of the member but a tombstone, and
tombstones that let a deletion win whatever order the topics are read in. The handlers
run on real SQLite databases, directly or through the real EventProcessor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import func, select, update

from batch_service.handlers import on_partner_created, on_partner_deleted
from batch_service.models import Base as BatchBase
from batch_service.models import DeletedPartner, PartnerSummary
from member_service.api import create_app
from member_service.handlers import on_profile_delete, on_profile_insert
from member_service.models import Base as MemberBase
from member_service.models import (
    DeletedMember,
    FavoriteStyle,
    MemberRole,
    OutboxEvent,
    Partner,
    User,
    nickname_key,
)
from shared.messaging.kafka import Message
from shared.messaging.pipeline import (
    PartnerCreated,
    PartnerDeleted,
    ProfileDelete,
    ProfileInsert,
)
from shared.messaging.processor import Outcome, Summary
from shared.storage.db import Database, UnitOfWork, utcnow
from tests.fakes import FakeBroker
from tests.lifecycle import (
    batch_processor,
    delete_record,
    insert_record,
    member_processor,
    outbox,
    partner_created_record,
    partner_deleted_record,
    rows_holding,
    uuid_of,
)
from tests.processing import process_one
from tests.schema import create_tables

E = TypeVar("E")

NICK = "Zyxwv Mimi"  # findable anywhere it would be left


@pytest.fixture
def member_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def batch_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'batch.db'}", BatchBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


def apply(
    database: Database, handler: Callable[[E, UnitOfWork], Summary], event: E, nickname: str = NICK
) -> str:
    """`handler` on `event` in its own committed transaction; what it says it did, which
    never holds the nickname (personal data)."""
    with database.unit_of_work() as uow:
        summary = handler(event, uow)
        uow.commit()
    said = str(summary)
    assert nickname_key(nickname) not in nickname_key(said)
    return said


def insert(member_id: str, nickname: str = NICK, role: str = "USER", styles: Any = (3, 1)) -> Any:
    return ProfileInsert(member_id, role, nickname, list(styles))


def count(database: Database, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    with database.sessions() as session:
        return session.scalar(query) or 0


def profile_rows(database: Database, member_id: str) -> dict[str, int]:
    """How many rows of the member each profile table holds."""
    return {
        "users": count(database, User, uuid=member_id),
        "partners": count(database, Partner, uuid=member_id),
        "favorite_styles": count(database, FavoriteStyle, member_uuid=member_id),
        "member_roles": count(database, MemberRole, uuid=member_id),
    }


NO_PROFILE = {"users": 0, "partners": 0, "favorite_styles": 0, "member_roles": 0}


def apply_batch(processor: Any, messages: list[Message]) -> list[Outcome]:
    """`messages` as one poll (each topic and partition its own list); every outcome."""
    batch: dict[TopicPartition, list[Message]] = {}
    for message in messages:
        batch.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
    report = processor.apply(batch)
    assert all(p.retry_at is None for p in report.partitions.values()), report.partitions
    return list(report.outcomes)


class TestNicknames:
    def test_a_profile_is_answered_profile_created_and_a_partner_is_announced_too(
        self, member_db: Database
    ) -> None:
        user, partner = uuid_of(1), uuid_of(2)

        said_user = apply(member_db, on_profile_insert, insert(user, "Mimi"), "Mimi")
        said_partner = apply(
            member_db, on_profile_insert, insert(partner, "Shop", "PARTNER"), "Shop"
        )

        assert said_user == "USER profile created (2 styles)"
        assert said_partner == "PARTNER profile created (2 styles), partner-created queued"
        assert outbox(member_db) == [
            ("profile-created", user, {"uuid": user}),
            ("profile-created", partner, {"uuid": partner}),
            ("partner-created", partner, {"partnerId": partner}),
        ]
        with member_db.sessions() as session:
            keys = dict(session.execute(select(MemberRole.uuid, MemberRole.nickname_key)).all())
        assert keys == {user: "mimi", partner: "shop"}

    @pytest.mark.parametrize("taken", ["Mimi", "mimi", "MIMI", "ｍｉｍｉ", "Ｍｉｍｉ", "mImI"])
    def test_a_nickname_another_member_holds_in_any_case_or_width_is_rejected_and_nothing_stored(
        self, member_db: Database, taken: str
    ) -> None:
        first, second = uuid_of(1), uuid_of(2)
        apply(member_db, on_profile_insert, insert(first, "Mimi"), "Mimi")

        said = apply(member_db, on_profile_insert, insert(second, taken, "PARTNER"), taken)

        assert said == "PARTNER profile rejected (nickname_taken), profile-rejected queued"
        assert profile_rows(member_db, second) == NO_PROFILE
        assert outbox(member_db, second) == [
            ("profile-rejected", second, {"uuid": second, "reason": "nickname_taken"})
        ]
        assert count(member_db, User) == 1

    def test_nicknames_differing_otherwise_are_distinct(self, member_db: Database) -> None:
        for number, nickname in enumerate(["Mimi", "Mimi2", "Mi mi", "Mími"], start=1):
            apply(member_db, on_profile_insert, insert(uuid_of(number), nickname), nickname)
        assert count(member_db, User) == 4
        assert [topic for topic, _, _ in outbox(member_db)] == ["profile-created"] * 4

    @pytest.mark.parametrize(
        ("role", "nickname"),
        [("USER", NICK), ("USER", "Another"), ("PARTNER", NICK), ("USER", "Taken")],
        ids=["same-event-again", "other-nickname", "other-role", "a-nickname-another-holds"],
    )
    def test_a_second_profile_for_a_uuid_is_dead_lettered_never_rejected(
        self, member_db: Database, role: str, nickname: str
    ) -> None:
        """The contradiction rules stay: a profile-rejected for a member that has a
        profile would have auth erase a live account."""
        member, other = uuid_of(1), uuid_of(2)
        broker = FakeBroker()
        processor = member_processor(member_db, broker)
        assert process_one(processor, insert_record(other, "Taken")) is Outcome.APPLIED
        assert process_one(processor, insert_record(member, NICK)) is Outcome.APPLIED

        again = insert_record(member, nickname, role)  # another ce_id
        assert process_one(processor, again) is Outcome.DEAD_LETTERED

        assert [m.topic for m in broker.topics["profile-insert.DLT"]] == ["profile-insert.DLT"]
        assert outbox(member_db, member) == [("profile-created", member, {"uuid": member})]
        assert profile_rows(member_db, member) == {
            "users": 1,
            "partners": 0,
            "favorite_styles": 2,
            "member_roles": 1,
        }

    def test_a_batch_asking_twenty_times_for_one_nickname_makes_one_profile(
        self, member_db: Database
    ) -> None:
        """The PostgreSQL version, and concurrent workers, are in
        tests/integration/test_nickname_races.py."""
        spellings = ["Mimi", "mimi", "MIMI", "ｍｉｍｉ", "mImI"]
        messages = [insert_record(uuid_of(n), spellings[n % 5], partition=n % 3) for n in range(20)]
        broker = FakeBroker()

        outcomes = apply_batch(member_processor(member_db, broker), messages)

        assert outcomes == [Outcome.APPLIED] * 20
        assert count(member_db, MemberRole) == count(member_db, User) == 1
        topics = [topic for topic, _, _ in outbox(member_db)]
        assert sorted(topics) == ["profile-created"] + ["profile-rejected"] * 19
        assert not any(t.endswith(".DLT") for t in broker.topics)


class TestDeletion:
    def test_a_deleted_member_leaves_only_its_tombstone_and_frees_its_nickname(
        self, member_db: Database
    ) -> None:
        member = uuid_of(1)
        apply(member_db, on_profile_insert, insert(member))

        said = apply(member_db, on_profile_delete, ProfileDelete(member))

        assert said == "member deleted (USER profile, 2 styles, 1 outbox row purged)"
        assert profile_rows(member_db, member) == NO_PROFILE
        assert outbox(member_db, member) == []
        assert count(member_db, DeletedMember, uuid=member) == 1
        # Its nickname is free: another member now gets it.
        newcomer = uuid_of(2)
        apply(member_db, on_profile_insert, insert(newcomer, NICK.upper()), NICK.upper())
        assert outbox(member_db, newcomer) == [("profile-created", newcomer, {"uuid": newcomer})]

    def test_the_member_api_answers_404_for_a_deleted_member(self, member_db: Database) -> None:
        member = uuid_of(1)
        apply(member_db, on_profile_insert, insert(member))
        client = create_app(member_db).test_client()
        assert client.get(f"/members/{member}").status_code == 200

        apply(member_db, on_profile_delete, ProfileDelete(member))

        response = client.get(f"/members/{member}")
        assert response.status_code == 404
        assert NICK not in response.get_data(as_text=True)

    def test_a_deleted_partner_is_announced_and_its_outbox_rows_go_published_or_not(
        self, member_db: Database
    ) -> None:
        partner = uuid_of(1)
        apply(member_db, on_profile_insert, insert(partner, role="PARTNER"))
        with member_db.unit_of_work() as uow:  # the relay sent profile-created already
            uow.session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.topic == "profile-created")
                .values(published_at=utcnow())
            )
            uow.commit()

        said = apply(member_db, on_profile_delete, ProfileDelete(partner))

        assert said == (
            "member deleted (PARTNER profile, 2 styles, 2 outbox rows purged), "
            "partner-deleted queued"
        )
        assert outbox(member_db, partner) == [("partner-deleted", partner, {"partnerId": partner})]
        assert profile_rows(member_db, partner) == NO_PROFILE

    def test_a_second_deletion_is_a_no_op(self, member_db: Database) -> None:
        partner = uuid_of(1)
        apply(member_db, on_profile_insert, insert(partner, role="PARTNER"))
        apply(member_db, on_profile_delete, ProfileDelete(partner))
        before = outbox(member_db)

        said = apply(member_db, on_profile_delete, ProfileDelete(partner))

        assert said == "member already deleted: nothing to do"
        assert outbox(member_db) == before  # no second partner-deleted
        assert count(member_db, DeletedMember) == 1

    def test_a_rejected_member_deleted_leaves_not_even_its_rejection(
        self, member_db: Database
    ) -> None:
        holder, rejected = uuid_of(1), uuid_of(2)
        apply(member_db, on_profile_insert, insert(holder))
        apply(member_db, on_profile_insert, insert(rejected))
        assert [t for t, _, _ in outbox(member_db, rejected)] == ["profile-rejected"]

        said = apply(member_db, on_profile_delete, ProfileDelete(rejected))

        assert said == "member deleted (no profile, 0 styles, 1 outbox row purged)"
        assert outbox(member_db, rejected) == []
        assert profile_rows(member_db, holder)["users"] == 1  # the holder keeps its nickname

    def test_a_deletion_before_its_insert_leaves_a_tombstone_and_the_insert_makes_nothing(
        self, member_db: Database
    ) -> None:
        member = uuid_of(1)

        said_delete = apply(member_db, on_profile_delete, ProfileDelete(member))
        said_insert = apply(member_db, on_profile_insert, insert(member, role="PARTNER"))

        assert said_delete == "member deleted (no profile, 0 styles, 0 outbox rows purged)"
        assert said_insert == "member already deleted: no profile created, no answer"
        assert profile_rows(member_db, member) == NO_PROFILE
        assert outbox(member_db) == []  # no answer, no partner-created
        assert count(member_db, DeletedMember, uuid=member) == 1
        # And the nickname it asked for was never taken.
        apply(member_db, on_profile_insert, insert(uuid_of(2)))
        assert count(member_db, User) == 1

    @pytest.mark.parametrize("order", ["insert-then-delete", "delete-then-insert"])
    def test_an_insert_and_its_deletion_in_one_poll_leave_nothing_in_either_order(
        self, member_db: Database, order: str
    ) -> None:
        """One poll of the two topics is one transaction: the deletion sees the rows the
        insert staged, and the insert sees the tombstone the deletion wrote."""
        member = uuid_of(1)
        records = [insert_record(member, NICK, "PARTNER"), delete_record(member)]
        if order == "delete-then-insert":
            records.reverse()
        broker = FakeBroker()

        outcomes = apply_batch(member_processor(member_db, broker), records)

        assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
        assert profile_rows(member_db, member) == NO_PROFILE
        expected = [("partner-deleted", member, {"partnerId": member})]
        assert outbox(member_db) == (expected if order == "insert-then-delete" else [])

    @pytest.mark.parametrize("role", ["USER", "PARTNER"])
    def test_after_a_deletion_no_table_of_either_service_holds_the_nickname_or_the_uuid(
        self, member_db: Database, batch_db: Database, role: str
    ) -> None:
        """Every text column of every table of the member and batch services: the
        nickname is nowhere, and the uuid only in the tombstones (and, for a partner, the
        partner-deleted announcement, which is all it says)."""
        member, other = uuid_of(1), uuid_of(2)
        broker = FakeBroker()
        members = member_processor(member_db, broker)
        batches = batch_processor(batch_db, broker)
        assert process_one(members, insert_record(other, "Someone Else", role)) is Outcome.APPLIED
        assert process_one(members, insert_record(member, NICK, role, [4, 5, 6])) is Outcome.APPLIED
        if role == "PARTNER":
            for partner in (other, member):
                assert process_one(batches, partner_created_record(partner)) is Outcome.APPLIED
            assert count(batch_db, PartnerSummary) == 2
        assert rows_holding(member_db, MemberBase.metadata, NICK)  # the search finds it

        assert process_one(members, delete_record(member)) is Outcome.APPLIED
        if role == "PARTNER":
            assert process_one(batches, partner_deleted_record(member)) is Outcome.APPLIED

        for database, metadata in (
            (member_db, MemberBase.metadata),
            (batch_db, BatchBase.metadata),
        ):
            assert rows_holding(database, metadata, NICK) == []
            assert rows_holding(database, metadata, nickname_key(NICK)) == []
            holding_uuid = rows_holding(
                database, metadata, member, except_tables={"deleted_members", "deleted_partners"}
            )
            if role == "PARTNER" and database is member_db:
                announcement = [
                    ("outbox", "key", member),
                    ("outbox", "payload", f'{{"partnerId":"{member}"}}'),
                ]
                assert holding_uuid == announcement
            else:
                assert holding_uuid == []
        assert count(member_db, DeletedMember, uuid=member) == 1
        assert count(batch_db, DeletedPartner, partner_id=member) == (role == "PARTNER")
        # The other member is untouched.
        assert rows_holding(member_db, MemberBase.metadata, "Someone Else")
        assert count(batch_db, PartnerSummary) == (1 if role == "PARTNER" else 0)


class TestPartnerSummaries:
    def test_created_then_deleted(self, batch_db: Database) -> None:
        partner = uuid_of(1)
        assert apply(batch_db, on_partner_created, PartnerCreated(partner)) == (
            "partner summary opened"
        )

        said = apply(batch_db, on_partner_deleted, PartnerDeleted(partner))

        assert said == "partner deleted (summary dropped)"
        assert count(batch_db, PartnerSummary) == 0
        assert count(batch_db, DeletedPartner, partner_id=partner) == 1

    def test_deleted_then_created_opens_nothing(self, batch_db: Database) -> None:
        partner = uuid_of(1)

        said_delete = apply(batch_db, on_partner_deleted, PartnerDeleted(partner))
        said_create = apply(batch_db, on_partner_created, PartnerCreated(partner))

        assert said_delete == "partner deleted (no summary)"
        assert said_create == "partner already deleted: no summary opened"
        assert count(batch_db, PartnerSummary) == 0
        assert count(batch_db, DeletedPartner, partner_id=partner) == 1

    def test_a_second_deletion_is_a_no_op(self, batch_db: Database) -> None:
        partner = uuid_of(1)
        apply(batch_db, on_partner_deleted, PartnerDeleted(partner))
        said = apply(batch_db, on_partner_deleted, PartnerDeleted(partner))
        assert said == "partner already deleted: nothing to do"
        assert count(batch_db, DeletedPartner) == 1

    @pytest.mark.parametrize("order", ["created-then-deleted", "deleted-then-created"])
    def test_both_in_one_poll_leave_no_summary_in_either_order(
        self, batch_db: Database, order: str
    ) -> None:
        partner, other = uuid_of(1), uuid_of(2)
        records = [partner_created_record(partner), partner_deleted_record(partner)]
        if order == "deleted-then-created":
            records.reverse()
        records.append(partner_created_record(other))

        outcomes = apply_batch(batch_processor(batch_db, FakeBroker()), records)

        assert outcomes == [Outcome.APPLIED] * 3
        with batch_db.sessions() as session:
            assert list(session.scalars(select(PartnerSummary.partner_id))) == [other]
        assert count(batch_db, DeletedPartner, partner_id=partner) == 1
