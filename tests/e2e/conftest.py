"""The contract's processes as real OS processes against real PostgreSQL and a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.stack import Stack
from shared.config import SERVICES

pytestmark = pytest.mark.e2e


def running_stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Any,
    kafka_bootstrap: str,
    name: str,
    **options: Any,
) -> Iterator[Stack]:
    """A Stack on fresh PostgreSQL databases named after `name`, started, stopped after;
    `options` go to Stack (api_workers, extra_env, rate_limits)."""
    workdir: Path = tmp_path_factory.mktemp(name)
    urls = {service: postgres.create_database(f"sp_{name}_{service}") for service in SERVICES}
    stack = Stack(workdir, database_urls=urls, bootstrap_servers=kafka_bootstrap, **options)
    try:
        stack.start()
    except Exception:
        stack.stop()
        raise
    yield stack
    codes = stack.stop()
    for process_name, process in stack.processes.items():
        print(
            f"--- {process_name} exited {codes[process_name]}; last lines:\n"
            + "\n".join(process.tail)
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, postgres, kafka_bootstrap, "e2e")
