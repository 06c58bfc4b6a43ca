"""The auth HTTP API: `POST /auth/signup`, `GET /auth/signups/<uuid>`, `POST /auth/login`,
`GET /auth/me`, `PUT /auth/password`, `DELETE /auth/me`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jwt
from argon2 import PasswordHasher
from flask import Blueprint, Flask, Response, jsonify, request
from marshmallow import ValidationError

from auth_service.emails import EmailNotAccepted, email_key
from auth_service.handlers import (
    Account,
    Authenticator,
    Credentials,
    EmailTaken,
    HashingThreads,
    Idempotency,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidCredentials,
    PasswordChanged,
    SignUp,
    TokenIssuer,
    change_password,
    delete_account,
    find_account,
    find_credentials,
    find_idempotent,
    password_hasher,
    replace_password_hash,
    sign_up,
    signup_status,
)
from auth_service.passwords import password_problems
from auth_service.ratelimit import (
    LimitsUnavailable,
    RateLimiter,
    Refusal,
    client_key,
    login_delay,
)
from auth_service.schemas import (
    AccountSchema,
    DeleteAccountSchema,
    DeletedSchema,
    LoginSchema,
    PasswordChangeSchema,
    SignedUpSchema,
    SignupSchema,
    SignupStatusSchema,
    TokenSchema,
)
from shared.http.apidocs import JSON_BODY_ERRORS, UNAVAILABLE, ErrorAnswer, Route, install_openapi
from shared.http.web import ApiError, base_app, error_response, json_object_body, validation_error
from shared.storage.db import Database
from shared.telemetry.logs import bind
from shared.telemetry.tracecontext import current_traceparent

TOO_MANY_REQUESTS = ErrorAnswer(
    429,
    "too_many_requests",
    "Too many attempts from this client address, for this email, or (login) failed for "
    "this email from this address; the Retry-After header says after how many seconds "
    "to try again.",
)
LIMITS_RETRY_AFTER = 5  # seconds, when the rate-limit store cannot be reached
LIMITED_UNAVAILABLE = ErrorAnswer(
    503,
    "unavailable",
    "The database is unreachable, or the rate-limit store is (then with a Retry-After "
    "header); retry later.",
)

ROUTES = (
    Route(
        "POST",
        "/auth/signup",
        operation_id="signUp",
        summary="Create an account; its profile follows through the pipeline.",
        status=201,
        answer=SignedUpSchema,
        body=SignupSchema,
        errors=(
            *JSON_BODY_ERRORS,
            ErrorAnswer(409, "email_taken", "An account with this email exists."),
            ErrorAnswer(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used with another request body.",
            ),
            TOO_MANY_REQUESTS,
            LIMITED_UNAVAILABLE,
        ),
        description="The answer's `Location` is the signup's status "
        "(`GET /auth/signups/<uuid>`): the account is PENDING until the member service "
        "answers. Send an `Idempotency-Key` header (1 to 255 visible ASCII characters, "
        "e.g. a UUID) to retry safely: a retry with the same key and body within 24 hours "
        "answers the same 201 and uuid (with `Idempotent-Replayed: true`), however many "
        "are sent at once; the same key with another body is 422.",
    ),
    Route(
        "GET",
        "/auth/signups/<member_id>",
        operation_id="signupStatus",
        summary="Where a signup is: PENDING, ACTIVE, or REJECTED with its reason.",
        status=200,
        answer=SignupStatusSchema,
        parameters={"member_id": "The uuid the signup answered."},
        errors=(
            ErrorAnswer(404, "not_found", "No signup has this uuid (or it was deleted)."),
            UNAVAILABLE,
        ),
    ),
    Route(
        "POST",
        "/auth/login",
        operation_id="logIn",
        summary="Exchange email and password for an access token.",
        status=200,
        answer=TokenSchema,
        body=LoginSchema,
        errors=(
            *JSON_BODY_ERRORS,
            ErrorAnswer(401, "invalid_credentials", "Email or password is wrong."),
            TOO_MANY_REQUESTS,
            LIMITED_UNAVAILABLE,
        ),
    ),
    Route(
        "PUT",
        "/auth/password",
        operation_id="changePassword",
        summary="Change the password (send `Authorization: Bearer <token>`); every token "
        "issued before is refused from then on, and a new one is answered.",
        status=200,
        answer=TokenSchema,
        body=PasswordChangeSchema,
        errors=(
            *JSON_BODY_ERRORS,
            ErrorAnswer(
                401,
                "invalid_token",
                "No token, or one that is expired, tampered with, or no longer valid.",
            ),
            ErrorAnswer(401, "invalid_credentials", "The current password is wrong."),
            ErrorAnswer(409, "password_changed", "The password changed meanwhile; retry."),
            TOO_MANY_REQUESTS,
            LIMITED_UNAVAILABLE,
        ),
    ),
    Route(
        "DELETE",
        "/auth/me",
        operation_id="deleteAccount",
        summary="Delete the account (send `Authorization: Bearer <token>` and the current "
        "password): its personal data is erased here at once, and in the other services "
        "when profile-delete reaches them; every token is refused from then on.",
        status=202,
        answer=DeletedSchema,
        body=DeleteAccountSchema,
        errors=(
            *JSON_BODY_ERRORS,
            ErrorAnswer(
                401,
                "invalid_token",
                "No token, or one that is expired, tampered with, or no longer valid.",
            ),
            ErrorAnswer(401, "invalid_credentials", "The password is wrong."),
            TOO_MANY_REQUESTS,
            LIMITED_UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/auth/me",
        operation_id="whoAmI",
        summary="The account an access token belongs to (send `Authorization: Bearer <token>`).",
        status=200,
        answer=AccountSchema,
        errors=(
            ErrorAnswer(
                401,
                "invalid_token",
                "No token, or one that is expired, tampered with, or not issued for this API.",
            ),
            UNAVAILABLE,
        ),
    ),
)


WHAT_WAS_EXCEEDED = {
    "signup-per-address": "Too many signups from this address",
    "signup-per-email": "Too many signups for this email",
    "login-per-address": "Too many logins from this address",
    "login-failures-per-email-and-address": "Too many failed logins for this email from "
    "this address",
}


def _refuse(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise ApiError(
            429,
            "too_many_requests",
            f"{WHAT_WAS_EXCEEDED[refusal.what]}; retry in {refusal.retry_after} s.",
            headers={"Retry-After": str(refusal.retry_after)},
        )


def _key_reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was already used with another request body; use a new key.",
    )


def _limits_unavailable() -> ApiError:
    """Signup and login are never let through uncounted: the store's outage is a 503."""
    return ApiError(
        503,
        "unavailable",
        "Rate limits cannot be checked right now; retry shortly.",
        headers={"Retry-After": str(LIMITS_RETRY_AFTER)},
    )


