"""`python -m auth_service api|worker|migrate`."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from auth_service.api import create_app
from auth_service.consumer import SIGNUP_ANSWER_WORKER
from auth_service.handlers import TokenIssuer
from auth_service.models import Base, IdempotencyKey, OutboxEvent
from auth_service.passwords import Argon2Parameters
from auth_service.ratelimit import key_secret, rate_limiter
from shared.config import ConfigError, Settings, auth_settings
from shared.messaging.housekeeping import Expiring
from shared.messaging.outbox import OutboxRelay
from shared.runtime import migrate, run_api, run_worker, service_main
from shared.storage.db import Database

DEV_SECRET = "dev-only-secret-do-not-use-in-production-0123456789"
MIN_SECRET_BYTES = 32
KEYS_KEPT = dt.timedelta(hours=25)

log = logging.getLogger(__name__)


def jwt_secret(settings: Settings, configured: str) -> str:
    """AUTH_JWT_SECRET (`configured`, empty when unset); in dev mode a fixed development
    key stands in for a missing one."""
    secret = configured
    if not secret:
        if settings.dev_mode:
            log.warning(
                "DEV MODE: access tokens are signed with the development key, which is "
                "public (it is in this project's source): anyone can forge them. Never "
                "expose this API; set AUTH_JWT_SECRET outside local development"
            )
            return DEV_SECRET
        raise ConfigError(
            "AUTH_JWT_SECRET is not set: set it to a random string of at least "
            f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`), "
            "or set SIGNUP_PIPELINE_DEV=1 for local development"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"AUTH_JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes: use a longer one"
        )
    return secret


def api(settings: Settings, args: argparse.Namespace) -> None:
    """Serve the auth API and relay its outbox."""
    auth = auth_settings()
    secret = jwt_secret(settings, auth.jwt_secret)
    tokens = TokenIssuer(secret)
    parameters = Argon2Parameters.from_settings(auth)  # refused at start if too weak
    limit_keys = key_secret(secret)  # the same in every worker, so Redis counts are shared
    # The same in every worker too: a retry may reach another one.
    request_keys = hmac.new(
        secret.encode(), b"signup-pipeline idempotency keys", hashlib.sha256
    ).digest()
    # Refused at start if misconfigured, or counted per process under several workers.
    rate_limiter(auth.rate_limits, limit_keys, workers=args.workers)
    proxies = auth.trusted_proxy_hops

    def build(database: Database, relay: OutboxRelay | None) -> Flask:
        app = create_app(
            database,
            tokens,
            hasher=parameters.hasher(),
            after_commit=relay.wake if relay else None,
            # Per worker: its own connection to Redis.
            limiter=rate_limiter(auth.rate_limits, limit_keys, workers=args.workers),
            request_secret=request_keys,
        )
        if proxies:
            # Behind N proxies the client is the Nth address from the right of
            # X-Forwarded-For; without this every client looks like the proxy.
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]
        return app

    run_api(
        settings,
        Base.metadata,
        build,
        args,
        outbox=OutboxEvent,
        # Retries are answered for at least 24 h: keys go after 25.
        expiring=(
            Expiring(IdempotencyKey, IdempotencyKey.key, IdempotencyKey.created_at, KEYS_KEPT),
        ),
    )


def main() -> None:
    """Entry point."""
    service_main(
        "auth",
        8001,
        Base.metadata,
        {
            "api": api,
            "worker": lambda settings, args: run_worker(
                settings, Base.metadata, SIGNUP_ANSWER_WORKER, args
            ),
            "migrate": migrate,
        },
    )


if __name__ == "__main__":
    main()
