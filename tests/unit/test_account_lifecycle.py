"""Issue 17, the auth half of a member's life: a signup is PENDING until the member
service answers, then ACTIVE, or REJECTED with its data erased and its email free;
DELETE /auth/me erases the account at once and queues profile-delete. Runs on SQLite
here and on PostgreSQL in tests/integration/test_auth_api_on_postgres.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer, on_profile_created, on_profile_rejected
from auth_service.models import Base, Member, OutboxEvent
from shared.messaging.pipeline import ProfileCreated, ProfileRejected
from shared.messaging.processor import PermanentError
from shared.storage.db import Database
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

PERSONAL = ("email", "email_key", "password_hash", "name", "phone", "birth", "gender", "nickname")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url, Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def app(database: Database) -> Flask:
    return create_app(database, TokenIssuer("t" * 32), hasher=FAST_HASHER)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def apply(database: Database, handler: Any, event: Any) -> str:
    """Apply an event as the auth worker does: in a transaction it commits."""
    with database.unit_of_work() as uow:
        summary = handler(event, uow)
        uow.commit()
    return str(summary)


def member_row(database: Database, member_id: str) -> Member:
    with database.sessions() as session:
        return session.scalars(select(Member).where(Member.uuid == member_id)).one()


def outbox(database: Database, member_id: str) -> list[tuple[str, dict[str, Any]]]:
    with database.sessions() as session:
        rows = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == member_id).order_by(OutboxEvent.id)
        ).all()
        return [(row.topic, json.loads(row.payload)) for row in rows]


class Account:
    def __init__(self, client: FlaskClient, body: dict[str, Any]) -> None:
        answer = client.post("/auth/signup", json=body)
        assert answer.status_code == 201, answer.json
        self.body = body
        self.uuid: str = answer.json["uuid"]  # type: ignore[index]
        self.location = answer.headers["Location"]
        self.client = client

    def log_in(self) -> TestResponse:
        return self.client.post(
            "/auth/login", json={"email": self.body["email"], "password": self.body["password"]}
        )

    def token(self) -> str:
        answer = self.log_in()
        assert answer.status_code == 200, answer.json
        return str(answer.json["accessToken"])  # type: ignore[index]

    def status(self) -> TestResponse:
        return self.client.get(self.location)


class TestTheSignupSaga:
    def test_a_signup_is_pending_until_the_member_service_answers_then_active(
        self, client: FlaskClient, database: Database
    ) -> None:
        account = Account(client, signup_body())
        assert account.location == f"/auth/signups/{account.uuid}"
        assert account.status().json == {"status": "PENDING"}
        token = account.token()  # a PENDING account logs in: only its profile lags
        assert client.get("/auth/me", headers=bearer(token)).status_code == 200

        apply(database, on_profile_created, ProfileCreated(uuid=account.uuid))
        assert account.status().json == {"status": "ACTIVE"}
        # Applied again (a redelivery past the inbox, or a duplicate): nothing changes.
        assert "nothing to do" in apply(
            database, on_profile_created, ProfileCreated(uuid=account.uuid)
        )
        assert client.get("/auth/me", headers=bearer(token)).status_code == 200

    def test_a_rejected_signup_is_erased_and_its_email_free_again(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body(nickname="taken-nick")
        account = Account(client, body)
        token = account.token()
        apply(database, on_profile_rejected, ProfileRejected(account.uuid, "nickname_taken"))

        assert account.status().json == {"status": "REJECTED", "reason": "nickname_taken"}
        row = member_row(database, account.uuid)
        assert all(getattr(row, column) is None for column in PERSONAL)
        assert outbox(database, account.uuid) == []  # the profile-insert held the nickname
        assert client.get("/auth/me", headers=bearer(token)).status_code == 401
        assert account.log_in().status_code == 401
        again = Account(client, {**body, "nickname": "another-nick"})
        assert again.uuid != account.uuid

    def test_an_answer_that_contradicts_the_account_is_a_permanent_error(
        self, client: FlaskClient, database: Database
    ) -> None:
        active = Account(client, signup_body())
        apply(database, on_profile_created, ProfileCreated(uuid=active.uuid))
        with pytest.raises(PermanentError, match="created"):
            apply(database, on_profile_rejected, ProfileRejected(active.uuid, "nickname_taken"))
        unknown = "00000000-0000-4000-8000-000000000001"
        with pytest.raises(PermanentError, match="never had"):
            apply(database, on_profile_created, ProfileCreated(uuid=unknown))
        assert active.status().json == {"status": "ACTIVE"}

    def test_an_unknown_or_malformed_signup_is_404(self, client: FlaskClient) -> None:
        for member_id in ("00000000-0000-4000-8000-000000000002", "not-a-uuid"):
            answer = client.get(f"/auth/signups/{member_id}")
            assert answer.status_code == 404 and answer.json["error"] == "not_found"  # type: ignore[index]


class TestAccountDeletion:
    def delete(self, client: FlaskClient, token: str, password: str) -> TestResponse:
        return client.delete("/auth/me", json={"password": password}, headers=bearer(token))

    def test_deletion_erases_the_account_refuses_its_tokens_and_queues_profile_delete(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        account = Account(client, body)
        apply(database, on_profile_created, ProfileCreated(uuid=account.uuid))
        token, other = account.token(), account.token()

        answer = self.delete(client, token, body["password"])
        assert answer.status_code == 202, answer.json
        assert answer.json == {"uuid": account.uuid}

        row = member_row(database, account.uuid)
        assert row.status == "DELETED"
        assert all(getattr(row, column) is None for column in PERSONAL)
        assert outbox(database, account.uuid) == [("profile-delete", {"uuid": account.uuid})]
        for earlier in (token, other):
            assert client.get("/auth/me", headers=bearer(earlier)).status_code == 401
        assert account.log_in().status_code == 401
        assert account.status().status_code == 404
        # The email can sign up again: a new account, a new uuid.
        assert Account(client, body).uuid != account.uuid
        # The deleted account's late answer changes nothing.
        apply(database, on_profile_created, ProfileCreated(uuid=account.uuid))
        assert member_row(database, account.uuid).status == "DELETED"

    def test_a_wrong_password_or_no_token_deletes_nothing(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        account = Account(client, body)
        token = account.token()
        wrong = self.delete(client, token, "not the password")
        assert wrong.status_code == 401 and wrong.json["error"] == "invalid_credentials"  # type: ignore[index]
        anonymous = client.delete("/auth/me", json={"password": body["password"]})
        assert anonymous.status_code == 401 and anonymous.json["error"] == "invalid_token"  # type: ignore[index]
        assert member_row(database, account.uuid).status == "PENDING"
        assert client.get("/auth/me", headers=bearer(token)).status_code == 200

    def test_a_deleted_account_keeps_nothing_personal_in_any_auth_table(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body(name="Erasable Name", phone="+82-10-9999-0000", nickname="erase-me")
        account = Account(client, body)
        self.delete(client, account.token(), body["password"])
        personal = [body["email"], body["name"], body["phone"], body["nickname"], "1994-05-17"]
        with database.engine.connect() as connection:
            for table in Base.metadata.sorted_tables:
                for row in connection.execute(table.select()):
                    text = " ".join(str(value) for value in row)
                    for value in personal:
                        assert value not in text, (table.name, value)


def test_the_saga_and_deletion_routes_are_in_the_openapi_document(client: FlaskClient) -> None:
    document = client.get("/openapi.json").json
    paths = document["paths"]  # type: ignore[index]
    assert "202" in paths["/auth/me"]["delete"]["responses"]
    assert "/auth/signups/{member_id}" in paths


def test_an_account_whose_email_the_normal_form_now_refuses_can_still_be_deleted(
    client: FlaskClient, database: Database
) -> None:
    """Migration 0003 keeps an address the new rules refuse (a quoted local part); its
    holder's token (issued before) must still reach DELETE /auth/me, not a 500."""
    body = signup_body()
    account = Account(client, body)
    token = account.token()
    with database.sessions() as session, session.begin():
        session.execute(
            update(Member)
            .where(Member.uuid == account.uuid)
            .values(email='"quoted"@example.com')
        )
    answer = client.delete("/auth/me", json={"password": body["password"]}, headers=bearer(token))
    assert answer.status_code == 202, answer.json