IDEMPOTENCY_KEY_PROBLEM = "1 to 255 visible ASCII characters."


def _idempotency_key() -> str | None:
    """The request's Idempotency-Key header, if any: 400 unless 1-255 visible ASCII."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all("!" <= char <= "~" for char in value):
        raise ApiError(
            400,
            "validation_failed",
            "The Idempotency-Key header is not valid.",
            {"Idempotency-Key": [IDEMPOTENCY_KEY_PROBLEM]},
        )
    return value


def _fingerprint(secret: bytes, key: str, body: dict[str, Any]) -> Idempotency:
    """HMACs of the key and of the request (its JSON, canonical: key order and spacing
    do not make another request)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return Idempotency(
        key=hmac.new(secret, b"key\0" + key.encode(), hashlib.sha256).hexdigest(),
        request=hmac.new(secret, b"request\0" + canonical.encode(), hashlib.sha256).hexdigest(),
    )


def _signed_up(member_id: str, *, replayed: bool = False) -> tuple[Response, int]:
    """The signup's 201: its uuid, and where to follow it; a retry's says it is one."""
    bind(member_uuid=member_id)  # the access-log line of this request names the member
    response = jsonify(uuid=member_id)
    response.headers["Location"] = f"/auth/signups/{member_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 201


def _stored_email_key(email: str) -> str:
    """The key failures of a stored account are counted under: its email's normal form,
    or, for an address accepted before the normal form refused it (migration 0003 names
    those accounts), the address lower-cased; never a 500 for an account's own email."""
    try:
        return email_key(email)
    except EmailNotAccepted:
        return email.strip().lower()


def _token_answer(tokens: TokenIssuer, member_id: str, version: int) -> Response:
    return jsonify(
        accessToken=tokens.issue(member_id, version),
        tokenType="Bearer",
        expiresIn=int(tokens.ttl.total_seconds()),
    )


