"""Do same-function A/B intervals hold 1 at their stated rate on this machine? Real A/A runs.

Workload: a tiny Llama (2 layers, hidden 128, vocab 512) forward pass on TOKENS tokens, CPU,
1 thread. PROCESSES fresh Python processes (each its own allocator and memory-layout "mode"),
each timing ``run_ab(f, f)`` REPEATS times with the given budget, exactly as ``llmcycle.ab``
does (blocks of two rounds ordered by a coin, both paths batched alike). For each A/A this
prints the speedup and the two intervals computed from the same samples:

  * now: the sign-test interval of the median block ratio (``llm.ab.speedup``),
  * before: the pooled ratio of medians with each side bootstrapped on its own
    (``engine.stats.ratio_ci``, what ``llm.ab`` used before issue 14; the rounds themselves were
    then strictly alternated A B, B A, ..., which this bench does not reproduce),

and counts how often each excludes 1, and how often ``assert_faster(x)`` passes (it should
almost never for identical code: x = 1.0 at most ~2.5 %, 1.1 never). Medians and ranges with
``uptime`` before and after; one run is not a fact until it repeats.

Run:  .venv/bin/python bench/ab_coverage.py [--processes 6] [--repeats 3] [--budget 1.0] [--out bench/results/ab_coverage.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r'''
import json, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from pytest_llmcycle.engine import stats
from pytest_llmcycle.llm.ab import ABResult, SpeedupError, speedup
from pytest_llmcycle.llm.ab import run_ab
from pytest_llmcycle.measure.timing import TimingPolicy

tokens, repeats, budget, seed = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
torch.set_num_threads(1)
cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
model = LlamaForCausalLM(cfg).eval()
x = torch.randint(0, 512, (1, tokens), generator=torch.Generator().manual_seed(0))


def f():
    with torch.no_grad():
        model(x)


out = []
for k in range(repeats):
    sa, sb, _, _ = run_ab(f, f, "cpu", TimingPolicy(budget_s=budget), time.perf_counter_ns, seed=seed * 100 + k)
    r = ABResult("a", "b", tuple(s / 1e6 for s in sa), tuple(s / 1e6 for s in sb))
    e = r.estimate
    old = stats.ratio_ci([list(r.samples_b_ms)], [list(r.samples_a_ms)])
    passes = {}
    for claim in (1.0, 1.1):
        try:
            r.assert_faster(claim)
            passes[claim] = True
        except SpeedupError:
            passes[claim] = False
    out.append(dict(ms=r.median_a_ms, rounds=len(sa), ratio=e.ratio, lo=e.lo, hi=e.hi, blocks=e.blocks,
                    old_ratio=old.ratio, old_lo=old.lo, old_hi=old.hi, pass10=passes[1.0], pass11=passes[1.1]))
print(json.dumps(out))
'''


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="A/As per process")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per A/A (llmcycle.ab's default is 2 x the stage budget)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", help="also append the results as Markdown to this file")
    args = ap.parse_args()

    t0 = time.time()
    load_before = uptime()
    rows = []
    for p in range(args.processes):
        r = subprocess.run([sys.executable, "-c", CHILD, str(args.tokens), str(args.repeats), str(args.budget), str(p)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-3000:])
        got = json.loads(r.stdout.strip().splitlines()[-1])
        for g in got:
            g["process"] = p
        rows += got
        print(f"process {p + 1}/{args.processes}: " + "; ".join(
            f"{g['ratio']:.3f}x [{g['lo']:.3f}, {g['hi']:.3f}] (before: {g['old_ratio']:.3f}x [{g['old_lo']:.3f}, {g['old_hi']:.3f}])"
            for g in got), flush=True)
    n = len(rows)
    excl_new = sum(not (g["lo"] <= 1 <= g["hi"]) for g in rows)
    excl_old = sum(not (g["old_lo"] <= 1 <= g["old_hi"]) for g in rows)
    p10 = sum(g["pass10"] for g in rows)
    p11 = sum(g["pass11"] for g in rows)
    ms = sorted(g["ms"] for g in rows)
    lines = [
        f"Real A/A runs (`run_ab(f, f)`, tiny Llama forward, {args.tokens} tokens, CPU, 1 thread, budget {args.budget:g} s each): "
        f"{args.processes} fresh processes x {args.repeats}; call median {ms[len(ms) // 2]:.1f} ms "
        f"(range {ms[0]:.1f} .. {ms[-1]:.1f}); measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, total {time.time() - t0:.0f} s.",
        f"Load before: `{load_before}`; after: `{uptime()}`.",
        "",
        "| interval (same samples) | A/As whose 95 % interval excludes 1 | expected at 95 % |",
        "|---|---|---|",
        f"| now: sign test over coin-ordered blocks | {excl_new}/{n} | at most ~{0.05 * n:.1f} |",
        f"| before: pooled medians, independent bootstraps | {excl_old}/{n} | |",
        "",
        f"`assert_faster(1.0)` passed {p10}/{n} A/As, `assert_faster(1.1)` {p11}/{n} (identical code: should be ~0).",
        "",
        "| process | speedup | now: 95 % interval | blocks | before: ratio of medians | before: interval |",
        "|---|---|---|---|---|---|",
    ]
    for g in rows:
        lines.append(f"| {g['process']} | {g['ratio']:.3f}x | {g['lo']:.3f} .. {g['hi']:.3f} | {g['blocks']} | "
                     f"{g['old_ratio']:.3f}x | {g['old_lo']:.3f} .. {g['old_hi']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
