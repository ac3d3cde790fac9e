"""The ``llmcycle`` fixture object: times a test's stages and judges each against its baseline.

It orchestrates (timer -> verdict -> re-measure -> result); the timing, statistics, storage
and rendering live in their own modules. It also owns smoke mode (``--llmcycle-disable``: each
timed callable runs once, untimed, unjudged) and the progress lines written between timed
sections (:class:`Progress`).
"""
from __future__ import annotations

import math
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..measure import device as devmod
from ..engine import sequential, verdict as vd
from ..engine.counts import stamp
from ..storage.baseline import Entry, entry_from_samples, ns_to_ms, process_range
from ..config import Settings
from .results import COLD, CYCLE, STAGE, StageResult
from .session import RunState
from ..llm.ab import ABResult
from ..llm.scaling import ScalingResult
from ..llm.stages import GenerationResult, LLMStages, TrainStepResult
from ..measure.timing import Clock, Measurement, SetupFn, pinned_threads, time_callable
from . import against

#: Unicode categories refused in stage names: control (newline, tab, escape), format (zero-width,
#: bidi overrides), line and paragraph separators
_CONTROL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
#: outcomes for which --llmcycle-update rewrites a test's entries (a test whose stages are all "ok"
#: or "inconclusive" stays, so diffs stay small)
CHANGED = (vd.NEW, vd.NOT_COMPARABLE, vd.REGRESSED, vd.IMPROVED)

#: why a stage of a smoke run (--llmcycle-disable) has no numbers and no verdict
NOT_TIMED = "not timed (--llmcycle-disable)"
#: a timed section whose budget or duration reaches this is announced at the default verbosity
LONG_STAGE_S = 5.0


class Progress:
    """Progress lines on the terminal while a test times its stages.

    ``llmcycle: timing <nodeid> <stage> ...`` before a timed section with ``-v``, or at the
    default verbosity when the stage's budget is LONG_STAGE_S or more; ``llmcycle: timed ...
    in N s`` after a section that took that long. Nothing with ``-q``. Lines are written only
    between timed sections (before the device lock is taken, after it is released), never
    while a round runs, so they cost the measurement nothing.
    """

    def __init__(self, write: Callable[[str], None], verbosity: int) -> None:
        self.write = write
        self.verbosity = verbosity

    def starting(self, nodeid: str, stage: str, budget_s: float) -> None:
        if self.verbosity > 0 or (self.verbosity == 0 and budget_s >= LONG_STAGE_S):
            self.write(f"llmcycle: timing {nodeid} {stage} (budget {budget_s:g} s) ...")

    def finished(self, nodeid: str, stage: str, spent_s: float) -> None:
        if self.verbosity >= 0 and spent_s >= LONG_STAGE_S:
            self.write(f"llmcycle: timed {nodeid} {stage} in {spent_s:.1f} s")


