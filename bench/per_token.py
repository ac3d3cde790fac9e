"""Per-token timing: the e2e and TPOT that ``llmcycle.generate`` / ``llmcycle.tokens`` report vs plain calls.

Workload: a tiny Llama built from a config (2 layers, hidden 128, vocab 512), a 16-token prompt,
N = 16 new tokens, greedy, CPU, 1 torch thread. One pytest process runs the real ``llmcycle``
fixture (no baseline: every stage is new) and, in each of BLOCKS blocks, in alternating order:

  - ``llmcycle.generate(model, ids, N)``: its reported e2e (median over its measured calls) and TPOT;
    the same with the step marker as it was before issue 14 (its signature rebuilt by Hugging Face
    at every step), patched in for that call only;
  - plain ``model.generate(..., max_new_tokens=n, min_new_tokens=n)`` timed with perf_counter_ns,
    CALLS calls each of n = N and n = 1, interleaved; plain e2e = median(T_N), plain TPOT =
    (median(T_N) - median(T_1)) / (N - 1) (the decode steps' mean, without any per-token mark);
  - a second plain set (the same calls again): plain vs plain shows the noise floor;
  - ``llmcycle.tokens(loop)`` over a hand-written greedy KV-cache loop (``loop(tick)``), against the
    same loop timed plainly with a no-op tick, n = N and n = 1 alike.

Each block gives a ratio reported / plain; the table shows their median and range over the blocks.
The seed is reset before every call (llmcycle does it; the plain calls do it too, untimed).
``--clock cpu`` has both sides read this thread's CPU time (the fixture's ``clock`` and the plain
timer alike): on a loaded machine the wall clock mostly measures other processes' time slices.

Run:  .venv/bin/python bench/per_token.py [--blocks 12] [--calls 10] [--out bench/results/per_token.md]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_FILE = '''
import json, os, statistics, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
torch.manual_seed(0)
CFG = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
MODEL = LlamaForCausalLM(CFG).eval()
IDS = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(IDS)
N = int(os.environ["BENCH_TOKENS"])
CLOCK = time.thread_time_ns if os.environ["BENCH_CLOCK"] == "cpu" else time.perf_counter_ns
BLOCKS = int(os.environ["BENCH_BLOCKS"])
CALLS = int(os.environ["BENCH_CALLS"])
PAD = MODEL.generation_config.eos_token_id if MODEL.generation_config.pad_token_id is None else MODEL.generation_config.pad_token_id
PAD = PAD[0] if isinstance(PAD, (list, tuple)) else PAD


def plain_generate(n):
    return MODEL.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          num_beams=1, pad_token_id=PAD)


def loop(tick, n=N):
    with torch.inference_mode():
        out = MODEL(IDS, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        tick()
        for _ in range(n - 1):
            out = MODEL(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            tick()
    return tok


def noop():
    return None


from transformers import LogitsProcessor  # noqa: E402
from pytest_llmcycle.llm import hf  # noqa: E402


class OldMarker(LogitsProcessor):
    """The step marker before issue 14: a plain __call__ method, whose signature Hugging Face
    rebuilds (inspect.signature) at every step."""

    def __init__(self):
        self.tick = None

    def __call__(self, input_ids, scores):
        if self.tick is not None:
            self.tick()
        return scores


def generate_before(llmcycle, name):
    new, hf.StepMarker = hf.StepMarker, OldMarker
    try:
        return llmcycle.generate(MODEL, IDS, N, name=name)
    finally:
        hf.StepMarker = new


def timed(fn, n):
    torch.manual_seed(0)
    t0 = CLOCK()
    fn(n)
    return CLOCK() - t0


def plain(fn):
    """e2e and TPOT (ms) of CALLS plain calls of n = N and n = 1, interleaved."""
    long, short = [], []
    fn(N), fn(1)  # warm
    for _ in range(CALLS):
        long.append(timed(fn, N))
        short.append(timed(fn, 1))
    e2e, one = statistics.median(long), statistics.median(short)
    return e2e / 1e6, (e2e - one) / (N - 1) / 1e6


def test_per_token(llmcycle):
    llmcycle.clock = CLOCK  # the fixture's clock: both sides read the same one
    rows = []
    loop_plain = lambda n: loop(lambda: None, n)
    for b in range(BLOCKS):
        row = {}
        steps = [
            ("generate", lambda: llmcycle.generate(MODEL, IDS, N, name=f"g{b}")),
            ("generate_before", lambda: generate_before(llmcycle, f"old{b}")),
            ("plain_generate", lambda: plain(plain_generate)),
            ("tokens", lambda: llmcycle.tokens(loop, n_tokens=N, name=f"t{b}")),
            ("plain_tokens", lambda: plain(loop_plain)),
            ("plain_generate_2", lambda: plain(plain_generate)),
            ("plain_tokens_2", lambda: plain(loop_plain)),
        ]
        if b % 2:
            steps = steps[::-1]
        for key, step in steps:
            got = step()
            if key.startswith("plain"):
                row[key] = {"e2e_ms": got[0], "tpot_ms": got[1]}
            else:
                row[key] = {"e2e_ms": got.stats.e2e_ms, "tpot_ms": got.stats.tpot_ms, "calls": got.stats.calls}
        rows.append(row)
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(rows, f)
'''


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def pct(r: float) -> str:
    return f"{(r - 1) * 100:+.1f} %"


def summary(ratios: list[float]) -> str:
    return f"{pct(statistics.median(ratios))} ({pct(min(ratios))} .. {pct(max(ratios))})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=12, help="interleaved blocks (each: llmcycle, then plain, order alternating)")
    ap.add_argument("--calls", type=int, default=10, help="plain calls per length per block")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per call")
    ap.add_argument("--budget", type=float, default=0.5, help="llmcycle stage budget (s)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (the plugin's default); cpu: this thread's CPU time on both sides "
                         "(on a loaded machine it leaves out other processes' time slices)")
    ap.add_argument("--label", default="", help="a label for this run in the table (e.g. 'before', 'after')")
    ap.add_argument("--out", help="append the results as Markdown to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmcycle-per-token-"))
    (work / "test_per_token.py").write_text(TEST_FILE)
    (work / "pytest.ini").write_text("[pytest]\n")
    out = work / "rows.json"
    env = dict(os.environ, BENCH_TOKENS=str(args.tokens), BENCH_BLOCKS=str(args.blocks), BENCH_CALLS=str(args.calls), BENCH_CLOCK=args.clock,
               BENCH_OUT=str(out), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "test_per_token.py",
           "--llmcycle-threads", "1", "--llmcycle-budget", str(args.budget)]
    before = uptime()
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    spent = time.time() - t0
    after = uptime()
    if r.returncode != 0 or not out.exists():
        print(r.stdout[-4000:], r.stderr[-4000:])
        return 1
    rows = json.loads(out.read_text())

    def ratios(a: str, b: str, what: str) -> list[float]:
        return [row[a][what] / row[b][what] for row in rows]

    med = lambda key, what: statistics.median(row[key][what] for row in rows)  # noqa: E731
    lines = [
        f"Per-token timing{' (' + args.label + ')' if args.label else ''}: tiny Llama (2 layers, hidden 128), 16-token prompt, "
        f"{args.tokens} new tokens, greedy, CPU, 1 thread; {len(rows)} interleaved blocks, {args.calls} plain calls per length "
        f"per block, llmcycle budget {args.budget:g} s, {args.clock} clock; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {spent:.0f} s.",
        f"Machine: {os.cpu_count()} cores; uptime before: `{before}`; after: `{after}`.",
        "",
        "| what | reported / plain, e2e: median (range) | reported / plain, TPOT: median (range) | medians (ms): reported e2e, plain e2e, reported TPOT, plain TPOT |",
        "|---|---|---|---|",
    ]
    for rep, pl, title in (("generate", "plain_generate", "`llmcycle.generate` vs plain `model.generate`"),
                           ("generate_before", "plain_generate", "`llmcycle.generate` with the marker before issue 14 vs plain"),
                           ("tokens", "plain_tokens", "`llmcycle.tokens` vs the plain loop"),
                           ("plain_generate_2", "plain_generate", "plain `generate` vs plain `generate` (noise)"),
                           ("plain_tokens_2", "plain_tokens", "plain loop vs plain loop (noise)")):
        lines.append(
            f"| {title} | {summary(ratios(rep, pl, 'e2e_ms'))} | {summary(ratios(rep, pl, 'tpot_ms'))} | "
            f"{med(rep, 'e2e_ms'):.3f}, {med(pl, 'e2e_ms'):.3f}, {med(rep, 'tpot_ms'):.3f}, {med(pl, 'tpot_ms'):.3f} |"
        )
    lines.append("")
    lines.append("Plain TPOT = (median e2e of N tokens - median e2e of 1 token) / (N - 1), timed without any per-token mark; "
                 "the reported TPOT is llmcycle's (t_N - t_1) / (N - 1) from its marks.")
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
