"""What the auth service does, each in one transaction: sign up, log in, change a
password, delete an account, and apply the member service's answer to a signup."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from auth_service.emails import email_key
from auth_service.models import (
    ACTIVE,
    DELETED,
    LIVE,
    PENDING,
    REJECTED,
    IdempotencyKey,
    Member,
    OutboxEvent,
)
from auth_service.passwords import Argon2Parameters, hash_is_weaker
from shared.messaging.outbox import add_event
from shared.messaging.pipeline import (
    PROFILE_DELETE,
    PROFILE_INSERT,
    ProfileCreated,
    ProfileDelete,
    ProfileInsert,
    ProfileRejected,
)
from shared.messaging.processor import PermanentError, Summary
from shared.storage.db import UnitOfWork, utcnow

SOURCE = "auth-service"
TOKEN_TTL = dt.timedelta(hours=1)
TOKEN_ISSUER = "signup-pipeline/auth-service"
TOKEN_AUDIENCE = "signup-pipeline"


class EmailTaken(Exception):
    """Another account already uses this email (compared case-insensitively)."""


class InvalidCredentials(Exception):
    """Unknown email or wrong password: deliberately indistinguishable."""


class IdempotencyKeyInUse(Exception):
    """Another signup holds (or held) this Idempotency-Key: look up what it answered."""


class IdempotencyKeyReused(Exception):
    """This Idempotency-Key came with another request body."""


class PasswordChanged(Exception):
    """The password changed meanwhile (a concurrent change): nothing was stored."""


@dataclass(frozen=True)
class Idempotency:
    """A signup's Idempotency-Key and its request, each as an HMAC (see IdempotencyKey)."""

    key: str
    request: str


def find_idempotent(idempotency: Idempotency, uow: UnitOfWork) -> str | None:
    """The uuid the signup with this key created, or None if there was none;
    IdempotencyKeyReused if that signup's request was another."""
    row = uow.session.get(IdempotencyKey, idempotency.key)
    if row is None:
        return None
    if row.request != idempotency.request:
        raise IdempotencyKeyReused()
    return row.member_uuid


def password_hasher() -> PasswordHasher:
    """argon2id at OWASP's minimum: 19 MiB, 2 iterations, parallelism 1."""
    return Argon2Parameters().hasher()


class Hasher(Protocol):
    """What signup and login need of a password hasher."""

    def hash(self, password: str) -> str: ...

    def verify(self, hash: str, password: str) -> bool: ...

    def is_weaker(self, hash: str) -> bool:
        """Whether `hash` is weaker than what the current settings make."""
        ...


class HashingThreads:
    """Hashes and verifies on a few dedicated threads (by default one per CPU).

    argon2 releases the GIL, so hashing needs threads to use the cores; but each hash
    allocates its 19 MiB through malloc, and glibc keeps that memory in the arena of the
    thread that hashed. Hashing on every request thread would keep 19 MiB per request
    thread (measured: 151 MB for a gunicorn worker with 4 threads); a fixed set of
    hashing threads caps it at 19 MiB per hashing thread, and more concurrent hashes
    than cores would only queue for the CPU anyway.
    """

    def __init__(self, hasher: PasswordHasher, threads: int | None = None) -> None:
        self._hasher = hasher
        self._threads = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="argon2"
        )

    def hash(self, password: str) -> str:
        """The argon2id hash of `password`."""
        return self._threads.submit(self._hasher.hash, password).result()

    def verify(self, hash: str, password: str) -> bool:
        """True, or raises VerificationError / InvalidHashError."""
        return self._threads.submit(self._hasher.verify, hash, password).result()

    def is_weaker(self, hash: str) -> bool:
        """See Hasher (a stronger hash is kept, never replaced by a weaker one)."""
        return hash_is_weaker(hash, self._hasher)


@dataclass(frozen=True)
class SignUp:
    """A validated signup request."""

    email: str
    password_hash: str
    name: str
    phone: str
    birth: dt.date
    gender: str
    role: str
    nickname: str
    favorite_styles: list[int]
    traceparent: str | None = None


