"""The LLM helpers (generate, decode, backward, A/B, scaling) over a declared :class:`Recorder`.

:class:`LLMStages` is given a recorder and reaches it only through that interface: a timed
section, a stage-name check, ``record(...)``, the device, threads, clock and two settings.
The ``llmcycle`` fixture (:class:`pytest_llmcycle.run.fixture.LLMCycle`) is the recorder in a
test run and exposes each helper by delegating to an ``LLMStages`` of its own; nothing here
imports from ``run`` (a lower layer never imports back).

The work lives in the modules imported lazily (this one is imported with the fixture, so it
imports neither torch nor numpy at module level): ``measure.steps`` (marks inside a call),
``decode`` (token metrics), ``measure.counters``, ``hf``, ``scaling`` and ``ab``.
"""
from __future__ import annotations

import inspect
import math
import operator
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # for the annotations only: these modules import numpy
    from ..measure.timing import Clock, Measurement, TimingPolicy
    from .ab import ABResult
    from .scaling import ScalingResult


class Deadline(Protocol):
    """A stage's hard limit, as the helpers use it: ``check()`` between rounds (raises once the
    limit has passed), or the timed callable wrapped so that it stops at its next call."""

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]: ...

    def check(self) -> None: ...


class HelperSettings(Protocol):
    """The settings the helpers read (:class:`pytest_llmcycle.config.Settings` has them)."""

    @property
    def counters(self) -> bool:
        """Whether deterministic counters are taken when a call does not say."""
        ...

    def timing_policy(self) -> TimingPolicy:
        """The stage's budget, rounds and precision."""
        ...

    @property
    def disable(self) -> bool:
        """Smoke mode (``--llmcycle-disable``): each callable runs once (the policy says ``once``),
        untimed and uncounted, and the results assert nothing about speed."""
        ...


@runtime_checkable
class Recorder(Protocol):
    """What the helpers need from whoever records stages; the ``llmcycle`` fixture provides it."""

    @property
    def device_str(self) -> str:
        """The device stages are timed on, as torch spells it ("cpu", "cuda:0", "mps")."""
        ...

    @property
    def threads(self) -> int:
        """Intra-op threads a timed or counted call runs on."""
        ...

    @property
    def clock(self) -> Clock:
        """The clock stages are timed with (nanoseconds)."""
        ...

    @property
    def settings(self) -> HelperSettings: ...

    def check_stage(self, stage: str) -> None:
        """Raise ValueError for a stage name that is empty or already used in this test."""
        ...

    def timed_section(self, stage: str) -> ContextManager[Deadline]:
        """Where every timed measurement runs (the device's lock, pinned threads, the hard limit)."""
        ...

    def record(
        self,
        stage: str,
        measurement: Measurement,
        *,
        remeasure: Callable[[], Measurement] | None = None,
        dtype: str | None = None,
        cycle_weight: float = 1.0,
        counters: dict | None = None,
    ) -> Any:
        """Judge a measurement as ``stage`` and keep it; returns the stage's result."""
        ...


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
    #: False in smoke mode (--llmcycle-disable): the numbers are those of one cold call
    timed: bool = True

    @property
    def ttft_ms(self) -> float:
        return self.stats.ttft_ms

    @property
    def tpot_ms(self) -> float | None:
        return self.stats.tpot_ms

    @property
    def tokens_per_s(self) -> float:
        """Tokens a second over every returned sequence: batch x return sequences x tokens / end-to-end."""
        return self.stats.tokens_per_s

    @property
    def batch(self) -> int:
        """Prompts in the batch."""
        return self.stats.batch

    @property
    def return_sequences(self) -> int:
        """Sequences returned per prompt (``num_return_sequences``)."""
        return self.stats.return_sequences

    @property
    def beams(self) -> int:
        """Beam search's hypotheses per prompt (1 without beam search)."""
        return self.stats.beams

    def position_fit(self, metric: str = "time") -> Any:
        """How one decode step's cost grows with the context length it attends to.

        With a KV cache a step's work is (nearly) flat in position; without one it grows
        about linearly. ``metric`` is "time" (per-token gaps over the measured calls) or a
        counter name ("flops", "aten_ops", "alloc_bytes": deterministic).
        """
        from . import decode, scaling

        if metric == "time":
            positions, groups = decode.by_position(self.calls, self.prompt_length)
            f = scaling.fit_power_law(positions, [[g / 1e6 for g in grp] for grp in groups], what="decode step time", unit="ms")
            return f if self.timed else replace(f, timed=False)
        if not self.step_counters:
            raise KeyError("no per-step counters: run with counters enabled and at least two tokens")
        positions = [self.prompt_length + i + 1 for i in range(len(self.step_counters))]
        return scaling.fit_power_law(positions, [[c[metric]] for c in self.step_counters], what=f"decode step {metric}", unit="count")

    def __str__(self) -> str:
        from ..engine.counts import PEAK, fmt_count

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


