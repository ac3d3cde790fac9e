"""LLM-specific stages on the ``llmcycle`` fixture (generate, decode, backward, A/B, scaling).

A mixin: :class:`pytest_llmcycle.fixture.LLMCycle` inherits it, and every method here reaches
the core through ``self.record(...)``, ``self.settings``, ``self._run.device``, ``self.threads``
and ``self.clock``. The work lives in the modules it imports lazily (this one is imported
with the fixture, so it imports neither torch nor numpy at module level):
``steps`` (marks inside a call), ``decode`` (token metrics), ``counters``, ``hf``,
``scaling`` and ``ab``.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence


@dataclass(frozen=True)
class GenerationResult:
    """What ``generate()`` / ``tokens()`` measured: stages, token metrics and counters."""

    stats: Any  # decode.TokenStats of the measured calls
    calls: tuple  # decode.TokenCall per measured call
    cold: Any  # decode.TokenCall of the first call
    prompt_length: int
    prefill: Any  # StageResult
    decode: Any  # StageResult, None for a single token
    e2e: Any  # StageResult (cycle weight 0: prefill + decode already count it)
    counters: dict = field(default_factory=dict)  # stage -> counters (decode: per token)
    step_counters: tuple = ()  # counters of each decode step (gap i), for position fits
    compile_calls: int = 0
    compiles_while_timing: int = 0

    @property
    def ttft_ms(self) -> float:
        return self.stats.ttft_ms

    @property
    def tpot_ms(self) -> float | None:
        return self.stats.tpot_ms

    @property
    def tokens_per_s(self) -> float:
        return self.stats.tokens_per_s

    def position_fit(self, metric: str = "time") -> Any:
        """How one decode step's cost grows with the context length it attends to.

        With a KV cache a step's work is (nearly) flat in position; without one it grows
        about linearly. ``metric`` is "time" (per-token gaps over the measured calls) or a
        counter name ("flops", "aten_ops", "alloc_bytes": deterministic).
        """
        from . import decode, scaling

        if metric == "time":
            positions, groups = decode.by_position(self.calls, self.prompt_length)
            return scaling.fit_power_law(positions, [[g / 1e6 for g in grp] for grp in groups], what="decode step time", unit="ms")
        if not self.step_counters:
            raise KeyError("no per-step counters: run with counters enabled and at least two tokens")
        positions = [self.prompt_length + i + 1 for i in range(len(self.step_counters))]
        return scaling.fit_power_law(positions, [[c[metric]] for c in self.step_counters], what=f"decode step {metric}", unit="count")

    def __str__(self) -> str:
        from ..measure.counters import PEAK, fmt_count

        lines = [self.stats.table()]
        for stage, c in self.counters.items():
            shown = dict(c)
            shown.setdefault(PEAK, None)  # no allocator statistics on CPU: n/a
            lines.append(f"  {stage}: " + ", ".join(f"{k} {fmt_count(k, v)}" for k, v in shown.items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class TrainStepResult:
    """What ``train_step()`` measured: one StageResult per phase."""

    forward: Any
    backward: Any
    optimizer: Any  # None without an optimizer
    counters: dict = field(default_factory=dict)


class _Once:
    """A re-measure shared by the stages one run produced: taken at most once, when asked."""

    def __init__(self, take: Callable[[], Any]) -> None:
        self._take = take
        self._value: Any = None

    def get(self) -> Any:
        if self._value is None:
            self._value = self._take()
        return self._value


def _prefix(name: str) -> str:
    return f"{name} " if name else ""


def _seeder(seed: int | None) -> Callable[[], None] | None:
    if seed is None:
        return None

    def prepare() -> None:
        import random

        random.seed(seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(seed)

    return prepare


def _grad_context(inference_mode: bool) -> Any:
    if inference_mode:
        import torch

        return torch.inference_mode()
    return nullcontext()


def _phase(snaps: Sequence[dict], i: int, j: int, per: float = 1.0) -> dict:
    """Counters spent between snapshot i and j (per ``per`` units); peak: the largest in between."""
    from ..measure.counters import PEAK, delta

    out = delta(snaps[i], snaps[j], per)
    peaks = [s[PEAK] for s in snaps[i + 1 : j + 1] if PEAK in s]
    if peaks:
        out[PEAK] = max(peaks)
    else:
        out.pop(PEAK, None)
    return out


class LLMStages:
    # The attributes the core provides (see fixture.LLMCycle); declared for readers and type checkers.
    settings: Any
    clock: Any
    _run: Any

    # ------------------------------------------------------------------ helpers
    def _counting(self, counters: bool | None) -> bool:
        on = self.settings.counters if counters is None else bool(counters)
        return on and "torch" in sys.modules

    def _policy(self, budget_s: float | None = None) -> Any:
        from dataclasses import replace

        p = self.settings.timing_policy()
        return p if budget_s is None else replace(p, budget_s=budget_s)

    def _count_marked(self, call: Callable, prepare: Callable | None, what: str) -> list | None:
        """One untimed call under the counters, with a snapshot at its start, each tick and its end."""
        from ..measure.counters import Counting, try_counting

        def run() -> list:
            if prepare is not None:
                prepare()
            with Counting(self._run.device) as c:
                snaps = [c.snapshot()]
                call(lambda: snaps.append(c.snapshot()))
                snaps.append(c.snapshot())
            return snaps

        from ..measure.timing import pinned_threads

        with pinned_threads(self.threads):  # type: ignore[attr-defined]
            return try_counting(what, run)

    # ------------------------------------------------------------------ per-token decode
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
        """Time a hand-written decode loop per token: ``loop(tick)`` calls ``tick()`` after each token.

        The first ``tick()`` marks the first token (its logits ready: prefill / TTFT), each
        further one a decode step. Every call must tick the same number of times
        (``n_tokens``, if given). Records the stages ``prefill`` (per call), ``decode``
        (per token, cycle weight N-1) and ``e2e`` (per call, not added to the cycle).
        """
        return self._time_tokens(
            loop,
            n_tokens=n_tokens,
            batch=batch,
            prompt_length=prompt_length,
            name=name,
            counters=counters,
            prepare=_seeder(seed),
            inference_mode=inference_mode,
            dtype=dtype,
        )

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
        """Time a Hugging Face ``model.generate`` split into prefill, per-token decode and end-to-end.

        ``inputs``: token ids (a tensor) or a tokenizer's output, already on ``llmcycle.device``
        (tokenize outside the timed region). Exactly ``max_new_tokens`` tokens are generated
        every call (``min_new_tokens`` is pinned to it), greedy unless ``do_sample`` or
        ``num_beams`` says otherwise, with a fresh KV cache each call and the seed reset before
        each call. Other keywords go to ``generate`` (e.g. ``use_cache=False``).
        """
        from . import hf
        from ..measure.device import dtype_of

        hf.check_devices(model, inputs, self._run.device)
        kw = hf.generation_kwargs(model, max_new_tokens, do_sample=do_sample, num_beams=num_beams, extra=generate_kwargs)
        call, prompt_length, batch = hf.generate_call(model, inputs, kw, list(processors or []))
        return self._time_tokens(
            call,
            n_tokens=max_new_tokens,
            batch=batch,
            prompt_length=prompt_length,
            name=name,
            counters=counters,
            prepare=_seeder(seed),
            inference_mode=inference_mode,
            dtype=dtype_of(model),
            what="generation step",
        )

    def _time_tokens(
        self,
        loop: Callable,
        *,
        n_tokens: int | None,
        batch: int,
        prompt_length: int,
        name: str,
        counters: bool | None,
        prepare: Callable | None,
        inference_mode: bool,
        dtype: str | None,
        what: str = "tick()",
    ) -> GenerationResult:
        from . import decode
        from ..measure.steps import MarkedRun, MarkCountError, time_marked
        from ..measure.timing import Measurement

        p = _prefix(name)
        stages = (p + "prefill", p + "decode", p + "e2e")
        for s in stages:
            self._check_stage(s)  # type: ignore[attr-defined]
        if n_tokens is not None and n_tokens < 1:
            raise ValueError("n_tokens must be >= 1")

        def call(tick: Callable[[], None]) -> Any:
            with _grad_context(inference_mode):
                return loop(tick)

        def take() -> MarkedRun:
            with self.timed_section(name or "decode") as deadline:  # type: ignore[attr-defined]
                return time_marked(deadline.wrap(call), self._run.device, self._policy(), self.clock, prepare=prepare, expected=n_tokens, what=what)

        def split(run: MarkedRun) -> dict:
            calls = [decode.token_call(m) for m in run.calls]
            cold = decode.token_call(run.cold)
            mm = run.measurement
            common = dict(rounds=mm.rounds, warmup_rounds=mm.warmup_rounds, stopped_by=mm.stopped_by)
            out = {
                "prefill": Measurement(tuple(c.ttft_ns for c in calls), "call", cold.ttft_ns, **common),
                "e2e": mm,
                "calls": calls,
                "cold": cold,
            }
            if cold.gaps_ns:
                _, by_pos = decode.by_position(calls)
                timeline = tuple(round(sorted(g)[len(g) // 2] / 1e6, 6) for g in by_pos)  # median per position
                out["decode"] = Measurement(
                    tuple(g for c in calls for g in c.gaps_ns), "token", cold.tpot_ns, extra={"timeline_ms": timeline}, **common
                )
            return out

        first = take()
        n = first.cold.n
        parts = split(first)
        again = _Once(lambda: split(take()))

        counted: dict = {}
        step_counters: tuple = ()
        if self._counting(counters):
            snaps = self._count_marked(call, prepare, f"{p}generation")
            if snaps is not None:
                if len(snaps) - 2 != n:
                    raise MarkCountError(f"the counted call made {len(snaps) - 2} {what} mark(s), the timed ones {n}")
                counted[stages[0]] = _phase(snaps, 0, 1)
                if n > 1:
                    counted[stages[1]] = _phase(snaps, 1, n, per=n - 1)
                    step_counters = tuple(_phase(snaps, i, i + 1) for i in range(1, n))
                counted[stages[2]] = _phase(snaps, 0, n + 1)

        results = {}
        results["prefill"] = self.record(  # type: ignore[attr-defined]
            stages[0], parts["prefill"], remeasure=lambda: again.get()["prefill"], dtype=dtype,
            cycle_weight=1.0, counters=counted.get(stages[0]),
        )
        if "decode" in parts:
            results["decode"] = self.record(  # type: ignore[attr-defined]
                stages[1], parts["decode"], remeasure=lambda: again.get()["decode"], dtype=dtype,
                cycle_weight=float(n - 1), counters=counted.get(stages[1]),
            )
        results["e2e"] = self.record(  # type: ignore[attr-defined]
            stages[2], parts["e2e"], remeasure=lambda: again.get()["e2e"], dtype=dtype,
            cycle_weight=0.0, counters=counted.get(stages[2]),
        )
        return GenerationResult(
            stats=decode.token_stats(parts["calls"], batch),
            calls=tuple(parts["calls"]),
            cold=parts["cold"],
            prompt_length=prompt_length,
            prefill=results["prefill"],
            decode=results.get("decode"),
            e2e=results["e2e"],
            counters=counted,
            step_counters=step_counters,
            compile_calls=first.compile_calls,
            compiles_while_timing=first.compiles_while_timing,
        )

    # ------------------------------------------------------------------ training step
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
        """Time a training step as stages ``forward`` (``loss = loss_fn()``), ``backward``
        (``loss.backward()``) and, with an ``optimizer``, ``optimizer`` (``optimizer.step()``).

        Gradients are reset (``zero_grad(set_to_none=True)`` on ``model`` or ``optimizer``)
        before each step, outside the timed region. On CUDA each phase boundary is a device
        event; the host synchronizes once per step.
        """
        from ..measure.device import dtype_of
        from ..measure.steps import MarkedRun, time_marked
        from ..measure.timing import Measurement

        p = _prefix(name)
        names = [p + "forward", p + "backward"] + ([p + "optimizer"] if optimizer is not None else [])
        for s in names:
            self._check_stage(s)  # type: ignore[attr-defined]
        seeder = _seeder(seed)

        def prepare() -> None:
            if seeder is not None:
                seeder()
            for owner in (model, optimizer):
                if owner is not None and hasattr(owner, "zero_grad"):
                    owner.zero_grad(set_to_none=True)

        def call(tick: Callable[[], None]) -> None:
            loss = loss_fn()
            tick()
            loss.backward()
            tick()
            if optimizer is not None:
                optimizer.step()
                tick()

        def take() -> MarkedRun:
            with self.timed_section(name or "train_step") as deadline:  # type: ignore[attr-defined]
                return time_marked(deadline.wrap(call), self._run.device, self._policy(), self.clock, prepare=prepare, expected=len(names), what="phase")

        def split(run: MarkedRun) -> dict:
            def phases(m: Any) -> list:
                t = (0.0,) + tuple(m.marks_ns)
                return [t[i + 1] - t[i] for i in range(len(names))]

            cold = phases(run.cold)
            per = [phases(m) for m in run.calls]
            mm = run.measurement
            return {
                s: Measurement(tuple(x[i] for x in per), "call", cold[i], rounds=mm.rounds, warmup_rounds=mm.warmup_rounds,
                               spent_s=mm.spent_s if i == 0 else 0.0, stopped_by=mm.stopped_by)
                for i, s in enumerate(names)
            }

        parts = split(take())
        again = _Once(lambda: split(take()))
        counted: dict = {}
        if self._counting(counters):
            snaps = self._count_marked(call, prepare, p + "train step")
            if snaps is not None:
                counted = {s: _phase(snaps, i, i + 1) for i, s in enumerate(names)}
        dt = dtype or (dtype_of(model) if model is not None else None)
        res = [
            self.record(  # type: ignore[attr-defined]
                s, parts[s], remeasure=(lambda s=s: again.get()[s]), dtype=dt, cycle_weight=1.0, counters=counted.get(s)
            )
            for s in names
        ]
        return TrainStepResult(res[0], res[1], res[2] if optimizer is not None else None, counted)

    # ------------------------------------------------------------------ a callable, with counters
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
        """``measure(stage, fn)`` plus deterministic counters (one extra, untimed call)."""
        from ..measure.counters import count_call, try_counting
        from ..measure.device import dtype_of
        from ..measure.timing import pinned_threads, time_callable

        self._check_stage(stage)  # type: ignore[attr-defined]

        def run() -> Any:
            with _grad_context(inference_mode):
                return fn()

        def take() -> Any:
            with self.timed_section(stage) as deadline:  # type: ignore[attr-defined]
                return time_callable(deadline.wrap(run), self._run.device, self._policy(), self.clock)

        m = take()
        c = None
        if self._counting(counters):
            with pinned_threads(self.threads):  # type: ignore[attr-defined]
                c = try_counting(stage, lambda: count_call(run, self._run.device))
        return self.record(  # type: ignore[attr-defined]
            stage, m, remeasure=take, dtype=dtype or dtype_of(fn), cycle_weight=1.0 if cycle else 0.0, counters=c
        )

    # ------------------------------------------------------------------ scaling
    def scaling(
        self,
        stage: str,
        make: Callable[[Any], Callable[[], Any]],
        sizes: Sequence[Any],
        *,
        counters: bool | None = None,
        record: bool = False,
        inference_mode: bool = False,
    ) -> Any:
        """Time ``make(size)()`` for each size; returns a :class:`~pytest_llmcycle.scaling.ScalingResult`.

        ``make(size)`` builds the inputs (untimed) and returns the callable to time. The stage
        budget is shared by the sizes. ``record=True`` also records each size as a stage
        ``"<stage>[<size>]"`` against its baseline (left out of the cycle total).
        """
        from ..measure.counters import count_call, try_counting
        from .scaling import ScalingResult
        from ..measure.timing import pinned_threads, time_callable

        sizes = list(sizes)
        if len(set(sizes)) < 2:
            raise ValueError("scaling needs at least two different sizes")
        policy = self._policy(self.settings.budget_s / len(sizes))
        samples, counted, results = [], [], []
        for size in sizes:
            fn = make(size)

            def run(fn: Callable[[], Any] = fn) -> Any:
                with _grad_context(inference_mode):
                    return fn()

            def take(run: Callable[[], Any] = run) -> Any:
                with self.timed_section(stage) as deadline:  # type: ignore[attr-defined]
                    return time_callable(deadline.wrap(run), self._run.device, policy, self.clock)

            m = take()
            c = None
            if self._counting(counters):
                with pinned_threads(self.threads):  # type: ignore[attr-defined]
                    c = try_counting(f"{stage}[{size}]", lambda run=run: count_call(run, self._run.device))
            samples.append(tuple(s / 1e6 for s in m.samples_ns))
            if c is not None:
                counted.append(c)
            if record:
                results.append(self.record(f"{stage}[{size}]", m, remeasure=take, cycle_weight=0.0, counters=c))  # type: ignore[attr-defined]
        return ScalingResult(
            stage=stage,
            sizes=tuple(float(s) for s in sizes),
            samples_ms=tuple(samples),
            counters=tuple(counted) if len(counted) == len(sizes) else (),
            stage_results=tuple(results),
        )

    # ------------------------------------------------------------------ A/B
    def ab(
        self,
        a: Callable[[], Any],
        b: Callable[[], Any],
        *,
        names: tuple = ("a", "b"),
        counters: bool = False,
        budget: float | None = None,
        inference_mode: bool = False,
    ) -> Any:
        """Time ``a`` and ``b`` interleaved in this process; returns an :class:`~pytest_llmcycle.ab.ABResult`.

        ``result.speedup`` is median(A) / median(B) with a bootstrap 95 % interval
        (``result.ci``); ``result.assert_faster(1.3)`` fails when B is surely less than
        1.3x faster. Nothing is stored: no baseline is needed. ``budget`` (seconds, default
        twice the stage budget) is shared by both.
        """
        from .ab import ABResult, run_ab
        from ..measure.counters import count_call, try_counting

        if len(names) != 2 or names[0] == names[1]:
            raise ValueError("names must be two different labels, e.g. names=('eager', 'sdpa')")

        def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with _grad_context(inference_mode):
                    return fn()

            return run

        ra, rb = wrap(a), wrap(b)
        policy = self._policy(budget if budget is not None else 2 * self.settings.budget_s)
        with self.timed_section("/".join(names)) as deadline:  # type: ignore[attr-defined]
            sa, sb, ca, cb = run_ab(deadline.wrap(ra), deadline.wrap(rb), self._run.device, policy, self.clock)
            cnt_a = cnt_b = None
            if counters and "torch" in sys.modules:
                cnt_a = try_counting(names[0], lambda: count_call(ra, self._run.device))
                cnt_b = try_counting(names[1], lambda: count_call(rb, self._run.device))
        return ABResult(
            name_a=str(names[0]),
            name_b=str(names[1]),
            samples_a_ms=tuple(s / 1e6 for s in sa),
            samples_b_ms=tuple(s / 1e6 for s in sb),
            cold_a_ms=ca / 1e6,
            cold_b_ms=cb / 1e6,
            counters_a=dict(cnt_a or {}),
            counters_b=dict(cnt_b or {}),
        )
