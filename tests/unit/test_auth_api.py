"""The auth API against its contract: signup validation, storage with its outbox row, login.

Validation tests run on a SQLite file; the classes whose guarantees live in the database
(stored rows, one account per email, the outbox row in the same transaction, login)
run once on SQLite and once on real PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher, Type
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base, Member, OutboxEvent
from shared.storage.db import Database
from tests.schema import create_tables
from tests.unit.pipeline_harness import signup_body

SECRET = "x" * 32
TODAY = dt.date.today()
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
EVENT_FIELDS = {"uuid", "role", "nickname", "favoriteStyles"}


class FakeRelay:
    """Stands in for the outbox relay: records, at each wake-up, how many outbox rows
    another connection can already see (so a wake-up before the commit would show)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.visible_rows_at_wakeup: list[int] = []

    def wake(self) -> None:
        """Called by the API after a signup committed."""
        self.visible_rows_at_wakeup.append(count(self._database, OutboxEvent))


def count(database: Database, model: type[Any]) -> int:
    """Rows of `model` committed in `database`."""
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def stored_members(database: Database) -> list[Member]:
    """Every committed members row."""
    with database.sessions() as session:
        return list(session.scalars(select(Member)))


def stored_events(database: Database) -> list[OutboxEvent]:
    """Every committed outbox row, oldest first."""
    with database.sessions() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def valid_signup(**overrides: Any) -> dict[str, Any]:
    """A signup body that passes every rule, with a random email so tests never collide."""
    return signup_body(
        **{"phone": "010-1234-5678", "birth": "1995-04-17", "nickname": "minji", **overrides}
    )


def without(field: str) -> dict[str, Any]:
    """A valid signup body missing `field`."""
    body = valid_signup()
    del body[field]
    return body


def email_of_length(length: int) -> str:
    """An address the email validator accepts, exactly `length` characters long."""
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63, "com"])  # 195 characters
    local = "u" * (length - len(domain) - 1)
    assert 1 <= len(local) <= 64
    return f"{local}@{domain}"


def assert_json_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The response is the contract's JSON error with this status and code."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def assert_field_errors(response: TestResponse, *fields: str) -> dict[str, Any]:
    """A 400 `validation_failed` naming each of `fields`."""
    body = assert_json_error(response, 400, "validation_failed")
    for field in fields:
        assert field in body["fields"], body["fields"]
    return body["fields"]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def auth_database_url(tmp_path: Path) -> str:
    """A SQLite file: enough where only validation is under test. Classes whose
    guarantees live in the database override this with `database_url`."""
    return f"sqlite:///{tmp_path / 'auth.db'}"


