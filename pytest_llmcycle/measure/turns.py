"""Taking turns with other processes, one timed call or round at a time (``--llmcycle-against``).

When a stage is timed beside its base, every process that times it (the head's and the base's)
runs each timed unit only when its turn comes: the cold call, calibration calls, warm-up rounds
and timed rounds. The timing loops ask :func:`gated` to run each unit; outside that mode
:data:`GATE` is unset and :func:`gated` just calls it (one context-variable read per round).
Who sets the gate and decides the order is ``run.peers``; this module only defines the seam.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, Protocol, TypeVar

T = TypeVar("T")

#: what a gated unit is: the first call, a call that sizes the batch, a warm-up or a timed round
COLD, CALIBRATE, WARM, ROUND = "cold", "calibrate", "warm", "round"


class Gate(Protocol):
    def run(self, kind: str, fn: Callable[[], Any]) -> Any:
        """Wait for this process's turn, run ``fn()`` (one ``kind`` unit) and return its result."""


class StopRounds(Exception):
    """Raised by a gate instead of a round: the other side of this process's pair has finished
    the stage, so more rounds here would have nothing to be matched with. The rounds stop."""


#: the gate of the timed section being run in this context, or None (not taking turns)
GATE: ContextVar[Gate | None] = ContextVar("llmcycle_gate", default=None)


def gated(kind: str, fn: Callable[[], T]) -> T:
    """Run one timed unit: on this process's turn when a gate is set, else right away."""
    gate = GATE.get()
    if gate is None:
        return fn()
    return gate.run(kind, fn)