def _invalid_token() -> tuple[Response, int]:
    response, status = error_response(
        401,
        "invalid_token",
        "Send a valid access token: Authorization: Bearer <token from POST /auth/login>.",
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="signup-pipeline", error="invalid_token"'
    return response, status


def _limiter_ready(limiter: RateLimiter) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            limiter.ping()
        except LimitsUnavailable:
            return "The rate-limit store is unreachable: signups and logins are refused."
        return None

    return check


def create_app(
    database: Database,
    tokens: TokenIssuer,
    *,
    hasher: PasswordHasher | None = None,
    after_commit: Callable[[], None] | None = None,
    limiter: RateLimiter | None = None,
    pause: Callable[[float], None] = time.sleep,
    request_secret: bytes | None = None,
) -> Flask:
    """The auth API on `database`; `after_commit` wakes the outbox relay; `limiter`
    bounds signups and logins per client address and per email, and slows down the
    logins of an email under attack (by `pause`); with a limiter, the API is ready only
    while its counts can be reached. `request_secret` keys the HMACs of Idempotency-Keys
    and their requests (the same in every process of the service; random by default)."""
    hashing = HashingThreads(hasher or password_hasher())
    fingerprints = request_secret or os.urandom(32)
    authenticator = Authenticator(hashing)
    app = base_app("auth_service", database)
    auth = Blueprint("auth", __name__, url_prefix="/auth")

    @auth.post("/signup")
    def signup() -> tuple[Response, int]:
        address = client_key(request.remote_addr)
        key = _idempotency_key()
        idempotency = None
        try:
            body = json_object_body()
            if limiter is not None:  # every attempt counts for its address
                _refuse(limiter.check("signup-per-address", address))
            data = SignupSchema().load(body)
            if key is not None:  # a retry answers what the first try created
                idempotency = _fingerprint(fingerprints, key, body)
                with database.unit_of_work() as uow:
                    created = find_idempotent(idempotency, uow)
                if created is not None:
                    return _signed_up(created, replayed=True)
            if limiter is not None:  # nothing of a request is used before the schema's yes
                _refuse(limiter.check("signup-per-email", email_key(data["email"])))
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        except LimitsUnavailable:
            raise _limits_unavailable() from None
        except IdempotencyKeyReused:
            raise _key_reused() from None
        command = SignUp(
            email=data["email"],
            password_hash=hashing.hash(data["password"]),
            name=data["name"],
            phone=data["phone"],
            birth=data["birth"],
            gender=data["gender"],
            role=data["role"],
            nickname=data["nickname"],
            favorite_styles=data["favoriteStyles"],
            traceparent=current_traceparent(),
        )
        try:
            with database.unit_of_work(after_commit) as uow:
                member_id = sign_up(command, uow, idempotency)
        except EmailTaken:
            raise ApiError(409, "email_taken", "An account with this email exists.") from None
        except IdempotencyKeyInUse:  # a concurrent try with the key committed first
            assert idempotency is not None
            try:
                with database.unit_of_work() as uow:
                    created = find_idempotent(idempotency, uow)
            except IdempotencyKeyReused:
                raise _key_reused() from None
            assert created is not None  # the key's row is committed: it is why we failed
            return _signed_up(created, replayed=True)
        return _signed_up(member_id)

    @auth.post("/login")
    def login() -> Response:
        address = client_key(request.remote_addr)
        try:
            body = json_object_body()
            if limiter is not None:
                _refuse(limiter.check("login-per-address", address))
            data = LoginSchema().load(body)
            email = email_key(data["email"])
            pair = f"{email}\0{address}"
            if limiter is not None:
                # Failures refuse only the address they came from; from elsewhere (its
                # owner) the email's failures only slow the login down.
                _refuse(limiter.blocked("login-failures-per-email-and-address", pair))
                delay = login_delay(limiter.excess("login-failures-per-email", email))
                if delay:
                    pause(delay)
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        except LimitsUnavailable:
            raise _limits_unavailable() from None
        with database.unit_of_work() as uow:
            credentials = find_credentials(data["email"], uow)
        try:
            member_id = authenticator.check(credentials, data["password"])
        except InvalidCredentials:
            if limiter is not None:
                try:
                    limiter.record("login-failures-per-email-and-address", pair)
                    limiter.record("login-failures-per-email", email)
                except LimitsUnavailable:
                    raise _limits_unavailable() from None
            raise ApiError(401, "invalid_credentials", "Email or password is wrong.") from None
        bind(member_uuid=member_id)
        assert credentials is not None  # check() passed
        upgraded = authenticator.upgraded_hash(credentials, data["password"])
        if upgraded is not None:  # made with older argon2 parameters: strengthen it now
            with database.unit_of_work() as uow:
                replace_password_hash(credentials, upgraded, uow)
        return _token_answer(tokens, member_id, credentials.token_version)

    def authenticated() -> Account | None:
        """The account the request's bearer token is for, if the token is valid: its
        signature, claims and lifetime, and issued since the account's last password
        change (its `ver`; tokens from before `ver` existed count as 0)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise jwt.InvalidTokenError("no bearer token")
            claims = tokens.verify(token.strip())
        except jwt.InvalidTokenError:
            return None
        with database.unit_of_work() as uow:
            account = find_account(str(claims["sub"]), uow)
        if account is None:  # the account is gone; its tokens mean nothing any more
            return None
        if claims.get("ver", 0) != account.token_version:  # issued before a change
            return None
        bind(member_uuid=account.member_id)
        return account

    @auth.get("/signups/<member_id>")
    def signup_state(member_id: str) -> Response:
        with database.unit_of_work() as uow:
            state = signup_status(member_id, uow)
        if state is None:
            raise ApiError(404, "not_found", "No signup has this uuid.")
        if state.reason is None:
            return jsonify(status=state.status)
        return jsonify(status=state.status, reason=state.reason)

    def reauthenticate(account: Account, password: str, pair: str) -> None:
        """401 invalid_credentials unless `password` is the account's (a failure counts
        as a failed login for its email from this address)."""
        credentials = Credentials(account.member_id, account.password_hash)
        try:
            authenticator.check(credentials, password)
        except InvalidCredentials:
            if limiter is not None:
                try:
                    limiter.record("login-failures-per-email-and-address", pair)
                except LimitsUnavailable:
                    raise _limits_unavailable() from None
            raise ApiError(401, "invalid_credentials", "The password is wrong.") from None

    @auth.delete("/me")
    def delete_me() -> tuple[Response, int]:
        account = authenticated()
        if account is None:
            return _invalid_token()
        pair = f"{_stored_email_key(account.email)}\0{client_key(request.remote_addr)}"
        try:
            data = DeleteAccountSchema().load(json_object_body())
            if limiter is not None:
                _refuse(limiter.blocked("login-failures-per-email-and-address", pair))
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        except LimitsUnavailable:
            raise _limits_unavailable() from None
        reauthenticate(account, data["password"], pair)
        with database.unit_of_work(after_commit) as uow:
            delete_account(account, current_traceparent(), uow)
        return jsonify(uuid=account.member_id), 202

    @auth.put("/password")
    def password() -> Response | tuple[Response, int]:
        account = authenticated()
        if account is None:
            return _invalid_token()
        address = client_key(request.remote_addr)
        pair = f"{_stored_email_key(account.email)}\0{address}"
        try:
            body = json_object_body()
            data = PasswordChangeSchema().load(body)
            if limiter is not None:  # guessing the current password, as at login
                _refuse(limiter.blocked("login-failures-per-email-and-address", pair))
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        except LimitsUnavailable:
            raise _limits_unavailable() from None
        new = data["newPassword"]
        problems = password_problems(new, email=account.email, nickname=account.nickname)
        if new == data["currentPassword"]:
            problems.append("The new password must differ from the current one.")
        if problems:
            raise validation_error({"newPassword": problems})
        reauthenticate(account, data["currentPassword"], pair)
        new_hash = hashing.hash(new)
        try:
            with database.unit_of_work() as uow:
                version = change_password(account, new_hash, uow)
        except PasswordChanged:
            raise ApiError(
                409, "password_changed", "The password changed meanwhile; log in again."
            ) from None
        return _token_answer(tokens, account.member_id, version)

    @auth.get("/me")
    def me() -> Response | tuple[Response, int]:
        account = authenticated()
        if account is None:
            return _invalid_token()
        return jsonify(
            uuid=account.member_id,
            email=account.email,
            role=account.role,
            nickname=account.nickname,
        )

    if limiter is not None:
        app.extensions.setdefault("readiness_checks", []).append(_limiter_ready(limiter))
    app.register_blueprint(auth)
    install_openapi(app, "auth API", "Sign up and log in.", ROUTES)
    return app
