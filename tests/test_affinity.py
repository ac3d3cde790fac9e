"""measure.affinity: the CPUs a timed section of --llmcycle-against runs on (Linux)."""
from __future__ import annotations

import os
import threading

import pytest

from pytest_llmcycle.measure import affinity

pytestmark = pytest.mark.skipif(
    not affinity.available() or len(os.sched_getaffinity(0)) < 2, reason="needs sched_setaffinity and 2 CPUs"
)


def test_choose_takes_the_last_cpus_and_nothing_when_all_would_be_taken() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert affinity.choose(1) == (allowed[-1],)
    assert affinity.choose(len(allowed)) is None  # pinning to every CPU changes nothing
    assert affinity.choose(0) is None


def test_pin_moves_every_thread_and_restore_gives_the_cpus_back() -> None:
    before = os.sched_getaffinity(0)
    target = affinity.choose(1)
    started = threading.Event()
    stop = threading.Event()
    seen: dict[str, set] = {}

    def other() -> None:  # a thread that exists before pinning (like torch's pool)
        started.set()
        stop.wait(10)
        seen["other"] = os.sched_getaffinity(0)

    t = threading.Thread(target=other)
    t.start()
    started.wait(10)
    restore = affinity.pin(target)
    try:
        assert os.sched_getaffinity(0) == set(target)
        late: dict[str, set] = {}
        u = threading.Thread(target=lambda: late.setdefault("late", os.sched_getaffinity(0)))
        u.start()
        u.join()
        assert late["late"] == set(target)  # a thread started while pinned inherits the pin
    finally:
        restore()
    stop.set()
    t.join()
    assert os.sched_getaffinity(0) == before
    assert seen["other"] == before  # pinned with the process, then given back


def test_pin_of_nothing_is_a_no_op() -> None:
    before = os.sched_getaffinity(0)
    affinity.pin(None)()
    assert os.sched_getaffinity(0) == before
