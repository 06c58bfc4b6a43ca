"""Short, readable text for durations, counts and partition lags."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from operations.offsets import PartitionLag
from operations.sources import Unavailable
from shared.messaging.outbox import rfc3339

# --- formatting ---------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """`350 ms`, `12.3 s`, `4m 5s`, `2h 3m`, `3d 4h`: short and readable."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, whole = divmod(whole, 86_400)
    hours, whole = divmod(whole, 3_600)
    minutes, whole = divmod(whole, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {whole}s"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """`1 record`, `3 records`."""
    return f"{count} {singular if count == 1 else many or singular + 's'}"


def partition_lag_text(partitions: Sequence[PartitionLag], width: int) -> str:
    """Every partition's lag (`p0 0  p1 3`) if that fits in `width` characters, else only
    the lagging ones, as many as fit, and how many more there are."""
    every = "  ".join(f"p{p.partition} {p.lag}" for p in partitions)
    if len(every) <= width:
        return every
    lagging = [f"p{p.partition} {p.lag}" for p in partitions if p.lag]
    if not lagging:
        return "0 on every partition"
    shown: list[str] = []
    for n, item in enumerate(lagging):
        left = len(lagging) - n  # this one and those after it
        after = f"  (+{left - 1} more)" if left > 1 else ""
        if shown and len("  ".join([*shown, item]) + after) > width:
            return "  ".join(shown) + f"  (+{left} more)"
        shown.append(item)
    return "  ".join(shown)


def moment_text(moment: dt.datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def why_unavailable(part: Unavailable, shown: set[Unavailable] | None = None) -> str:
    """Why a part is missing; only its source when the same reason is shown above."""
    if shown is not None:
        if part in shown:
            return f"unavailable: {part.source} (above)"
        shown.add(part)
    return f"unavailable: {part.source}: {part.reason}"
