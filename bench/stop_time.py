"""Time to a verdict of a ~2 ms stage: the early stop against the full budget and pytest-benchmark.

Workload: a tiny Llama (2 layers, hidden 128, vocab 512) forward pass on TOKENS input tokens,
CPU, 1 thread: the verdict_quality bench's model on a shorter input, so one call takes ~2 ms
on a quiet 2-core VM (the median is printed; compare it to that). Unchanged code, a baseline
recorded once at the start by each tool. Then ROUNDS rounds, each running in turn, in fresh
pytest processes:

  * pytest-llmcycle as it is now (``llmcycle_early_stop`` on, the default),
  * pytest-llmcycle before (``-o llmcycle_early_stop=false``: rounds to the precision or budget,
    as before issue 14),
  * pytest-benchmark (``--benchmark-compare ... --benchmark-compare-fail=median:10%``),

and reads each test's call phase from ``--durations=0`` (timing, verdict, any re-measure; the
pytest-benchmark figure includes its own calibration and comparison). Medians and ranges, with
``uptime`` before and after: one run is not a fact until it repeats.

Run:  .venv/bin/python bench/stop_time.py [--rounds 8] [--tokens 16] [--out bench/results/stop_time.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_FILE = '''
import os
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
CFG = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
MODEL = LlamaForCausalLM(CFG).eval()
X = torch.randint(0, 512, (1, int(os.environ["BENCH_TOKENS"])), generator=torch.Generator().manual_seed(0))
torch.set_num_threads(1)  # same thread count for both tools (pytest-llmcycle pins 1 here too)


def forward():
    with torch.no_grad():
        MODEL(X)


def test_llmcycle_forward(llmcycle):
    llmcycle.measure("forward", forward)


def test_benchmark_forward(benchmark):
    benchmark(forward)
'''


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def call_seconds(out: str, name: str) -> float | None:
    m = re.search(rf"([\d.]+)s call\s+\S*{name}", out)
    return float(m.group(1)) if m else None


def stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f} .. {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8, help="rounds of the three runs, interleaved")
    ap.add_argument("--tokens", type=int, default=16, help="input tokens of the forward pass")
    ap.add_argument("--out", help="also write the results as Markdown to this file")
    args = ap.parse_args()

    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="llmcycle-stop-"))
    (work / "test_workload.py").write_text(TEST_FILE)
    (work / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, BENCH_TOKENS=str(args.tokens), PYTHONDONTWRITEBYTECODE="1")

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    common = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_workload.py", "--durations=0"]
    llm = common + ["-k", "llmcycle", "-p", "no:benchmark", "--llmcycle-threshold", "0.10", "--llmcycle-threads", "1"]
    bm = common + ["-k", "benchmark", "--benchmark-storage", str(work / "bm")]

    t_start = time.time()
    load_before = uptime()
    r = run(llm + ["--llmcycle-update"])
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"forward\s+\S+\s+([\d.]+ \S+)", r.stdout)
    stage_median = m.group(1) if m else "?"
    r = run(bm + ["--benchmark-save", "base"])
    assert r.returncode == 0, r.stdout + r.stderr
    saved = next((work / "bm").rglob("*base.json")).stem.split("_")[0]

    runs = {
        "pytest-llmcycle, early stop (now)": llm,
        "pytest-llmcycle, early stop off (before)": llm + ["-o", "llmcycle_early_stop=false"],
        "pytest-benchmark": bm + [f"--benchmark-compare={saved}", "--benchmark-compare-fail=median:10%"],
    }
    spent: dict[str, list[float]] = {k: [] for k in runs}
    failed = {k: 0 for k in runs}
    # each pytest-llmcycle run's verdict: (call s, outcome, change, machine factor), to tell a run
    # that settled from one whose process read far from the recording
    verdicts: dict[str, list[tuple]] = {k: [] for k in runs if "llmcycle" in k}
    report = work / "report.json"
    for i in range(args.rounds):
        for name, cmd in runs.items():
            if name in verdicts:
                report.unlink(missing_ok=True)
                cmd = cmd + [f"--llmcycle-report={report}"]
            r = run(cmd)
            failed[name] += r.returncode != 0 or "Performance has regressed" in (r.stdout + r.stderr)
            s = call_seconds(r.stdout, "test_llmcycle_forward" if "llmcycle" in name else "test_benchmark_forward")
            if s is not None:
                spent[name].append(s)
            if name in verdicts and report.exists():
                row = next(x for x in json.loads(report.read_text())["results"] if x["kind"] == "stage")
                v = row["verdict"]
                verdicts[name].append((s, v["outcome"], v.get("change"), v.get("machine_factor")))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k}: {v[-1] if v else '-'} s" for k, v in spent.items()), flush=True)

    lines = [
        f"Time to a verdict of one unchanged stage (tiny Llama forward, {args.tokens} tokens, CPU, 1 thread; "
        f"recorded median {stage_median}), {args.rounds} rounds of fresh pytest processes, the three runs "
        f"interleaved; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine "
        f"({os.cpu_count()} cores); total {time.time() - t_start:.0f} s.",
        f"Load before: `{load_before}`; after: `{uptime()}`.",
        "",
        "| run | call phase: median (min .. max) | failed runs |",
        "|---|---|---|",
    ]
    for name in runs:
        lines.append(f"| {name} | {stat(spent[name])} | {failed[name]}/{args.rounds} |")
    for name, vs in verdicts.items():
        lines += ["", f"{name}, each run: call phase, verdict, change against the recording"
                  " (machine factor where the check ran):", ""]
        lines.append("; ".join(
            f"{s} s {o} {c:+.1%}" + (f" (machine {f:.2f}x)" if f else "") if c is not None else f"{s} s {o}"
            for s, o, c, f in vs
        ))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
