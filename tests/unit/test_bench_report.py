"""The benchmark's arithmetic: percentiles, ratios to ceilings, targets met or not."""

from __future__ import annotations

from typing import Any

from bench.run import assess, markdown
from bench.stages import percentiles, rows_per_event


def test_percentiles_are_in_milliseconds_and_ordered() -> None:
    figures = percentiles([n / 1000 for n in range(1, 101)])  # 1..100 ms

    assert figures["count"] == 100
    assert figures["p50"] == 50.5
    assert figures["p99"] == 100
    assert figures["max"] == 100
    assert figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"]


def run(**overrides: Any) -> dict[str, Any]:
    """A full run's figures, every target met unless overridden."""
    figures: dict[str, Any] = {
        "argon2_all_cores": {"per_second": 80.0, "processes": 2},
        "argon2_one_core": {"per_second": 40.0},
        "kafka_produce": {
            "per_second": 10_000.0,
            "mean_value_bytes": 110,
            "mean_headers_bytes": 230,
        },
        "kafka_consume": {"per_second": 50_000.0},
        "postgres_rows": {
            "per_commit": {"per_second": 2000.0},
            "batched": {"per_second": 60_000.0, "batch": 1000},
        },
        "signup": {
            "per_second": 70.0,
            "latency_ms": {"p50": 50, "p99": 90},
            "cpu": {"machine_busy": 0.9, "cores_used_by_process": {"auth-api": 1.2}},
        },
        "propagation": {
            "signups": 500,
            "partners": 100,
            "rate_per_second": 20,
            "poll_interval_ms": 2,
            "to_member_profile_ms": {"p50": 15, "p99": 60},
            "to_partner_summary_ms": {"p50": 30, "p99": 120},
        },
        "drain_1": {
            "per_second": 7000.0,
            "rows_per_event": rows_per_event(),
            "cpu": {"machine_busy": 0.7},
        },
        "drain_2": {"per_second": 12_000.0, "cpu": {"machine_busy": 1.0}},
        "relay": {"per_second": 7000.0},
        "rss_mb": {"auth-api": 100.0, "member-worker": 90.0},
        "machine": {"cpus": 2, "platform": "Linux", "python": "3.11", "broker": "Tansu"},
        "mode": "full",
        "wall_seconds": 300,
        "date": "2026-11-22",
    }
    figures.update(overrides)
    return figures


def test_every_target_met_reads_yes() -> None:
    rows = assess(run())

    assert [row["met"] for row in rows] == [True] * len(rows)


def test_a_drain_below_half_its_ceiling_is_a_miss_even_above_6000() -> None:
    # PostgreSQL at 200,000 rows/s makes the database ceiling ~27,800 events/s (7.2 rows
    # an event: profile, 3 styles, role, inbox, the profile-created answer, a fifth of a
    # partner-created).
    figures = run(
        postgres_rows={
            "per_commit": {"per_second": 2000.0},
            "batched": {"per_second": 200_000.0, "batch": 1000},
        }
    )

    drain = next(row for row in assess(figures) if row["figure"].startswith("backlog drain, 1"))

    assert drain["met"] is False
    assert drain["ceiling"].endswith("→ 25%")


def test_misses_are_marked_in_the_table() -> None:
    figures = run(rss_mb={"auth-api": 151.0}, relay={"per_second": 6000.0})
    figures["assessment"] = assess(figures)

    table = markdown(figures)

    assert "| peak RSS, largest process | 151.0 MB (auth-api) |" in table
    assert table.count("**no**") == 2  # RSS, and relay at 60% of produce
