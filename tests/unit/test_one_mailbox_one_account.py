"""One mailbox, one account: every way of writing an address that reaches the same
mailbox is the same account (409 for the second), and the ways that only look like
another address are refused; the address is shown back as typed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from auth_service.api import create_app
from auth_service.emails import EmailNotAccepted, email_key
from auth_service.handlers import TokenIssuer
from auth_service.models import Base
from tests.schema import sqlite_database
from tests.unit.pipeline_harness import FAST_HASHER, signup_body


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    with sqlite_database(tmp_path / "auth.db", Base.metadata) as database:
        yield create_app(database, TokenIssuer("k" * 32), hasher=FAST_HASHER).test_client()


# Seen by an outside probe: each pair was accepted as two accounts, each logging in.
SAME_MAILBOX = [
    ("idn@bücher.de", "idn@xn--bcher-kva.de"),  # IDN domain, Unicode and punycode
    ("idn@xn--bcher-kva.de", "IDN@BÜCHER.DE"),
    ("fw@ｅｘａｍｐｌｅ.com", "fw@example.com"),  # fullwidth domain
    ("ｆｗ@example.com", "fw@example.com"),  # fullwidth local part (NFKC)
    ("Kim@Example.COM", "kim@example.com"),
    ("caf\u00e9@example.com", "cafe\u0301@example.com"),  # composed and decomposed é
]


@pytest.mark.parametrize(("first", "second"), SAME_MAILBOX)
def test_two_ways_of_writing_one_mailbox_are_one_account(
    client: FlaskClient, first: str, second: str
) -> None:
    created = client.post("/auth/signup", json=signup_body(email=first))
    again = client.post("/auth/signup", json=signup_body(email=second))
    assert created.status_code == 201, created.json
    assert again.status_code == 409, again.json
    assert again.json["error"] == "email_taken"  # type: ignore[index]
    # Either spelling logs in to the one account, which shows the address as typed.
    login = client.post(
        "/auth/login", json={"email": second, "password": signup_body()["password"]}
    )
    assert login.status_code == 200, login.json
    token = login.json["accessToken"]  # type: ignore[index]
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json["email"] == first  # type: ignore[index]


REFUSED = [
    ('"quoted"@example.com', "Quoting"),
    ("zw@exa\u200bmple.com", "ZERO WIDTH SPACE"),
    ("zw\u200b@example.com", "ZERO WIDTH SPACE"),
    ("soft\u00ad@example.com", "SOFT HYPHEN"),
    ("rtl@exa\u202emple.com", "unsafe"),
    ("me@\u0430pple.com", "look alike"),  # a Cyrillic а among Latin letters
    ("p\u0430ypal@example.com", "look alike"),
    ("user@localhost", "period"),
    ("user@example.test", "special-use"),
    ("user@[127.0.0.1]", "bracketed"),
]


@pytest.mark.parametrize(("email", "why"), REFUSED)
def test_an_address_that_only_looks_like_another_is_refused(
    client: FlaskClient, email: str, why: str
) -> None:
    answer = client.post("/auth/signup", json=signup_body(email=email))
    assert answer.status_code == 400, answer.json
    assert answer.json["error"] == "validation_failed"  # type: ignore[index]
    problems = " ".join(answer.json["fields"]["email"])  # type: ignore[index]
    assert why.lower() in problems.lower(), problems
    with pytest.raises(EmailNotAccepted):
        email_key(email)


def test_a_whole_address_in_one_other_script_is_a_mailbox_of_its_own() -> None:
    # Only mixing within a label is refused: these are real, distinct mailboxes.
    assert email_key("пример@пример.рф") == "пример@xn--e1afmkfd.xn--p1ai"
    assert email_key("αλφα@example.com") == "αλφα@example.com"


def test_the_key_is_never_longer_than_an_address_may_be() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 60] * 3) + ".com"
    assert len(email_key(f"{local}@{domain}")) == 64 + 1 + len(domain) == 251
    with pytest.raises(EmailNotAccepted):
        email_key(f"{local}@{'b' * 60}.{domain}")