def sign_up(command: SignUp, uow: UnitOfWork, idempotency: Idempotency | None = None) -> str:
    """Store the account and its `profile-insert` event together (with `idempotency`,
    its key too: IdempotencyKeyInUse if another signup has it); return the new uuid."""
    member_id = str(uuid.uuid4())
    if idempotency is not None:
        # First, and flushed alone: a concurrent signup with the key waits here on the
        # unique key until the first commits, then fails, and answers what it created.
        uow.session.add(
            IdempotencyKey(
                key=idempotency.key,
                request=idempotency.request,
                member_uuid=member_id,
                created_at=utcnow(),
            )
        )
        try:
            uow.flush()
        except IntegrityError:
            raise IdempotencyKeyInUse() from None
    uow.session.add(
        Member(
            uuid=member_id,
            email=command.email.strip(),
            email_key=email_key(command.email),
            password_hash=command.password_hash,
            name=command.name,
            phone=command.phone,
            birth=command.birth,
            gender=command.gender,
            role=command.role,
            nickname=command.nickname,
            created_at=utcnow(),
            status=PENDING,
        )
    )
    add_event(
        uow,
        OutboxEvent,
        PROFILE_INSERT,
        ProfileInsert(
            uuid=member_id,
            role=command.role,
            nickname=command.nickname,
            favorite_styles=command.favorite_styles,
        ),
        key=member_id,
        source=SOURCE,
        traceparent=command.traceparent,
    )
    try:
        uow.flush()
    except IntegrityError:
        raise EmailTaken(command.email) from None
    uow.commit()
    return member_id


