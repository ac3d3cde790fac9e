"""Timestamps inside one call: each generated token, each phase of a training step.

A :class:`Ticker` marks a call's start, one point per ``tick()`` and its end. On CUDA each mark
is a device event recorded on the stream and the host synchronizes once, after the call, so
marking a token neither waits for the device nor moves data to the host (no ``.item()``,
no ``.cpu()``); elsewhere marks read the clock (MPS is synchronized at each mark). Its state is
reset at every ``start()``: a mark never leaks into the next call's gaps.

:func:`time_marked` runs such a call like :func:`pytest_llmcycle.timing.time_callable` runs a
callable: a cold first call on its own, untimed calls while ``torch.compile`` is still compiling,
then warm-up and adaptive rounds (:func:`pytest_llmcycle.timing.run_rounds`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .device import device_kind, synchronizer
from .timing import Clock, Measurement, TimingPolicy, run_rounds
from .turns import CALIBRATE, COLD, gated

#: untimed calls allowed after the cold one while torch.compile keeps compiling
MAX_COMPILE_CALLS = 8


@dataclass(frozen=True)
class Marks:
    """One call's timeline, in nanoseconds from its start: one offset per tick, then the end."""

    marks_ns: tuple
    end_ns: float

    @property
    def n(self) -> int:
        return len(self.marks_ns)


class Ticker:
    """Records a call's start, its ticks and its end; reset by every :meth:`start`."""

    def __init__(self, device: str, clock: Clock = time.perf_counter_ns) -> None:
        self.device = device
        self.clock = clock
        self._sync = synchronizer(device)
        kind = device_kind(device)
        # device events only with the real clock: a test's fake clock must see every mark
        self._events = kind == "cuda" and clock is time.perf_counter_ns
        self._sync_each = kind == "mps"
        self._pool: list[Any] = []
        self._start: Any = None
        self._end: Any = None
        self._host: list[int] = []
        self._n = 0
        self._running = False

    def _event(self) -> Any:
        import torch

        return torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._n = 0
        self._host = []
        self._running = True
        self._sync()
        if self._events:
            import torch

            if self._start is None:
                self._start, self._end = self._event(), self._event()
            # the stream the workload runs on, also when the current device is another GPU
            self._stream = torch.cuda.current_stream(torch.device(self.device))
            self._start.record(self._stream)
        else:
            self._t0 = self.clock()

    def tick(self) -> None:
        """Mark that one more token (or phase) is done. Cheap: no sync, no host copy on CUDA."""
        if not self._running:
            raise RuntimeError("tick() called outside a timed call (the ticker was not started)")
        if self._events:
            if self._n == len(self._pool):
                self._pool.append(self._event())
            self._pool[self._n].record(self._stream)
        else:
            if self._sync_each:
                self._sync()
            self._host.append(self.clock())
        self._n += 1

    def stop(self) -> Marks:
        if not self._running:
            raise RuntimeError("stop() called before start()")
        self._running = False
        if self._events:
            self._end.record(self._stream)
            self._end.synchronize()
            start = self._start
            marks = tuple(start.elapsed_time(e) * 1e6 for e in self._pool[: self._n])
            return Marks(marks, start.elapsed_time(self._end) * 1e6)
        self._sync()
        end = self.clock()
        return Marks(tuple(float(t - self._t0) for t in self._host), float(end - self._t0))


def compile_count() -> int:
    """Frames torch.compile has compiled so far in this process (0 if dynamo is not loaded)."""
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is None:
        return 0
    try:
        return int(dynamo_utils.counters["frames"]["total"])
    except Exception:  # internal counters: absent or renamed in some torch version
        return 0


@dataclass(frozen=True)
class MarkedRun:
    """Calls of one marked workload: the cold first one and the measured ones."""

    cold: Marks
    calls: tuple
    measurement: Measurement  # of end-to-end time, per call
    compile_calls: int = 0  # untimed calls after the cold one, spent while torch.compile compiled
    compiles_while_timing: int = 0  # compilations during warm-up and measured rounds (should be 0)


class MarkCountError(ValueError):
    """Calls of one workload ticked different numbers of times (an output length that is not pinned)."""


class CompileWarning(UserWarning):
    """torch.compile compiled again inside the measured rounds: the steady state includes compilation."""


def time_marked(
    call: Callable[[Callable[[], None]], Any],
    device: str,
    policy: TimingPolicy,
    clock: Clock = time.perf_counter_ns,
    *,
    prepare: Callable[[], Any] | None = None,
    expected: int | None = None,
    what: str = "tick()",
) -> MarkedRun:
    """Time ``call(tick)`` repeatedly; every call must tick the same number of times.

    ``prepare()`` runs before each call, outside the timed region (seeds, zeroed gradients).
    """
    ticker = Ticker(device, clock)

    def once() -> Marks:
        if prepare is not None:
            prepare()
        ticker.start()
        try:
            call(ticker.tick)
        finally:
            m = ticker.stop()
        return m

    before = compile_count()
    cold = gated(COLD, once)
    want = expected if expected is not None else cold.n
    _check(cold, want, 1, what)
    if policy.once:  # smoke mode: the one call is all; its marks are checked, its time not judged
        m1 = Measurement(samples_ns=(max(cold.end_ns, 1.0),), unit="call", rounds=1, spent_s=cold.end_ns / 1e9, stopped_by="once")
        return MarkedRun(cold, (cold,), m1)
    compile_calls = 0
    last = compile_count()
    # torch.compile recompiles for new shapes on the first calls: those are first-call costs too
    while last != before and compile_calls < MAX_COMPILE_CALLS:
        before = last
        _check(gated(CALIBRATE, once), want, compile_calls + 2, what)
        compile_calls += 1
        last = compile_count()

    calls: list[Marks] = []

    def round_fn() -> list[float]:
        m = once()
        _check(m, want, len(calls) + 2 + compile_calls, what)
        calls.append(m)
        return [m.end_ns]

    start_compiles = compile_count()
    m = run_rounds(round_fn, policy, clock, unit="call", cold_ns=cold.end_ns, warmup_rounds=1 + compile_calls)
    measured = tuple(calls[len(calls) - m.rounds :])
    recompiles = compile_count() - start_compiles
    if recompiles:
        import warnings

        warnings.warn(
            CompileWarning(
                f"llmcycle: torch.compile compiled {recompiles} more time(s) while {what}s were being timed "
                "(recompiling every call? check torch._logging.set_logs(recompiles=True)): the times include compilation"
            ),
            stacklevel=3,
        )
    return MarkedRun(cold, measured, m, compile_calls, recompiles)


def _check(m: Marks, want: int, index: int, what: str) -> None:
    if m.n != want:
        raise MarkCountError(
            f"call {index} made {m.n} {what} mark(s), expected {want}: pin the output length "
            "(e.g. min_new_tokens == max_new_tokens, or a fixed loop count) so every call does the same work"
        )
