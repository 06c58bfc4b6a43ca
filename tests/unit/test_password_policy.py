"""Password policy (ASVS 5.0 V6.2): length, not composition; no common password; not the
account's own email, email local part or nickname; argon2id cost from configuration,
never below OWASP's minimum; older hashes strengthened on the next successful login."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from flask.testing import FlaskClient
from sqlalchemy import select

from auth_service.api import create_app
from auth_service.handlers import Authenticator, Credentials, InvalidCredentials, TokenIssuer
from auth_service.models import Base, Member
from auth_service.passwords import Argon2Parameters, common_passwords, hash_is_weaker
from shared.config import ConfigError, auth_settings
from shared.storage.db import Database
from tests.schema import sqlite_database
from tests.unit.pipeline_harness import signup_body

WEAK = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID)
STRONGER = PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1, type=Type.ID)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    with sqlite_database(tmp_path / "auth.db", Base.metadata) as database:
        yield database


def client_for(database: Database, hasher: PasswordHasher = WEAK) -> FlaskClient:
    return create_app(database, TokenIssuer("k" * 32), hasher=hasher).test_client()


def password_errors(client: FlaskClient, **body: object) -> list[str] | None:
    response = client.post("/auth/signup", json=signup_body(**body))
    if response.status_code == 201:
        return None
    assert response.status_code == 400, response.json
    assert response.json is not None
    errors: list[str] | None = response.json["fields"].get("password")
    return errors


def test_the_shipped_list_holds_at_least_the_10000_most_common_passwords() -> None:
    listed = common_passwords()
    assert len(listed) >= 10_000
    assert {"password", "12345678", "iloveyou", "sunshine", "trustno1"} <= listed


@pytest.mark.parametrize("password", ["password", "Password", "12345678", "iloveyou", "TRUSTNO1"])
def test_a_common_password_is_refused_whatever_its_case(database: Database, password: str) -> None:
    errors = password_errors(client_for(database), password=password)
    assert errors == ["This password is one of the most common ones; choose another."]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            {"email": "Kim.Minji@example.com", "password": "kim.minji@EXAMPLE.com"},
            "must not be your email address",
        ),
        (
            {"email": "kimminji1994@example.com", "password": "KimMinji1994"},
            "must not be the part of your email before the @",
        ),
        ({"nickname": "shopkeeper77", "password": "ShopKeeper77"}, "must not be your nickname"),
    ],
)
def test_a_password_equal_to_the_accounts_own_identifiers_is_refused(
    database: Database, body: dict[str, str], problem: str
) -> None:
    errors = password_errors(client_for(database), **body)
    assert errors is not None and len(errors) == 1 and problem in errors[0]


@pytest.mark.parametrize(
    ("password", "accepted"),
    [
        ("zq8#vL2", False),  # 7 characters
        ("zq8#vL2m", True),  # 8 characters, no rule on which kinds
        ("passphrase with only lowercase words", True),
        ("ü" * 128, True),  # 128 characters of anything (256 bytes of UTF-8)
        ("x" * 129, False),
    ],
)
def test_length_is_the_only_shape_rule(database: Database, password: str, accepted: bool) -> None:
    errors = password_errors(client_for(database), password=password)
    assert (errors is None) is accepted, errors


def test_a_long_password_is_never_truncated(database: Database) -> None:
    client = client_for(database)
    password = "correct horse " * 9  # 126 characters: far past bcrypt's 72-byte cut
    body = signup_body(password=password)
    assert client.post("/auth/signup", json=body).status_code == 201
    login = {"email": body["email"]}
    assert client.post("/auth/login", json={**login, "password": password}).status_code == 200
    assert client.post("/auth/login", json={**login, "password": password[:-1]}).status_code == 401


def stored_hash(database: Database, email: str) -> str:
    with database.sessions() as session:
        value = session.scalar(select(Member.password_hash).where(Member.email_key == email))
    assert value is not None
    return value


def test_a_hash_made_with_older_parameters_is_upgraded_on_the_next_successful_login(
    database: Database,
) -> None:
    body = signup_body()
    assert client_for(database, WEAK).post("/auth/signup", json=body).status_code == 201
    old = stored_hash(database, body["email"])
    stronger = client_for(database, STRONGER)
    credentials = {"email": body["email"], "password": body["password"]}

    assert (
        stronger.post("/auth/login", json={**credentials, "password": "wrong one!"}).status_code
        == 401
    )
    assert stored_hash(database, body["email"]) == old  # a failed login changes nothing
    assert stronger.post("/auth/login", json=credentials).status_code == 200

    new = stored_hash(database, body["email"])
    assert new != old and "m=2048" in new and "m=1024" in old
    assert not STRONGER.check_needs_rehash(new)
    assert stronger.post("/auth/login", json=credentials).status_code == 200
    assert stored_hash(database, body["email"]) == new  # upgraded once, not every login


def test_a_stronger_hash_is_kept_when_the_settings_are_lowered(database: Database) -> None:
    body = signup_body()
    assert client_for(database, STRONGER).post("/auth/signup", json=body).status_code == 201
    strong = stored_hash(database, body["email"])
    credentials = {"email": body["email"], "password": body["password"]}

    assert client_for(database, WEAK).post("/auth/login", json=credentials).status_code == 200
    assert stored_hash(database, body["email"]) == strong  # not replaced by a weaker one


@pytest.mark.parametrize(
    ("stored", "weaker"),
    [
        (PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1, type=Type.ID), False),
        (PasswordHasher(time_cost=2, memory_cost=4096, parallelism=2, type=Type.ID), False),
        (PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID), True),
        (PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1, type=Type.I), True),
        (PasswordHasher(time_cost=1, memory_cost=2048, hash_len=16, type=Type.ID), True),
        (PasswordHasher(time_cost=1, memory_cost=2048, salt_len=8, type=Type.ID), True),
    ],
)
def test_a_hash_is_replaced_only_when_weaker_than_the_settings(
    stored: PasswordHasher, weaker: bool
) -> None:
    assert hash_is_weaker(stored.hash("some password"), STRONGER) is weaker
    assert hash_is_weaker("not an argon2 hash", STRONGER)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ARGON2_MEMORY_KIB": "8192"}, "below OWASP's minimum"),
        ({"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "19456"}, "47104 KiB"),
        ({"ARGON2_TIME_COST": "0"}, "at least 1"),
        ({"ARGON2_PARALLELISM": "two"}, "not a whole number"),
        ({"ARGON2_PARALLELISM": "4000"}, "8 KiB per lane"),
        ({"ARGON2_PARALLELISM": "20000000", "ARGON2_MEMORY_KIB": "160000000"}, "cannot hash"),
    ],
)
def test_argon2_parameters_below_owasps_minimum_are_refused_at_start(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Argon2Parameters.from_settings(auth_settings(env))


def test_argon2_parameters_come_from_the_environment() -> None:
    parameters = Argon2Parameters.from_settings(
        auth_settings({"ARGON2_TIME_COST": "3", "ARGON2_MEMORY_KIB": "12288"})
    )
    assert "$argon2id$v=19$m=12288,t=3,p=1$" in parameters.hasher().hash("anything at all")
    assert Argon2Parameters.from_settings(auth_settings({})) == Argon2Parameters(2, 19456, 1)


class RecordingHasher:
    """A real argon2id hasher that remembers which hashes it was asked to verify."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher
        self.verified: list[str] = []

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, hash: str, password: str) -> bool:
        self.verified.append(hash)
        return self._hasher.verify(hash, password)

    def is_weaker(self, hash: str) -> bool:
        return hash_is_weaker(hash, self._hasher)


def test_an_unknown_email_costs_one_verification_at_the_cost_of_a_real_hash() -> None:
    hasher = RecordingHasher(Argon2Parameters().hasher())
    authenticator = Authenticator(hasher)
    account = Credentials("member-1", hasher.hash("the real password"))

    with pytest.raises(InvalidCredentials):
        authenticator.check(None, "a guess at a password")
    with pytest.raises(InvalidCredentials):
        authenticator.check(account, "a guess at a password")

    unknown, wrong = hasher.verified
    assert unknown != account.password_hash
    assert extract_parameters(unknown) == extract_parameters(wrong)
    assert authenticator.check(account, "the real password") == "member-1"
