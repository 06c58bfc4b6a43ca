"""One account per email, enforced by the database's unique index under real concurrency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import MetaData, func, select

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base, Member, OutboxEvent
from shared.storage.db import Database
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

pytestmark = pytest.mark.integration


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


def test_twenty_concurrent_signups_with_one_email_make_one_account_and_one_event(
    database: Database,
) -> None:
    app = create_app(database, TokenIssuer("k" * 32), hasher=FAST_HASHER)
    emails = ["Same@Example.com" if n % 2 else "same@example.COM" for n in range(20)]

    def attempt(email: str) -> int:
        return app.test_client().post("/auth/signup", json=signup_body(email=email)).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = Counter(pool.map(attempt, emails))

    assert statuses == {201: 1, 409: 19}
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 1
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 1
