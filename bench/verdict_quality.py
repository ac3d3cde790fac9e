"""How trustworthy are the verdicts? False failures and detections, vs pytest-benchmark.

Workload: a tiny Llama (2 layers, hidden 128, vocab 512) forward pass on 32 input tokens, CPU.
An injected slowdown makes every call exactly (1 + s) times as long as it was (a busy-wait for
s times the call's own duration), so "10 %" means 10 %.

  1. record a baseline once with each tool (pytest-llmcycle --llmcycle-update;
     pytest-benchmark --benchmark-save),
  2. run CHECKS fresh pytest processes per condition, interleaved so that machine drift hits
     every condition alike, with pytest-llmcycle (threshold 10 %) and pytest-benchmark
     (--benchmark-compare-fail=median:10%). Quiet: unchanged, +10 %, +15 %. Busy (one
     busy-looping process per core competes for the CPU while both tools check; the baseline
     was recorded quiet): unchanged, +25 %, 2x,
  3. print the false-failure rate (unchanged code failing) and the detection rates.

Issue 11's targets for the busy cells: 2x fails at least 19/20 runs, +25 % at least 15/20,
unchanged at most 1/20.

Run:  .venv/bin/python bench/verdict_quality.py [--checks 20] [--out bench/results/verdict_quality.md]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_FILE = '''
import os, time
import pytest, torch
from transformers import LlamaConfig, LlamaForCausalLM

SLOWDOWN = float(os.environ.get("BENCH_SLOWDOWN", "0"))
torch.manual_seed(0)
CFG = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
MODEL = LlamaForCausalLM(CFG).eval()
X = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
torch.set_num_threads(1)  # same thread count for both tools (pytest-llmcycle pins 1 here too)


def forward():
    t0 = time.perf_counter_ns()
    with torch.no_grad():
        MODEL(X)
    if SLOWDOWN:
        extra = (time.perf_counter_ns() - t0) * SLOWDOWN
        t1 = time.perf_counter_ns()
        while time.perf_counter_ns() - t1 < extra:
            pass


def test_llmcycle_forward(llmcycle):
    llmcycle.measure("forward", forward)


def test_benchmark_forward(benchmark):
    benchmark(forward)
'''


def run(cmd: list[str], cwd: Path, slowdown: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENCH_SLOWDOWN=str(slowdown), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


#: (slowdown, busy): quiet cells, then the busy ones (a busy-loop process per core during the check)
CONDITIONS = [(0.0, False), (0.10, False), (0.15, False), (0.0, True), (0.25, True), (1.0, True)]


def name(c) -> str:
    slowdown, busy = c
    what = "unchanged" if slowdown == 0 else ("2x" if slowdown == 1.0 else f"+{slowdown:.0%}")
    return f"busy {what}" if busy else what


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def call_seconds(out: str, name: str) -> float | None:
    m = re.search(rf"([\d.]+)s call\s+\S*{name}", out)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=20, help="fresh pytest runs per condition and tool")
    ap.add_argument("--out", help="also write the results as Markdown to this file")
    args = ap.parse_args()

    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="llmcycle-bench-"))
    (work / "test_workload.py").write_text(TEST_FILE)
    (work / "pytest.ini").write_text("[pytest]\n")
    common = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_workload.py", "--durations=0"]
    llm = common + ["-k", "llmcycle", "-p", "no:benchmark", "--llmcycle-threshold", "0.10", "--llmcycle-threads", "1"]
    bm = common + ["-k", "benchmark", "--benchmark-storage", str(work / "bm")]

    t_start = time.time()
    load_before = uptime()
    r = run(llm + ["--llmcycle-update"], work, 0.0)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(bm + ["--benchmark-save", "base"], work, 0.0)
    assert r.returncode == 0, r.stdout + r.stderr
    saved = next((work / "bm").rglob("*base.json")).stem.split("_")[0]

    # busy: other processes keep every core busy while the tools check (a noisy CI neighbour)
    conditions = CONDITIONS
    fails = {("llmcycle", c): 0 for c in conditions} | {("pytest-benchmark", c): 0 for c in conditions}
    inconclusive = {c: 0 for c in conditions}
    verdicts: dict = {c: collections.Counter() for c in conditions}
    spent: list[float] = []
    changes: dict = {c: [] for c in conditions}

    def check(c) -> None:
        slowdown = c[0]
        r = run(llm, work, slowdown)
        if r.returncode not in (0, 1):
            print(r.stdout[-3000:], r.stderr[-3000:])
            raise SystemExit(f"llmcycle run errored (exit {r.returncode})")
        fails[("llmcycle", c)] += r.returncode != 0
        inconclusive[c] += "inconclusive" in r.stdout
        row = next((ln for ln in r.stdout.splitlines() if "::test_llmcycle_forward" in ln and " forward " in ln), "")
        word = re.search(r"(regressed|inconclusive|improved|not comparable|new|ok)\b[^|]*$", row)
        verdicts[c][word.group(1) if word else "?"] += 1
        m = re.search(r"::test_llmcycle_forward\s+forward\s+\S+ \S+\s+\S+ \S+\s+([+-][\d.]+)%", r.stdout)
        if m:
            changes[c].append(float(m.group(1)))
        s = call_seconds(r.stdout, "test_llmcycle_forward")
        if s is not None and c == (0.0, False):
            spent.append(s)
        r = run(bm + [f"--benchmark-compare={saved}", "--benchmark-compare-fail=median:10%"], work, slowdown)
        fails[("pytest-benchmark", c)] += r.returncode != 0 or "Performance has regressed" in (r.stdout + r.stderr)

    for i in range(args.checks):
        for c in conditions:
            hogs = []
            if c[1]:
                hogs = [subprocess.Popen([py, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
            try:
                check(c)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
        print(f"round {i + 1}/{args.checks}: " + ", ".join(f"{t} {name(c)}: {fails[(t, c)]}" for t, c in fails), flush=True)
    n = args.checks
    lines = [
        f"Verdict quality on {n} fresh pytest runs per condition (tiny Llama forward, 32 tokens, CPU, 1 thread),",
        f"measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores); total {time.time() - t_start:.0f} s.",
        f"Load before: `{load_before}`; after: `{uptime()}`.",
        "",
        "| tool | false failures (unchanged) | detected at +10 % | detected at +15 % "
        "| false failures (busy, unchanged) | detected (busy, +25 %) | detected (busy, 2x) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [(0.0, False), (0.10, False), (0.15, False), (0.0, True), (0.25, True), (1.0, True)]
    for tool in ("llmcycle", "pytest-benchmark"):
        lines.append(
            f"| {'pytest-llmcycle (threshold 10 %)' if tool == 'llmcycle' else 'pytest-benchmark (median:10%)'} | "
            + " | ".join(f"{fails[(tool, c)]}/{n}" for c in order) + " |"
        )
    lines += [
        "",
        "Busy: one `while True: pass` process per core runs during both tools' checks (recorded quiet). "
        "Issue 11's targets: busy 2x >= 19/20, busy +25 % >= 15/20, busy unchanged <= 1/20.",
        "pytest-llmcycle's verdict of the stage: "
        + "; ".join(f"{name(c)}: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts[c].items())) for c in conditions)
        + ".",
        "pytest-llmcycle runs that reported an inconclusive stage: "
        + ", ".join(f"{name(c)} {inconclusive[c]}/{n}" for c in conditions)
        + ".",
        "Median change pytest-llmcycle reported (first measurement or re-measure): "
        + ", ".join(
            f"{name(c)} {statistics.median(v):+.1f}% (range {min(v):+.1f} .. {max(v):+.1f})" for c, v in changes.items() if v
        )
        + ".",
    ]
    if spent:
        lines.append(
            f"Time in the timed test's call phase (measurement, verdict, any re-measure), unchanged code: "
            f"median {statistics.median(spent):.2f} s, max {max(spent):.2f} s."
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
