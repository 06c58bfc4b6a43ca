"""Password hashing runs on a fixed set of threads, whatever the number of requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher

from auth_service.handlers import HashingThreads
from tests.unit.pipeline_harness import FAST_HASHER


class RecordingHasher(PasswordHasher):
    """FAST_HASHER's parameters; notes which thread did each hash."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=FAST_HASHER.time_cost,
            memory_cost=FAST_HASHER.memory_cost,
            parallelism=FAST_HASHER.parallelism,
            type=FAST_HASHER.type,
        )
        self.threads: set[str] = set()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.threads.add(threading.current_thread().name)
        return super().hash(password, salt=salt)


def test_hashes_from_many_request_threads_run_on_at_most_the_configured_threads() -> None:
    recording = RecordingHasher()
    hashing = HashingThreads(recording, threads=2)

    with ThreadPoolExecutor(max_workers=8) as requests:
        hashes = list(requests.map(hashing.hash, [f"password {n}" for n in range(40)]))

    assert 1 <= len(recording.threads) <= 2
    assert all(name.startswith("argon2") for name in recording.threads)
    assert hashing.verify(hashes[7], "password 7")
