"""The auth API's storage, login and health tests again, on real PostgreSQL.

The unit tier runs these classes on SQLite only (it is hermetic); the guarantees they
check live in the database (unique emails, one outbox row per signup, the transaction),
so they run here on PostgreSQL too, unchanged: the classes are the unit module's own."""

from __future__ import annotations

import pytest

from devtools.postgres import PostgresServer
from tests.unit import test_account_lifecycle as lifecycle
from tests.unit import test_auth_api as unit
from tests.unit import test_signup_retries_and_password_change as retries

# The unit module's fixtures, so the inherited tests find them here too.
from tests.unit.test_auth_api import app, client, database, hasher, relay  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database (PostgreSQL only: SQLite is the unit tier's)."""
    return postgres.create_database()


class TestSignupStorageOnPostgres(unit.TestSignupStorage):
    pass


class TestLoginOnPostgres(unit.TestLogin):
    pass


class TestHealthOnPostgres(unit.TestHealth):
    pass



class TestIdempotentSignupOnPostgres(retries.TestIdempotentSignup):
    """Twenty concurrent tries with one key: the unique key makes the others wait for
    the first commit, then answer its uuid."""

    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url


class TestPasswordChangeOnPostgres(retries.TestPasswordChange):
    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url


class TestTheSignupSagaOnPostgres(lifecycle.TestTheSignupSaga):
    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url


class TestAccountDeletionOnPostgres(lifecycle.TestAccountDeletion):
    @pytest.fixture
    def auth_database_url(self, database_url: str) -> str:
        return database_url
