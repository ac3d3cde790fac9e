"""Clocks, device synchronization, warm-up and adaptive rounds.

Data flows one way: a round function is run under a :class:`TimingPolicy` and produces a
:class:`Measurement` (raw samples plus how they were taken). Nothing here judges or renders.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List

from ..engine import stats
from .device import device_kind, synchronizer
from .turns import CALIBRATE, COLD, ROUND, WARM, StopRounds, gated

Clock = Callable[[], int]
#: One round: runs the workload and returns one or more samples in nanoseconds
#: (one per call, or one per generated token).
RoundFn = Callable[[], List[float]]
#: Runs before each timed call, outside the timed region; returns None or ``(args, kwargs)`` for the call.
SetupFn = Callable[[], Any]


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how often a stage is run. Resolved from options, ini and marker."""

    budget_s: float = 1.0
    min_rounds: int = 10
    max_rounds: int = 10_000
    warmup_rounds: int = 2
    warmup_fraction: float = 0.1
    #: stop early once the 95 % CI of the median is within +-precision of it (when no ``stop_when``)
    precision: float = 0.005
    #: calls shorter than this are batched so clock overhead stays below ~0.1 %
    min_sample_s: float = 100e-6
    #: smoke mode (--llmcycle-disable): one call, no warm-up, no rounds; its time is not a measurement
    once: bool = False
    #: ``stop_when(samples, spent) -> bool``: stop once the verdict is decided (samples so far in ns,
    #: ``spent`` the share of the budget used; :func:`pytest_llmcycle.engine.sequential.stop_rule`).
    #: It replaces the precision stop; None: stop on precision.
    stop_when: Callable[[List[float], float], bool] | None = None


@dataclass(frozen=True)
class Measurement:
    """Samples of one stage, in nanoseconds per ``unit`` ("call" or "token")."""

    samples_ns: tuple
    unit: str = "call"
    cold_ns: float | None = None
    rounds: int = 0
    number: int = 1
    warmup_rounds: int = 0
    spent_s: float = 0.0
    stopped_by: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def summary(self) -> stats.Summary:
        return stats.summarize(self.samples_ns)

    @property
    def median_ns(self) -> float:
        return self.summary.median


def prepared(setup: SetupFn | None) -> tuple[tuple, dict]:
    """Run ``setup()`` and return the ``(args, kwargs)`` of the call it prepares (none when it returns None)."""
    __tracebackhide__ = True
    if setup is None:
        return (), {}
    got = setup()
    if got is None:
        return (), {}
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], (tuple, list)) and isinstance(got[1], dict):
        return tuple(got[0]), got[1]
    raise TypeError(
        "llmcycle: setup() must return None or (args, kwargs) for the timed call, e.g. "
        f"`return (batch,), {{}}`; got {type(got).__name__}"
    )


def timed_batch(fn: Callable[[], Any], sync: Callable[[], None], clock: Clock, number: int) -> float:
    """Nanoseconds ``number`` calls of ``fn`` take, synchronized before and after (the loop is
    built before the first clock read)."""
    loop = range(number)
    sync()
    t0 = clock()
    for _ in loop:
        fn()
    sync()
    return float(clock() - t0)


def call_round(
    fn: Callable[..., Any],
    sync: Callable[[], None],
    clock: Clock,
    number: int = 1,
    setup: SetupFn | None = None,
    check: Callable[[], None] | None = None,
) -> RoundFn:
    """Wall-clock round: synchronize, run ``number`` calls, synchronize, divide.

    With ``setup`` a round is one call (``number`` is 1) and ``setup()`` runs before the first
    synchronization, outside the timed region. ``check()`` (the stage's hard limit) runs once a
    round, before it and outside the timed region: never once a call.
    """
    if setup is not None:

        def run_setup() -> List[float]:
            if check is not None:
                check()
            args, kwargs = prepared(setup)
            sync()
            t0 = clock()
            fn(*args, **kwargs)
            sync()
            return [float(clock() - t0)]

        return run_setup

    if number == 1:

        def run_one() -> List[float]:
            if check is not None:
                check()
            sync()
            t0 = clock()
            fn()
            sync()
            return [float(clock() - t0)]

        return run_one

    def run() -> List[float]:
        if check is not None:
            check()
        return [timed_batch(fn, sync, clock, number) / number]

    return run