@pytest.fixture
def database(auth_database_url: str) -> Iterator[Database]:
    """The auth database with its tables, disposed of afterwards."""
    database = Database.from_url(auth_database_url, Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def hasher() -> PasswordHasher:
    """argon2id with the cheapest parameters: speed in tests only."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID)


@pytest.fixture
def relay(database: Database) -> FakeRelay:
    """What the API wakes after each committed signup."""
    return FakeRelay(database)


@pytest.fixture
def app(database: Database, hasher: PasswordHasher, relay: FakeRelay) -> Flask:
    """The auth API, built the way the process builds it."""
    app = create_app(database, TokenIssuer(SECRET), hasher=hasher, after_commit=relay.wake)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the auth API."""
    return app.test_client()


def sign_up(client: FlaskClient, body: Any) -> TestResponse:
    """POST /auth/signup with `body` as JSON."""
    return client.post("/auth/signup", json=body)


def log_in(client: FlaskClient, email: str, password: str) -> TestResponse:
    """POST /auth/login."""
    return client.post("/auth/login", json={"email": email, "password": password})


# --- signup: what is stored ----------------------------------------------------------


class TestSignupStorage:
    """Signup on a real database: each test runs on SQLite and on PostgreSQL."""

    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url

    @pytest.mark.parametrize("role", ["USER", "PARTNER"])
    def test_valid_signup_answers_201_with_the_new_uuid(
        self, client: FlaskClient, role: str
    ) -> None:
        response = sign_up(client, valid_signup(role=role))

        assert response.status_code == 201
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert set(body) == {"uuid"}
        assert str(uuid.UUID(body["uuid"])) == body["uuid"]

    def test_valid_signup_stores_the_member_with_an_argon2id_hash_never_the_password(
        self, client: FlaskClient, database: Database, hasher: PasswordHasher
    ) -> None:
        request = valid_signup(email="Kim.Minji@Example.com", role="PARTNER")

        member_id = sign_up(client, request).get_json()["uuid"]

        [member] = stored_members(database)
        assert member.uuid == member_id
        assert member.email_key == "kim.minji@example.com"
        assert member.password_hash.startswith("$argon2id$")
        assert request["password"] not in member.password_hash
        assert hasher.verify(member.password_hash, request["password"])
        assert (member.name, member.phone, member.birth) == (
            "Kim Minji",
            "010-1234-5678",
            dt.date(1995, 4, 17),
        )
        assert (member.gender, member.role, member.nickname) == ("FEMALE", "PARTNER", "minji")

    @pytest.mark.parametrize("role", ["USER", "PARTNER"])
    def test_valid_signup_writes_exactly_one_profile_insert_event_keyed_by_uuid(
        self, client: FlaskClient, database: Database, role: str
    ) -> None:
        member_id = sign_up(client, valid_signup(role=role)).get_json()["uuid"]

        [event] = stored_events(database)
        assert event.topic == "profile-insert"
        assert event.key == member_id
        assert event.source == "auth-service"
        assert event.published_at is None
        assert json.loads(event.payload) == {
            "uuid": member_id,
            "role": role,
            "nickname": "minji",
            "favoriteStyles": [3, 1, 7],
        }

    def test_profile_insert_event_carries_no_personal_data(
        self, client: FlaskClient, database: Database
    ) -> None:
        request = valid_signup(name="Secret Name", phone="+82-10-9999-8888")

        sign_up(client, request)

        [event] = stored_events(database)
        assert set(json.loads(event.payload)) == EVENT_FIELDS
        [member] = stored_members(database)
        for personal in (
            request["email"],
            request["password"],
            member.password_hash,
            request["phone"],
            request["name"],
            request["birth"],
        ):
            assert personal not in event.payload

    def test_signup_without_favorite_styles_stores_an_empty_list_in_the_event(
        self, client: FlaskClient, database: Database
    ) -> None:
        response = sign_up(client, without("favoriteStyles"))

        assert response.status_code == 201
        [event] = stored_events(database)
        assert json.loads(event.payload)["favoriteStyles"] == []

    def test_relay_is_woken_once_and_only_after_the_rows_are_committed(
        self, client: FlaskClient, relay: FakeRelay
    ) -> None:
        sign_up(client, valid_signup())

        assert relay.visible_rows_at_wakeup == [1]

    def test_event_continues_the_callers_trace(
        self, client: FlaskClient, database: Database
    ) -> None:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = f"00-{trace_id}-00f067aa0ba902b7-01"

        client.post("/auth/signup", json=valid_signup(), headers={"traceparent": parent})

        [event] = stored_events(database)
        assert event.traceparent is not None
        assert TRACEPARENT.match(event.traceparent)
        assert event.traceparent.split("-")[1] == trace_id
        assert event.traceparent != parent

    def test_event_without_incoming_trace_starts_a_new_one(
        self, client: FlaskClient, database: Database
    ) -> None:
        sign_up(client, valid_signup())

        [event] = stored_events(database)
        assert event.traceparent is not None
        assert TRACEPARENT.match(event.traceparent)

    def test_second_signup_with_same_email_in_other_case_is_409_and_writes_nothing(
        self, client: FlaskClient, database: Database, relay: FakeRelay
    ) -> None:
        first = sign_up(client, valid_signup(email="A@x.com"))

        second = sign_up(client, valid_signup(email="a@x.com", nickname="other"))

        assert first.status_code == 201
        assert_json_error(second, 409, "email_taken")
        assert [m.uuid for m in stored_members(database)] == [first.get_json()["uuid"]]
        [event] = stored_events(database)
        assert event.key == first.get_json()["uuid"]
        assert relay.visible_rows_at_wakeup == [1]

    def test_second_signup_with_identical_email_is_409(self, client: FlaskClient) -> None:
        body = valid_signup()
        assert sign_up(client, body).status_code == 201

        assert_json_error(sign_up(client, body), 409, "email_taken")

    def test_rejected_signup_writes_no_member_and_no_event(
        self, client: FlaskClient, database: Database, relay: FakeRelay
    ) -> None:
        response = sign_up(client, valid_signup(role="ADMIN", favoriteStyles=[1, 1]))

        assert_field_errors(response, "role", "favoriteStyles")
        assert count(database, Member) == 0
        assert count(database, OutboxEvent) == 0
        assert relay.visible_rows_at_wakeup == []

    def test_signup_with_nul_character_in_name_is_rejected_with_field_error(
        self, client: FlaskClient, database: Database
    ) -> None:
        """PostgreSQL cannot store NUL in text: the API must refuse it up front, the same
        way on every backend, instead of failing with a 500 on PostgreSQL only."""
        response = sign_up(client, valid_signup(name="Kim\x00Minji"))

        assert_field_errors(response, "name")
        assert count(database, Member) == 0

    def test_signup_with_email_that_lengthens_when_lowercased_is_not_a_server_error(
        self, client: FlaskClient, database: Database
    ) -> None:
        """'İ'.lower() is two characters: a 206-character address, valid and within the
        254 limit, becomes a 406-character `email_key`. Accept it or reject it as a 400,
        but never answer 500."""
        email = "İ" * 200 + "@x.com"
        assert len(email) <= 254

        response = sign_up(client, valid_signup(email=email))

        assert response.status_code in (201, 400), response.get_data(as_text=True)
        assert count(database, Member) == (1 if response.status_code == 201 else 0)


# --- signup: validation ------------------------------------------------------------------


INVALID_FIELDS = [
    # email: a valid address, at most 254 characters
    pytest.param("email", "not-an-email", id="email-no-at"),
    pytest.param("email", "kim@", id="email-no-domain"),
    pytest.param("email", "@example.com", id="email-no-local-part"),
    pytest.param("email", "kim minji@example.com", id="email-with-space"),
    pytest.param("email", "", id="email-empty"),
    pytest.param("email", email_of_length(255), id="email-255-chars"),
    pytest.param("email", 42, id="email-number"),
    pytest.param("email", None, id="email-null"),
    # password: 8 to 128 characters
    pytest.param("password", "7-chars", id="password-7-chars"),
    pytest.param("password", "", id="password-empty"),
    pytest.param("password", "p" * 129, id="password-129-chars"),
    pytest.param("password", "p" * 200, id="password-200-chars"),
    pytest.param("password", 12345678, id="password-number"),
    pytest.param("password", None, id="password-null"),
    # name: 1 to 50 characters
    pytest.param("name", "", id="name-empty"),
    pytest.param("name", "n" * 51, id="name-51-chars"),
    pytest.param("name", ["Kim"], id="name-list"),
    # phone: digits, optional leading +, - separators, 8 to 20 characters
    pytest.param("phone", "1234567", id="phone-7-chars"),
    pytest.param("phone", "1" * 21, id="phone-21-chars"),
    pytest.param("phone", "010 1234 5678", id="phone-spaces"),
    pytest.param("phone", "010.1234.5678", id="phone-dots"),
    pytest.param("phone", "(010)12345678", id="phone-parentheses"),
    pytest.param("phone", "phone-number", id="phone-letters"),
    pytest.param("phone", "0101234567x", id="phone-trailing-letter"),
    pytest.param("phone", "-01012345678", id="phone-leading-dash"),
    pytest.param("phone", "01012345678-", id="phone-trailing-dash"),
    pytest.param("phone", "010--12345678", id="phone-double-dash"),
    pytest.param("phone", "++821012345678", id="phone-double-plus"),
    pytest.param("phone", "8210+12345678", id="phone-plus-inside"),
    pytest.param("phone", "١٢٣٤٥٦٧٨٩", id="phone-non-ascii-digits"),
    pytest.param("phone", "01012345678\n", id="phone-trailing-newline"),
    pytest.param("phone", 1012345678, id="phone-number"),
    # birth: YYYY-MM-DD, in the past
    pytest.param("birth", TODAY.isoformat(), id="birth-today"),
    pytest.param("birth", (TODAY + dt.timedelta(days=1)).isoformat(), id="birth-tomorrow"),
    pytest.param("birth", "2999-01-01", id="birth-far-future"),
    pytest.param("birth", "17/04/1995", id="birth-day-first"),
    pytest.param("birth", "1995/04/17", id="birth-slashes"),
    pytest.param("birth", "1995-02-30", id="birth-no-such-day"),
    pytest.param("birth", "1995-04-17T00:00:00", id="birth-datetime"),
    pytest.param("birth", "1995-4-7", id="birth-not-zero-padded"),
    pytest.param("birth", "", id="birth-empty"),
    pytest.param("birth", 19950417, id="birth-number"),
    # gender: MALE, FEMALE or OTHER
    pytest.param("gender", "female", id="gender-lower-case"),
    pytest.param("gender", "UNKNOWN", id="gender-unknown"),
    pytest.param("gender", "", id="gender-empty"),
    pytest.param("gender", None, id="gender-null"),
    # role: USER or PARTNER, anything else is a 400
    pytest.param("role", "ADMIN", id="role-admin"),
    pytest.param("role", "user", id="role-lower-case"),
    pytest.param("role", "PARTNERS", id="role-partners"),
    pytest.param("role", "", id="role-empty"),
    pytest.param("role", 1, id="role-number"),
    # nickname: 2 to 20 characters
    pytest.param("nickname", "m", id="nickname-1-char"),
    pytest.param("nickname", "", id="nickname-empty"),
    pytest.param("nickname", "n" * 21, id="nickname-21-chars"),
    pytest.param("nickname", 7, id="nickname-number"),
    # favoriteStyles: distinct positive integers, at most 20
    pytest.param("favoriteStyles", [0], id="styles-zero"),
    pytest.param("favoriteStyles", [-1], id="styles-negative"),
    pytest.param("favoriteStyles", [1, 2, 1], id="styles-duplicate"),
    pytest.param("favoriteStyles", list(range(1, 22)), id="styles-21"),
    pytest.param("favoriteStyles", [True], id="styles-boolean-true"),
    pytest.param("favoriteStyles", [1, False], id="styles-boolean-false"),
    pytest.param("favoriteStyles", ["1"], id="styles-numeric-string"),
    pytest.param("favoriteStyles", [1.5], id="styles-fraction"),
    pytest.param("favoriteStyles", [2.0], id="styles-float"),
    pytest.param("favoriteStyles", [None], id="styles-null-item"),
    pytest.param("favoriteStyles", "1,2", id="styles-string"),
    pytest.param("favoriteStyles", 1, id="styles-number"),
    pytest.param("favoriteStyles", {"1": 1}, id="styles-object"),
    pytest.param("favoriteStyles", None, id="styles-null"),
]


@pytest.mark.parametrize(("field", "value"), INVALID_FIELDS)
def test_signup_with_invalid_field_is_rejected_with_field_error(
    client: FlaskClient, database: Database, field: str, value: Any
) -> None:
    response = sign_up(client, valid_signup(**{field: value}))

    fields = assert_field_errors(response, field)
    assert set(fields) == {field}
    assert count(database, Member) == 0


@pytest.mark.parametrize(
    "field", ["email", "password", "name", "phone", "birth", "gender", "role", "nickname"]
)
def test_signup_without_required_field_is_rejected_with_field_error(
    client: FlaskClient, field: str
) -> None:
    fields = assert_field_errors(sign_up(client, without(field)), field)

    assert set(fields) == {field}


VALID_FIELDS = [
    pytest.param("email", email_of_length(254), id="email-254-chars"),
    pytest.param("email", "kim.minji+tag@sub.example.co.kr", id="email-plus-and-subdomain"),
    pytest.param("password", "p" * 8, id="password-8-chars"),
    pytest.param("password", "p" * 128, id="password-128-chars"),
    pytest.param("password", "비밀번호" * 32, id="password-128-multibyte-chars"),
    pytest.param("password", "  spaces \t and ' \" \\ symbols  ", id="password-any-characters"),
    pytest.param("name", "K", id="name-1-char"),
    pytest.param("name", "n" * 50, id="name-50-chars"),
    pytest.param("name", "김민지", id="name-hangul"),
    pytest.param("phone", "12345678", id="phone-8-digits"),
    pytest.param("phone", "1" * 20, id="phone-20-digits"),
    pytest.param("phone", "01012345678", id="phone-digits-only"),
    pytest.param("phone", "+82-10-1234-5678", id="phone-plus-and-dashes"),
    pytest.param("phone", "+821012345678", id="phone-plus"),
    pytest.param("birth", (TODAY - dt.timedelta(days=1)).isoformat(), id="birth-yesterday"),
    pytest.param("birth", "1900-01-01", id="birth-long-ago"),
    pytest.param("birth", "2000-02-29", id="birth-leap-day"),
    pytest.param("gender", "MALE", id="gender-male"),
    pytest.param("gender", "FEMALE", id="gender-female"),
    pytest.param("gender", "OTHER", id="gender-other"),
    pytest.param("role", "USER", id="role-user"),
    pytest.param("role", "PARTNER", id="role-partner"),
    pytest.param("nickname", "mj", id="nickname-2-chars"),
    pytest.param("nickname", "n" * 20, id="nickname-20-chars"),
    pytest.param("favoriteStyles", [], id="styles-empty"),
    pytest.param("favoriteStyles", [1], id="styles-one"),
    pytest.param("favoriteStyles", list(range(1, 21)), id="styles-20"),
    pytest.param("favoriteStyles", list(range(20, 0, -1)), id="styles-20-descending"),
]


@pytest.mark.parametrize(("field", "value"), VALID_FIELDS)
def test_signup_with_boundary_value_is_accepted(
    client: FlaskClient, database: Database, field: str, value: Any
) -> None:
    response = sign_up(client, valid_signup(**{field: value}))

    assert response.status_code == 201, response.get_json()
    assert count(database, Member) == 1


def test_signup_without_favorite_styles_is_accepted(client: FlaskClient) -> None:
    assert sign_up(client, without("favoriteStyles")).status_code == 201


def test_signup_with_several_bad_fields_reports_them_all_at_once(client: FlaskClient) -> None:
    body = valid_signup(email="nope", password="short", role="ADMIN", favoriteStyles=[0])
    del body["nickname"]

    fields = assert_field_errors(sign_up(client, body), "email", "password", "role", "nickname")

    assert set(fields) == {"email", "password", "role", "nickname", "favoriteStyles"}
    assert all(fields[name] for name in fields)


def test_signup_with_common_password_and_bad_phone_reports_both_at_once(
    client: FlaskClient, database: Database
) -> None:
    response = sign_up(client, valid_signup(password="password123", phone="not a phone"))

    fields = assert_field_errors(response, "password", "phone")
    assert set(fields) == {"password", "phone"}
    assert any("common" in problem for problem in fields["password"]), fields["password"]
    assert count(database, Member) == 0


def test_password_policy_compares_only_with_the_fields_that_are_valid(
    client: FlaskClient,
) -> None:
    # The nickname is too long, so it is not compared (its own error says why); the
    # password equal to the email's local part is still refused, with the role's error.
    body = valid_signup(email="walrus.keeper@example.com", role="ADMIN")
    body.update(password="walrus.keeper", nickname="n" * 21)

    fields = assert_field_errors(sign_up(client, body), "password", "nickname", "role")

    assert set(fields) == {"password", "nickname", "role"}
    assert fields["password"] == ["The password must not be the part of your email before the @."]


def test_signup_with_unknown_field_is_rejected_with_field_error(
    client: FlaskClient, database: Database
) -> None:
    response = sign_up(client, valid_signup(isAdmin=True))

    fields = assert_field_errors(response, "isAdmin")
    assert set(fields) == {"isAdmin"}
    assert count(database, Member) == 0


def test_signup_with_snake_case_field_name_is_rejected_as_unknown(client: FlaskClient) -> None:
    body = without("favoriteStyles")
    body["favorite_styles"] = [1]

    assert_field_errors(sign_up(client, body), "favorite_styles")


def test_signup_with_unknown_field_is_reported_with_the_other_errors(client: FlaskClient) -> None:
    response = sign_up(client, valid_signup(role="ADMIN", extra="x"))

    fields = assert_field_errors(response, "role", "extra")
    assert set(fields) == {"role", "extra"}


def test_signup_with_style_id_the_member_service_cannot_store_is_rejected(
    client: FlaskClient, database: Database
) -> None:
    """member_service keeps style ids in a BIGINT column: a larger id accepted here would
    become a `profile-insert` event the consumer can never apply."""
    response = sign_up(client, valid_signup(favoriteStyles=[2**63]))

    assert_field_errors(response, "favoriteStyles")
    assert count(database, OutboxEvent) == 0


@pytest.mark.parametrize("field", ["password", "name", "nickname"])
def test_signup_with_unpaired_surrogate_is_rejected_not_a_server_error(
    client: FlaskClient, database: Database, field: str
) -> None:
    """`"\\ud800"` is legal JSON syntax but not a character; it cannot be hashed or stored."""
    body = json.dumps(valid_signup(**{field: "abc\ud800defgh"}))

    response = client.post("/auth/signup", data=body, content_type="application/json")

    assert_field_errors(response, field)
    assert count(database, Member) == 0


# --- the request itself --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param(None, id="none"),
    ],
)
def test_body_that_is_not_json_is_415(
    client: FlaskClient, path: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post(path, data=json.dumps(valid_signup()), headers=headers)

    assert_json_error(response, 415, "unsupported_media_type")


def test_json_with_charset_parameter_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/auth/signup",
        data=json.dumps(valid_signup()),
        content_type="application/json; charset=utf-8",
    )

    assert response.status_code == 201


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"email": "a@x.com",', id="truncated"),
        pytest.param(b"{'email': 'a@x.com'}", id="single-quotes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\xfa", id="not-utf8"),
    ],
)
def test_malformed_json_is_400(client: FlaskClient, path: str, raw: bytes) -> None:
    response = client.post(path, data=raw, content_type="application/json")

    assert_json_error(response, 400, "validation_failed")


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
@pytest.mark.parametrize(
    "document",
    [
        pytest.param([valid_signup()], id="array"),
        pytest.param("a@x.com", id="string"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(True, id="boolean"),
    ],
)
def test_json_body_that_is_not_an_object_is_400(
    client: FlaskClient, path: str, document: Any
) -> None:
    response = client.post(path, data=json.dumps(document), content_type="application/json")

    assert_json_error(response, 400, "validation_failed")


def test_deeply_nested_json_body_is_rejected_with_400_not_500(client: FlaskClient) -> None:
    """Well under 64 KiB, but deeper than Python's json parser recurses."""
    raw = "[" * 30_000 + "]" * 30_000

    response = client.post("/auth/signup", data=raw, content_type="application/json")

    assert_json_error(response, 400, "validation_failed")


def test_signup_body_over_64_kib_is_413(client: FlaskClient, database: Database) -> None:
    body = valid_signup(name="n" * (64 * 1024))

    response = sign_up(client, body)

    assert_json_error(response, 413, "payload_too_large")
    assert count(database, Member) == 0


def test_login_body_over_64_kib_is_413(client: FlaskClient) -> None:
    response = log_in(client, "a@x.com", "p" * (64 * 1024))

    assert_json_error(response, 413, "payload_too_large")


def test_body_of_exactly_64_kib_is_not_refused_for_its_size(client: FlaskClient) -> None:
    padding_length = 64 * 1024 - len(json.dumps(valid_signup(name="")))
    raw = json.dumps(valid_signup(name="n" * padding_length)).encode()
    assert len(raw) == 64 * 1024

    response = client.post("/auth/signup", data=raw, content_type="application/json")

    assert_field_errors(response, "name")


def post_chunked(client: FlaskClient, path: str, raw: bytes) -> TestResponse:
    """A body sent chunked, its size not announced, as gunicorn hands it over (it sets
    `wsgi.input_terminated`: the server ends the stream)."""
    return client.post(
        path,
        input_stream=io.BytesIO(raw),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_64_kib_is_413_even_when_it_starts_with_valid_json(
    client: FlaskClient, database: Database
) -> None:
    valid = json.dumps(valid_signup()).encode()
    # Cut at 64 KiB, this would be a whole valid signup followed by spaces.
    response = post_chunked(client, "/auth/signup", valid + b" " * (64 * 1024))

    assert_json_error(response, 413, "payload_too_large")
    assert count(database, Member) == 0


def test_chunked_body_of_exactly_64_kib_is_read_whole(client: FlaskClient) -> None:
    valid = json.dumps(valid_signup()).encode()
    response = post_chunked(client, "/auth/signup", valid + b" " * (64 * 1024 - len(valid)))

    assert response.status_code == 201


def test_unknown_path_is_json_404(client: FlaskClient) -> None:
    assert_json_error(client.get("/auth/nowhere"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/signup"),
        ("PUT", "/auth/signup"),
        ("DELETE", "/auth/login"),
        ("GET", "/auth/login"),
        ("POST", "/health/live"),
    ],
)
def test_wrong_method_is_json_405(client: FlaskClient, method: str, path: str) -> None:
    assert_json_error(client.open(path, method=method), 405, "method_not_allowed")


def test_wrong_method_answer_names_the_allowed_methods(client: FlaskClient) -> None:
    """RFC 9110 15.5.6: a 405 response must carry an Allow header."""
    response = client.get("/auth/signup")

    assert response.status_code == 405
    assert "POST" in response.headers.get("Allow", "")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        pytest.param("GET", "/", {}, id="404"),
        pytest.param("PATCH", "/auth/login", {}, id="405"),
        pytest.param("POST", "/auth/signup", {"data": "x", "content_type": "text/html"}, id="415"),
        pytest.param(
            "POST", "/auth/signup", {"data": "{", "content_type": "application/json"}, id="400"
        ),
        pytest.param("POST", "/auth/signup", {"json": {"name": "n" * 70_000}}, id="413"),
        pytest.param("POST", "/auth/login", {"json": {"email": "a@x.com"}}, id="400-login"),
    ],
)
def test_error_responses_are_json_never_html(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.open(path, method=method, headers={"Accept": "text/html"}, **kwargs)

    assert response.status_code >= 400
    assert response.mimetype == "application/json"
    text = response.get_data(as_text=True).lower()
    assert "<html" not in text and "<!doctype" not in text and "traceback" not in text
    assert set(response.get_json()) <= {"error", "message", "fields"}


# --- login ---------------------------------------------------------------------------


class TestLogin:
    """Login against accounts stored on SQLite and on PostgreSQL."""

    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url

    @pytest.fixture
    def account(self, client: FlaskClient) -> dict[str, Any]:
        """A signed-up account: its request body plus its uuid."""
        body = valid_signup(email="Kim.Minji@Example.com")
        response = sign_up(client, body)
        assert response.status_code == 201
        return {**body, "uuid": response.get_json()["uuid"]}

    def test_login_with_right_password_answers_a_bearer_token(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        response = log_in(client, account["email"], account["password"])

        assert response.status_code == 200
        body = response.get_json()
        assert set(body) == {"accessToken", "tokenType", "expiresIn"}
        assert body["tokenType"] == "Bearer"
        assert isinstance(body["expiresIn"], int) and body["expiresIn"] > 0

    def test_access_token_is_hs256_with_member_uuid_as_subject(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        body = log_in(client, account["email"], account["password"]).get_json()

        header = jwt.get_unverified_header(body["accessToken"])
        assert (header["alg"], header["typ"]) == ("HS256", "at+jwt")
        claims = jwt.decode(
            body["accessToken"],
            SECRET,
            algorithms=["HS256"],
            audience="signup-pipeline",
            issuer="signup-pipeline/auth-service",
            options={"require": ["iss", "aud", "sub", "exp", "iat"]},
        )
        assert claims["sub"] == account["uuid"]
        assert claims["exp"] - claims["iat"] == body["expiresIn"]

    def test_access_token_does_not_verify_with_another_key(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        token = log_in(client, account["email"], account["password"]).get_json()["accessToken"]

        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, "y" * 32, algorithms=["HS256"])

    @pytest.mark.parametrize(
        "typed", ["kim.minji@example.com", "KIM.MINJI@EXAMPLE.COM", "kim.MINJI@example.Com"]
    )
    def test_login_compares_email_case_insensitively(
        self, client: FlaskClient, account: dict[str, Any], typed: str
    ) -> None:
        response = log_in(client, typed, account["password"])

        assert response.status_code == 200
        claims = TokenIssuer(SECRET).verify(response.get_json()["accessToken"])
        assert claims["sub"] == account["uuid"]

    def test_login_with_wrong_password_is_401(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        response = log_in(client, account["email"], account["password"] + "!")

        assert_json_error(response, 401, "invalid_credentials")

    def test_password_is_compared_in_full_never_truncated(self, client: FlaskClient) -> None:
        password = "p" * 127 + "q"
        body = valid_signup(password=password)
        assert sign_up(client, body).status_code == 201

        assert log_in(client, body["email"], password[:-1] + "p").status_code == 401
        assert log_in(client, body["email"], password[:72]).status_code == 401
        assert log_in(client, body["email"], password).status_code == 200

    def test_password_is_case_sensitive(self, client: FlaskClient, account: dict[str, Any]) -> None:
        response = log_in(client, account["email"], account["password"].upper())

        assert_json_error(response, 401, "invalid_credentials")

    def test_wrong_password_and_unknown_email_are_indistinguishable(
        self, client: FlaskClient, account: dict[str, Any]
    ) -> None:
        wrong_password = log_in(client, account["email"], "not the password")
        unknown_email = log_in(client, "nobody@example.com", "not the password")

        assert_json_error(wrong_password, 401, "invalid_credentials")
        assert_json_error(unknown_email, 401, "invalid_credentials")
        assert wrong_password.get_data() == unknown_email.get_data()
        assert dict(wrong_password.headers) == dict(unknown_email.headers)

    def test_login_writes_nothing(
        self, client: FlaskClient, database: Database, relay: FakeRelay, account: dict[str, Any]
    ) -> None:
        log_in(client, account["email"], account["password"])
        log_in(client, account["email"], "wrong password")

        assert count(database, Member) == 1
        assert count(database, OutboxEvent) == 1
        assert relay.visible_rows_at_wakeup == [1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"password": "whatever1"}, "email", id="missing-email"),
        pytest.param({"email": "a@x.com"}, "password", id="missing-password"),
        pytest.param({"email": "not-an-email", "password": "whatever1"}, "email", id="bad-email"),
        pytest.param({"email": 1, "password": "whatever1"}, "email", id="email-number"),
        pytest.param({"email": "a@x.com", "password": ""}, "password", id="empty-password"),
        pytest.param({"email": "a@x.com", "password": "p" * 129}, "password", id="long-password"),
        pytest.param({"email": "a@x.com", "password": None}, "password", id="null-password"),
        pytest.param(
            {"email": "a@x.com", "password": "whatever1", "remember": True},
            "remember",
            id="unknown-field",
        ),
    ],
)
def test_login_with_invalid_body_is_400_with_field_error(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    assert_field_errors(client.post("/auth/login", json=body), field)


def test_login_for_unknown_email_on_empty_database_is_401(client: FlaskClient) -> None:
    assert_json_error(log_in(client, "nobody@example.com", "whatever1"), 401, "invalid_credentials")


# --- health --------------------------------------------------------------------------


class TestHealth:
    """Health routes, with the database on SQLite and on PostgreSQL."""

    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url

    @pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
    def test_health_route_answers_200_when_the_database_is_up(
        self, client: FlaskClient, path: str
    ) -> None:
        response = client.get(path)

        assert response.status_code == 200
        assert response.mimetype == "application/json"


def test_problems_inside_a_list_are_reported_as_strings_naming_the_index(
    client: FlaskClient,
) -> None:
    response = sign_up(client, valid_signup(favoriteStyles=[1, "2", 0]))

    assert_json_error(response, 400, "validation_failed")
    problems = response.get_json()["fields"]["favoriteStyles"]
    assert all(isinstance(problem, str) for problem in problems)
    assert any(problem.startswith("[1] ") for problem in problems)
    assert any(problem.startswith("[2] ") for problem in problems)
