"""Deterministic counters next to time: FLOPs, dispatched aten ops, bytes allocated, peak memory.

A counter does not move with the runner's noise: a decode step that suddenly costs five times
the FLOPs (KV cache switched off), a different number of aten ops (eager attention instead of
SDPA, a slower sampler) or twice the bytes (an fp32 upcast) is caught on the noisiest CI machine,
without a re-measure. Counting runs the workload once more, untimed, under
:class:`torch.utils.flop_counter.FlopCounterMode` and a :class:`TorchDispatchMode` that counts ops.

The comparison half (:func:`compare`, :func:`counter_lines`) is pure Python and imports cheaply;
torch is imported only by :class:`Counting`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

#: the counters, in display order
FLOPS, OPS, ALLOC, PEAK = "flops", "aten_ops", "alloc_bytes", "peak_bytes"
COUNTERS = (FLOPS, OPS, ALLOC, PEAK)
#: relative tolerance per counter; the rest are compared exactly (up to float rounding).
#: The caching allocator's peak can move by a block when unrelated allocations change.
TOLERANCE = {PEAK: 0.02}
EXACT = 1e-9


class CounterWarning(UserWarning):
    """Counting failed for a workload; its stage is timed and judged without counters."""


# --------------------------------------------------------------------------- comparison (pure)


@dataclass(frozen=True)
class CounterChange:
    name: str
    baseline: float
    current: float

    @property
    def ratio(self) -> float:
        return self.current / self.baseline if self.baseline else math.inf

    @property
    def increased(self) -> bool:
        return self.current > self.baseline

    def describe(self) -> str:
        if self.baseline and self.current:
            how = f"{self.ratio:.3g}x" if self.ratio >= 2 or self.ratio <= 0.5 else f"{(self.ratio - 1) * 100:+.2f}%"
        else:
            how = "from zero" if not self.baseline else "to zero"
        return f"{self.name} {fmt_count(self.name, self.baseline)} -> {fmt_count(self.name, self.current)} ({how})"


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def compare(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[CounterChange]:
    """Counters present in both whose values differ beyond their tolerance, in display order."""
    if not baseline or not current:
        return []
    out = []
    names = [n for n in COUNTERS if n in baseline and n in current]
    names += sorted(n for n in set(baseline) & set(current) if n not in COUNTERS)
    for name in names:
        b, c = baseline[name], current[name]
        if not (_numeric(b) and _numeric(c)):
            continue
        tol = TOLERANCE.get(name, EXACT)
        if abs(c - b) > tol * max(abs(b), 1.0):
            out.append(CounterChange(name, float(b), float(c)))
    return out


def regressions(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[CounterChange]:
    """Counters that grew: a deterministic regression."""
    return [c for c in compare(baseline, current) if c.increased]


def describe(changes: list[CounterChange], unit: str = "call") -> str:
    per = "" if unit == "call" else f" per {unit}"
    return "; ".join(c.describe() for c in changes) + f"{per} (deterministic counters: compared exactly, no re-measure)"


def counter_lines(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None, unit: str = "call") -> list[str]:
    """Failure-message lines for counters that grew (one a line, naming baseline and current)."""
    per = "" if unit == "call" else f" per {unit}"
    return [
        f"  counter   {c.name}{per}: baseline {fmt_count(c.name, c.baseline)}, current {fmt_count(c.name, c.current)} "
        f"({c.describe().rsplit('(', 1)[1]}; deterministic, compared exactly, no re-measure"
        for c in regressions(baseline, current)
    ]


def fmt_count(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if name.endswith("bytes"):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(v) >= size:
                return f"{v / size:.4g} {unit}"
        return f"{v:.4g} B"
    if name == FLOPS:
        for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
            if abs(v) >= size:
                return f"{v / size:.4g} {unit}"
    return f"{v:.6g}"


def delta(start: Mapping[str, float], end: Mapping[str, float], per: float = 1.0) -> dict[str, float]:
    """Counters spent between two snapshots, divided by ``per`` (tokens); peaks are not summed."""
    out: dict[str, float] = {}
    for name, v in end.items():
        if name == PEAK:
            out[name] = v
        elif name in start:
            d = (v - start[name]) / per
            out[name] = int(d) if float(d).is_integer() else d
    return out


# --------------------------------------------------------------------------- counting (torch)


class Counting:
    """Count FLOPs, aten ops and bytes of everything run inside the block.

    ``snapshot()`` may be called inside the block (e.g. once per generated token) to split
    the run into phases; peak memory is per phase (reset by each snapshot) and only where
    an allocator reports it (CUDA; MPS sampled after each op); on CPU it is left out (n/a).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.ops = 0
        self.alloc_bytes = 0
        self._peak_sampled = 0
        self._flops: Any = None
        self._mode: Any = None
        self._kind = device.split(":")[0]

    def __enter__(self) -> "Counting":
        from torch.utils.flop_counter import FlopCounterMode

        self._reset_peak()
        self._flops = FlopCounterMode(display=False)
        self._mode = _op_mode(self)
        self._flops.__enter__()
        try:
            self._mode.__enter__()
        except BaseException:
            self._flops.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._flops.__exit__(*exc)

    def _reset_peak(self) -> None:
        if self._kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._kind == "mps":
            import torch

            self._peak_sampled = int(torch.mps.current_allocated_memory())

    def _peak(self) -> int | None:
        if self._kind == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        if self._kind == "mps":
            return self._peak_sampled
        return None

    def snapshot(self) -> dict[str, float]:
        """Totals so far (FLOPs, ops, bytes) and the peak since the previous snapshot."""
        snap: dict[str, float] = {
            FLOPS: int(self._flops.get_total_flops()) if self._flops is not None else 0,
            OPS: self.ops,
            ALLOC: self.alloc_bytes,
        }
        peak = self._peak()
        if peak is not None:
            snap[PEAK] = peak
            self._reset_peak()
        return snap


def _op_mode(counting: Counting) -> Any:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    sample_mps = counting._kind == "mps"

    class _CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            out = func(*args, **(kwargs or {}))
            counting.ops += 1
            # views, in-place and out= ops alias an input: they allocate nothing new
            if not any(r.alias_info is not None for r in func._schema.returns):
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        counting.alloc_bytes += t.numel() * t.element_size()
            if sample_mps:
                counting._peak_sampled = max(counting._peak_sampled, int(torch.mps.current_allocated_memory()))
            return out

    return _CountOps()


def count_call(fn: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Counters of one call of ``fn`` (untimed)."""
    with Counting(device) as c:
        start = c.snapshot()
        fn()
        end = c.snapshot()
    return delta(start, end)


def try_counting(what: str, run: Callable[[], Any]) -> Any:
    """``run()``, or None with a :class:`CounterWarning` when counting is not possible for it."""
    import warnings

    try:
        return run()
    except Exception as e:  # custom kernels and some compiled graphs do not run under dispatch modes
        warnings.warn(CounterWarning(f"llmcycle: counters for {what} not taken ({type(e).__name__}: {e})"), stacklevel=3)
        return None
