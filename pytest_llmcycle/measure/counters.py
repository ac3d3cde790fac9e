"""Deterministic counters next to time: FLOPs, ops that compute or allocate, bytes allocated, peak memory.

A counter does not move with the runner's noise: a decode step that suddenly costs five times
the FLOPs (KV cache switched off), more ops (eager attention instead of SDPA, a slower sampler)
or more bytes (an fp64 upcast) is caught on the noisiest CI machine, without a re-measure.
Counting runs the workload once more, untimed, under one :class:`TorchDispatchMode`
(:class:`Counting`) that sees every aten op and counts, per op:

``flops``
    torch's own formulas (:data:`torch.utils.flop_counter.flop_registry`: matmuls, convolutions,
    the CUDA SDPA kernels), plus the SDPA kernels torch has no formula for (the CPU flash kernel,
    the overrideable fused kernel, the MPS math kernel, forward and backward; :data:`SDPA_FORWARD`,
    :data:`SDPA_BACKWARD`), so fused attention counts what a hand-written ``q @ k.T`` / ``@ v``
    counts. Composite ops are decomposed first, as ``FlopCounterMode`` does, so the count is the
    same under ``torch.inference_mode()`` and autograd.
``aten_ops``
    ops that compute or allocate: an op counts when it returns a tensor whose storage is not
    one of its inputs' (a new allocation) or when it writes into an argument (in-place, ``out=``).
    Views, ``reshape`` of a contiguous tensor, ``unsqueeze``/``squeeze``, ``detach`` and
    metadata queries count nothing, so refactors that only move views around do not move it.
``alloc_bytes``
    bytes of the new storages those ops return (each storage once). Decided by storage
    identity, not by the op schema's alias annotations: under ``inference_mode`` composite
    ops such as ``to``/``contiguous``/``reshape`` reach the mode undecomposed with an
    "may alias" schema, yet copy.
``peak_bytes``
    the allocator's peak where one reports it (CUDA; MPS sampled after each op).

:data:`pytest_llmcycle.engine.counts.SEMANTICS` names these rules; counters stamped with an
older one are not compared. Counting lives here; the comparison is pure Python in
:mod:`pytest_llmcycle.engine.counts`, shared with the verdict engine. torch is imported only by
:class:`Counting`.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from ..engine.counts import ALLOC, FLOPS, OPS, PEAK

#: SDPA kernels (forward) without a formula in torch.utils.flop_counter; q, k, v are their first arguments
SDPA_FORWARD = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)
#: their backward kernels; grad_out, q, k, v are the first arguments
SDPA_BACKWARD = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


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

_FLOP_TABLE: dict | None = None
_COMPOSITE: dict = {}  # OpOverload -> has a C++ CompositeImplicitAutograd kernel


def flop_table() -> dict:
    """OpOverloadPacket -> flop formula (called as ``f(*args, out_val=out, **kwargs)``): torch's
    registry plus the SDPA kernels it lacks. Built once a process."""
    global _FLOP_TABLE
    if _FLOP_TABLE is None:
        import torch
        from torch.utils import flop_counter as fc

        table = dict(fc.flop_registry)
        aten = torch.ops.aten

        def fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(q, k, v)

        def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out, q, k, v)

        for names, formula in ((SDPA_FORWARD, fwd), (SDPA_BACKWARD, bwd)):
            for name in names:
                packet = getattr(aten, name, None)  # not every build has every kernel
                if packet is not None and packet not in table:
                    table[packet] = fc.shape_wrapper(formula)
        _FLOP_TABLE = table
    return _FLOP_TABLE


class Counting:
    """Count FLOPs, ops that compute or allocate and their bytes of everything run inside the block.

    ``snapshot()`` may be called inside the block (e.g. once per generated token) to split
    the run into phases; peak memory is per phase (reset by each snapshot) and only where
    an allocator reports it (CUDA; MPS sampled after each op); on CPU it is left out (n/a).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.flops = 0
        self.ops = 0
        self.alloc_bytes = 0
        self._peak_sampled = 0
        self._mode: Any = None
        self._kind = device.split(":")[0]

    def __enter__(self) -> "Counting":
        self._reset_peak()
        self._mode = _count_mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

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
        snap: dict[str, float] = {FLOPS: int(self.flops), OPS: self.ops, ALLOC: self.alloc_bytes}
        peak = self._peak()
        if peak is not None:
            snap[PEAK] = peak
            self._reset_peak()
        return snap


def _count_mode(counting: Counting) -> Any:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    table = flop_table()
    Tensor = torch.Tensor
    device_op = torch.ops.prim.device.default
    sample_mps = counting._kind == "mps"
    implicit = torch._C.DispatchKey.CompositeImplicitAutograd
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key

    def composite(func: Any) -> bool:
        # the C++ decomposition, which autograd runs too (func.decompose would prefer a Python
        # one where registered: aten.matmul's imports sympy, ~2 s of the first counting call)
        known = _COMPOSITE.get(func)
        if known is None:
            known = _COMPOSITE[func] = func is not device_op and has_kernel(func.name(), implicit)
        return known

    def storage_key(t: Any) -> Any:
        try:
            s = t.untyped_storage()
            return (s.device, s.data_ptr()), s.nbytes()
        except Exception:  # tensor subclasses without a storage: count by their own size
            return None, t.numel() * t.element_size()

    dynamo_loaded = "torch._dynamo" in sys.modules

    class _Count(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            # torch wraps a mode's __torch_dispatch__ in dynamo.disable, importing torch._dynamo on
            # the first op (most of the first counting call's cost). Without dynamo loaded nothing
            # in the process is compiled, so there is nothing to keep out of our frames.
            return dynamo_loaded

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            kwargs = kwargs or {}
            if composite(func):
                # composite ops (linear, to, reshape, sdpa under inference_mode) are counted by
                # what they run, as FlopCounterMode does, so both grad modes count alike
                with self:
                    return func._op_dk(implicit, *args, **kwargs)
            out = func(*args, **kwargs)
            outs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
            counted = False
            if outs:
                inputs = {storage_key(t)[0] for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
                seen = set()
                for t in outs:
                    key, nbytes = storage_key(t)
                    if key is None or (key not in inputs and key not in seen):
                        if key is not None:
                            seen.add(key)
                        counting.alloc_bytes += nbytes
                        counted = True
            if not counted and func._schema.is_mutable:  # in-place and out= ops compute into an argument
                counted = True
            if counted:
                counting.ops += 1
            formula = table.get(func._overloadpacket)
            if formula is not None:
                counting.flops += formula(*args, **kwargs, out_val=out)
            if sample_mps:
                counting._peak_sampled = max(counting._peak_sampled, int(torch.mps.current_allocated_memory()))
            return out

    return _Count()


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
