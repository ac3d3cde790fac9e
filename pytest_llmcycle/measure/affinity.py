"""Which CPUs a timed section runs on (Linux ``sched_setaffinity``; elsewhere nothing is pinned).

Processes that take turns timing one stage (``--llmcycle-against``) differ in speed when the
scheduler places them on different cores: measured on this project's 2-core CI-like VM, fresh
processes of the same code read up to +-15 % apart per process pair when free to move, and
within +-3 % when every process ran its turns on the same CPU (``bench/results/against.md``).
Turns never overlap, so pinning every process of a stage to the same CPUs costs no parallelism
while they are timed; untimed code runs unpinned.

:func:`choose` picks the CPUs (the last ``n`` this process may use: CPU 0 takes most device
interrupts), :func:`pin` moves every thread of this process there and returns how to undo it.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence


def available() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def choose(n: int) -> tuple[int, ...] | None:
    """``n`` CPUs for every process of a stage, or None when pinning would change nothing (or is not possible)."""
    if not available() or n < 1:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if n >= len(allowed):
        return None
    return tuple(allowed[-n:])


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # the calling thread only


def _set(tid: int, cpus: Sequence[int] | set) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:  # a thread that has ended since the listing, or a CPU taken away: leave it
        pass


def pin(cpus: Sequence[int] | None) -> Callable[[], None]:
    """Pin every thread of this process to ``cpus``; returns the call that restores the CPUs they had.

    Threads started while pinned (a thread pool created lazily) inherit the pinned set; the
    restore gives every thread that exists then the process's former set.
    """
    if not cpus or not available():
        return lambda: None
    before = os.sched_getaffinity(0)
    if before == set(cpus):
        return lambda: None
    for tid in _threads():
        _set(tid, cpus)

    def restore() -> None:
        for tid in _threads():
            _set(tid, before)

    return restore
