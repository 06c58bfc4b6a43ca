"""Benchmarks: they print figures, they never fail a build."""
