"""Issue 17, items 3 and 4: a signup retried with its Idempotency-Key answers the same
uuid (one account however many tries run at once); a password change needs the current
password and refuses every token issued before it. The classes take `database_url`:
SQLite here, PostgreSQL again in tests/integration/test_auth_api_on_postgres.py."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base, IdempotencyKey, Member, OutboxEvent
from shared.messaging.housekeeping import Expiring, Housekeeper
from shared.storage.db import Database, utcnow
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

TOKENS = TokenIssuer("t" * 32)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url, Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def app(database: Database) -> Flask:
    return create_app(database, TOKENS, hasher=FAST_HASHER, request_secret=b"s" * 32)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def count(database: Database, model: Any) -> int:
    with database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def signup(client: FlaskClient, body: Any, key: str | None = None, **kwargs: Any) -> TestResponse:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/auth/signup", json=body, headers=headers, **kwargs)


class TestIdempotentSignup:
    def test_a_retry_with_the_key_answers_the_same_uuid_and_creates_nothing(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        first = signup(client, body, "7f1c0d2e-retry-1")
        # The same request, its fields in another order and spaced otherwise.
        raw = json.dumps(dict(reversed(list(body.items()))), indent=2)
        again = client.post(
            "/auth/signup",
            data=raw,
            content_type="application/json",
            headers={"Idempotency-Key": "7f1c0d2e-retry-1"},
        )
        assert first.status_code == again.status_code == 201, again.json
        assert again.json == first.json
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert count(database, Member) == count(database, OutboxEvent) == 1

    def test_the_key_with_another_body_is_422_and_creates_nothing(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        assert signup(client, body, "k-1").status_code == 201
        other = signup(client, {**body, "password": "another good passphrase"}, "k-1")
        assert other.status_code == 422, other.json
        assert other.json["error"] == "idempotency_key_reused"  # type: ignore[index]
        assert count(database, Member) == 1

    def test_without_a_key_a_retry_is_still_a_409(self, client: FlaskClient) -> None:
        body = signup_body()
        assert signup(client, body).status_code == 201
        assert signup(client, body).status_code == 409
        assert signup(client, body, "new-key").status_code == 409  # a new key, a new try

    @pytest.mark.parametrize("key", ["", " ", "a" * 256, "caf\u00e9", "tab\there"])
    def test_a_malformed_key_is_a_400_before_anything_is_stored(
        self, client: FlaskClient, database: Database, key: str
    ) -> None:
        answer = signup(client, signup_body(), key)
        assert answer.status_code == 400, answer.json
        assert "Idempotency-Key" in answer.json["fields"]  # type: ignore[index]
        assert count(database, Member) == 0

    def test_twenty_concurrent_tries_with_one_key_make_one_account(
        self, app: Flask, database: Database
    ) -> None:
        body = signup_body()
        start = threading.Barrier(20)
        answers: list[tuple[int, Any]] = []

        def attempt() -> None:
            client = app.test_client()
            start.wait()
            answer = signup(client, body, "one-key-for-twenty")
            answers.append((answer.status_code, answer.json))

        threads = [threading.Thread(target=attempt) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _ in answers] == [201] * 20, answers
        assert len({json["uuid"] for _, json in answers}) == 1
        assert count(database, Member) == count(database, OutboxEvent) == 1
        assert count(database, IdempotencyKey) == 1

    def test_what_is_kept_of_a_key_gives_away_neither_the_key_nor_the_request(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        signup(client, body, "visible-key")
        with database.sessions() as session:
            row = session.scalars(select(IdempotencyKey)).one()
        assert "visible-key" not in row.key
        assert len(row.key) == len(row.request) == 64
        assert body["password"] not in row.request

    def test_keys_go_after_their_retention_and_a_retry_is_then_new(
        self, client: FlaskClient, database: Database
    ) -> None:
        body = signup_body()
        signup(client, body, "old-key")
        with database.sessions() as session, session.begin():
            session.execute(
                update(IdempotencyKey).values(created_at=utcnow() - dt.timedelta(hours=26))
            )
        kept = dt.timedelta(hours=25)
        swept = Housekeeper(
            database,
            expiring=(
                Expiring(IdempotencyKey, IdempotencyKey.key, IdempotencyKey.created_at, kept),
            ),
        ).sweep()
        assert swept["idempotency_keys"] == 1
        assert signup(client, body, "old-key").status_code == 409  # answered anew


def log_in(client: FlaskClient, email: str, password: str) -> TestResponse:
    return client.post("/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestPasswordChange:
    @pytest.fixture
    def account(self, client: FlaskClient) -> dict[str, Any]:
        body = signup_body(email="pw.change@example.com", nickname="changer-nick")
        assert signup(client, body).status_code == 201
        token = log_in(client, body["email"], body["password"]).json["accessToken"]  # type: ignore[index]
        return {**body, "token": token}

    def change(
        self, client: FlaskClient, token: str, current: str, new: str
    ) -> TestResponse:
        return client.put(
            "/auth/password",
            json={"currentPassword": current, "newPassword": new},
            headers=bearer(token),
        )

    def test_a_change_refuses_every_earlier_token_and_the_old_password(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        email, old = account["email"], account["password"]
        second = log_in(client, email, old).json["accessToken"]  # type: ignore[index]
        changed = self.change(client, account["token"], old, "a brand new passphrase")
        assert changed.status_code == 200, changed.json
        fresh = changed.json["accessToken"]  # type: ignore[index]

        for token in (account["token"], second):
            me = client.get("/auth/me", headers=bearer(token))
            assert me.status_code == 401 and me.json["error"] == "invalid_token"  # type: ignore[index]
        assert client.get("/auth/me", headers=bearer(fresh)).status_code == 200
        assert log_in(client, email, old).status_code == 401
        after = log_in(client, email, "a brand new passphrase")
        assert after.status_code == 200
        assert client.get("/auth/me", headers=bearer(after.json["accessToken"])).status_code == 200  # type: ignore[index]
        # An earlier token cannot change the password again either.
        again = self.change(client, account["token"], "a brand new passphrase", "third pass phrase")
        assert again.status_code == 401

    def test_a_wrong_current_password_changes_nothing(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        answer = self.change(client, account["token"], "not the password", "a brand new passphrase")
        assert answer.status_code == 401 and answer.json["error"] == "invalid_credentials"  # type: ignore[index]
        assert client.get("/auth/me", headers=bearer(account["token"])).status_code == 200
        assert log_in(client, account["email"], account["password"]).status_code == 200

    @pytest.mark.parametrize(
        ("new", "problem"),
        [
            ("password1", "most common"),
            ("short", "Length must be between 8 and 128"),
            ("Changer-Nick", "nickname"),  # the account's own nickname
            (None, "differ from the current one"),  # None: the current password again
        ],
    )
    def test_the_new_password_is_under_the_signup_policy(
        self, client: FlaskClient, account: dict[str, Any], new: str | None, problem: str
    ) -> None:
        new = new or account["password"]
        answer = self.change(client, account["token"], account["password"], new)
        assert answer.status_code == 400, answer.json
        problems = " ".join(answer.json["fields"]["newPassword"])  # type: ignore[index]
        assert problem.lower() in problems.lower(), problems
        assert client.get("/auth/me", headers=bearer(account["token"])).status_code == 200

    def test_no_token_no_change(self, client: FlaskClient, account: dict[str, Any]) -> None:
        answer = client.put(
            "/auth/password",
            json={"currentPassword": account["password"], "newPassword": "a brand new passphrase"},
        )
        assert answer.status_code == 401 and answer.json["error"] == "invalid_token"  # type: ignore[index]
        assert log_in(client, account["email"], account["password"]).status_code == 200