class StageDeadline:
    """A stage's hard limit (``--llmcycle-stage-timeout``), enforced between rounds.

    A timer thread raises a flag when the limit passes; the timing loop reads it with
    :meth:`check` between rounds and calibration batches (``time_callable(..., check=...)``),
    outside the timed region, so a stage running far past its budget ends at its next round
    with a clear failure instead of holding CI (and the device's timing lock) for hours, and a
    ~1 us call is not slowed by the guard (wrapping each call cost 65-146 ns a call). Timers
    that take no check hook wrap the callable instead (:meth:`wrap`: one flag read a call;
    fine for ms-scale calls such as a generation). A single call that never returns cannot
    be stopped from here: that is pytest-timeout's job (see the README).
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
        """``fn`` reading the flag before each call (for timers without a ``check`` hook)."""
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


def _check_measurement(stage: str, m: Any, what: str) -> None:
    """A measurement handed to ``record`` must hold positive, finite durations."""
    __tracebackhide__ = True
    if not isinstance(m, Measurement):
        raise TypeError(
            f"llmcycle.record({stage!r}, ...): the {what} must be a pytest_llmcycle Measurement "
            f"(from time_callable or your own timer), got {type(m).__name__}"
        )
    xs = m.samples_ns
    # all positive and finite (a NaN or an inf makes the sum non-finite), else name the bad ones
    bad = [] if xs and min(xs) > 0 and math.isfinite(sum(xs)) else [x for x in xs if not (0 < x < math.inf)]
    if not xs or bad:
        raise ValueError(
            f"stage {stage!r}: a measurement needs positive, finite durations; got {len(xs)} sample(s), bad: {bad[:3]}"
        )


class LLMCycle:
    """Times the stages of one inference cycle in one test.

    ``measure(stage, fn)`` repeats a callable; ``with stage(name):`` times a block once per
    entry (run it in a loop for several samples). Each stage is compared with its baseline
    as soon as it is measured; the test fails after its body, with all stages' verdicts.
    """

    def __init__(self, run: RunState, nodeid: str, settings: Settings, progress: Progress | None = None) -> None:
        self._run = run
        #: where "timing <stage> ..." lines go (None: nowhere)
        self._progress = progress
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
        #: --llmcycle-against: turn numbers of each timed section's rounds, and the last section
        self._rounds: dict[str, list[int]] = {}
        #: (wall ns, CPU ns) of each of those rounds, measured by the gate (--llmcycle-against)
        self._round_cpu: dict[str, list[tuple[int, int]]] = {}
        #: the undo of pinning this process's CPUs for stage blocks (--llmcycle-against), at finish
        self._pinned: list = []
        self._last_section = ""
        #: wall ns spent in each timed section (the lock's wait left out), charged to its first stage stored
        self._section_ns: dict[str, int] = {}
        #: --llmcycle-against: (base median ms, paired estimate) of each judged stage, for the cycle
        self._paired: dict[str, tuple] = {}
        #: the LLM helpers, recording through this object (see the section at the end)
        self._llm = LLMStages(self)

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
    def measure(
        self,
        stage: str,
        fn: Callable[..., Any],
        *,
        setup: SetupFn | None = None,
        dtype: str | None = None,
        cycle: bool = True,
    ) -> StageResult:
        """Time ``fn()`` (warm-up, adaptive rounds, device sync) as ``stage`` and judge it.

        ``setup()``, when given, runs before every call of ``fn`` outside the timed region (fresh
        inputs, a cleared cache); it returns None or ``(args, kwargs)`` for that call, as in
        pytest-benchmark's ``pedantic``. Calls are then timed one per sample, not batched. In
        smoke mode (``--llmcycle-disable``) ``fn`` runs once, untimed, and nothing is judged.
        """
        __tracebackhide__ = True
        self._check_stage(stage)
        if not callable(fn):
            raise TypeError(
                f"llmcycle.measure({stage!r}, fn): fn must be a callable that runs the stage once, got "
                f"{type(fn).__name__} (a result, not a function): pass e.g. `lambda: model(ids)`"
            )
        if setup is not None and not callable(setup):
            raise TypeError(
                f"llmcycle.measure({stage!r}, fn, setup=...): setup must be a callable run before each call, got "
                f"{type(setup).__name__}: pass e.g. `setup=lambda: ((make_batch(),), {{}})`"
            )
        policy = self.settings.timing_policy()
        # smoke mode synchronizes nothing (nothing is timed), so resolving the device (torch) is not needed
        dev = "cpu" if self.settings.disable else self._run.device
        # rounds stop once the verdict is decided; recording (and no baseline) stops on precision
        s = self.settings
        entry = self._baseline(stage) if s.early_stop and not (s.update or s.disable) else None
        base = entry.evidence() if entry else None

        def take() -> Measurement:
            # fresh looks for each measurement; with nothing to settle against, a reachable precision
            rule = sequential.from_evidence(base, s.threshold, precision=s.precision) if s.early_stop else None
            with self.timed_section(stage) as deadline:
                return time_callable(fn, dev, replace(policy, stop_when=rule), self.clock, setup=setup, check=deadline.check)

        return self.record(stage, take(), remeasure=take, dtype=dtype or devmod.dtype_of(fn), cycle_weight=1.0 if cycle else 0.0)

    @contextmanager
    def stage(self, name: str, *, dtype: str | None = None) -> Iterator[None]:
        """Time one run of the block (device synchronized before and after).

        Run the block at least 10 times (a loop) for it to be gated: the first half of the
        samples is the measurement and the second half its confirming re-measure.
        """
        __tracebackhide__ = True
        if name not in self._blocks:
            self._check_stage(name)  # first run of this block: the same name rules as measure()
        if self.settings.disable:  # smoke mode: the block runs, untimed
            self._blocks.setdefault(name, [])
            yield
            return
        sync = devmod.synchronizer(self._run.device)
        started = self._block_started.setdefault(name, time.monotonic())
        with self._lock(), pinned_threads(self.threads):
            t_in = time.perf_counter_ns()
            against.block_turn(self._run, self.nodeid, name, self._rounds, self._pinned)
            sync()
            t0 = self.clock()
            yield
            sync()
            elapsed = self.clock() - t0
            self._charge(name, time.perf_counter_ns() - t_in)
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

        Helpers with their own timers use it around each measurement they take, and have the
        timing loop call ``deadline.check()`` between rounds (``time_callable(..., check=deadline.check)``)
        or wrap the timed callable with ``deadline.wrap(fn)``.
        """
        if self.settings.disable:  # smoke mode: one untimed call; no lock to wait for, no limit
            yield StageDeadline(stage, None)
            return
        limit = self._run.stage_limit_s(self.settings.budget_s)
        if self._progress is not None:
            self._progress.starting(self.nodeid, stage, self.settings.budget_s)
        t0 = self.clock()
        with self._lock(), pinned_threads(self.threads), StageDeadline(stage, limit) as deadline:
            t_in = time.perf_counter_ns()
            try:
                with against.turns(self._run, self.nodeid, stage, self._rounds, self._round_cpu):
                    self._last_section = stage
                    yield deadline
            finally:
                self._charge(stage, time.perf_counter_ns() - t_in)
        if self._progress is not None:
            self._progress.finished(self.nodeid, stage, (self.clock() - t0) / 1e9)

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
        __tracebackhide__ = True
        self._check_stage(stage)
        _check_measurement(stage, measurement, "measurement")
        if self.settings.disable:
            return self._not_timed(stage, measurement.unit, cycle_weight)
        if against.active(self._run):  # --llmcycle-against: judged against the base's processes
            return self._record_against(stage, measurement, dtype, cycle_weight, counters)
        entry = self._baseline(stage)
        env = self.environment(dtype)
        cur = ns_to_ms(measurement.samples_ns)
        s = self.settings
        if remeasure is None:
            confirmation = vd.CONFIRM_IMPOSSIBLE
        else:
            confirmation = vd.CONFIRM_REMEASURE if s.remeasure else vd.CONFIRM_NOT_NEEDED
        elsewhere = None if entry or not counters else self._counters_baseline(stage, env)
        case = vd.Case(
            entry.evidence() if entry else None,
            vd.Evidence(cur, measurement.unit, env, stamp(counters)),
            self._rules(confirmation, machine_check=s.machine_check),
            no_baseline_reason="" if entry else self._no_baseline_reason(),
            counters_baseline=elsewhere[1].evidence() if elsewhere else None,
            counters_key=elsewhere[0] if elsewhere else "",
        )
        final, final_ms, remeasured = measurement, cur, None
        v = vd.decide(case)
        while v.needs:  # the engine asks for a measured number; take it and ask again
            if v.needs == vd.NEEDS_MACHINE:
                t_in = time.perf_counter_ns()
                self._machine_factor = self._run.machine_factor(_sample_s(measurement), self.nodeid)
                self._charge(stage, time.perf_counter_ns() - t_in)
                case = replace(case, machine_factor=self._machine_factor, machine_checked=True)
            else:
                assert remeasure is not None
                remeasured = remeasure()
                _check_measurement(stage, remeasured, "re-measure")
                if s.machine_check:
                    t_in = time.perf_counter_ns()
                    self._machine_factor = self._run.machine_factor(_sample_s(remeasured), self.nodeid)
                    self._charge(stage, time.perf_counter_ns() - t_in)
                final, final_ms = remeasured, ns_to_ms(remeasured.samples_ns)
                case = replace(
                    case, remeasured=replace(case.current, samples_ms=final_ms), remeasured_machine_factor=self._machine_factor,
                )
            v = vd.decide(case)
        return self._store(stage, final, final_ms, entry, env, v, measurement, remeasured, cycle_weight, counters)

    def _rules(self, confirmation: str, machine_check: bool = False) -> vd.Rules:
        s = self.settings
        return vd.Rules(s.threshold, s.alpha, confirmation, machine_check=machine_check, recording=s.update, counters=s.counters)

    # ------------------------------------------------------------------ internals
    def _check_stage(self, stage: str) -> None:
        __tracebackhide__ = True
        if not isinstance(stage, str) or not stage.strip():
            raise ValueError(f"stage name must be a non-empty string, got {stage!r}")
        bad = [c for c in stage if unicodedata.category(c) in _CONTROL_CATEGORIES]
        if bad:
            raise ValueError(
                f"stage name {stage!r} holds control or invisible characters ({', '.join(sorted({repr(c) for c in bad}))}): "
                "they would break the terminal table, the reports and the baseline diff; use letters, digits and punctuation"
            )
        if stage in self._weights or stage in self._blocks:
            raise ValueError(f"stage {stage!r} was already measured in this test; give each stage its own name")

    def _not_timed(self, stage: str, unit: str, weight: float) -> StageResult:
        """A smoke run's stage: no numbers, no verdict, not reported; its name is taken all the same."""
        self._weights[stage] = weight
        s = self.settings
        return StageResult(
            nodeid=self.nodeid, stage=stage, device_key=s.device_key or "", unit=unit,
            verdict=vd.Verdict("info", s.threshold, s.threshold, reason=NOT_TIMED),
        )

    def _baseline(self, stage: str) -> Entry | None:
        if against.active(self._run):  # the base is the baseline; a committed file is not used for timing
            return None
        return self._run.load_baselines(self.nodeid).entry(self.device_key, self.nodeid, stage)

    def _lock(self) -> Any:
        """The device's timing lock; with --llmcycle-against the processes take turns instead."""
        return against.no_lock() if against.active(self._run) else self._run.timing_lock()

    def _record_against(self, stage: str, m: Measurement, dtype: str | None, weight: float, counters: dict | None) -> StageResult:
        """A stage timed beside the base: a worker sends its numbers to head 0; head 0 judges them."""
        env = self.environment(dtype)
        section = stage if stage in self._rounds else self._last_section
        mine = against.own_record(m, self._rounds.get(section, ()), env, counters, self._round_cpu.get(section, ()))
        if self._run.peer is not None:
            self._run.peer.record(self.nodeid, stage, mine)
            self._weights[stage] = weight
            s = self.settings
            return StageResult(
                nodeid=self.nodeid, stage=stage, device_key=self.device_key, unit=m.unit,
                verdict=vd.Verdict("info", s.threshold, s.threshold, reason="timed for head 0 (--llmcycle-against)"),
            )
        got = against.judge(self._run.peers, self.nodeid, stage, section, mine, self._rules(vd.CONFIRM_PAIRS), on_cpu=self._run.device == "cpu")
        if got.estimate is not None and got.entry is not None:
            self._paired[stage] = (got.entry.median_ms, got.estimate)
        cur = ns_to_ms(got.head_samples_ns)
        # the section's cost is every process's turns (the base's records are in), not head 0's own
        span = self._run.peers.section_span(self.nodeid, section)
        self._section_ns.pop(section, None)
        if span is not None:
            self._section_ns[stage] = int(span * 1e9)
        return self._store(stage, m, cur, got.entry, env, got.verdict, m, None, weight, counters)

    def _counters_baseline(self, stage: str, env: dict) -> tuple[str, Entry] | None:
        """(device key, entry) of this stage under another key whose counters can judge this run,
        when this key has none: the same device kind (the key's first word: cpu, cuda, mps), the
        same torch and transformers versions and dtype as ``env``, and counters stored. Counters
        do not depend on the CPU model; time does, and stays unjudged (see ``vd.Case``)."""
        kind = devmod.device_kind(self._run.device)
        for key, entry in self._run.load_baselines(self.nodeid).entries_elsewhere(self.device_key, self.nodeid, stage):
            if key.split("-", 1)[0] != kind or not entry.counters:
                continue
            if all(str(entry.env.get(k)) == str(env.get(k)) for k in ("torch", "transformers", "dtype")):
                return key, entry
        return None

    def _no_baseline_reason(self) -> str:
        """Why a stage has no baseline when its file holds this test under other device keys
        (another runner class, or a key slugged from another CPU model); "" otherwise."""
        devices = self._run.load_baselines(self.nodeid).devices()
        others = sorted(k for k, d in devices.items() if k != self.device_key and self.nodeid in d.get("tests", {}))
        return vd.other_key_reason(self.device_key, others, self._run.shown_path(self.nodeid))

    def _recording_refused(self, stages: list[StageResult]) -> float | None:
        """The machine factor when this test's numbers must not be stored, else None.

        Numbers recorded while the machine reads beyond ``MACHINE_MAX_DRIFT`` of its stored
        reference (a busy neighbour, another runner class under this key) would be judged
        against that reference later as if taken on a quiet machine.
        """
        s = self.settings
        if s.update_force or not s.machine_check:
            return None
        m = self._machine_factor  # measured while judging this test, if a stage looked changed
        if m is None:
            sample_s = max((r.median_ms or 0.0) for r in stages) / 1e3
            m = self._run.machine_factor(sample_s, self.nodeid)
        return m if vd.machine_off(m) else None

    def _store(self, stage, final, samples, entry, env, v, first, remeasured, weight, counters) -> StageResult:
        """Record ``final`` (whose samples are ``samples``, in ms) as the stage's result."""
        e = entry_from_samples(samples, final.unit, first.cold_ns / 1e6 if first.cold_ns else None, env, stamp(counters))
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
            section_s=self._spent_section(stage),
            samples_ms=e.samples_ms,
            timeline_ms=tuple(final.extra.get("timeline_ms", ())),
            env=env,
            counters=stamp(counters),  # with the rules they were counted by (counts.SEMANTICS_KEY)
        )
        self.results.append(r)
        self._weights[stage] = weight
        self._final_samples[stage] = samples
        self._entries.append((stage, e))
        return r

    def _charge(self, section: str, ns: int) -> None:
        self._section_ns[section] = self._section_ns.get(section, 0) + ns

    def _spent_section(self, stage: str) -> float | None:
        """Seconds the stage's timed section cost, once: a second stage of the same section
        (one ``generate`` gives prefill and decode) gets None."""
        ns = self._section_ns.pop(stage if stage in self._section_ns else self._last_section, None)
        return None if ns is None else ns / 1e9

    def _finish_blocks(self) -> None:
        rules = self._rules(vd.CONFIRM_HALVES)
        for name, samples_ns in self._blocks.items():
            m = Measurement(samples_ns=tuple(samples_ns), unit="call", rounds=len(samples_ns), spent_s=sum(samples_ns) / 1e9)
            if against.active(self._run):
                self._last_section = name
                self._record_against(name, m, self._block_dtype.get(name), 1.0, None)
                continue
            entry = self._baseline(name)
            env = self.environment(self._block_dtype.get(name))
            cur = ns_to_ms(samples_ns)
            v = vd.decide(
                vd.Case(
                    entry.evidence() if entry else None, vd.Evidence(cur, "call", env), rules,
                    no_baseline_reason="" if entry else self._no_baseline_reason(),
                )
            )
            self._store(name, m, cur, entry, env, v, m, None, 1.0, None)

    def _finish_cycle(self) -> None:
        stages = [r for r in self.results if r.kind == STAGE and self._weights.get(r.stage, 0) > 0]
        if len(stages) < 2:
            return
        total = sum(self._weights[r.stage] * (r.median_ms or 0) for r in stages)
        weights = [self._weights[r.stage] for r in stages]
        judged = all(r.baseline is not None and r.outcome != vd.NOT_COMPARABLE for r in stages)
        current = vd.Evidence(parts=tuple((w, self._final_samples[r.stage]) for w, r in zip(weights, stages)))
        base_entry = baseline = None
        paired = None
        if against.active(self._run):
            paired, judged = against.cycle_pairs(self._run, stages, weights, self._paired)
        if judged:
            base_total = sum(w * r.baseline.median_ms for w, r in zip(weights, stages))  # type: ignore[union-attr]
            baseline = vd.Evidence(
                parts=tuple((w, r.baseline.samples_ms) for w, r in zip(weights, stages)),  # type: ignore[union-attr]
                process_range=_cycle_process_range(stages, weights, base_total),
            )
            base_entry = Entry(base_total, base_total, base_total, 1, (base_total,))
        v = vd.decide(
            vd.Case(
                baseline, current, self._rules(vd.CONFIRM_NOT_NEEDED), machine_factor=self._machine_factor,
                no_baseline_reason="not every stage has a comparable baseline", paired=paired,
            )
        )
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

    def finish(self, test_failed: bool = False) -> list[StageResult]:
        """Judge block stages and the cycle; queue updates. Returns the rows that fail the test.

        ``test_failed``: the test body raised after measuring. Its stages are still judged and
        reported (marked as from a failed test), never written as baselines, and fail nothing
        more: the test already fails. A smoke run (``--llmcycle-disable``) has no rows.
        """
        against.unpin_blocks(self._pinned)
        if self.settings.disable:
            return []
        if self._run.peer is not None:  # a worker of --llmcycle-against: send the blocks; head 0 reports
            self._finish_blocks()
            return []
        if self._run.peers is not None:
            self._run.peers.test_done(self.nodeid)  # the workers' last numbers are in
        self._finish_blocks()
        self._finish_cycle()
        if self._run.peers is not None:
            against.note_removed(self._run, self.nodeid, [r.stage for r in self.results])
            self._run.peers.finished(self.nodeid)
        s = self.settings
        rows: list[StageResult] = []
        for r in self.results:
            if test_failed:
                r = replace(r, test_failed=True)
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
                        section_s=None,  # its stage's row carries the section's cost
                    )
                )
        if s.update and not test_failed:
            self._queue_updates(rows)
        self.results = rows
        self._run.results.extend(rows)
        if s.update or test_failed:
            return []
        failing = [r for r in rows if r.outcome == vd.REGRESSED]
        if s.strict:
            failing += [r for r in rows if r.kind == STAGE and r.outcome in (vd.NEW, vd.NOT_COMPARABLE)]
        if s.strict_all:
            failing += [r for r in rows if r.kind in (STAGE, CYCLE) and r.outcome == vd.INCONCLUSIVE]
        return failing

    def _queue_updates(self, rows: list[StageResult]) -> None:
        """Queue this test's stages for writing, all of them or none (``rows`` updated in place).

        A test's stages are re-recorded together: when one is new or changed (or with
        --llmcycle-update-all) every stage is, so one test's entries never mix machine states.
        Nothing is queued while the machine reads far off its stored reference speed.
        """
        s = self.settings
        stages = [r for r in rows if r.kind == STAGE]
        if not stages or not (s.update_all or any(r.outcome in CHANGED for r in stages)):
            return
        refused = self._recording_refused(stages)
        if refused is not None:
            self._run.refused.append((self.nodeid, refused))
            return
        entries = dict(self._entries)
        for i, r in enumerate(rows):
            if r.kind == STAGE:
                # with --llmcycle-update-append the write pools it with the entry stored then
                self._run.pending.append((self.device_key, self.nodeid, r.stage, entries[r.stage]))
                rows[i] = replace(r, updated=True)

    # ================================================================== LLM helpers
    # The helpers live in llm.stages.LLMStages and reach this object only through its declared
    # Recorder interface (timed_section, record, check_stage, device_str, threads, clock,
    # settings). Each method here delegates, with the helper's own signature and docstring.

    @property
    def device_str(self) -> str:
        """The device stages are timed on, as torch spells it ("cpu", "cuda:0", "mps")."""
        return self._run.device

    def check_stage(self, stage: str) -> None:
        """Raise ValueError for a stage name that is empty or already used in this test."""
        self._check_stage(stage)

    def tokens(
        self,
        loop: Callable[[Callable[[], None]], Any],
        *,
        n_tokens: int | None = None,
        batch: int = 1,
        prompt_length: int = 0,
        name: str = "",
        counters: bool | None = None,
        seed: int | None = 0,
        inference_mode: bool = False,
        dtype: str | None = None,
    ) -> GenerationResult:
        __tracebackhide__ = True
        return self._llm.tokens(
            loop, n_tokens=n_tokens, batch=batch, prompt_length=prompt_length, name=name,
            counters=counters, seed=seed, inference_mode=inference_mode, dtype=dtype,
        )

    tokens.__doc__ = LLMStages.tokens.__doc__

    def generate(
        self,
        model: Any,
        inputs: Any,
        max_new_tokens: int = 16,
        *,
        do_sample: bool = False,
        num_beams: int = 1,
        name: str = "",
        processors: Iterable[Any] | None = None,
        counters: bool | None = None,
        seed: int | None = 0,
        inference_mode: bool = False,
        **generate_kwargs: Any,
    ) -> GenerationResult:
        __tracebackhide__ = True
        return self._llm.generate(
            model, inputs, max_new_tokens, do_sample=do_sample, num_beams=num_beams, name=name,
            processors=processors, counters=counters, seed=seed, inference_mode=inference_mode, **generate_kwargs,
        )

    generate.__doc__ = LLMStages.generate.__doc__

    def train_step(
        self,
        loss_fn: Callable[[], Any],
        *,
        model: Any = None,
        optimizer: Any = None,
        name: str = "",
        counters: bool | None = None,
        seed: int | None = 0,
        dtype: str | None = None,
    ) -> TrainStepResult:
        __tracebackhide__ = True
        return self._llm.train_step(
            loss_fn, model=model, optimizer=optimizer, name=name, counters=counters, seed=seed, dtype=dtype,
        )

    train_step.__doc__ = LLMStages.train_step.__doc__

    def counted(
        self,
        stage: str,
        fn: Callable[[], Any],
        *,
        counters: bool | None = None,
        inference_mode: bool = False,
        dtype: str | None = None,
        cycle: bool = True,
    ) -> Any:
        __tracebackhide__ = True
        return self._llm.counted(stage, fn, counters=counters, inference_mode=inference_mode, dtype=dtype, cycle=cycle)

    counted.__doc__ = LLMStages.counted.__doc__

    def scaling(
        self,
        stage: str,
        make: Callable[[Any], Callable[[], Any]],
        sizes: Sequence[Any],
        *,
        counters: bool | None = None,
        record: bool = False,
        inference_mode: bool = False,
    ) -> ScalingResult:
        __tracebackhide__ = True
        return self._llm.scaling(stage, make, sizes, counters=counters, record=record, inference_mode=inference_mode)

    scaling.__doc__ = LLMStages.scaling.__doc__

    def ab(
        self,
        a: Callable[[], Any],
        b: Callable[[], Any],
        *,
        names: tuple = ("a", "b"),
        counters: bool = False,
        budget: float | None = None,
        inference_mode: bool = False,
    ) -> ABResult:
        __tracebackhide__ = True
        return self._llm.ab(a, b, names=names, counters=counters, budget=budget, inference_mode=inference_mode)

    ab.__doc__ = LLMStages.ab.__doc__
