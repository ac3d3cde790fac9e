"""Tiny calls timed right: time_callable's median vs torch.utils.benchmark, from ~1 us to 100 ms.

Workloads (CPU, 1 torch thread): a Python sum (~1 us), an 8-element tensor add (~1-4 us), square
matmuls of ~26 us, ~1.5 ms and ~100 ms (the sizes are tuned at start, on this thread's CPU time, to
land near those times; the table shows the medians they really had).
Each block times every workload with, in alternating order:

  - ``llmcycle``: :func:`pytest_llmcycle.measure.timing.time_callable` as the fixture calls it,
    inside a :class:`~pytest_llmcycle.run.fixture.StageDeadline` with a limit, its ``check``
    passed (checked between rounds);
  - ``llmcycle, before``: the rule before issue 14: one calibration call sizes the batch and the
    callable is wrapped by ``StageDeadline.wrap`` (the flag read on every call), same rounds;
  - ``torch.utils.benchmark``: ``Timer.blocked_autorange(min_run_time=BUDGET)`` and
    ``Timer.adaptive_autorange(max_run_time=BUDGET)``.

Each block gives the ratio of each median to blocked_autorange's; the table shows their median
and range over the blocks (the two torch methods against each other show the noise floor).
``--clock cpu`` has every method read this thread's CPU time instead of the wall clock: on a
loaded machine the wall clock mostly measures how often a batch is preempted (a median of
single ~1 ms calls skips the preempted ones, a mean over a 1 ms block cannot), which says
nothing about how a method batches and calibrates.

Run:  .venv/bin/python bench/tiny_calls.py [--blocks 8] [--budget 1.0] [--out bench/results/tiny_calls.md]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.utils.benchmark as tb  # noqa: E402

from pytest_llmcycle.measure.device import synchronizer  # noqa: E402
from pytest_llmcycle.measure.timing import TimingPolicy, make_round, run_rounds, time_callable  # noqa: E402
from pytest_llmcycle.run.fixture import StageDeadline  # noqa: E402


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def workloads() -> dict:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(8, generator=g), torch.rand(8, generator=g)

    def add():
        return a + b

    def per_call(fn, reps: int) -> float:
        fn()
        t0 = time.thread_time()  # CPU time: another process's time slices do not move the tuning
        for _ in range(reps):
            fn()
        return (time.thread_time() - t0) / reps

    def tuned(make, target_s: float, lo: int, hi: int):
        """``make(k)`` for the k whose call is nearest ``target_s`` (bisection; a few timed calls each)."""
        while hi - lo > max(1, lo // 50):
            mid = (lo + hi) // 2
            reps = max(3, int(0.02 / target_s))
            if per_call(make(mid), reps) < target_s:
                lo = mid
            else:
                hi = mid
        return make(lo), lo

    def summing(k: int):
        r = range(k)
        return lambda: sum(r)

    def matmul_of(n: int):
        x = torch.rand(n, n, generator=g)
        return lambda: x @ x

    py1, k = tuned(summing, 1e-6, 1, 200)
    mm26, n26 = tuned(matmul_of, 26e-6, 8, 256)
    mm15, n15 = tuned(matmul_of, 1.5e-3, 64, 1024)
    mm100, n100 = tuned(matmul_of, 0.1, 256, 4096)
    return {f"~1 us (Python sum of {k} ints)": py1, "~1 us (8-element tensor add)": add,
            f"~26 us ({n26}x{n26} matmul)": mm26, f"~1.5 ms ({n15}x{n15} matmul)": mm15,
            f"~100 ms ({n100}x{n100} matmul)": mm100}


#: the clock every method reads (set from --clock): wall time, or this thread's CPU time
CLOCK_NS = time.perf_counter_ns
CLOCK_S = time.perf_counter
#: llmcycle's shortest sample (set from --min-sample-s; the plugin's default is 100 us)
MIN_SAMPLE_S = TimingPolicy().min_sample_s


def ours(fn, budget: float) -> float:
    with StageDeadline("bench", 300.0) as deadline:
        policy = TimingPolicy(budget_s=budget, min_sample_s=MIN_SAMPLE_S)
        return time_callable(fn, "cpu", policy, CLOCK_NS, check=deadline.check).median_ns / 1e9


def before(fn, budget: float) -> float:
    """The rule before issue 14: a lone second call sizes the batch; the guard wraps every call."""
    policy = TimingPolicy(budget_s=budget)
    sync = synchronizer("cpu")
    with StageDeadline("bench", 300.0) as deadline:
        guarded = deadline.wrap(fn)

        def one_call() -> float:
            t0 = CLOCK_NS()
            guarded()
            return float(CLOCK_NS() - t0)

        cold = one_call()
        one = max(one_call(), 1.0)
        number = 1
        if one < policy.min_sample_s * 1e9:
            number = int(min(10_000, math.ceil(policy.min_sample_s * 1e9 / one)))
        round_fn = make_round(guarded, "cpu", CLOCK_NS, number)
        del sync
        return run_rounds(round_fn, policy, CLOCK_NS, unit="call", number=number, cold_ns=cold, warmup_rounds=2).median_ns / 1e9


def blocked(fn, budget: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1, timer=CLOCK_S).blocked_autorange(min_run_time=budget).median


def adaptive(fn, budget: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1, timer=CLOCK_S).adaptive_autorange(max_run_time=budget).median


METHODS = {"llmcycle": ours, "llmcycle, before": before, "torch blocked_autorange": blocked, "torch adaptive_autorange": adaptive}


def pct(r: float) -> str:
    return f"{(r - 1) * 100:+.1f} %"


def main() -> int:
    global CLOCK_NS, CLOCK_S, MIN_SAMPLE_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per measurement, every method alike")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (what the plugin uses); cpu: this thread's CPU time, for every method alike "
                         "(on a loaded machine it leaves out the time slices other processes take)")
    ap.add_argument("--min-sample-s", type=float, default=MIN_SAMPLE_S,
                    help="llmcycle's shortest sample (batch length), default the plugin's 100 us")
    ap.add_argument("--out", help="append the results as Markdown to this file")
    args = ap.parse_args()
    MIN_SAMPLE_S = args.min_sample_s
    if args.clock == "cpu":
        CLOCK_NS, CLOCK_S = time.thread_time_ns, time.thread_time

    torch.set_num_threads(1)
    start_load = uptime()
    t_start = time.time()
    works = workloads()
    results: dict = {(w, m): [] for w in works for m in METHODS}
    for block in range(args.blocks):
        for w, fn in works.items():
            order = list(METHODS)
            order = order if block % 2 == 0 else order[::-1]
            for m in order:
                results[(w, m)].append(METHODS[m](fn, args.budget))
        print(f"block {block + 1}/{args.blocks} done ({time.time() - t_start:.0f} s)", flush=True)
    end_load = uptime()

    lines = [
        f"Tiny calls: medians vs torch.utils.benchmark (CPU, 1 torch thread), {args.blocks} interleaved blocks, "
        f"budget {args.budget:g} s per measurement, {args.clock} clock, llmcycle batches >= {MIN_SAMPLE_S * 1e6:g} us; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"in {time.time() - t_start:.0f} s, torch {torch.__version__}.",
        f"Machine: {os.cpu_count()} cores; uptime before: `{start_load}`; after: `{end_load}`.",
        "",
        "| workload | blocked_autorange median | llmcycle / blocked | llmcycle before / blocked | adaptive / blocked |",
        "|---|---|---|---|---|",
    ]
    for w in works:
        ref = results[(w, "torch blocked_autorange")]

        def cell(m: str) -> str:
            r = [x / y for x, y in zip(results[(w, m)], ref)]
            return f"{pct(statistics.median(r))} ({pct(min(r))} .. {pct(max(r))})"

        med = statistics.median(ref)
        shown = f"{med * 1e6:.3g} us" if med < 1e-3 else f"{med * 1e3:.3g} ms"
        lines.append(f"| {w} | {shown} | {cell('llmcycle')} | {cell('llmcycle, before')} | {cell('torch adaptive_autorange')} |")
    lines.append("")
    lines.append("Each cell: the median over blocks of the block's ratio to blocked_autorange's median, and the range. "
                 "'before' replays the old rule in the same run: batch sized from one second call, the stage-limit guard wrapping every call.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        p = Path(args.out)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
