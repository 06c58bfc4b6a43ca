"""`python -m member_service worker|api|migrate`."""

from __future__ import annotations

from member_service.api import create_app
from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base
from shared.runtime import migrate, run_api, run_worker, service_main


def main() -> None:
    """Entry point."""
    service_main(
        "member",
        8002,
        Base.metadata,
        {
            "worker": lambda settings, args: run_worker(
                settings, Base.metadata, PROFILE_INSERT_WORKER, args
            ),
            "api": lambda settings, args: run_api(
                settings, Base.metadata, lambda db, _relay: create_app(db), args
            ),
            "migrate": migrate,
        },
    )


if __name__ == "__main__":
    main()
