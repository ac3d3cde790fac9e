"""The ``llmcycle`` fixture object: times a test's stages and judges each against its baseline.

It orchestrates (timer -> verdict -> re-measure -> result); the timing, statistics, storage
and rendering live in their own modules.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

from ..measure import device as devmod
from ..engine import verdict as vd
from ..storage.baseline import Entry, entry_from_samples, ns_to_ms, process_range
from ..config import Settings
from .results import COLD, CYCLE, STAGE, StageResult
from .session import RunState
from ..llm.stages import LLMStages
from ..measure.timing import Clock, Measurement, pinned_threads, time_callable

#: a block-form stage needs this many runs to be split into a measure and a confirming half
BLOCK_MIN_SAMPLES = 10
#: outcomes whose entries --llmcycle-update rewrites (an "ok" entry stays, so diffs stay small)
CHANGED = (vd.NEW, vd.NOT_COMPARABLE, vd.REGRESSED, vd.IMPROVED)


class StageDeadline:
    """A stage's hard limit (``--llmcycle-stage-timeout``), enforced between calls.

    A timer thread raises a flag when the limit passes; the wrapped workload reads the flag
    before each call (no clock read: ~0.1 us a call), so a stage running far past its budget
    ends at its next call with a clear failure instead of holding CI (and the device's timing
    lock) for hours. A single call that never returns cannot be stopped from here: that is
    pytest-timeout's job (see the README).
    """

    def __init__(self, stage: str, limit_s: float | None) -> None:
        self.stage = stage
        self.limit_s = limit_s
        self.expired = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "StageDeadline":
        if self.limit_s is not None:
            self._timer = threading.Timer(self.limit_s, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        self.expired = True

    def check(self) -> None:
        if self.expired:
            self.fail()

    def fail(self) -> None:
        import pytest

        pytest.fail(
            f"llmcycle: stage {self.stage!r} ran past its hard limit of {self.limit_s:g} s and was stopped: "
            "it hangs, or is far slower than its time budget; fix it, or raise the limit with "
            "--llmcycle-stage-timeout SECONDS (0: no limit)",
            pytrace=False,
        )

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.limit_s is None:
            return fn

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.expired:
                self.fail()
            return fn(*args, **kwargs)

        return guarded


def _cycle_process_range(stages: list[StageResult], weights: list[float], total: float) -> tuple[float, float] | None:
    """The cycle total's (fastest, slowest) recorded-process ratio to ``total`` (the baselines'
    weighted sum), when every stage has one."""
    ranges = [process_range(r.baseline) for r in stages]
    if any(x is None for x in ranges):
        return None
    fastest = sum(w * lo * r.baseline.median_ms for w, r, (lo, _) in zip(weights, stages, ranges))  # type: ignore[misc,union-attr]
    slowest = sum(w * hi * r.baseline.median_ms for w, r, (_, hi) in zip(weights, stages, ranges))  # type: ignore[misc,union-attr]
    return (fastest / total, slowest / total) if total > 0 else None


def _sample_s(m: Measurement) -> float:
    """Wall time one sample of ``m`` spans (a batch of ``number`` calls, or one token)."""
    return m.median_ns * max(1, m.number) / 1e9


class LLMCycle(LLMStages):
    """Times the stages of one inference cycle in one test.

    ``measure(stage, fn)`` repeats a callable; ``with stage(name):`` times a block once per
    entry (run it in a loop for several samples). Each stage is compared with its baseline
    as soon as it is measured; the test fails after its body, with all stages' verdicts.
    """

    def __init__(self, run: RunState, nodeid: str, settings: Settings) -> None:
        self._run = run
        self.nodeid = nodeid
        self.settings = settings
        self.results: list[StageResult] = []
        self._weights: dict[str, float] = {}
        self._final_samples: dict[str, list[float]] = {}
        self._blocks: dict[str, list[float]] = {}
        self._block_dtype: dict[str, str | None] = {}
        self._block_started: dict[str, float] = {}
        self._machine_factor: float | None = None
        self._entries: list[tuple[str, Entry]] = []
        #: the clock stages are timed with; tests replace it with a fake to test verdicts
        self.clock: Clock = time.perf_counter_ns

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> Any:
        """The device stages run on (``torch.device``; "cpu" if torch is absent)."""
        if devmod.torch_available():
            import torch

            return torch.device(self._run.device)
        return self._run.device

    @property
    def device_key(self) -> str:
        return self._run.device_key

    @property
    def threads(self) -> int:
        return self._run.threads

    def environment(self, dtype: str | None = None) -> dict:
        env: dict[str, Any] = {"threads": self.threads, "device_name": devmod.device_name(self._run.device)}
        versions = devmod.library_versions()
        env.update(versions)
        if dtype is None and "torch" in versions:
            import torch

            dtype = str(torch.get_default_dtype()).replace("torch.", "")
        if dtype:
            env["dtype"] = dtype
        return env

    # ------------------------------------------------------------------ timing
    def measure(self, stage: str, fn: Callable[[], Any], *, dtype: str | None = None, cycle: bool = True) -> StageResult:
        """Time ``fn()`` (warm-up, adaptive rounds, device sync) as ``stage`` and judge it."""
        self._check_stage(stage)
        policy = self.settings.timing_policy()
        dev = self._run.device

        def take() -> Measurement:
            with self.timed_section(stage) as deadline:
                return time_callable(deadline.wrap(fn), dev, policy, self.clock)

        return self.record(stage, take(), remeasure=take, dtype=dtype or devmod.dtype_of(fn), cycle_weight=1.0 if cycle else 0.0)

    @contextmanager
    def stage(self, name: str, *, dtype: str | None = None) -> Iterator[None]:
        """Time one run of the block (device synchronized before and after).

        Run the block at least 10 times (a loop) for it to be gated: the first half of the
        samples is the measurement and the second half its confirming re-measure.
        """
        if name not in self._blocks:
            self._check_stage(name)  # first run of this block: the same name rules as measure()
        sync = devmod.synchronizer(self._run.device)
        started = self._block_started.setdefault(name, time.monotonic())
        with self._run.timing_lock(), pinned_threads(self.threads):
            sync()
            t0 = self.clock()
            yield
            sync()
            elapsed = self.clock() - t0
        # A block shorter than the clock's tick reads as 0 ns; stored as 0 it would make the
        # baseline file invalid (times must be positive), so count it as one tick.
        self._blocks.setdefault(name, []).append(float(max(elapsed, 1)))
        self._block_dtype[name] = dtype
        limit = self._run.stage_limit_s(self.settings.budget_s)
        if limit is not None and time.monotonic() - started > limit:  # the block's runs so far, in total
            StageDeadline(name, limit).fail()

    @contextmanager
    def timed_section(self, stage: str) -> Iterator[StageDeadline]:
        """Where every timed measurement runs: the device's timing lock (xdist workers take
        turns), pinned threads, and the stage's hard limit.

        Helpers with their own timers use it around each measurement they take, and wrap the
        timed callable with ``deadline.wrap(fn)`` (or call ``deadline.check()`` between calls).
        """
        limit = self._run.stage_limit_s(self.settings.budget_s)
        with self._run.timing_lock(), pinned_threads(self.threads), StageDeadline(stage, limit) as deadline:
            yield deadline

    def record(
        self,
        stage: str,
        measurement: Measurement,
        *,
        remeasure: Callable[[], Measurement] | None = None,
        dtype: str | None = None,
        cycle_weight: float = 1.0,
        counters: dict | None = None,
    ) -> StageResult:
        """Judge an already-taken measurement; the entry point for helpers with their own timers.

        ``remeasure`` is called for a confirming measurement when the first one looks like a
        regression. ``cycle_weight`` is how many of the stage's units one cycle contains
        (1 for a call, the number of new tokens for per-token decode, 0 to leave it out).
        """
        self._check_stage(stage)
        xs = measurement.samples_ns
        # all positive and finite (a NaN or an inf makes the sum non-finite), else name the bad ones
        bad = [] if xs and min(xs) > 0 and math.isfinite(sum(xs)) else [x for x in xs if not (0 < x < math.inf)]
        if not xs or bad:
            raise ValueError(
                f"stage {stage!r}: a measurement needs positive, finite durations; got "
                f"{len(measurement.samples_ns)} sample(s), bad: {bad[:3]}"
            )
        run, s = self._run, self.settings
        entry = self._baseline(stage)
        env = self.environment(dtype)
        mismatch = vd.env_mismatch(dict(entry.env), env) if entry else None
        base = entry.samples_ms if entry else None
        spread = process_range(entry)
        cur = ns_to_ms(measurement.samples_ns)
        v = vd.judge(base, cur, s.threshold, s.alpha, None, mismatch, spread)
        if v.outcome in (vd.REGRESSED, vd.IMPROVED) and s.machine_check:
            self._machine_factor = run.machine_factor(_sample_s(measurement), self.nodeid)
            v = vd.judge(base, cur, s.threshold, s.alpha, self._machine_factor, mismatch, spread)
        # Counters are deterministic: a counter that grew is a regression without a re-measure.
        from ..measure import counters as cnt

        changed = cnt.compare(entry.counters, counters) if entry is not None and not mismatch else []
        grew = [c for c in changed if c.increased]
        final, final_ms = measurement, cur
        remeasured = None
        if v.outcome == vd.REGRESSED and s.remeasure and remeasure is not None and not s.update and not grew:
            second = remeasure()
            if s.machine_check:
                self._machine_factor = run.machine_factor(_sample_s(second), self.nodeid)
            second_ms = ns_to_ms(second.samples_ns)
            v2 = vd.judge(base, second_ms, s.threshold, s.alpha, self._machine_factor, mismatch, spread)
            v = vd.confirm(v, v2)
            final, final_ms, remeasured = second, second_ms, second
        elif v.outcome == vd.REGRESSED and not s.update and remeasure is None and not grew:
            v = replace(v, outcome=vd.INCONCLUSIVE, reason=v.reason + "; no re-measure possible, not gated")
        if grew:
            v = replace(v, outcome=vd.REGRESSED, reason=cnt.describe(grew, measurement.unit))
        elif changed and v.outcome in (vd.OK, vd.INCONCLUSIVE):
            v = replace(v, outcome=vd.IMPROVED, reason=cnt.describe(changed, measurement.unit) + ": record it with --llmcycle-update")
        elif s.update and counters and entry is not None and not entry.counters and v.outcome == vd.OK:
            v = replace(v, outcome=vd.NEW, reason="counters not in the baseline yet")
        return self._store(stage, final, final_ms, entry, env, v, measurement, remeasured, cycle_weight, counters)

    # ------------------------------------------------------------------ internals
    def _check_stage(self, stage: str) -> None:
        if not isinstance(stage, str) or not stage.strip():
            raise ValueError(f"stage name must be a non-empty string, got {stage!r}")
        if stage in self._weights or stage in self._blocks:
            raise ValueError(f"stage {stage!r} was already measured in this test; give each stage its own name")

    def _baseline(self, stage: str) -> Entry | None:
        return self._run.load_baselines(self.nodeid).entry(self.device_key, self.nodeid, stage)

    def _store(self, stage, final, samples, entry, env, v, first, remeasured, weight, counters) -> StageResult:
        """Record ``final`` (whose samples are ``samples``, in ms) as the stage's result."""
        e = entry_from_samples(samples, final.unit, first.cold_ns / 1e6 if first.cold_ns else None, env, counters)
        r = StageResult(
            nodeid=self.nodeid,
            stage=stage,
            device_key=self.device_key,
            verdict=v,
            unit=final.unit,
            median_ms=e.median_ms,
            q1_ms=e.q1_ms,
            q3_ms=e.q3_ms,
            n=e.n,
            baseline=entry,
            cold_ms=e.cold_ms,
            remeasure_median_ms=(remeasured.median_ns / 1e6 if remeasured else None),
            spent_s=first.spent_s + (remeasured.spent_s if remeasured else 0.0),
            samples_ms=e.samples_ms,
            timeline_ms=tuple(final.extra.get("timeline_ms", ())),
            env=env,
            counters=dict(counters or {}),
        )
        self.results.append(r)
        self._weights[stage] = weight
        self._final_samples[stage] = samples
        self._entries.append((stage, e))
        return r

    def _finish_blocks(self) -> None:
        s = self.settings
        for name, samples_ns in self._blocks.items():
            m = Measurement(samples_ns=tuple(samples_ns), unit="call", rounds=len(samples_ns), spent_s=sum(samples_ns) / 1e9)
            entry = self._baseline(name)
            env = self.environment(self._block_dtype.get(name))
            mismatch = vd.env_mismatch(dict(entry.env), env) if entry else None
            base = entry.samples_ms if entry else None
            spread = process_range(entry)
            cur = ns_to_ms(samples_ns)
            v = vd.judge(base, cur, s.threshold, s.alpha, None, mismatch, spread)
            if v.outcome == vd.REGRESSED and not s.update:
                if len(cur) < BLOCK_MIN_SAMPLES:
                    v = replace(
                        v,
                        outcome=vd.INCONCLUSIVE,
                        reason=v.reason + f"; only {len(cur)} run(s) of the block, {BLOCK_MIN_SAMPLES} needed to confirm: not gated",
                    )
                else:
                    half = len(cur) // 2
                    first = vd.judge(base, cur[:half], s.threshold, s.alpha, None, mismatch, spread)
                    second = vd.judge(base, cur[half:], s.threshold, s.alpha, None, mismatch, spread)
                    # the halves play measurement and re-measure: both must regress
                    v = vd.confirm(first, second) if first.outcome == vd.REGRESSED else vd.confirm(v, first)
            self._store(name, m, cur, entry, env, v, m, None, 1.0, None)

    def _finish_cycle(self) -> None:
        stages = [r for r in self.results if r.kind == STAGE and self._weights.get(r.stage, 0) > 0]
        if len(stages) < 2:
            return
        total = sum(self._weights[r.stage] * (r.median_ms or 0) for r in stages)
        weights = [self._weights[r.stage] for r in stages]
        judged = all(r.baseline is not None and r.outcome != vd.NOT_COMPARABLE for r in stages)
        if judged:
            s = self.settings
            base_total = sum(w * r.baseline.median_ms for w, r in zip(weights, stages))  # type: ignore[union-attr]
            v = vd.judge_cycle(
                [r.baseline.samples_ms for r in stages],  # type: ignore[union-attr]
                [self._final_samples[r.stage] for r in stages],
                weights,
                s.threshold,
                s.alpha,
                self._machine_factor,
                _cycle_process_range(stages, weights, base_total),
            )
            base_entry = Entry(base_total, base_total, base_total, 1, (base_total,))
        else:
            v = vd.Verdict(vd.NEW, self.settings.threshold, self.settings.threshold, reason="not every stage has a comparable baseline")
            base_entry = None
        terms = " + ".join(r.stage if self._weights[r.stage] == 1 else f"{self._weights[r.stage]:g}*{r.stage}" for r in stages)
        self.results.append(
            StageResult(
                nodeid=self.nodeid,
                stage=f"T = {terms}",
                device_key=self.device_key,
                verdict=v,
                kind=CYCLE,
                median_ms=total,
                baseline=base_entry,
                n=min(r.n for r in stages),
            )
        )

    def finish(self) -> list[StageResult]:
        """Judge block stages and the cycle; queue updates. Returns the rows that fail the test."""
        self._finish_blocks()
        self._finish_cycle()
        s = self.settings
        rows: list[StageResult] = []
        for r in self.results:
            rows.append(r)
            if r.kind == STAGE and r.cold_ms is not None:
                rows.append(
                    replace(
                        r,
                        kind=COLD,
                        verdict=vd.Verdict("info", s.threshold, s.threshold, reason="first call: compilation and first-touch costs, never gated"),
                        median_ms=r.cold_ms,
                        baseline=None,
                        n=1,
                    )
                )
        if s.update:
            entries = dict(self._entries)
            for i, r in enumerate(rows):
                if r.kind == STAGE and (s.update_all or r.outcome in CHANGED):
                    # with --llmcycle-update-append the write pools it with the entry stored then
                    self._run.pending.append((self.device_key, self.nodeid, r.stage, entries[r.stage]))
                    rows[i] = replace(r, updated=True)
        self.results = rows
        self._run.results.extend(rows)
        if s.update:
            return []
        failing = [r for r in rows if r.outcome == vd.REGRESSED]
        if s.strict:
            failing += [r for r in rows if r.kind == STAGE and r.outcome in (vd.NEW, vd.NOT_COMPARABLE)]
        return failing
