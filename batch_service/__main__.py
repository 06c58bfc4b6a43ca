"""`python -m batch_service worker|api|migrate`."""

from __future__ import annotations

from batch_service.api import create_app
from batch_service.consumer import BATCH_WORKER
from batch_service.models import Base
from shared.runtime import migrate, run_api, run_worker, service_main


def main() -> None:
    """Entry point."""
    service_main(
        "batch",
        8003,
        Base.metadata,
        {
            "worker": lambda settings, args: run_worker(
                settings, Base.metadata, BATCH_WORKER, args
            ),
            "api": lambda settings, args: run_api(
                settings, Base.metadata, lambda db, _relay: create_app(db), args
            ),
            "migrate": migrate,
        },
    )


if __name__ == "__main__":
    main()
