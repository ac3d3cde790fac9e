"""A clock for timing tests: nanoseconds pass only when ``work`` runs (shared by the timing tests)."""
from __future__ import annotations

MS = 1_000_000


class FakeClock:
    """Nanoseconds that pass only when ``work`` runs: ``durations(i)`` ns for the i-th call."""

    def __init__(self, durations) -> None:
        self.t = 0
        self.calls = 0
        self.durations = durations

    def __call__(self) -> int:
        return self.t

    def work(self) -> None:
        self.t += int(self.durations(self.calls))
        self.calls += 1