def cuda_event_round(
    fn: Callable[..., Any], device: str, number: int = 1, setup: SetupFn | None = None, check: Callable[[], None] | None = None,
) -> RoundFn:
    """CUDA round timed by device events, so queued kernels are counted, not just launches.

    ``setup()`` (then one call a round) runs before the synchronization that precedes the
    start event, so its kernels are done before the timed region begins; so does ``check()``.
    """
    import torch

    dev = torch.device(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def run() -> List[float]:
        if check is not None:
            check()
        args, kwargs = prepared(setup)
        torch.cuda.synchronize(dev)
        start.record()
        if setup is None:
            for _ in range(number):
                fn()
        else:
            fn(*args, **kwargs)
        end.record()
        end.synchronize()
        return [start.elapsed_time(end) * 1e6 / number]

    return run


def make_round(
    fn: Callable[..., Any],
    device: str,
    clock: Clock,
    number: int = 1,
    setup: SetupFn | None = None,
    check: Callable[[], None] | None = None,
) -> RoundFn:
    """The round function for ``device``: ``number`` calls of ``fn`` a sample, ``check()`` before each round."""
    if setup is not None:
        number = 1  # each call gets its own fresh inputs: no batching
    if device_kind(device) == "cuda" and clock is time.perf_counter_ns:
        return cuda_event_round(fn, device, number, setup, check)
    return call_round(fn, synchronizer(device), clock, number, setup, check)


def run_rounds(
    round_fn: RoundFn,
    policy: TimingPolicy,
    clock: Clock = time.perf_counter_ns,
    unit: str = "call",
    number: int = 1,
    cold_ns: float | None = None,
    warmup_rounds: int = 0,
    stop_when: Callable[[List[float], float], bool] | None = None,
) -> Measurement:
    """Warm up, then repeat ``round_fn`` until the verdict is decided, the median is precise or
    the budget is spent.

    At least ``min_rounds`` rounds are always taken, so a 100 ms stage with a 1 s budget still
    gets ten samples. From then on, on a geometric schedule (rounds x1.25), ``stop_when``
    (argument, else ``policy.stop_when``) is asked whether the verdict is settled
    (``stopped_by="settled"``); without one the rounds stop once the median's 95 % interval is
    within ``policy.precision`` (``"precision"``). The budget is the cap (``"budget"``).
    """
    stop_when = stop_when if stop_when is not None else policy.stop_when
    start = clock()
    warm_deadline = start + policy.warmup_fraction * policy.budget_s * 1e9
    warm = 0
    while warm < policy.warmup_rounds or clock() < warm_deadline:
        gated(WARM, round_fn)
        warm += 1
        if warm >= 1000:
            break
    measure_start = clock()
    budget_ns = policy.budget_s * 1e9
    deadline = measure_start + budget_ns
    samples: list[float] = []
    rounds = 0
    next_check = policy.min_rounds
    stopped_by = "max_rounds"
    while rounds < policy.max_rounds:
        try:
            samples.extend(gated(ROUND, round_fn))
        except StopRounds:  # taking turns with a paired process that has finished (measure.turns)
            stopped_by = "pair"
            break
        rounds += 1
        if rounds < policy.min_rounds:
            continue
        now = clock()
        if now >= deadline:
            stopped_by = "budget"
            break
        if rounds >= next_check:
            # A look costs a sort; a geometric schedule keeps it cheap (and the sequential rule's looks few).
            next_check = int(math.ceil(rounds * 1.25))
            if stop_when is not None:
                if stop_when(samples, (now - measure_start) / budget_ns if budget_ns > 0 else 1.0):
                    stopped_by = "settled"
                    break
            elif stats.median_ci_halfwidth(samples) <= policy.precision:
                stopped_by = "precision"
                break
    return Measurement(
        samples_ns=tuple(samples),
        unit=unit,
        cold_ns=cold_ns,
        rounds=rounds,
        number=number,
        warmup_rounds=warmup_rounds + warm,
        spent_s=(clock() - start) / 1e9,
        stopped_by=stopped_by,
    )


#: single calls timed before sizing the batch: a function's second call still pays first-call
#: costs (caches, allocator, dispatch) and ran 3-5x slower than steady state on a ~1 us callable
CALIBRATION_CALLS = 3
#: most calls in one timed batch
MAX_NUMBER = 10_000


def calibrate(
    fn: Callable[[], Any],
    sync: Callable[[], None],
    clock: Clock,
    min_sample_s: float,
    check: Callable[[], None] | None = None,
) -> int:
    """Calls per timed batch so that one batch lasts at least ``min_sample_s``, from steady-state calls.

    Up to :data:`CALIBRATION_CALLS` single calls warm ``fn`` up (the fastest estimates a call);
    a callable that is long already (5x the target even then) is not batched. Batches then grow
    from that estimate (at least doubling) until one lasts ``min_sample_s`` or
    :data:`MAX_NUMBER` calls: the batch size is set by batches, not by a lone call.
    ``check()`` runs between them (the stage's hard limit).
    """
    target = min_sample_s * 1e9
    fastest = math.inf
    for _ in range(CALIBRATION_CALLS):
        sync()
        t0 = clock()
        fn()
        sync()
        fastest = min(fastest, float(clock() - t0))
        if fastest >= 5 * target:
            return 1
    if fastest >= target:
        return 1
    number = int(min(MAX_NUMBER, max(1, math.ceil(target / max(fastest, 1.0)))))
    while True:
        if check is not None:
            check()
        spent = timed_batch(fn, sync, clock, number)
        if spent >= target or number >= MAX_NUMBER:
            return number
        per_call = max(spent / number, 1.0)
        number = int(min(MAX_NUMBER, max(2 * number, math.ceil(11 * target / (10 * per_call)))))  # 1.1x the target


def time_callable(
    fn: Callable[..., Any],
    device: str,
    policy: TimingPolicy,
    clock: Clock = time.perf_counter_ns,
    setup: SetupFn | None = None,
    check: Callable[[], None] | None = None,
) -> Measurement:
    """Time ``fn``: a cold first call on its own, then calibrated, warmed-up rounds.

    ``setup()``, when given, runs before every call (the cold one, warm-up and timed rounds)
    outside the timed region; it may return ``(args, kwargs)`` for that call, like
    pytest-benchmark's ``pedantic(setup=...)``. Calls are then not batched (one per sample).
    Without it, calls shorter than ``policy.min_sample_s`` are timed in batches sized by
    :func:`calibrate`. ``check()`` (e.g. the stage's hard limit, ``StageDeadline.check``) runs
    between rounds and calibration batches, outside the timed region, never inside a batch.
    With ``policy.once`` (smoke mode) ``fn`` runs exactly once and that call is the only sample.
    """
    sync = synchronizer(device)

    def one_call() -> float:
        args, kwargs = prepared(setup)
        sync()
        t0 = clock()
        fn(*args, **kwargs)
        sync()
        return float(clock() - t0)

    # The cold call includes compilation, lazy init and allocator first-touch: reported, never gated.
    cold = gated(COLD, one_call)
    if policy.once:
        return Measurement(samples_ns=(max(cold, 1.0),), unit="call", rounds=1, spent_s=cold / 1e9, stopped_by="once")
    if check is not None:
        check()
    if setup is None:
        number = gated(CALIBRATE, lambda: calibrate(fn, sync, clock, policy.min_sample_s, check))
    else:
        gated(CALIBRATE, one_call)  # one more first-call cost out of the rounds (not batched: nothing to size)
        number = 1
    round_fn = make_round(fn, device, clock, number, setup, check)
    return run_rounds(round_fn, policy, clock, unit="call", number=number, cold_ns=cold, warmup_rounds=2)


@contextmanager
def pinned_threads(n: int | None) -> Iterator[None]:
    """Run torch on exactly ``n`` intra-op threads inside the block, then restore.

    Unpinned threads are the largest noise source on small CI machines: torch defaults to one
    thread per core and then competes with the runner itself.
    """
    import sys

    torch = sys.modules.get("torch")
    if n is None or torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
