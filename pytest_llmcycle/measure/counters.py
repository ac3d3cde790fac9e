"""Deterministic counters next to time: FLOPs, dispatched aten ops, bytes allocated, peak memory.

A counter does not move with the runner's noise: a decode step that suddenly costs five times
the FLOPs (KV cache switched off), a different number of aten ops (eager attention instead of
SDPA, a slower sampler) or twice the bytes (an fp32 upcast) is caught on the noisiest CI machine,
without a re-measure. Counting runs the workload once more, untimed, under
:class:`torch.utils.flop_counter.FlopCounterMode` and a :class:`TorchDispatchMode` that counts ops.

Counting lives here; the comparison (:func:`compare`, :func:`counter_lines`) is pure Python in
:mod:`pytest_llmcycle.engine.counts`, shared with the verdict engine. torch is imported only by
:class:`Counting`.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from ..engine.counts import ALLOC, FLOPS, OPS, PEAK


class CounterWarning(UserWarning):
    """Counting failed for a workload; its stage is timed and judged without counters."""


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
