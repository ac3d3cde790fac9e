"""The reference workload: a fixed computation timed to tell how fast the machine is now.

Its median is stored with the baselines of each device key. When a stage looks slower, the
reference is timed again; if it got slower too, the machine (a noisy neighbour, a slower
runner of the same class) moved, not the code, and the verdict normalises or abstains.

Owns the workload, timing it, the entry stored for it, whether a stored one still measures
this machine, and the factor between now and then. The stored entry and the device's timing
lock are handed in: no baseline file and no pytest object is read here.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable, ContextManager

from ..engine import stats
from ..engine.verdict import env_mismatch
from ..storage.baseline import Entry, entry_from_samples, ns_to_ms
from .device import device_kind, library_versions
from .timing import Measurement, TimingPolicy, pinned_threads, time_callable

#: Bump when the workload changes: a stored reference of another workload is ignored.
WORKLOAD = "matmul-mlp-v1"
POLICY = TimingPolicy(budget_s=0.3, min_rounds=15, warmup_rounds=3, precision=0.003)


def _torch_workload(device: str) -> Callable[[], object]:
    import torch

    g = torch.Generator().manual_seed(1234)
    if device_kind(device) == "cpu":
        n, hidden = 64, 256
    else:
        n, hidden = 2048, 4096
    x = torch.randn(n, hidden, generator=g).to(device)
    w1 = torch.randn(hidden, 2 * hidden, generator=g).to(device) / hidden**0.5
    w2 = torch.randn(2 * hidden, hidden, generator=g).to(device) / hidden**0.5

    def run() -> object:
        # matmul + activation + norm: the mix a transformer block spends its time on
        h = torch.nn.functional.gelu(x @ w1) @ w2
        return torch.nn.functional.layer_norm(h, (hidden,))

    return run


def _python_workload() -> object:
    total = 0
    for i in range(20_000):
        total += i * i % 7
    return total


#: Longest batch the reference is timed in; past it a stage's sample is longer than a time slice anyway.
MAX_SAMPLE_S = 0.05


def measure_reference(device: str, clock=None, sample_s: float = 0.0) -> Measurement:
    """Time the reference workload on ``device`` (with torch if the test imported it).

    Samples are per call, whatever the batch; ``sample_s`` sets how long one timed batch
    lasts (at least the policy's 100 us, at most MAX_SAMPLE_S), to match the stage compared.
    """
    if "torch" in sys.modules:
        fn = _torch_workload(device)
    else:
        fn = _python_workload
    policy = POLICY
    target = min(MAX_SAMPLE_S, sample_s)
    if target > policy.min_sample_s:
        policy = replace(policy, min_sample_s=target, budget_s=max(policy.budget_s, policy.min_rounds * target * 1.5))
    kwargs = {"clock": clock} if clock is not None else {}
    return time_callable(fn, device, policy, **kwargs)


def workload_name() -> str:
    return WORKLOAD + ("-torch" if "torch" in sys.modules else "-python")


def reference_env(threads: int) -> dict:
    """What a reference is comparable under: the thread count and torch's version."""
    env: dict[str, Any] = {"threads": threads}
    versions = library_versions()
    if "torch" in versions:
        env["torch"] = versions["torch"]
    return env


def reference_usable(stored: Entry, threads: int) -> bool:
    """A reference of another workload, thread count or torch measures another machine speed."""
    return stored.extra.get("workload") == workload_name() and not env_mismatch(dict(stored.env), reference_env(threads))


def reference_entry(device: str, threads: int, lock: ContextManager[Any]) -> Entry:
    """The reference timed now on ``device`` (holding ``lock``, the device's timing lock), as stored."""
    with lock, pinned_threads(threads):
        m = measure_reference(device)
    return entry_from_samples(ns_to_ms(m.samples_ns), "call", None, reference_env(threads), extra={"workload": workload_name()})


def machine_factor(
    stored: Entry | None, device: str, threads: int, lock: ContextManager[Any], sample_s: float = 0.0
) -> float | None:
    """Current / stored median of the reference workload, or None without a usable stored one.

    ``sample_s`` is how long one sample of the suspect stage lasts: the reference is timed
    in batches that long, so a busy neighbour's time slices interrupt both alike (a
    sub-millisecond reference slips between them while a 10 ms stage does not).
    """
    if stored is None or not reference_usable(stored, threads):
        return None
    with lock, pinned_threads(threads):
        m = measure_reference(device, sample_s=sample_s)
    return stats.summarize(ns_to_ms(m.samples_ns)).median / stored.median_ms
