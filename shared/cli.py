"""`signup-pipeline`: run the whole pipeline locally."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.broker import BrokerError
from shared.devstack import SERVICES, Stack, StackError, write_line

DEFAULT_PORTS = {"auth": 8001, "member": 8002, "batch": 8003}


def example_signup() -> dict[str, Any]:
    """A valid PARTNER signup with a fresh email."""
    return {
        "email": f"partner-{uuid.uuid4().hex[:6]}@example.com",
        "password": "correct horse battery staple",
        "name": "Kim Minji",
        "phone": "+82-10-1234-5678",
        "birth": "1994-05-17",
        "gender": "FEMALE",
        "role": "PARTNER",
        "nickname": "minji-shop",
        "favoriteStyles": [1, 4, 7],
    }


def dev(args: argparse.Namespace) -> int:
    """Run broker + five processes until Ctrl-C; non-zero if a process dies."""
    emit = write_line(sys.stdout)
    stack = Stack(
        Path.cwd(),
        database_urls={s: os.environ.get(f"{s.upper()}_DATABASE_URL", "") for s in SERVICES},
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        ports=DEFAULT_PORTS,
        echo=emit,
        api_workers=args.workers,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        emit("starting the local broker, migrating, starting five processes...")
        stack.start()
        body = json.dumps(example_signup())
        emit(
            "\nready:\n"
            f"  broker      {stack.bootstrap_servers}\n"
            f"  auth API    {stack.url('auth')}   POST /auth/signup, POST /auth/login\n"
            f"  member API  {stack.url('member')}   GET /members/<uuid>\n"
            f"  batch API   {stack.url('batch')}   GET /partners/<uuid>/summary\n"
            "\ntry:\n"
            f"  curl -s -X POST {stack.url('auth')}/auth/signup "
            f"-H 'Content-Type: application/json' -d '{body}'\n"
            f"  curl -s {stack.url('member')}/members/<uuid>\n"
            f"  curl -s {stack.url('batch')}/partners/<uuid>/summary\n"
            "\nCtrl-C stops everything.\n"
        )
        while not stop.wait(0.5):
            stack.check_alive()
    except (StackError, BrokerError) as exc:
        emit(f"error: {exc}")
        stack.stop()
        return 1
    emit("stopping...")
    codes = stack.stop()
    failed = {name: code for name, code in codes.items() if code not in (0, None)}
    emit("stopped" + (f" (non-zero exits: {failed})" if failed else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `signup-pipeline`."""
    parser = argparse.ArgumentParser(prog="signup-pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    dev_parser = sub.add_parser(
        "dev", help="run the broker and all five processes locally until Ctrl-C"
    )
    dev_parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per API")
    args = parser.parse_args(argv)
    sys.exit(dev(args))


if __name__ == "__main__":
    main()
