"""The auth HTTP API: `POST /auth/signup`, `POST /auth/login`, `GET /auth/me`."""

from __future__ import annotations

from collections.abc import Callable

import jwt
from argon2 import PasswordHasher
from flask import Blueprint, Flask, Response, jsonify, request
from marshmallow import ValidationError

from auth_service.handlers import (
    Authenticator,
    EmailTaken,
    HashingThreads,
    InvalidCredentials,
    SignUp,
    TokenIssuer,
    find_account,
    find_credentials,
    password_hasher,
    replace_password_hash,
    sign_up,
)
from auth_service.ratelimit import RateLimiter, client_key
from auth_service.schemas import (
    AccountSchema,
    LoginSchema,
    SignedUpSchema,
    SignupSchema,
    TokenSchema,
    email_key,
)
from shared.http.apidocs import JSON_BODY_ERRORS, UNAVAILABLE, ErrorAnswer, Route, install_openapi
from shared.http.web import ApiError, base_app, error_response, json_object_body, validation_error
from shared.storage.db import Database
from shared.telemetry.logs import bind
from shared.telemetry.tracecontext import current_traceparent

TOO_MANY_REQUESTS = ErrorAnswer(
    429,
    "too_many_requests",
    "Too many attempts from this client address or for this email; the Retry-After "
    "header says after how many seconds to try again.",
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
            TOO_MANY_REQUESTS,
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
            UNAVAILABLE,
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
    "login-per-email": "Too many logins for this email",
}


def _enforce(limiter: RateLimiter | None, action: str, email: str | None = None) -> None:
    """Count this attempt per client address, or (given `email`, which the schema has
    accepted: nothing of a request is used before that) per email; 429 once over."""
    if limiter is None:
        return
    if email is None:
        checks = [(f"{action}-per-address", client_key(request.remote_addr))]
    else:
        checks = [(f"{action}-per-email", email_key(email))]
    for name, key in checks:
        refusal = limiter.check(name, key)
        if refusal is not None:
            raise ApiError(
                429,
                "too_many_requests",
                f"{WHAT_WAS_EXCEEDED[name]}; retry in {refusal.retry_after} s.",
                headers={"Retry-After": str(refusal.retry_after)},
            )


def _invalid_token() -> tuple[Response, int]:
    response, status = error_response(
        401,
        "invalid_token",
        "Send a valid access token: Authorization: Bearer <token from POST /auth/login>.",
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="signup-pipeline", error="invalid_token"'
    return response, status


def create_app(
    database: Database,
    tokens: TokenIssuer,
    *,
    hasher: PasswordHasher | None = None,
    after_commit: Callable[[], None] | None = None,
    limiter: RateLimiter | None = None,
) -> Flask:
    """The auth API on `database`; `after_commit` wakes the outbox relay; `limiter`
    bounds signups and logins per client address and per email."""
    hashing = HashingThreads(hasher or password_hasher())
    authenticator = Authenticator(hashing)
    app = base_app("auth_service", database)
    auth = Blueprint("auth", __name__, url_prefix="/auth")

    @auth.post("/signup")
    def signup() -> tuple[Response, int]:
        try:
            body = json_object_body()
            _enforce(limiter, "signup")  # every attempt counts for its address
            data = SignupSchema().load(body)
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        _enforce(limiter, "signup", data["email"])
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
                member_id = sign_up(command, uow)
        except EmailTaken:
            raise ApiError(409, "email_taken", "An account with this email exists.") from None
        bind(member_uuid=member_id)  # the access-log line of this request names the member
        return jsonify(uuid=member_id), 201

    @auth.post("/login")
    def login() -> Response:
        try:
            body = json_object_body()
            _enforce(limiter, "login")
            data = LoginSchema().load(body)
        except ValidationError as exc:
            raise validation_error(exc.messages) from None
        _enforce(limiter, "login", data["email"])
        with database.unit_of_work() as uow:
            credentials = find_credentials(data["email"], uow)
        try:
            member_id = authenticator.check(credentials, data["password"])
        except InvalidCredentials:
            raise ApiError(401, "invalid_credentials", "Email or password is wrong.") from None
        bind(member_uuid=member_id)
        assert credentials is not None  # check() passed
        upgraded = authenticator.upgraded_hash(credentials, data["password"])
        if upgraded is not None:  # made with older argon2 parameters: strengthen it now
            with database.unit_of_work() as uow:
                replace_password_hash(credentials, upgraded, uow)
        return jsonify(
            accessToken=tokens.issue(member_id),
            tokenType="Bearer",
            expiresIn=int(tokens.ttl.total_seconds()),
        )

    @auth.get("/me")
    def me() -> Response | tuple[Response, int]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise jwt.InvalidTokenError("no bearer token")
            claims = tokens.verify(token.strip())
        except jwt.InvalidTokenError:
            return _invalid_token()
        with database.unit_of_work() as uow:
            account = find_account(str(claims["sub"]), uow)
        if account is None:  # the account is gone; its tokens mean nothing any more
            return _invalid_token()
        bind(member_uuid=account.member_id)
        return jsonify(
            uuid=account.member_id,
            email=account.email,
            role=account.role,
            nickname=account.nickname,
        )

    app.register_blueprint(auth)
    install_openapi(app, "auth API", "Sign up and log in.", ROUTES)
    return app