class TokenIssuer:
    """Signs and checks access tokens as RFC 8725 advises: one allowed algorithm (HS256),
    an explicit type (`at+jwt`, RFC 9068), and `iss`, `aud`, `sub`, `iat`, `exp` always
    set and always checked."""

    ALGORITHM = "HS256"
    TYPE = "at+jwt"

    def __init__(
        self,
        secret: str,
        ttl: dt.timedelta = TOKEN_TTL,
        *,
        issuer: str = TOKEN_ISSUER,
        audience: str = TOKEN_AUDIENCE,
    ) -> None:
        self._secret = secret
        self.ttl = ttl
        self.issuer = issuer
        self.audience = audience

    def issue(self, subject: str, version: int = 0) -> str:
        """A token for `subject` at its account's token `version`, valid from now for
        one ttl."""
        now = utcnow()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "ver": version,
        }
        return jwt.encode(
            claims, self._secret, algorithm=self.ALGORITHM, headers={"typ": self.TYPE}
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; raises jwt.InvalidTokenError otherwise (wrong
        algorithm, key, type, issuer or audience; expired; a claim missing; `exp` further
        from `iat` than the ttl)."""
        header = jwt.get_unverified_header(token)
        if header.get("typ") != self.TYPE:
            raise jwt.InvalidTokenError(f"token type is not {self.TYPE}")
        claims: dict[str, Any] = jwt.decode(
            token,
            self._secret,
            algorithms=[self.ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["iss", "aud", "sub", "iat", "exp"]},
        )
        # A token never outlives what this service issues: one signed with a leaked (or the
        # public development) key and a far `exp` would otherwise be good for ever.
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self.ttl.total_seconds():
            raise jwt.InvalidTokenError(
                f"token lifetime {lifetime:.0f} s exceeds {self.ttl.total_seconds():.0f} s"
            )
        return claims


@dataclass(frozen=True)
class Credentials:
    """What login needs of an account."""

    member_id: str
    password_hash: str
    token_version: int = 0


@dataclass(frozen=True)
class Account:
    """What a member may read about their own account, and what checks their token."""

    member_id: str
    email: str
    role: str
    nickname: str
    token_version: int = 0
    password_hash: str = ""


def find_account(member_id: str, uow: UnitOfWork) -> Account | None:
    """The account `member_id`, if it exists."""
    row = uow.session.execute(
        select(
            Member.uuid,
            Member.email,
            Member.role,
            Member.nickname,
            Member.token_version,
            Member.password_hash,
        ).where(Member.uuid == member_id, Member.status.in_(LIVE))
    ).one_or_none()
    if row is None:
        return None
    return Account(
        row.uuid, row.email, row.role, row.nickname, row.token_version, row.password_hash
    )


def find_credentials(email: str, uow: UnitOfWork) -> Credentials | None:
    """The stored credentials for `email`, if there is such an account."""
    row = uow.session.execute(
        select(Member.uuid, Member.password_hash, Member.token_version).where(
            Member.email_key == email_key(email), Member.status.in_(LIVE)
        )
    ).one_or_none()
    return Credentials(row.uuid, row.password_hash, row.token_version) if row else None


def change_password(account: Account, new_hash: str, uow: UnitOfWork) -> int:
    """Store `new_hash` and invalidate every token issued before (token_version + 1),
    unless the hash changed since `account` was read (PasswordChanged); the new version."""
    changed: CursorResult[Any] = uow.session.execute(  # type: ignore[assignment]
        update(Member)
        .where(Member.uuid == account.member_id)
        .where(Member.password_hash == account.password_hash)
        .values(password_hash=new_hash, token_version=Member.token_version + 1)
    )
    if not changed.rowcount:
        raise PasswordChanged()
    uow.commit()
    return account.token_version + 1


class Authenticator:
    """Checks a password; an unknown email costs the same hash work as a wrong password."""

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher
        self._dummy_hash = hasher.hash(uuid.uuid4().hex)

    def check(self, credentials: Credentials | None, password: str) -> str:
        """The member uuid if `password` matches, else InvalidCredentials.

        Called outside any transaction: hashing takes tens of milliseconds and must not
        hold a database connection (or SQLite's write lock) meanwhile.
        """
        stored = credentials.password_hash if credentials else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            raise InvalidCredentials() from None
        if credentials is None:
            raise InvalidCredentials()
        return credentials.member_id

    def upgraded_hash(self, credentials: Credentials, password: str) -> str | None:
        """A new hash of `password` (just verified) when the stored one is weaker than
        the current settings make, else None."""
        if not self._hasher.is_weaker(credentials.password_hash):
            return None
        return self._hasher.hash(password)


def replace_password_hash(credentials: Credentials, new_hash: str, uow: UnitOfWork) -> bool:
    """Store `new_hash` unless the hash changed meanwhile (a concurrent login or password
    change wins); True if stored."""
    stored: CursorResult[Any] = uow.session.execute(  # type: ignore[assignment]
        update(Member)
        .where(Member.uuid == credentials.member_id)
        .where(Member.password_hash == credentials.password_hash)
        .values(password_hash=new_hash)
    )
    uow.commit()
    return bool(stored.rowcount)


@dataclass(frozen=True)
class SignupStatus:
    """Where a signup is: PENDING, ACTIVE or REJECTED (with why)."""

    status: str
    reason: str | None


def signup_status(member_id: str, uow: UnitOfWork) -> SignupStatus | None:
    """The status of the signup that made `member_id`; None for an unknown or deleted one."""
    row = uow.session.execute(
        select(Member.status, Member.status_reason).where(
            Member.uuid == member_id, Member.status != DELETED
        )
    ).one_or_none()
    return SignupStatus(row.status, row.status_reason) if row else None


def _erase(member_id: str, status: str, reason: str | None, uow: UnitOfWork) -> None:
    """Keep of the account only its uuid, role, status and times: every personal column
    to NULL (which frees the email), every token refused, and every outbox row of the
    member gone (a published profile-insert holds its nickname)."""
    uow.session.execute(
        update(Member)
        .where(Member.uuid == member_id)
        .values(
            email=None,
            email_key=None,
            password_hash=None,
            name=None,
            phone=None,
            birth=None,
            gender=None,
            nickname=None,
            status=status,
            status_reason=reason,
            status_changed_at=utcnow(),
            token_version=Member.token_version + 1,
        )
    )
    uow.session.execute(delete(OutboxEvent).where(OutboxEvent.key == member_id))


def delete_account(account: Account, traceparent: str | None, uow: UnitOfWork) -> None:
    """Erase the account and queue `profile-delete`, in one transaction: the other
    services erase what they hold when it reaches them."""
    _erase(account.member_id, DELETED, None, uow)
    add_event(
        uow,
        OutboxEvent,
        PROFILE_DELETE,
        ProfileDelete(uuid=account.member_id),
        key=account.member_id,
        source=SOURCE,
        traceparent=traceparent,
    )
    uow.commit()


def _status_of(member_id: str, uow: UnitOfWork) -> str | None:
    return uow.session.scalar(
        select(Member.status).where(Member.uuid == member_id).with_for_update()
    )


def on_profile_created(event: ProfileCreated, uow: UnitOfWork) -> Summary:
    """The member service made the profile: PENDING becomes ACTIVE. A deleted account
    stays deleted (its deletion is on its way to the member service)."""
    status = _status_of(event.uuid, uow)
    if status is None:
        raise PermanentError("profile-created for an account this service never had")
    if status == REJECTED:
        raise PermanentError("profile-created for an account the member service rejected")
    if status != PENDING:
        return Summary("profile-created for a %s account: nothing to do", status)
    uow.session.execute(
        update(Member)
        .where(Member.uuid == event.uuid)
        .values(status=ACTIVE, status_changed_at=utcnow())
    )
    return Summary("account active")


def on_profile_rejected(event: ProfileRejected, uow: UnitOfWork) -> Summary:
    """The member service refused the profile: the account is REJECTED and erased (the
    saga's compensation), which frees its email."""
    status = _status_of(event.uuid, uow)
    if status is None:
        raise PermanentError("profile-rejected for an account this service never had")
    if status == ACTIVE:
        raise PermanentError("profile-rejected for an account the member service created")
    if status != PENDING:
        return Summary("profile-rejected for a %s account: nothing to do", status)
    _erase(event.uuid, REJECTED, event.reason, uow)
    return Summary("account rejected (%s), its data erased", event.reason)
