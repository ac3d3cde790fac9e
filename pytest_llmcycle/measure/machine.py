"""The reference workload: a fixed computation timed to tell how fast the machine is now.

Its median is stored with the baselines of each device key. When a stage looks slower, the
reference is timed again; if it got slower too, the machine (a noisy neighbour, a slower
runner of the same class) moved, not the code, and the verdict normalises or abstains.

Measured the same way twice. A busy neighbour's time slices interrupt a 10 ms batch but
slip between 0.1 ms ones, so the same reference reads 1.3-2.8x "slower" in long batches than
in short ones on one busy machine. The reference is therefore timed in batches of a few fixed
lengths (:data:`BUCKETS_MS`): the stored entry's own median is the 0.1 ms batches, and
``sampled_ms`` holds the median at each longer batch length the recorded stages needed (each
stage's sample length rounded to the nearest bucket). A check times it at the stored bucket
nearest the suspect stage's sample length and compares like with like; a reference stored
before buckets existed is compared at 0.1 ms, as it was taken (bench/machine_factor.py).

The entry also says which run stored it (``run``): the recording check of
``--llmcycle-update`` compares only against a reference stored by an earlier run, never one
another xdist worker of the same run stored seconds before (:func:`stored_earlier`).

Owns the workload, timing it, the entry stored for it, whether a stored one still measures
this machine, and the factor between now and then. The stored entry and the device's timing
lock are handed in: no baseline file and no pytest object is read here.
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any, Callable, ContextManager, Iterable

from ..engine import stats
from ..engine.verdict import env_mismatch
from ..storage.baseline import Entry, entry_from_samples, ns_to_ms, round_sig
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
#: The batch lengths (ms) the reference is timed in, at record and check time alike; the first is
#: the timing policy's shortest sample (what ``measure_reference(sample_s=0)`` takes).
BUCKETS_MS = (0.1, 0.5, 2.0, 10.0, 50.0)
#: the stored reference's field of medians per longer batch length ({"2": ms, ...})
SAMPLED = "sampled_ms"
#: the stored reference's field naming the run that stored it
RUN = "run"


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


def sample_bucket(sample_s: float) -> float:
    """The batch length (seconds) of :data:`BUCKETS_MS` nearest ``sample_s`` (on a log scale)."""
    ms = max(float(sample_s) * 1e3, BUCKETS_MS[0])
    return min(BUCKETS_MS, key=lambda b: abs(math.log(ms / b))) / 1e3


def stage_sample_s(median_ms: float, unit: str = "call") -> float:
    """How long one timed sample of a stage lasted, from its median per call: calls shorter than
    the timing policy's 0.1 ms are batched up to it; a token's sample is the token."""
    return max(median_ms / 1e3, POLICY.min_sample_s)


def _bucket_key(bucket_s: float) -> str:
    return f"{bucket_s * 1e3:g}"


def sampled(stored: Entry) -> dict[float, float]:
    """The stored reference's median (ms) per batch length (s): its own median at the shortest
    bucket, plus its ``sampled_ms`` (entries that are not positive numbers are ignored)."""
    out = {BUCKETS_MS[0] / 1e3: stored.median_ms}
    raw = stored.extra.get(SAMPLED)
    if isinstance(raw, dict):
        for k, v in raw.items():
            try:
                b = float(k) / 1e3
            except (TypeError, ValueError):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf and 0 < b < math.inf:
                out[b] = float(v)
    return out


def reference_entry(
    device: str,
    threads: int,
    lock: ContextManager[Any],
    sample_s: Iterable[float] = (),
    run_id: str | None = None,
    clock=None,
) -> Entry:
    """The reference timed now on ``device`` (holding ``lock``, the device's timing lock), as
    stored: in 0.1 ms batches, and in each bucket of the stages' sample lengths ``sample_s``."""
    buckets = sorted({sample_bucket(s) for s in sample_s} - {BUCKETS_MS[0] / 1e3})
    with lock, pinned_threads(threads):
        m = measure_reference(device, clock=clock)
        by_bucket = {_bucket_key(b): _median_ms(measure_reference(device, clock=clock, sample_s=b)) for b in buckets}
    extra: dict[str, Any] = {"workload": workload_name()}
    if by_bucket:
        extra[SAMPLED] = {k: round_sig(v) for k, v in by_bucket.items()}
    if run_id:
        extra[RUN] = run_id
    return entry_from_samples(ns_to_ms(m.samples_ns), "call", None, reference_env(threads), extra=extra)


def with_buckets(stored: Entry, fresh: Entry) -> Entry:
    """``stored`` with the batch lengths ``fresh`` measured and ``stored`` lacks (the first run
    to record a longer stage adds its bucket; the ones stored stay as they are)."""
    have = stored.extra.get(SAMPLED)
    have = dict(have) if isinstance(have, dict) else {}
    add = {k: v for k, v in (fresh.extra.get(SAMPLED) or {}).items() if k not in have}
    if not add:
        return stored
    return replace(stored, extra={**stored.extra, SAMPLED: {**have, **add}})


def missing_buckets(stored: Entry, sample_s: Iterable[float]) -> list[float]:
    """The buckets of ``sample_s`` the stored reference has no median for."""
    have = sampled(stored)
    return sorted({sample_bucket(s) for s in sample_s if not any(math.isclose(sample_bucket(s), b) for b in have)})


def stored_earlier(stored: Entry | None, run_id: str | None) -> Entry | None:
    """``stored`` unless this run (``run_id``: every xdist worker of a run shares it) stored it."""
    if stored is None or (run_id and stored.extra.get(RUN) == run_id):
        return None
    return stored


def _median_ms(m: Measurement) -> float:
    return stats.summarize(ns_to_ms(m.samples_ns)).median


def machine_factor(
    stored: Entry | None, device: str, threads: int, lock: ContextManager[Any], sample_s: float = 0.0, clock=None,
) -> float | None:
    """Current / stored median of the reference workload, or None without a usable stored one.

    ``sample_s`` is how long one sample of the suspect stage lasts. The reference is timed in
    the stored batch length nearest it (see the module's docstring), exactly as that stored
    median was taken, so a busy neighbour interrupts both alike.
    """
    if stored is None or not reference_usable(stored, threads):
        return None
    have = sampled(stored)
    want = sample_bucket(sample_s)
    bucket = min(have, key=lambda b: abs(math.log(want / b)))
    with lock, pinned_threads(threads):
        m = measure_reference(device, clock=clock, sample_s=0.0 if bucket <= BUCKETS_MS[0] / 1e3 else bucket)
    return _median_ms(m) / have[bucket]