def _guarded(deadline: Any, fn: Callable[[], Any]) -> tuple:
    """``(fn, check)`` for ``time_callable(fn, ..., check=check)``: the limit checked between rounds,
    not once a call; a deadline without ``check`` (another Recorder's) wraps ``fn`` instead."""
    check = getattr(deadline, "check", None)
    if check is None:
        return deadline.wrap(fn), None
    return fn, check


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


# ---------------------------------------------------------------------- argument checks
# Wrong arguments are refused before anything is timed, with the argument, what was given and
# the fix in one sentence; __tracebackhide__ makes pytest point at the user's line.


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def _takes(fn: Callable, n: int) -> bool:
    """False when ``fn`` surely cannot be called with ``n`` positional arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return True
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True


def _positive(x: Any) -> bool:
    """A finite number above zero (a numpy or 0-d torch scalar too; not a bool)."""
    if isinstance(x, (bool, str)):
        return False
    try:
        v = float(x)
    except (TypeError, ValueError):
        return False
    return 0 < v < math.inf


def _is_model(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _check_callable(helper: str, arg: str, value: Any, fix: str, takes: str = "") -> None:
    """``value`` is a callable the helper can call with ``takes`` (one argument) or nothing."""
    __tracebackhide__ = True
    head = f"llmcycle.{helper}: {arg} must be a callable"
    n_args = 1 if takes else 0
    if not callable(value):
        raise TypeError(f"{head}: pass {fix} (got {_kind(value)})")
    if _is_model(value):
        # a model is callable, but its forward wants inputs the helper cannot know
        if not _takes(value.forward, n_args):
            raise TypeError(f"{head} that takes {takes or 'no arguments'}, not a model that needs its inputs: pass {fix}")
    elif not _takes(value, n_args):
        raise TypeError(f"{head} that takes {takes or 'no arguments'}: pass {fix}")


def _check_count(helper: str, arg: str, value: Any, least: int) -> int:
    __tracebackhide__ = True
    try:
        n = operator.index(value)  # int, numpy integer, 0-d integer tensor; not bool or float
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < least:
        raise ValueError(f"llmcycle.{helper}: {arg} must be a whole number >= {least}, got {value!r}")
    return n


def _check_stage_name(helper: str, stage: Any, example: str) -> None:
    __tracebackhide__ = True
    if not isinstance(stage, str) or not stage.strip():
        raise TypeError(f"llmcycle.{helper}: the first argument is the stage's name, a non-empty string: {example} (got {_kind(stage)})")


def _check_model_generates(model: Any) -> None:
    __tracebackhide__ = True
    other = "to time any other model, write its decode loop and use llmcycle.tokens(loop)"
    if not callable(getattr(model, "generate", None)):
        raise TypeError(
            f"llmcycle.generate: model has no .generate() (got {_kind(model)}): pass a Hugging Face model "
            f"(e.g. AutoModelForCausalLM.from_pretrained(...)); {other}"
        )
    if getattr(model, "generation_config", None) is None:
        # nanoGPT's GPT has a generate() of its own: it takes no logits processors to mark tokens with
        raise TypeError(
            f"llmcycle.generate: model.generate is not Hugging Face's (the model has no generation_config); {other}"
        )


class LLMStages:
    """The LLM helpers, recording through a :class:`Recorder` (in a test: the ``llmcycle`` fixture)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    # ------------------------------------------------------------------ helpers
    def _counting(self, counters: bool | None) -> bool:
        if self.recorder.settings.disable:  # smoke mode: the one call is the only call
            return False
        on = self.recorder.settings.counters if counters is None else bool(counters)
        return on and "torch" in sys.modules

    def _policy(self, budget_s: float | None = None) -> TimingPolicy:
        """The recorder's timing policy, with another budget if one is given."""
        p = self.recorder.settings.timing_policy()
        return p if budget_s is None else replace(p, budget_s=budget_s)

    def _count_marked(self, call: Callable, prepare: Callable | None, what: str) -> list | None:
        """One untimed call under the counters, with a snapshot at its start, each tick and its end."""
        from ..measure.counters import Counting, try_counting
        from ..measure.timing import pinned_threads

        device = self.recorder.device_str

        def run() -> list:
            if prepare is not None:
                prepare()
            with Counting(device) as c:
                snaps = [c.snapshot()]
                call(lambda: snaps.append(c.snapshot()))
                snaps.append(c.snapshot())
            return snaps

        with pinned_threads(self.recorder.threads):
            return try_counting(what, run)

    def _count_call(self, what: str, run: Callable[[], Any]) -> dict | None:
        """One untimed call of ``run`` under the counters, on the recorder's threads."""
        from ..measure.counters import count_call, try_counting
        from ..measure.timing import pinned_threads

        with pinned_threads(self.recorder.threads):
            return try_counting(what, lambda: count_call(run, self.recorder.device_str))

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
        __tracebackhide__ = True
        _check_callable("tokens", "loop", loop, "`def loop(tick): ...` that calls tick() after each token", takes="tick")
        if n_tokens is not None:
            n_tokens = _check_count("tokens", "n_tokens", n_tokens, 1)
        return self._time_tokens(
            loop,
            n_tokens=n_tokens,
            batch=_check_count("tokens", "batch", batch, 1),
            prompt_length=_check_count("tokens", "prompt_length", prompt_length, 0),
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
        each call. Other keywords go to ``generate`` (e.g. ``use_cache=False``,
        ``num_return_sequences=2``): the result reports the batch, the sequences returned per
        prompt and the beams as generate ran them, and tokens/s over every returned sequence.
        """
        __tracebackhide__ = True
        _check_model_generates(model)
        max_new_tokens = _check_count("generate", "max_new_tokens", max_new_tokens, 1)
        from . import hf
        from ..measure.device import dtype_of

        hf.check_devices(model, inputs, self.recorder.device_str)
        kw = hf.generation_kwargs(model, max_new_tokens, do_sample=do_sample, num_beams=num_beams, extra=generate_kwargs)
        call, prompt_length, batch = hf.generate_call(model, inputs, kw, list(processors or []))
        return self._time_tokens(
            call,
            n_tokens=max_new_tokens,
            batch=batch,
            counts=call.counts,
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
        counts: Callable[[], tuple[int, int, int]] | None = None,
    ) -> GenerationResult:
        """``counts()``: (batch, return sequences per prompt, beams) once the calls ran (generate's;
        a hand-written loop is ``batch`` sequences, one each)."""
        from . import decode
        from ..measure.steps import MarkedRun, MarkCountError, time_marked
        from ..measure.timing import Measurement

        rec = self.recorder
        p = _prefix(name)
        stages = (p + "prefill", p + "decode", p + "e2e")
        for s in stages:
            rec.check_stage(s)

        def call(tick: Callable[[], None]) -> Any:
            with _grad_context(inference_mode):
                return loop(tick)

        def take() -> MarkedRun:
            with rec.timed_section(name or "decode") as deadline:
                return time_marked(deadline.wrap(call), rec.device_str, self._policy(), rec.clock, prepare=prepare, expected=n_tokens, what=what)

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
        results["prefill"] = rec.record(
            stages[0], parts["prefill"], remeasure=lambda: again.get()["prefill"], dtype=dtype,
            cycle_weight=1.0, counters=counted.get(stages[0]),
        )
        if "decode" in parts:
            results["decode"] = rec.record(
                stages[1], parts["decode"], remeasure=lambda: again.get()["decode"], dtype=dtype,
                cycle_weight=float(n - 1), counters=counted.get(stages[1]),
            )
        results["e2e"] = rec.record(
            stages[2], parts["e2e"], remeasure=lambda: again.get()["e2e"], dtype=dtype,
            cycle_weight=0.0, counters=counted.get(stages[2]),
        )
        return GenerationResult(
            stats=decode.token_stats(parts["calls"], *(counts() if counts is not None else (batch, 1, 1))),
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
            timed=not rec.settings.disable,
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
        __tracebackhide__ = True
        _check_callable("train_step", "loss_fn", loss_fn, "`lambda: model(**batch).loss`")
        if optimizer is not None and not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"llmcycle.train_step: optimizer must have .step(), e.g. torch.optim.AdamW(model.parameters()) (got {_kind(optimizer)})")
        from ..measure.device import dtype_of
        from ..measure.steps import MarkedRun, time_marked
        from ..measure.timing import Measurement

        rec = self.recorder
        p = _prefix(name)
        names = [p + "forward", p + "backward"] + ([p + "optimizer"] if optimizer is not None else [])
        for s in names:
            rec.check_stage(s)
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
            with rec.timed_section(name or "train_step") as deadline:
                return time_marked(deadline.wrap(call), rec.device_str, self._policy(), rec.clock, prepare=prepare, expected=len(names), what="phase")

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
            rec.record(s, parts[s], remeasure=(lambda s=s: again.get()[s]), dtype=dt, cycle_weight=1.0, counters=counted.get(s))
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
        __tracebackhide__ = True
        _check_stage_name("counted", stage, 'llmcycle.counted("forward", lambda: model(ids))')
        _check_callable("counted", "fn", fn, "`lambda: model(ids)`")
        from ..measure.device import dtype_of
        from ..measure.timing import time_callable

        rec = self.recorder
        rec.check_stage(stage)

        def run() -> Any:
            with _grad_context(inference_mode):
                return fn()

        def take() -> Any:
            with rec.timed_section(stage) as deadline:
                timed, check = _guarded(deadline, run)
                return time_callable(timed, rec.device_str, self._policy(), rec.clock, check=check)

        m = take()
        c = self._count_call(stage, run) if self._counting(counters) else None
        return rec.record(stage, m, remeasure=take, dtype=dtype or dtype_of(fn), cycle_weight=1.0 if cycle else 0.0, counters=c)

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
    ) -> ScalingResult:
        """Time ``make(size)()`` for each size; returns a :class:`~pytest_llmcycle.llm.scaling.ScalingResult`.

        ``make(size)`` builds the inputs (untimed) and returns the callable to time. The stage
        budget is shared by the sizes. ``record=True`` also records each size as a stage
        ``"<stage>[<size>]"`` against its baseline (left out of the cycle total).
        """
        __tracebackhide__ = True
        fix = "`lambda n: (lambda: model(ids[:, :n]))`"
        _check_stage_name("scaling", stage, 'llmcycle.scaling("prefill", lambda n: (lambda: model(ids[:, :n])), [16, 32, 64])')
        _check_callable("scaling", "make", make, f"{fix}: it builds the inputs for a size and returns the call to time", takes="the size")
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(f"llmcycle.scaling: sizes must be a list of sizes, e.g. [16, 32, 64] (got {_kind(sizes)})") from None
        if len(set(sizes)) < 2:
            raise ValueError("llmcycle.scaling needs at least two different sizes, e.g. [16, 32, 64]")
        if not all(_positive(s) for s in sizes):
            raise ValueError(f"llmcycle.scaling: sizes must be positive numbers (e.g. prompt lengths), got {sizes!r}")
        from .scaling import ScalingResult
        from ..measure.timing import time_callable

        rec = self.recorder
        policy = self._policy(self._policy().budget_s / len(sizes))  # the stage budget, shared
        samples, counted, results = [], [], []
        for size in sizes:
            fn = make(size)
            if not callable(fn):
                raise TypeError(
                    f"llmcycle.scaling: make(size) must return the callable to time, not its result: pass {fix} "
                    f"(make({size!r}) returned {_kind(fn)})"
                )

            def run(fn: Callable[[], Any] = fn) -> Any:
                with _grad_context(inference_mode):
                    return fn()

            def take(run: Callable[[], Any] = run) -> Any:
                with rec.timed_section(stage) as deadline:
                    timed, check = _guarded(deadline, run)
                    return time_callable(timed, rec.device_str, policy, rec.clock, check=check)

            m = take()
            c = self._count_call(f"{stage}[{size}]", run) if self._counting(counters) else None
            samples.append(tuple(s / 1e6 for s in m.samples_ns))
            if c is not None:
                counted.append(c)
            if record:
                results.append(rec.record(f"{stage}[{size}]", m, remeasure=take, cycle_weight=0.0, counters=c))
        return ScalingResult(
            stage=stage,
            sizes=tuple(float(s) for s in sizes),
            samples_ms=tuple(samples),
            counters=tuple(counted) if len(counted) == len(sizes) else (),
            stage_results=tuple(results),
            timed=not rec.settings.disable,
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
    ) -> ABResult:
        """Time ``a`` and ``b`` interleaved in this process; returns an :class:`~pytest_llmcycle.llm.ab.ABResult`.

        ``result.speedup`` is the median over blocks of paired rounds of T(A) / T(B) with its
        sign-test 95 % interval (``result.ci``; see :mod:`pytest_llmcycle.llm.ab`);
        ``result.assert_faster(1.3)`` passes only when the interval's lower end is at least 1.3. Nothing is stored: no baseline is needed. ``budget`` (seconds, default
        twice the stage budget) is shared by both.
        """
        __tracebackhide__ = True
        _check_callable("ab", "a", a, "`lambda: model(ids)`")
        _check_callable("ab", "b", b, "`lambda: model(ids)`")
        if isinstance(names, str) or len(names) != 2 or names[0] == names[1]:
            raise ValueError(f"llmcycle.ab: names must be two different labels, e.g. names=('eager', 'sdpa') (got {names!r})")
        if budget is not None and not _positive(budget):
            raise ValueError(f"llmcycle.ab: budget is in seconds and must be positive, e.g. budget=2.0 (got {budget!r})")
        from .ab import ABResult, run_ab

        def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with _grad_context(inference_mode):
                    return fn()

            return run

        rec = self.recorder
        ra, rb = wrap(a), wrap(b)
        policy = self._policy(float(budget) if budget is not None else 2 * self._policy().budget_s)
        with rec.timed_section("/".join(names)) as deadline:
            sa, sb, ca, cb = run_ab(deadline.wrap(ra), deadline.wrap(rb), rec.device_str, policy, rec.clock)
            cnt_a = cnt_b = None
            if counters and "torch" in sys.modules and not rec.settings.disable:
                cnt_a = self._count_call(names[0], ra)
                cnt_b = self._count_call(names[1], rb)
        return ABResult(
            name_a=str(names[0]),
            name_b=str(names[1]),
            samples_a_ms=tuple(s / 1e6 for s in sa),
            samples_b_ms=tuple(s / 1e6 for s in sb),
            cold_a_ms=ca / 1e6,
            cold_b_ms=cb / 1e6,
            counters_a=dict(cnt_a or {}),
            counters_b=dict(cnt_b or {}),
            timed=not rec.settings.disable,
        )
