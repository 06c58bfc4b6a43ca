"""The contract's processes as real OS processes against real PostgreSQL and a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devstack import SERVICES, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    urls = {service: postgres.create_database(f"sp_e2e_{service}") for service in SERVICES}
    stack = Stack(workdir, database_urls=urls, bootstrap_servers=kafka_bootstrap)
    try:
        stack.start()
    except Exception:
        stack.stop()
        raise
    yield stack
    codes = stack.stop()
    for name, process in stack.processes.items():
        print(f"--- {name} exited {codes[name]}; last lines:\n" + "\n".join(process.tail))
