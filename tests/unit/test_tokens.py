"""Access tokens (RFC 8725): one allowed algorithm, an explicit type, issuer, audience,
issue and expiry times set and checked; `GET /auth/me` accepts only such a token."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete

from auth_service.__main__ import DEV_SECRET, jwt_secret
from auth_service.api import create_app
from auth_service.handlers import TOKEN_AUDIENCE, TOKEN_ISSUER, TokenIssuer
from auth_service.models import Base, Member
from shared.config import Settings
from shared.storage.db import Database
from tests.schema import sqlite_database
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

SECRET = "s" * 32
NOW = dt.datetime.now(dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    with sqlite_database(tmp_path / "auth.db", Base.metadata) as database:
        yield database


@pytest.fixture
def client(database: Database) -> FlaskClient:
    return create_app(database, TokenIssuer(SECRET), hasher=FAST_HASHER).test_client()


@pytest.fixture
def account(client: FlaskClient) -> dict[str, Any]:
    body = signup_body(role="PARTNER", nickname="a-shop")
    response = client.post("/auth/signup", json=body)
    assert response.status_code == 201
    login = client.post("/auth/login", json={"email": body["email"], "password": body["password"]})
    assert login.status_code == 200 and login.json is not None
    return {**body, "uuid": response.json["uuid"], "token": login.json["accessToken"]}


def me(client: FlaskClient, authorization: str | None) -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return client.get("/auth/me", headers=headers)


def claims(account: dict[str, Any], **changes: Any) -> dict[str, Any]:
    valid = {
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": account["uuid"],
        "iat": NOW,
        "exp": NOW + dt.timedelta(minutes=5),
    }
    valid.update(changes)
    return {k: v for k, v in valid.items() if v is not None}


def signed(payload: dict[str, Any], key: str = SECRET, **options: Any) -> str:
    headers = {"typ": "at+jwt", **options.pop("headers", {})}
    return jwt.encode(payload, key, algorithm=options.pop("algorithm", "HS256"), headers=headers)


def hs512(payload: dict[str, Any]) -> str:
    """Signed with the right key but an algorithm the API does not allow."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return signed(payload, algorithm="HS512")


def unsigned(payload: dict[str, Any]) -> str:
    """`alg: none`: a token with no signature at all."""

    def part(document: dict[str, Any]) -> str:
        raw = json.dumps(document, default=lambda d: int(d.timestamp())).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{part(payload)}."


def test_a_valid_token_reads_its_own_account(client: FlaskClient, account: dict[str, Any]) -> None:
    response = me(client, f"Bearer {account['token']}")
    assert response.status_code == 200
    assert response.json == {
        "uuid": account["uuid"],
        "email": account["email"],
        "role": "PARTNER",
        "nickname": "a-shop",
    }


def test_an_issued_token_carries_type_issuer_audience_and_times(account: dict[str, Any]) -> None:
    token = account["token"]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert {"iss", "aud", "sub", "iat", "exp", "jti"} <= set(payload)
    assert (payload["iss"], payload["aud"]) == (TOKEN_ISSUER, TOKEN_AUDIENCE)


FORGERIES = {
    "no header": lambda a: None,
    "not bearer": lambda a: f"Basic {a['token']}",
    "bearer without token": lambda a: "Bearer ",
    "garbage": lambda a: "Bearer not.a.jwt",
    "alg none": lambda a: f"Bearer {unsigned(claims(a))}",
    "wrong key": lambda a: f"Bearer {signed(claims(a), key='w' * 32)}",
    "HS512, same key": lambda a: f"Bearer {hs512(claims(a))}",
    "expired": lambda a: f"Bearer {signed(claims(a, iat=NOW - HOUR * 2, exp=NOW - HOUR))}",
    "wrong audience": lambda a: f"Bearer {signed(claims(a, aud='another-api'))}",
    "wrong issuer": lambda a: f"Bearer {signed(claims(a, iss='https://evil.example'))}",
    "no expiry": lambda a: f"Bearer {signed(claims(a, exp=None))}",
    # Seen by an outside probe: a token expiring in 9999, signed with the dev key, passed.
    "expires in 9999": lambda a: (
        f"Bearer {signed(claims(a, exp=dt.datetime(9999, 12, 31, tzinfo=dt.UTC)))}"
    ),
    "lives two hours (longer than issued)": lambda a: (
        f"Bearer {signed(claims(a, exp=NOW + HOUR * 2))}"
    ),
    "no issue time": lambda a: f"Bearer {signed(claims(a, iat=None))}",
    "no audience": lambda a: f"Bearer {signed(claims(a, aud=None))}",
    "not an access token": lambda a: f"Bearer {signed(claims(a), headers={'typ': 'JWT'})}",
    "tampered payload": lambda a: (
        "Bearer "
        + ".".join(
            [
                a["token"].split(".")[0],
                signed(claims(a, sub="x")).split(".")[1],
                a["token"].split(".")[2],
            ]
        )
    ),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_anything_but_a_valid_token_is_401_invalid_token(
    client: FlaskClient, account: dict[str, Any], forgery: str
) -> None:
    response = me(client, FORGERIES[forgery](account))
    assert response.status_code == 401
    assert response.json is not None and response.json["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_token_for_an_account_that_no_longer_exists_is_401(
    client: FlaskClient, account: dict[str, Any], database: Database
) -> None:
    with database.sessions() as session, session.begin():
        session.execute(delete(Member).where(Member.uuid == account["uuid"]))
    assert me(client, f"Bearer {account['token']}").status_code == 401


def test_dev_mode_says_loudly_that_its_signing_key_is_public(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dev = Settings("auth", "sqlite://", ["127.0.0.1:9092"], dev_mode=True)
    with caplog.at_level(logging.WARNING, logger="auth_service.__main__"):
        assert jwt_secret(dev, "") == DEV_SECRET
    [record] = caplog.records
    assert "public" in record.getMessage() and "forge" in record.getMessage()
