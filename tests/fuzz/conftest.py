"""Fuzzing: thousands of generated requests against every route, in process, bounded in
time; the number of cases each test tried is printed at the end of the run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

CASES: Counter[str] = Counter()

pytestmark = pytest.mark.fuzz


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many cases the fuzz tests tried, per test and in all."""
    if not CASES:
        return
    terminalreporter.section("fuzz cases tried")
    for name, count in sorted(CASES.items()):
        terminalreporter.write_line(f"{count:>7}  {name}")
    terminalreporter.write_line(f"{sum(CASES.values()):>7}  in all")
